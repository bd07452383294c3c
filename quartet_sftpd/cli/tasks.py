"""
The C{tasks} admin command: what happened to each upload.

    quartet-sftpd tasks list [--rule R] [--status S] [--limit N] [--json]
    quartet-sftpd tasks show NAME [--json]
    quartet-sftpd tasks retry NAME [--wait SECONDS]

C{list} prints the newest tasks first as a table (name, rule, status, user,
file, size, created in UTC).  C{show} prints one task with its messages.
C{retry} puts a FAILED task back in the queue, and the running server runs
its rule again on the archived bytes.  NAME may be shortened to any prefix
that only one task has.

With C{--json}, C{list} prints a JSON array of task objects and C{show} one
task object.  These field names are stable:

  - C{name}: the task's name (32 hex digits).
  - C{rule}: the rule the file was uploaded to.
  - C{user}: the SFTP user who uploaded it.
  - C{file}: the file name the client gave it.
  - C{archive_path}: where the archived bytes are.
  - C{size}: bytes.
  - C{sha256}: hex SHA-256 digest of the archived bytes.
  - C{status}: C{QUEUED}, C{RUNNING}, C{FINISHED} or C{FAILED}.
  - C{received}, C{created}, C{started}, C{ended}: ISO 8601 times in UTC
    (the client's CLOSE, the task's record, its rule's last start, its end);
    C{started} and C{ended} are null until they happen.
  - C{execution_time}: seconds from start to end, or null.
  - C{messages}: a list of objects with C{level} (C{DEBUG}, C{INFO},
    C{WARNING} or C{ERROR}), C{text} and C{time}, oldest first.

Exit status: 0 on success; 1 if the task is unknown or the task database
cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from quartet_sftpd.config import Settings
from quartet_sftpd.tasks import Task, TaskStatus, TaskStore, TaskStoreError

_STATUSES = [status.value for status in TaskStatus]


def register(subparsers: Any) -> None:
    """
    Add the C{tasks} command and its sub-commands.

    @param subparsers: what C{ArgumentParser.add_subparsers} returned.
    """
    parser = subparsers.add_parser(
        "tasks",
        help="list capture tasks and show their messages",
        description="List capture tasks and show what their rules reported.",
    )
    commands = parser.add_subparsers(dest="tasks_command", metavar="COMMAND")
    commands.required = True

    listing = commands.add_parser("list", help="list the newest tasks")
    listing.add_argument("--rule", help="only tasks of this rule")
    listing.add_argument(
        "--status",
        type=str.upper,
        choices=_STATUSES,
        help="only tasks in this state",
    )
    listing.add_argument(
        "--limit",
        type=_positive,
        default=50,
        help="at most this many tasks (default: %(default)s)",
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=list_tasks)

    show = commands.add_parser("show", help="show one task and its messages")
    show.add_argument("name", metavar="NAME", help="the task's name or a prefix of it")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=show_task)

    retry = commands.add_parser(
        "retry", help="run a FAILED task's rule again on its archived bytes"
    )
    retry.add_argument("name", metavar="NAME", help="the task's name or a prefix of it")
    retry.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait up to this long for the outcome and print it",
    )
    retry.set_defaults(handler=retry_task)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return value


def _streams(args: argparse.Namespace) -> tuple[TextIO, TextIO]:
    return (
        getattr(args, "stdout", None) or sys.stdout,
        getattr(args, "stderr", None) or sys.stderr,
    )


def _open(settings: Settings, stderr: TextIO) -> TaskStore | None:
    try:
        return TaskStore(settings.db, create=False)
    except TaskStoreError as error:
        stderr.write(f"quartet-sftpd: error: {error}\n")
        return None


def list_tasks(settings: Settings, args: argparse.Namespace) -> int:
    """
    Print the newest tasks, as a table or as JSON.

    @return: the exit status.
    """
    stdout, stderr = _streams(args)
    store = _open(settings, stderr)
    if store is None:
        return 1
    try:
        tasks = store.list(rule=args.rule, status=args.status, limit=args.limit)
        if args.json:
            # Scripts want each task's outcome in one call, messages included.
            tasks = [store.get(task.name) or task for task in tasks]
    finally:
        store.close()
    if args.json:
        json.dump([task.to_json(messages=True) for task in tasks], stdout, indent=2)
        stdout.write("\n")
    elif not tasks:
        stdout.write("No tasks.\n")
    else:
        stdout.write(_table(tasks))
    return 0


def show_task(settings: Settings, args: argparse.Namespace) -> int:
    """
    Print one task with its messages, as text or as JSON.

    @return: the exit status: 1 if no task, or more than one, matches.
    """
    stdout, stderr = _streams(args)
    store = _open(settings, stderr)
    if store is None:
        return 1
    try:
        task = _find(store, args.name, stderr)
    finally:
        store.close()
    if task is None:
        return 1
    if args.json:
        json.dump(task.to_json(messages=True), stdout, indent=2)
        stdout.write("\n")
    else:
        stdout.write(_details(task))
    return 0


def _find(store: TaskStore, name: str, stderr: TextIO) -> Task | None:
    """
    The one task whose name is, or starts with, C{name}; None (with a
    message on C{stderr}) when none or several match.
    """
    names = [name] if store.get(name) else store.names_starting(name)
    if len(names) == 1:
        return store.get(names[0])
    if names:
        stderr.write(
            f"quartet-sftpd: error: more than one task starts with {name!r}; "
            "give more of its name.\n"
        )
    else:
        stderr.write(
            f"quartet-sftpd: error: there is no task named {name!r}; "
            "`quartet-sftpd tasks list` shows the task names.\n"
        )
    return None


def retry_task(settings: Settings, args: argparse.Namespace) -> int:
    """
    Put a FAILED task back in the queue; the running server runs its rule
    again on the archived bytes at its next refresh (C{reload_interval}).

    @return: the exit status: 1 if the task is unknown or not FAILED, or
        (with C{--wait}) if it did not finish in time or failed again.
    """
    stdout, stderr = _streams(args)
    store = _open(settings, stderr)
    if store is None:
        return 1
    try:
        task = _find(store, args.name, stderr)
        if task is None:
            return 1
        if task.status is not TaskStatus.FAILED:
            stderr.write(_not_failed(task))
            return 1
        try:
            store.requeue(task.name, "Queued again by an operator (tasks retry).")
        except TaskStoreError:
            # It changed since it was read: another retry queued it, or a
            # prune removed it.  Say what it is now, as above.
            current = _find(store, task.name, stderr)
            if current is not None:
                stderr.write(_not_failed(current))
            return 1
        stdout.write(
            f"Task {task.name} is queued again; the running server runs rule "
            f"{task.rule} on {task.file} within {settings.reload_interval:g} s.\n"
        )
        if args.wait <= 0:
            return 0
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            current = store.get(task.name)
            if current is not None and current.status in (
                TaskStatus.FINISHED,
                TaskStatus.FAILED,
            ):
                stdout.write(_details(current))
                return 0 if current.status is TaskStatus.FINISHED else 1
            time.sleep(0.2)
        stderr.write(
            f"quartet-sftpd: error: task {task.name} has not ended after "
            f"{args.wait:g} s; is the server running?\n"
        )
        return 1
    finally:
        store.close()


def _not_failed(task: Task) -> str:
    """
    The refusal to retry a task that is not FAILED, as a line for stderr.
    """
    return (
        f"quartet-sftpd: error: task {task.name} is {task.status.value}; "
        "only a FAILED task can be retried.\n"
    )


_COLUMNS = ("NAME", "RULE", "STATUS", "USER", "FILE", "SIZE", "CREATED (UTC)")


def _table(tasks: list[Task]) -> str:
    rows = [_COLUMNS] + [
        (
            task.name,
            task.rule,
            task.status.value,
            task.user,
            task.file,
            str(task.size),
            _when(task.created),
        )
        for task in tasks
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column == 5 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _details(task: Task) -> str:
    fields = [
        ("Name", task.name),
        ("Rule", task.rule),
        ("Status", task.status.value),
        ("User", task.user),
        ("File", task.file),
        ("Archive path", task.archive_path),
        ("Size", f"{task.size} bytes"),
        ("SHA-256", task.sha256),
        ("Received", _when(task.received, " UTC")),
        ("Created", _when(task.created, " UTC")),
        ("Started", _when(task.started, " UTC")),
        ("Ended", _when(task.ended, " UTC")),
        (
            "Execution time",
            "-" if task.execution_time is None else f"{task.execution_time:.3f} s",
        ),
    ]
    width = max(len(label) for label, _ in fields) + 1
    lines = [f"{label + ':':<{width}} {value}" for label, value in fields]
    lines.append("")
    lines.append("Messages:" if task.messages else "Messages: none")
    for message in task.messages:
        text = message.text.replace("\n", "\n" + " " * 32)
        lines.append(f"  {_when(message.time)}  {message.level:<7}  {text}")
    return "\n".join(lines) + "\n"


def _when(moment: float | None, zone: str = "") -> str:
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S") + zone


__all__ = ["list_tasks", "register", "show_task"]
