"""
The task store: one row per archived upload, and the messages its rule wrote.

A task is created QUEUED when an upload is archived, becomes RUNNING when its
rule starts, and ends FINISHED or FAILED.  The store is a SQLite file in WAL
mode, so the admin command can read it while the server writes.

Writes are durable (C{synchronous=FULL}: fsynced before they return) unless
a caller passes C{durable=False}, which the built-in engine does for the
progress of a rule run (RUNNING, its messages, its end).  Every write, durable
or not, survives the server being killed, since SQLite has handed it to the
operating system; a power cut may lose the non-durable writes made since the
last durable one, which leaves such a task QUEUED or RUNNING, and the next
start runs it again.  So a task the server reported as recorded always
survives, and the fsync that costs an upload's CLOSE most of its time is not
paid three more times for each rule run.

Every method blocks on disk I/O: call them from a thread pool (or from the
admin command), never from the reactor thread.  One connection is shared by
all threads and guarded by a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from quartet_sftpd.capture import ArchivedUpload


class TaskStatus(StrEnum):
    """
    Where a task is in its life.
    """

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    #: Not run: the same bytes came to the same rule before (policy skip or
    #: reject).
    DUPLICATE = "DUPLICATE"


#: Message levels, as quartet_capture names them.
MESSAGE_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class TaskStoreError(Exception):
    """
    The task database cannot be opened or a task cannot move to the state
    asked for; the message says why.
    """


class UnknownTaskError(TaskStoreError):
    """
    No task has the name given.
    """


@dataclass(frozen=True)
class TaskMessage:
    """
    One line a rule or the engine wrote about a task.

    @ivar level: one of L{MESSAGE_LEVELS}.
    @ivar text: the message, a full sentence.
    @ivar time: POSIX time it was written.
    """

    level: str
    text: str
    time: float

    def to_json(self) -> dict[str, Any]:
        """
        The message as a JSON-ready dict: C{level}, C{text}, C{time} (ISO 8601
        in UTC).
        """
        return {"level": self.level, "text": self.text, "time": _iso(self.time)}


@dataclass(frozen=True)
class Task:
    """
    A snapshot of one task as stored.

    @ivar name: unique name, 32 lowercase hex digits.
    @ivar file: the file name the client gave the upload.
    @ivar received: POSIX time of the client's CLOSE.
    @ivar created: POSIX time the task was recorded.
    @ivar started: POSIX time its rule last started, or L{None}.
    @ivar ended: POSIX time it finished or failed, or L{None}.
    @ivar execution_time: seconds from C{started} to C{ended}, or L{None}.
    @ivar messages: the task's messages, oldest first; empty unless the task
        was read with L{TaskStore.get}.
    """

    name: str
    rule: str
    user: str
    file: str
    archive_path: str
    size: int
    sha256: str
    status: TaskStatus
    received: float
    created: float
    started: float | None = None
    ended: float | None = None
    execution_time: float | None = None
    messages: tuple[TaskMessage, ...] = field(default=())

    def to_json(self, messages: bool = False) -> dict[str, Any]:
        """
        The task as a JSON-ready dict with stable field names: C{name},
        C{rule}, C{user}, C{file}, C{archive_path}, C{size}, C{sha256},
        C{status}, C{received}, C{created}, C{started}, C{ended} (times as ISO
        8601 strings in UTC, or null), C{execution_time} (seconds, or null)
        and, when C{messages} is true, C{messages}: a list of
        L{TaskMessage.to_json} dicts.
        """
        data: dict[str, Any] = {
            "name": self.name,
            "rule": self.rule,
            "user": self.user,
            "file": self.file,
            "archive_path": self.archive_path,
            "size": self.size,
            "sha256": self.sha256,
            "status": self.status.value,
            "received": _iso(self.received),
            "created": _iso(self.created),
            "started": _iso(self.started),
            "ended": _iso(self.ended),
            "execution_time": self.execution_time,
        }
        if messages:
            data["messages"] = [m.to_json() for m in self.messages]
        return data


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat()


# Each entry moves the schema one version up; PRAGMA user_version records how
# many have been applied.  Append new entries, never edit old ones.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE task (
        name TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        user TEXT NOT NULL,
        file TEXT NOT NULL,
        archive_path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        status TEXT NOT NULL,
        received REAL NOT NULL,
        created REAL NOT NULL,
        started REAL,
        ended REAL,
        execution_time REAL
    );
    CREATE INDEX task_created ON task (created);
    CREATE INDEX task_status ON task (status);
    CREATE INDEX task_rule ON task (rule, created);
    CREATE TABLE task_message (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task TEXT NOT NULL REFERENCES task (name),
        level TEXT NOT NULL,
        text TEXT NOT NULL,
        time REAL NOT NULL
    );
    CREATE INDEX task_message_task ON task_message (task, id);
    """,
    """
    CREATE INDEX task_duplicate ON task (rule, sha256, received);
    CREATE INDEX task_user ON task (user, rule, received);
    """,
)

SCHEMA_VERSION = len(_MIGRATIONS)

_TASK_COLUMNS = (
    "name, rule, user, file, archive_path, size, sha256, status, received, "
    "created, started, ended, execution_time"
)


class TaskStore:
    """
    Tasks and their messages in a SQLite file.

    @ivar path: the database file.
    """

    def __init__(
        self,
        path: Path,
        create: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """
        Open (and create or migrate) the task database.

        @param path: the database file.
        @param create: whether to create the file when it does not exist; the
            admin command passes L{False} so that it never leaves an empty
            database behind.
        @param clock: returns the current POSIX time.
        @raise TaskStoreError: the file does not exist and C{create} is false,
            cannot be opened, or was written by a newer version.
        """
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._durable = True
        if not create and not self.path.exists():
            raise TaskStoreError(
                f"the task database {self.path} does not exist yet; the server "
                "creates it when it starts."
            )
        try:
            self._db = sqlite3.connect(
                self.path, timeout=30.0, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as error:
            raise TaskStoreError(
                f"the task database {self.path} cannot be opened: {error}."
            ) from None

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise TaskStoreError(
                f"the task database {self.path} has schema version {version}, "
                f"newer than this program's {SCHEMA_VERSION}: upgrade "
                "quartet-sftpd or point `db` at another file."
            )
        for number in range(version, SCHEMA_VERSION):
            # executescript commits first, so wrap each step in its own
            # transaction and bump the version inside it.
            self._db.executescript(
                "BEGIN IMMEDIATE;"
                + _MIGRATIONS[number]
                + f"PRAGMA user_version = {number + 1}; COMMIT;"
            )

    @contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[None]:
        """
        Hold the lock and run the block in one write transaction, committed
        when the block ends and rolled back if it raises.

        @param durable: whether the commit waits for an fsync (see the module
            docstring).
        """
        with self._lock:
            if durable != self._durable:
                level = "FULL" if durable else "NORMAL"
                self._db.execute(f"PRAGMA synchronous={level}")
                self._durable = durable
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """
        Close the database; the store cannot be used afterwards.
        """
        with self._lock:
            self._db.close()

    def create(self, upload: ArchivedUpload, name: str | None = None) -> Task:
        """
        Record a QUEUED task for an archived upload.

        @param upload: the archived upload.
        @param name: the task's name; a fresh one when L{None}.
        @return: the new task.
        """
        task = Task(
            name=name or uuid.uuid4().hex,
            rule=upload.rule,
            user=upload.user,
            file=upload.name,
            archive_path=str(upload.archive_path),
            size=upload.size,
            sha256=upload.sha256,
            status=TaskStatus.QUEUED,
            received=upload.received,
            created=self._clock(),
        )
        with self._transaction():
            self._db.execute(
                f"INSERT INTO task ({_TASK_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task.name,
                    task.rule,
                    task.user,
                    task.file,
                    task.archive_path,
                    task.size,
                    task.sha256,
                    task.status.value,
                    task.received,
                    task.created,
                    None,
                    None,
                    None,
                ),
            )
        return task

    def mark_running(self, name: str, *, durable: bool = True) -> None:
        """
        Move a QUEUED task, or a RUNNING one interrupted by a restart, to
        RUNNING and note its start time.

        @param durable: whether to wait for an fsync (see the module docstring).
        @raise UnknownTaskError: no such task.
        @raise TaskStoreError: the task has already finished or failed.
        """
        self._transition(
            name,
            (TaskStatus.QUEUED, TaskStatus.RUNNING),
            "status = ?, started = ?, ended = NULL, execution_time = NULL",
            (TaskStatus.RUNNING.value, self._clock()),
            durable=durable,
        )

    def finish(self, name: str, *, durable: bool = True) -> None:
        """
        Mark a RUNNING task FINISHED.

        @param durable: whether to wait for an fsync (see the module docstring).
        @raise UnknownTaskError: no such task.
        @raise TaskStoreError: the task is not RUNNING.
        """
        self._end(name, TaskStatus.FINISHED, (TaskStatus.RUNNING,), durable=durable)

    def fail(
        self, name: str, reason: str | None = None, *, durable: bool = True
    ) -> None:
        """
        Mark a QUEUED or RUNNING task FAILED.

        @param reason: if given, added as an ERROR message in the same
            transaction.
        @param durable: whether to wait for an fsync (see the module docstring).
        @raise UnknownTaskError: no such task.
        @raise TaskStoreError: the task has already finished or failed.
        """
        self._end(
            name,
            TaskStatus.FAILED,
            (TaskStatus.QUEUED, TaskStatus.RUNNING),
            reason,
            durable=durable,
        )

    def _end(
        self,
        name: str,
        status: TaskStatus,
        allowed: Sequence[TaskStatus],
        reason: str | None = None,
        *,
        durable: bool,
    ) -> None:
        now = self._clock()
        self._transition(
            name,
            allowed,
            "status = ?, ended = ?, "
            "execution_time = CASE WHEN started IS NULL THEN NULL "
            "ELSE max(? - started, 0) END",
            (status.value, now, now),
            reason,
            durable=durable,
        )

    def _transition(
        self,
        name: str,
        allowed: Sequence[TaskStatus],
        assignments: str,
        values: tuple[Any, ...],
        reason: str | None = None,
        *,
        durable: bool = True,
    ) -> None:
        with self._transaction(durable):
            row = self._db.execute(
                "SELECT status FROM task WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise UnknownTaskError(f"there is no task named {name!r}.")
            if row[0] not in allowed:
                raise TaskStoreError(
                    f"task {name} is {row[0]}; only a task that is "
                    f"{' or '.join(allowed)} can change to that state."
                )
            self._db.execute(
                f"UPDATE task SET {assignments} WHERE name = ?", (*values, name)
            )
            if reason is not None:
                self._insert_message(name, "ERROR", reason)

    def add_message(
        self, name: str, level: str, text: str, *, durable: bool = True
    ) -> None:
        """
        Add a message to a task.

        @param level: one of L{MESSAGE_LEVELS}.
        @param durable: whether to wait for an fsync (see the module docstring).
        @raise ValueError: the level is not one of them.
        @raise UnknownTaskError: no such task.
        """
        if level not in MESSAGE_LEVELS:
            raise ValueError(f"message level must be one of {MESSAGE_LEVELS}.")
        with self._transaction(durable):
            self._insert_message(name, level, text)

    def _insert_message(self, name: str, level: str, text: str) -> None:
        try:
            self._db.execute(
                "INSERT INTO task_message (task, level, text, time) "
                "VALUES (?, ?, ?, ?)",
                (name, level, text, self._clock()),
            )
        except sqlite3.IntegrityError:
            raise UnknownTaskError(f"there is no task named {name!r}.") from None

    def get(self, name: str) -> Task | None:
        """
        One task with its messages.

        @return: the task, or L{None} if there is none of that name.
        """
        with self._lock:
            row = self._db.execute(
                f"SELECT {_TASK_COLUMNS} FROM task WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                return None
            messages = self._db.execute(
                "SELECT level, text, time FROM task_message WHERE task = ? ORDER BY id",
                (name,),
            ).fetchall()
        return _task(row, tuple(TaskMessage(*m) for m in messages))

    def names_starting(self, prefix: str, limit: int = 2) -> list[str]:
        """
        Names of tasks that start with C{prefix}, so that an admin can type
        only the first digits of a name.

        @param limit: at most this many names.
        """
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self._lock:
            rows = self._db.execute(
                "SELECT name FROM task WHERE name LIKE ? ESCAPE '\\' "
                "ORDER BY name LIMIT ?",
                (pattern + "%", limit),
            ).fetchall()
        return [name for (name,) in rows]

    def list(
        self,
        rule: str | None = None,
        status: TaskStatus | str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """
        The newest tasks, without their messages.

        @param rule: only tasks of this rule.
        @param status: only tasks in this state.
        @param limit: at most this many.
        @return: tasks, newest first.
        """
        where, values = _filters(rule=rule, status=status)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_TASK_COLUMNS} FROM task {where} "
                "ORDER BY created DESC, rowid DESC LIMIT ?",
                (*values, limit),
            ).fetchall()
        return [_task(row) for row in rows]

    def requeue(self, name: str, note: str) -> None:
        """
        Put a FAILED task back in the queue, as an operator's retry does: its
        times are cleared, its messages kept, and C{note} added to them.  The
        running server picks it up at its next refresh.

        @raise UnknownTaskError: no such task.
        @raise TaskStoreError: the task is not FAILED.
        """
        self._transition(
            name,
            (TaskStatus.FAILED,),
            "status = ?, started = NULL, ended = NULL, execution_time = NULL",
            (TaskStatus.QUEUED.value,),
        )
        self.add_message(name, "INFO", note)

    def find_duplicate(self, name: str, since: float) -> Task | None:
        """
        The newest other task of the same rule with the same bytes, received
        at or after C{since}, that was not itself refused: a FAILED or
        DUPLICATE task does not count, so sending the same bytes again after
        a failure is a retry, not a duplicate.

        @param name: the task whose bytes are looked for.
        """
        with self._lock:
            row = self._db.execute(
                f"SELECT {_TASK_COLUMNS} FROM task WHERE name != ? AND "
                "(rule, sha256) = (SELECT rule, sha256 FROM task WHERE name = ?) "
                "AND received >= ? AND status NOT IN (?, ?) "
                "ORDER BY received DESC, rowid DESC LIMIT 1",
                (
                    name,
                    name,
                    since,
                    TaskStatus.FAILED.value,
                    TaskStatus.DUPLICATE.value,
                ),
            ).fetchone()
        return None if row is None else _task(row)

    def mark_duplicate(self, name: str, note: str) -> None:
        """
        End a QUEUED task as DUPLICATE, with C{note} as an INFO message.

        @raise TaskStoreError: the task is not QUEUED.
        """
        now = self._clock()
        self._transition(
            name,
            (TaskStatus.QUEUED,),
            "status = ?, ended = ?",
            (TaskStatus.DUPLICATE.value, now),
        )
        self.add_message(name, "INFO", note)

    def of_user(
        self, user: str, rule: str, since: float, limit: int = 1000
    ) -> list[Task]:
        """
        One user's tasks in one rule received at or after C{since}, with
        their messages, newest first.
        """
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_TASK_COLUMNS} FROM task WHERE user = ? AND rule = ? "
                "AND received >= ? ORDER BY received DESC, rowid DESC LIMIT ?",
                (user, rule, since, limit),
            ).fetchall()
        return [self.get(row[0]) or _task(row) for row in rows]

    def queued(self) -> list[str]:
        """
        The names of the QUEUED tasks, oldest first.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT name FROM task WHERE status = ? ORDER BY created, rowid",
                (TaskStatus.QUEUED.value,),
            ).fetchall()
        return [name for (name,) in rows]

    def ended_before(self, moment: float) -> list[Task]:
        """
        The ended tasks (FINISHED, FAILED, DUPLICATE) created before
        C{moment}, oldest first.
        """
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_TASK_COLUMNS} FROM task WHERE status IN (?, ?, ?) "
                "AND created < ? ORDER BY created, rowid",
                (
                    TaskStatus.FINISHED.value,
                    TaskStatus.FAILED.value,
                    TaskStatus.DUPLICATE.value,
                    moment,
                ),
            ).fetchall()
        return [_task(row) for row in rows]

    def open_archive_paths(self) -> set[str]:
        """
        The archive paths of tasks still QUEUED or RUNNING, which must stay.
        """
        return {task.archive_path for task in self.interrupted()}

    def delete(self, names: Sequence[str]) -> None:
        """
        Remove tasks and their messages.
        """
        with self._transaction():
            for name in names:
                self._db.execute("DELETE FROM task_message WHERE task = ?", (name,))
                self._db.execute("DELETE FROM task WHERE name = ?", (name,))

    def interrupted(self) -> list[Task]:
        """
        Tasks left QUEUED or RUNNING, as a crash or a stop leaves them.

        @return: those tasks, oldest first.
        """
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_TASK_COLUMNS} FROM task WHERE status IN (?, ?) "
                "ORDER BY created, rowid",
                (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value),
            ).fetchall()
        return [_task(row) for row in rows]


def _filters(**conditions: Any) -> tuple[str, tuple[Any, ...]]:
    clauses = [f"{column} = ?" for column, value in conditions.items() if value]
    values = tuple(str(value) for value in conditions.values() if value)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), values


def _task(row: Sequence[Any], messages: tuple[TaskMessage, ...] = ()) -> Task:
    values = list(row)
    values[7] = TaskStatus(values[7])
    return Task(*values, messages=messages)


class TaskLog:
    """
    One task's message sink, handed to the steps of its rule.

    Blocking, like the store: steps call it from the rule's thread.  Its
    messages are progress of a run, written without waiting for an fsync
    (see the module docstring).

    @ivar name: the task's name.
    """

    def __init__(self, store: TaskStore, name: str) -> None:
        self.name = name
        self._store = store

    def add_message(self, level: str, text: str) -> None:
        """
        Add a message to the task; see L{TaskStore.add_message}.
        """
        self._store.add_message(self.name, level, text, durable=False)


__all__ = [
    "MESSAGE_LEVELS",
    "SCHEMA_VERSION",
    "Task",
    "TaskLog",
    "TaskMessage",
    "TaskStatus",
    "TaskStore",
    "TaskStoreError",
    "UnknownTaskError",
]
