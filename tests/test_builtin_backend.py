"""
Tests for the built-in capture backend, without threads: the store pool runs
each call at once, and the rule pool holds calls until the test runs them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from quartet_sftpd.capture import ArchivedUpload
from quartet_sftpd.capture.builtin import BuiltinBackend, CaptureStoppedError
from quartet_sftpd.config import SHIPPED_RULES, Settings
from quartet_sftpd.rules import RuleContext, RulesError, Step
from quartet_sftpd.tasks import Task, TaskStatus, TaskStore

from .fakes import ImmediateReactor, ImmediateThreadPool
from .test_steps import BILLION_LAUGHS, sample


class HeldThreadPool(ImmediateThreadPool):
    """
    A thread pool that keeps each call until L{run_all}, like a busy pool.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.stopped = False

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any
    ) -> None:
        self.calls.append((on_result, (f, *a)))

    def run_all(self) -> None:
        while self.calls:
            on_result, (f, *a) = self.calls.pop(0)
            super().callInThreadWithCallback(on_result, f, *a)

    def stop(self) -> None:
        self.stopped = True


def fired(d: Deferred[Any]) -> Any:
    """
    The result a Deferred has already fired with.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class Harness:
    """
    A backend over a temporary archive, rules file and task database.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.rules = tmp_path / "rules.toml"
        self.rules.write_bytes(SHIPPED_RULES.read_bytes())
        self.settings = Settings(
            archive=tmp_path / "archive",
            rules=self.rules,
            db=tmp_path / "tasks.sqlite3",
        )
        self.rule_pool = HeldThreadPool()
        self.events: list[dict[str, Any]] = []
        self.backend = self.new_backend()

    def new_backend(self) -> BuiltinBackend:
        backend = BuiltinBackend(
            self.settings,
            ImmediateReactor(),
            store_pool=ImmediateThreadPool(),
            rule_pool=self.rule_pool,
        )
        backend.log = Logger(observer=self.events.append)
        return backend

    def upload(self, data: bytes, name: str = "order.xml", rule: str = "EPCIS"):
        path = self.settings.archive / rule / f"{time.time_ns()}-{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return ArchivedUpload(
            user="acme",
            rule=rule,
            name=name,
            archive_path=path,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            received=time.time(),
        )

    def submit(self, data: bytes, **kwargs: str) -> str:
        return fired(self.backend.submit(self.upload(data, **kwargs)))

    def task(self, name: str) -> Task:
        store = TaskStore(self.settings.db, create=False)
        try:
            task = store.get(name)
        finally:
            store.close()
        assert task is not None
        return task

    def texts(self, name: str, level: str | None = None) -> list[str]:
        return [
            m.text
            for m in self.task(name).messages
            if level is None or m.level == level
        ]

    def write_rules(self, text: str) -> None:
        self.rules.write_text(text, encoding="utf-8")
        # Make the change visible even on a filesystem with coarse times.
        later = time.time_ns() + 5_000_000_000
        os.utime(self.rules, ns=(later, later))

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["log_level"] == LogLevel.warn]


@pytest.fixture
def harness(tmp_path: Path):
    harness = Harness(tmp_path)
    fired(harness.backend.start())
    yield harness
    fired(harness.backend.stop())


def test_rule_names_after_start(harness: Harness) -> None:
    """
    The shipped rules give one folder, EPCIS, as soon as start returns.
    """
    assert list(harness.backend.rule_names()) == ["EPCIS"]


def test_epcis_document_finishes_with_its_summary(harness: Harness) -> None:
    """
    An EPCIS upload is recorded QUEUED before its rule runs, then FINISHED
    with the event and EPC counts among its messages.
    """
    data = sample("epcis.xml")
    name = harness.submit(data)
    task = harness.task(name)
    assert task.status is TaskStatus.QUEUED
    assert task.sha256 == hashlib.sha256(data).hexdigest()
    assert (task.user, task.file, task.size) == ("acme", "order.xml", len(data))

    harness.rule_pool.run_all()
    task = harness.task(name)
    assert task.status is TaskStatus.FINISHED
    assert task.execution_time is not None
    infos = harness.texts(name, "INFO")
    for line in (
        "ObjectEvent count: 1",
        "AggregationEvent count: 1",
        "TransactionEvent count: 1",
        "TransformationEvent count: 1",
        "EPC count: 36",
    ):
        assert line in infos
    finished = [e for e in harness.events if e.get("task") == name]
    assert finished[-1]["log_format"] == (
        "task {task} for rule {rule} finished in {ms} ms"
    )


def test_well_formed_but_invalid_epcis_finishes(harness: Harness) -> None:
    """
    epcis-bad.xml is well-formed, so the shipped rule finishes on it.
    """
    name = harness.submit(sample("epcis-bad.xml"))
    harness.rule_pool.run_all()
    assert harness.task(name).status is TaskStatus.FINISHED
    assert "EPC count: 35" in harness.texts(name)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"<a>\n<b>\n</a>", "not well-formed XML at line 3, column 3"),
        (b"", "the file is empty"),
        (BILLION_LAUGHS, "declares the entity"),
    ],
)
def test_bad_files_fail_with_a_reason(
    harness: Harness, data: bytes, expected: str
) -> None:
    """
    Broken, empty and hostile files fail the task, with the reason as its
    error message and in the log.
    """
    name = harness.submit(data)
    harness.rule_pool.run_all()
    assert harness.task(name).status is TaskStatus.FAILED
    errors = harness.texts(name, "ERROR")
    assert len(errors) == 1
    assert errors[0].startswith("Step 'Well-formed' failed: ")
    assert expected in errors[0]
    logged = [e for e in harness.events if e.get("task") == name][-1]
    assert expected in logged["reason"]


def test_rule_gone_at_submit(harness: Harness) -> None:
    """
    An upload for a rule that no longer exists is still recorded, as FAILED
    with a message saying why, and nothing is queued.
    """
    name = harness.submit(b"<a/>", rule="Retired")
    task = harness.task(name)
    assert task.status is TaskStatus.FAILED
    assert task.rule == "Retired"
    assert "The rule 'Retired' no longer exists" in harness.texts(name, "ERROR")[0]
    assert harness.rule_pool.calls == []


def test_rule_removed_before_it_runs(harness: Harness) -> None:
    """
    If the rule disappears between the upload and the run, the task fails
    with a message saying so.
    """
    name = harness.submit(sample("epcis.xml"))
    harness.write_rules("")
    assert fired(harness.backend.refresh()) is True
    harness.rule_pool.run_all()
    assert harness.task(name).status is TaskStatus.FAILED
    assert "no longer exists" in harness.texts(name, "ERROR")[0]


def test_reload_adds_and_removes_rules(harness: Harness) -> None:
    """
    Editing the rules file adds and removes folders at the next refresh; an
    unchanged file is not read again.
    """
    assert fired(harness.backend.refresh()) is False
    shipped = SHIPPED_RULES.read_text()
    harness.write_rules(shipped + '\n[[rule]]\nname = "Invoices"\n')
    assert fired(harness.backend.refresh()) is True
    assert list(harness.backend.rule_names()) == ["EPCIS", "Invoices"]

    name = harness.submit(b"anything", rule="Invoices")
    harness.rule_pool.run_all()
    assert harness.task(name).status is TaskStatus.FINISHED

    harness.write_rules('[[rule]]\nname = "Invoices"\n')
    assert fired(harness.backend.refresh()) is True
    assert list(harness.backend.rule_names()) == ["Invoices"]


def test_broken_rules_file_keeps_the_old_rules(harness: Harness) -> None:
    """
    A rules file with an error leaves the previous rules in place and logs
    one warning for each change, not one per refresh.
    """
    harness.write_rules('[[rule]]\nname = "New"\n[[rule.step]]\nclass = "nope.X"\n')
    assert fired(harness.backend.refresh()) is False
    assert fired(harness.backend.refresh()) is False
    assert list(harness.backend.rule_names()) == ["EPCIS"]
    assert len(harness.warnings()) == 1
    assert "nope.X cannot be imported" in harness.warnings()[0]["error"]

    harness.write_rules("[[rule]\n")
    assert fired(harness.backend.refresh()) is False
    assert len(harness.warnings()) == 2

    harness.rules.unlink()
    assert fired(harness.backend.refresh()) is False
    assert len(harness.warnings()) == 3
    assert list(harness.backend.rule_names()) == ["EPCIS"]

    name = harness.submit(sample("epcis.xml"))
    harness.rule_pool.run_all()
    assert harness.task(name).status is TaskStatus.FINISHED


def test_crash_recovery_runs_interrupted_tasks_again(tmp_path: Path) -> None:
    """
    Tasks a crash left QUEUED or RUNNING run again at the next start, with
    a message saying they were recovered; ended tasks are left alone.
    """
    harness = Harness(tmp_path)
    store = TaskStore(harness.settings.db)
    queued = store.create(harness.upload(sample("epcis.xml"))).name
    running = store.create(harness.upload(sample("observe.xml"))).name
    store.mark_running(running)
    done = store.create(harness.upload(b"<a/>")).name
    store.fail(done, "Failed before the crash.")
    store.close()

    fired(harness.backend.start())
    harness.rule_pool.run_all()
    for name in (queued, running):
        assert harness.task(name).status is TaskStatus.FINISHED
        assert harness.texts(name, "INFO")[0].startswith(
            "Recovered after a restart: the task was "
        )
    assert "ObjectEvent count: 3" in harness.texts(running)
    assert harness.texts(done) == ["Failed before the crash."]
    fired(harness.backend.stop())


def test_stop_leaves_queued_tasks_for_the_next_start(tmp_path: Path) -> None:
    """
    Stopping waits for work in hand; a task whose rule had not started stays
    QUEUED and runs after the next start.  A stopped backend refuses uploads.
    """
    harness = Harness(tmp_path)
    fired(harness.backend.start())
    name = harness.submit(sample("epcis.xml"))
    stopped = harness.backend.stop()
    harness.rule_pool.run_all()
    fired(stopped)
    assert harness.rule_pool.stopped
    assert harness.task(name).status is TaskStatus.QUEUED
    with pytest.raises(CaptureStoppedError):
        fired(harness.backend.submit(harness.upload(b"<a/>")))

    harness.backend = harness.new_backend()
    fired(harness.backend.start())
    harness.rule_pool.run_all()
    assert harness.task(name).status is TaskStatus.FINISHED
    fired(harness.backend.stop())


def test_changed_archive_file_is_not_processed(harness: Harness) -> None:
    """
    If the archived bytes no longer match the upload's SHA-256, the rule is
    not run on them.
    """
    upload = harness.upload(sample("epcis.xml"))
    name = fired(harness.backend.submit(upload))
    upload.archive_path.write_bytes(b"<tampered/>")
    harness.rule_pool.run_all()
    assert harness.task(name).status is TaskStatus.FAILED
    assert "SHA-256 differs" in harness.texts(name, "ERROR")[0]


def test_broken_rules_file_stops_the_start(tmp_path: Path) -> None:
    """
    The server does not start on a rules file it cannot use.
    """
    harness = Harness(tmp_path)
    harness.write_rules('[[rule]]\nname = ".hidden"\n')
    with pytest.raises(RulesError, match="starts with '.'"):
        harness.backend.start()
    assert harness.backend.rule_names() == ()


class Slow(Step):
    """
    A step that holds its rule thread until the test releases it.
    """

    entered = threading.Event()
    release = threading.Event()

    def execute(self, data: Any, rule_context: RuleContext) -> None:
        Slow.entered.set()
        Slow.release.wait(10)


class QueueReactor:
    """
    A reactor stand-in for real threads: calls from threads wait in a queue
    until the test thread, playing the reactor, runs them.
    """

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.Queue()
        )

    def callFromThread(self, f: Callable[..., Any], *a: Any) -> None:
        self.calls.put((f, a))

    def run_until(self, done: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out"
            try:
                f, a = self.calls.get(timeout=0.05)
            except queue.Empty:
                continue
            f(*a)


def test_a_slow_rule_does_not_hold_up_uploads(tmp_path: Path) -> None:
    """
    With real threads and one rule worker busy on a slow rule, later uploads
    are still recorded at once; their rules run when the worker is free.
    """
    harness = Harness(tmp_path)
    harness.write_rules(
        f'[[rule]]\nname = "Slow"\n[[rule.step]]\nclass = "{__name__}.Slow"\n'
    )
    settings = dataclasses.replace(harness.settings, rule_workers=1)
    reactor = QueueReactor()
    backend = BuiltinBackend(settings, reactor)
    Slow.entered.clear()
    Slow.release.clear()

    def run(d: Deferred[Any]) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        reactor.run_until(lambda: bool(results))
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    try:
        run(backend.start())
        first = run(backend.submit(harness.upload(b"1", rule="Slow")))
        assert Slow.entered.wait(10)
        second = run(backend.submit(harness.upload(b"2", rule="Slow")))
        assert harness.task(first).status is TaskStatus.RUNNING
        assert harness.task(second).status is TaskStatus.QUEUED
        Slow.release.set()
        reactor.run_until(
            lambda: all(
                harness.task(n).status is TaskStatus.FINISHED for n in (first, second)
            )
        )
    finally:
        Slow.release.set()
        run(backend.stop())
