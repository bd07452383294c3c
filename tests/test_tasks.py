"""
Tests for the SQLite task store.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from quartet_sftpd.capture import ArchivedUpload
from quartet_sftpd.tasks import (
    SCHEMA_VERSION,
    TaskStatus,
    TaskStore,
    TaskStoreError,
    UnknownTaskError,
)

JSON_FIELDS = {
    "name",
    "rule",
    "user",
    "file",
    "archive_path",
    "size",
    "sha256",
    "status",
    "received",
    "created",
    "started",
    "ended",
    "execution_time",
}


class Clock:
    """
    A settable stand-in for C{time.time}.
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def upload(rule: str = "EPCIS", name: str = "order.xml", user: str = "acme"):
    return ArchivedUpload(
        user=user,
        rule=rule,
        name=name,
        archive_path=Path("/srv/archive") / rule / name,
        size=42,
        sha256="ab" * 32,
        received=1_699_999_999.5,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock):
    store = TaskStore(tmp_path / "tasks.sqlite3", clock=clock)
    yield store
    store.close()


def test_create_records_a_queued_task(store: TaskStore) -> None:
    """
    A new task is QUEUED and keeps everything about the upload.
    """
    created = store.create(upload())
    task = store.get(created.name)
    assert task is not None
    assert task.status is TaskStatus.QUEUED
    assert (task.rule, task.user, task.file) == ("EPCIS", "acme", "order.xml")
    assert task.archive_path == "/srv/archive/EPCIS/order.xml"
    assert (task.size, task.sha256) == (42, "ab" * 32)
    assert task.received == 1_699_999_999.5
    assert task.started is None and task.ended is None
    assert len(task.name) == 32


def test_task_names_are_unique(store: TaskStore) -> None:
    """
    Every upload gets a task of its own, even for the same file name.
    """
    names = {store.create(upload()).name for _ in range(20)}
    assert len(names) == 20


def test_life_of_a_finished_task(store: TaskStore, clock: Clock) -> None:
    """
    QUEUED, then RUNNING with a start time, then FINISHED with an end time
    and the seconds it ran.
    """
    name = store.create(upload()).name
    clock.now += 5
    store.mark_running(name)
    assert store.get(name).status is TaskStatus.RUNNING
    clock.now += 2.5
    store.finish(name)
    task = store.get(name)
    assert task.status is TaskStatus.FINISHED
    assert task.started == 1_700_000_005.0
    assert task.ended == 1_700_000_007.5
    assert task.execution_time == pytest.approx(2.5)


def test_fail_with_a_reason_writes_an_error_message(store: TaskStore) -> None:
    """
    Failing a task can give the reason, which becomes its ERROR message.
    """
    name = store.create(upload()).name
    store.fail(name, "The rule no longer exists.")
    task = store.get(name)
    assert task.status is TaskStatus.FAILED
    assert [(m.level, m.text) for m in task.messages] == [
        ("ERROR", "The rule no longer exists.")
    ]
    assert task.execution_time is None


def test_ended_tasks_do_not_change_again(store: TaskStore) -> None:
    """
    A FINISHED or FAILED task cannot be run, finished or failed again, and a
    task that never ran cannot finish.
    """
    queued = store.create(upload()).name
    with pytest.raises(TaskStoreError, match="RUNNING"):
        store.finish(queued)
    store.fail(queued)
    with pytest.raises(TaskStoreError, match="FAILED"):
        store.mark_running(queued)
    with pytest.raises(TaskStoreError):
        store.fail(queued)
    assert store.get(queued).status is TaskStatus.FAILED


def test_unknown_tasks(store: TaskStore) -> None:
    """
    Asking about a task that does not exist says so.
    """
    assert store.get("nope") is None
    with pytest.raises(UnknownTaskError):
        store.mark_running("nope")
    with pytest.raises(UnknownTaskError):
        store.add_message("nope", "INFO", "hello")


def test_messages_keep_their_order_and_level(store: TaskStore) -> None:
    """
    Messages come back oldest first with their level; unknown levels are
    refused.
    """
    name = store.create(upload()).name
    store.add_message(name, "INFO", "first")
    store.add_message(name, "WARNING", "second")
    store.add_message(name, "DEBUG", "third")
    assert [(m.level, m.text) for m in store.get(name).messages] == [
        ("INFO", "first"),
        ("WARNING", "second"),
        ("DEBUG", "third"),
    ]
    with pytest.raises(ValueError):
        store.add_message(name, "LOUD", "no")


def test_list_filters_and_orders(store: TaskStore, clock: Clock) -> None:
    """
    The list shows the newest tasks first, by rule and status, up to the
    limit, without messages.
    """
    names = []
    for rule in ("EPCIS", "Other", "EPCIS", "EPCIS"):
        clock.now += 1
        names.append(store.create(upload(rule=rule)).name)
    store.fail(names[2], "bad")

    assert [t.name for t in store.list()] == names[::-1]
    assert [t.name for t in store.list(rule="EPCIS")] == [names[3], names[2], names[0]]
    assert [t.name for t in store.list(status="FAILED")] == [names[2]]
    assert [t.name for t in store.list(rule="EPCIS", status=TaskStatus.QUEUED)] == [
        names[3],
        names[0],
    ]
    assert [t.name for t in store.list(limit=2)] == [names[3], names[2]]
    assert store.list(status="FAILED")[0].messages == ()


def test_interrupted_finds_queued_and_running_oldest_first(
    store: TaskStore, clock: Clock
) -> None:
    """
    Crash recovery finds the tasks that had not ended, oldest first.
    """
    names = []
    for _ in range(4):
        clock.now += 1
        names.append(store.create(upload()).name)
    store.mark_running(names[1])
    store.mark_running(names[2])
    store.finish(names[2])
    store.fail(names[3])
    interrupted = store.interrupted()
    assert [t.name for t in interrupted] == [names[0], names[1]]
    assert [t.status for t in interrupted] == [TaskStatus.QUEUED, TaskStatus.RUNNING]


def test_a_running_task_can_restart(store: TaskStore, clock: Clock) -> None:
    """
    A task left RUNNING by a crash can be marked RUNNING again, with a new
    start time.
    """
    name = store.create(upload()).name
    store.mark_running(name)
    clock.now += 60
    store.mark_running(name)
    assert store.get(name).started == clock.now


def test_to_json_has_stable_fields(store: TaskStore, clock: Clock) -> None:
    """
    The JSON form has exactly the documented fields, times in ISO 8601 UTC,
    and messages only when asked for.
    """
    name = store.create(upload()).name
    store.add_message(name, "INFO", "hello")
    task = store.get(name)
    data = task.to_json()
    assert set(data) == JSON_FIELDS
    assert data["status"] == "QUEUED"
    assert data["created"] == "2023-11-14T22:13:20+00:00"
    assert data["started"] is None
    full = task.to_json(messages=True)
    assert set(full) == JSON_FIELDS | {"messages"}
    assert full["messages"] == [
        {"level": "INFO", "text": "hello", "time": "2023-11-14T22:13:20+00:00"}
    ]


def test_tasks_survive_reopening(tmp_path: Path) -> None:
    """
    What the store recorded is there after it is closed and opened again.
    """
    path = tmp_path / "tasks.sqlite3"
    first = TaskStore(path)
    name = first.create(upload()).name
    first.add_message(name, "INFO", "kept")
    first.close()
    second = TaskStore(path)
    assert [m.text for m in second.get(name).messages] == ["kept"]
    second.close()


def test_database_is_durable_and_versioned(tmp_path: Path) -> None:
    """
    The database uses WAL and records its schema version for migrations.
    """
    path = tmp_path / "tasks.sqlite3"
    TaskStore(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_only_progress_of_a_run_skips_the_fsync(store: TaskStore) -> None:
    """
    Recording a task commits with C{synchronous=FULL}; a run's progress
    written with C{durable=False} commits with C{NORMAL}, and the next
    durable write is FULL again (it also syncs the progress before it).
    """

    def synchronous() -> int:
        # 2 is FULL, 1 is NORMAL.
        return store._db.execute("PRAGMA synchronous").fetchone()[0]

    name = store.create(upload()).name
    assert synchronous() == 2
    store.mark_running(name, durable=False)
    store.add_message(name, "INFO", "halfway", durable=False)
    assert synchronous() == 1
    store.finish(name, durable=False)
    second = store.create(upload(name="second.xml")).name
    assert synchronous() == 2
    assert store.get(name).status is TaskStatus.FINISHED
    assert [m.text for m in store.get(name).messages] == ["halfway"]
    assert store.get(second).status is TaskStatus.QUEUED


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """
    A database from a newer version is not touched.
    """
    path = tmp_path / "tasks.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(TaskStoreError, match="newer"):
        TaskStore(path)


def test_no_database_is_created_when_not_asked(tmp_path: Path) -> None:
    """
    Opening with create=False says the database does not exist, and leaves
    no file behind.
    """
    path = tmp_path / "tasks.sqlite3"
    with pytest.raises(TaskStoreError, match="does not exist"):
        TaskStore(path, create=False)
    assert not path.exists()


def test_names_starting(store: TaskStore) -> None:
    """
    Tasks can be found by the first digits of their name.
    """
    name = store.create(upload(), name="abc123" + "0" * 26).name
    store.create(upload(), name="abd999" + "0" * 26)
    assert store.names_starting("abc") == [name]
    assert len(store.names_starting("ab")) == 2
    assert store.names_starting("%") == []


def test_threads_share_the_store(store: TaskStore) -> None:
    """
    Messages written from many threads at once are all kept.
    """
    name = store.create(upload()).name

    def write(number: int) -> None:
        for index in range(25):
            store.add_message(name, "INFO", f"{number}-{index}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.get(name).messages) == 200
