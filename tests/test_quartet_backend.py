"""
Tests for the C{quartet} capture backend against the real quartet_capture
and quartet_epcis on Django and SQLite, without threads: both pools run
each call at once, and Celery runs tasks eagerly (the test site's
settings), so a QU4RTET task has run by the time C{submit} fires.

Django is set up once for the test process, on one database migrated at
the start; each test removes what it adds.  A database outage is made the
way an operator could: the SQLite file is moved away (Django then finds an
empty database without QU4RTET's tables) and moved back later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import Logger, LogLevel

from quartet_sftpd.capture import ArchivedUpload
from quartet_sftpd.capture.handover import (
    QUEUED_AS,
    CaptureSetupError,
    CaptureUnavailableError,
)
from quartet_sftpd.capture.quartet import QuartetBackend
from quartet_sftpd.config import Settings
from quartet_sftpd.tasks import Task, TaskStatus, TaskStore

from .fakes import ImmediateReactor, ImmediateThreadPool
from .test_builtin_backend import fired

EPCIS = Path(__file__).parent / "data" / "epcis" / "epcis.xml"
SITE = "tests.quartet_site.settings"
ENV = "DJANGO_SETTINGS_MODULE"


@pytest.fixture(scope="module")
def quartet_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """
    QU4RTET's database for this module: migrated, with quartet_epcis's
    default EPCIS rule.
    """
    folder = tmp_path_factory.mktemp("quartet")
    db = folder / "quartet.sqlite3"
    # Django reads its settings once per process: these stay for the
    # process, and later tests that set Django up see the same database.
    saved = {name: os.environ.get(name) for name in ("QUARTET_SITE_DB", ENV)}
    os.environ["QUARTET_SITE_DB"] = str(db)
    os.environ[ENV] = SITE
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections
    from quartet_epcis.parsing.steps import create_rule

    call_command("migrate", verbosity=0)
    create_rule()
    connections.close_all()
    yield db
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class Clock:
    """
    A clock the test moves by hand.
    """

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """
    A backend over a temporary archive and task store, and QU4RTET's
    database.
    """

    def __init__(self, tmp_path: Path, quartet_db: Path) -> None:
        self.tmp_path = tmp_path
        self.quartet_db = quartet_db
        self.settings = Settings(
            archive=tmp_path / "archive", db=tmp_path / "tasks.sqlite3"
        )
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.backend = self.new_backend()

    def new_backend(self) -> QuartetBackend:
        backend = QuartetBackend(
            self.settings,
            ImmediateReactor(),  # type: ignore[arg-type]
            store_pool=ImmediateThreadPool(),
            django_pool=ImmediateThreadPool(),
            clock=self.clock,
        )
        backend.log = Logger(observer=self.events.append)
        return backend

    def upload(self, data: bytes, name: str = "order.xml", rule: str = "EPCIS"):
        path = self.settings.archive / rule / f"{name}-{time.time_ns()}"
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

    def tasks(self) -> list[Task]:
        store = TaskStore(self.settings.db, create=False)
        try:
            return [store.get(t.name) for t in store.list()]  # type: ignore[misc]
        finally:
            store.close()

    def only_task(self) -> Task:
        (task,) = self.tasks()
        return task

    def database_down(self) -> None:
        """
        Move QU4RTET's database away, as if it were lost.
        """
        os.replace(self.quartet_db, self.quartet_db.with_suffix(".away"))

    def database_back(self) -> None:
        os.replace(self.quartet_db.with_suffix(".away"), self.quartet_db)

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["log_level"] == LogLevel.warn]


@pytest.fixture
def harness(tmp_path: Path, quartet_db: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path, quartet_db)
    fired(harness.backend.start())
    yield harness
    fired(harness.backend.stop())
    if quartet_db.with_suffix(".away").exists():
        harness.database_back()


def quartet_task(name: str) -> Any:
    from quartet_capture.models import Task as QuartetTask

    return QuartetTask.objects.get(name=name)


def test_rule_names_are_quartet_rules(harness: Harness) -> None:
    """
    The folders are quartet_capture's rules, read when the backend starts.
    """
    assert harness.backend.rule_names() == ("EPCIS",)


def test_epcis_upload_runs_in_quartet(harness: Harness) -> None:
    """
    An EPCIS upload becomes an Input task of QU4RTET's EPCIS rule, which
    parses the document's four events into quartet_epcis; our own task ends
    FINISHED, naming the QU4RTET task, which has the upload's details as
    parameters.
    """
    from quartet_epcis.models.events import Event

    before = Event.objects.count()
    data = EPCIS.read_bytes()
    upload = harness.upload(data)
    name = fired(harness.backend.submit(upload))

    task = quartet_task(name)
    assert (task.rule.name, task.type, task.status) == ("EPCIS", "Input", "FINISHED")
    assert Event.objects.count() - before == 4
    parameters = dict(task.taskparameter_set.values_list("name", "value"))
    ours = harness.only_task()
    assert parameters == {
        "quartet_sftpd_task": ours.name,
        "sftp_user": "acme",
        "file_name": "order.xml",
        "archive_path": str(upload.archive_path),
        "sha256": hashlib.sha256(data).hexdigest(),
    }

    assert ours.status is TaskStatus.FINISHED
    assert [m.text for m in ours.messages] == [
        f"{QUEUED_AS}{name} for rule EPCIS (QU4RTET status: FINISHED)."
    ]


def test_rule_added_in_quartet_appears_at_refresh(harness: Harness) -> None:
    """
    A rule added in QU4RTET (its admin writes the same row) gets a folder at
    the next refresh, and loses it when it is deleted.
    """
    from quartet_capture.models import Rule

    assert fired(harness.backend.refresh()) is False
    rule = Rule.objects.create(name="Shipping Notices")
    try:
        assert fired(harness.backend.refresh()) is True
        assert harness.backend.rule_names() == ("EPCIS", "Shipping Notices")
    finally:
        rule.delete()
    assert fired(harness.backend.refresh()) is True
    assert harness.backend.rule_names() == ("EPCIS",)


def test_rule_gone_fails_the_task(harness: Harness) -> None:
    """
    An upload for a rule QU4RTET no longer has is recorded FAILED with a
    message saying so, and not retried.
    """
    name = fired(harness.backend.submit(harness.upload(b"<a/>", rule="Retired")))
    task = harness.only_task()
    assert task.name == name
    assert task.status is TaskStatus.FAILED
    assert "QU4RTET has no rule named 'Retired' any more" in task.messages[0].text
    harness.clock.now += 3600
    fired(harness.backend.refresh())
    assert harness.only_task().status is TaskStatus.FAILED


def test_changed_archive_file_is_not_queued(harness: Harness) -> None:
    """
    Bytes that changed in the archive since the upload are not given to
    QU4RTET.
    """
    upload = harness.upload(b"<a/>")
    upload.archive_path.write_bytes(b"<b/>")
    fired(harness.backend.submit(upload))
    task = harness.only_task()
    assert task.status is TaskStatus.FAILED
    assert "no longer holds the bytes" in task.messages[0].text


@pytest.fixture
def invoices(harness: Harness) -> Iterator[str]:
    """
    A QU4RTET rule whose one step counts bytes, known to the backend.
    """
    from tests.quartet_site.steps import create_rule

    rule = create_rule("Invoices")
    fired(harness.backend.refresh())
    yield rule.name
    if harness.quartet_db.with_suffix(".away").exists():
        harness.database_back()
    rule.delete()


def test_database_outage_retries_with_backoff(harness: Harness, invoices: str) -> None:
    """
    While QU4RTET's database is down, submit fails with a sentence for the
    client but the task is recorded QUEUED; refreshes keep the folders and
    warn once; retries come 2, 4, then 8 seconds apart; as soon as the rules
    can be read again the task is queued in QU4RTET and ours finishes.
    """
    harness.database_down()
    upload = harness.upload(b"<invoice/>", rule=invoices)
    with pytest.raises(CaptureUnavailableError) as raised:
        fired(harness.backend.submit(upload))
    task = harness.only_task()
    assert task.status is TaskStatus.QUEUED
    assert str(raised.value).startswith(
        "order.xml is archived, but QU4RTET cannot queue it right now "
        "(OperationalError: no such table: "
    )
    assert str(raised.value).endswith(
        f"It is kept as task {task.name} and will be queued for rule Invoices "
        "automatically; do not upload it again."
    )

    def tries() -> list[dict[str, Any]]:
        return [e for e in harness.warnings() if e.get("task") == task.name]

    for step, expected in ((1.9, 1), (0.1, 2), (3.9, 2), (0.1, 3)):
        harness.clock.now += step
        assert fired(harness.backend.refresh()) is False
        assert len(tries()) == expected
    assert [e["delay"] for e in tries()] == [2.0, 4.0, 8.0]
    assert harness.backend.rule_names() == ("EPCIS", "Invoices")
    rule_warnings = [e for e in harness.warnings() if "task" not in e]
    assert len(rule_warnings) == 1
    assert "cannot read QU4RTET's rules" in rule_warnings[0]["log_format"]

    harness.database_back()
    fired(harness.backend.refresh())
    task = harness.only_task()
    assert task.status is TaskStatus.FINISHED
    quartet_name = task.messages[0].text.removeprefix(QUEUED_AS).split()[0]
    assert quartet_task(quartet_name).status == "FINISHED"
    messages = quartet_task(quartet_name).taskmessage_set.values_list("message")
    assert ("Received 10 bytes.",) in list(messages)


def test_restart_hands_over_what_an_outage_left(
    harness: Harness, invoices: str
) -> None:
    """
    A task left QUEUED by an outage when the server stops is handed to
    QU4RTET when it starts again.
    """
    harness.database_down()
    with pytest.raises(CaptureUnavailableError):
        fired(harness.backend.submit(harness.upload(b"<a/>", rule=invoices)))
    fired(harness.backend.stop())
    harness.database_back()

    harness.backend = harness.new_backend()
    fired(harness.backend.start())
    task = harness.only_task()
    assert task.status is TaskStatus.FINISHED
    assert task.messages[0].text.startswith(QUEUED_AS)


def test_crash_after_queuing_is_not_queued_twice(harness: Harness) -> None:
    """
    A task QU4RTET took, whose end a crash kept from being recorded, is
    finished at the next start, not queued again.
    """
    store = TaskStore(harness.settings.db)
    try:
        task = store.create(harness.upload(b"<a/>"))
        store.add_message(task.name, "INFO", f"{QUEUED_AS}x for rule EPCIS.")
    finally:
        store.close()
    fired(harness.backend.stop())
    harness.backend = harness.new_backend()
    fired(harness.backend.start())
    assert harness.only_task().status is TaskStatus.FINISHED
    assert not [e for e in harness.events if "queued as" in e["log_format"]]


def test_without_settings_module_the_start_fails(
    tmp_path: Path, quartet_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The backend does not start without a Django settings module, and says
    which setting to add.
    """
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE")
    harness = Harness(tmp_path, quartet_db)
    with pytest.raises(CaptureSetupError, match="set django_settings"):
        fired(harness.backend.start())


def test_named_settings_module_is_used(
    tmp_path: Path, quartet_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The C{django_settings} setting names the module, before the environment.
    """

    @dataclasses.dataclass(frozen=True)
    class WithDjango(Settings):
        django_settings: str = SITE

    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "no.such.module")
    harness = Harness(tmp_path, quartet_db)
    harness.settings = WithDjango(archive=tmp_path / "a", db=tmp_path / "t.sqlite3")
    harness.backend = harness.new_backend()
    fired(harness.backend.start())
    assert harness.backend.rule_names() == ("EPCIS",)
    fired(harness.backend.stop())
