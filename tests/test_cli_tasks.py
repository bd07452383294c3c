"""
Tests for the C{tasks} admin command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from quartet_sftpd.capture import ArchivedUpload
from quartet_sftpd.cli import tasks as cli_tasks
from quartet_sftpd.cli.tasks import register
from quartet_sftpd.config import Settings
from quartet_sftpd.tasks import TaskStore

FIELDS = {
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
    def __init__(self) -> None:
        self.now = 1_714_563_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def upload(rule: str, name: str, size: int = 10) -> ArchivedUpload:
    return ArchivedUpload(
        user="acme",
        rule=rule,
        name=name,
        archive_path=Path("/srv/archive") / rule / name,
        size=size,
        sha256="cd" * 32,
        received=1_714_562_999.0,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(db=tmp_path / "tasks.sqlite3")


@pytest.fixture
def names(settings: Settings) -> dict[str, str]:
    """
    Three tasks: one finished, one failed, one queued (newest).
    """
    store = TaskStore(settings.db, clock=Clock())
    finished = store.create(upload("EPCIS", "order.xml", 1234)).name
    store.mark_running(finished)
    store.add_message(finished, "INFO", "ObjectEvent count: 1")
    store.finish(finished)
    failed = store.create(upload("EPCIS", "broken.xml")).name
    store.mark_running(failed)
    store.fail(failed, "Step 'Well-formed' failed: the file is empty.")
    queued = store.create(upload("Invoices", "inv.csv")).name
    store.close()
    return {"finished": finished, "failed": failed, "queued": queued}


def run(settings: Settings, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="quartet-sftpd")
    register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.handler(settings, args)


def test_list_prints_a_table_newest_first(settings, names, capsys) -> None:
    """
    The table has a header and one row per task, newest first.
    """
    assert run(settings, "tasks", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "RULE",
        "STATUS",
        "USER",
        "FILE",
        "SIZE",
        "CREATED",
        "(UTC)",
    ]
    assert [line.split()[0] for line in lines[1:]] == [
        names["queued"],
        names["failed"],
        names["finished"],
    ]
    assert lines[3].split()[1:6] == ["EPCIS", "FINISHED", "acme", "order.xml", "1234"]
    assert lines[3].split()[6] == "2024-05-01"


def test_list_filters(settings, names, capsys) -> None:
    """
    --rule, --status (any case) and --limit narrow the list.
    """
    run(settings, "tasks", "list", "--rule", "Invoices")
    assert names["queued"] in capsys.readouterr().out
    run(settings, "tasks", "list", "--status", "failed")
    out = capsys.readouterr().out
    assert names["failed"] in out and names["finished"] not in out
    run(settings, "tasks", "list", "--limit", "1")
    assert len(capsys.readouterr().out.splitlines()) == 2
    run(settings, "tasks", "list", "--rule", "Nothing")
    assert capsys.readouterr().out == "No tasks.\n"


def test_list_refuses_bad_options(settings, names) -> None:
    """
    An unknown status or a limit below 1 is a usage error.
    """
    with pytest.raises(SystemExit):
        run(settings, "tasks", "list", "--status", "DONE")
    with pytest.raises(SystemExit):
        run(settings, "tasks", "list", "--limit", "0")


def test_list_json(settings, names, capsys) -> None:
    """
    --json prints an array of task objects with the documented fields, each
    with its messages, so that a script learns every outcome in one call.
    """
    assert run(settings, "tasks", "list", "--json") == 0
    tasks = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in tasks] == [
        names["queued"],
        names["failed"],
        names["finished"],
    ]
    assert all(set(t) == FIELDS | {"messages"} for t in tasks)
    assert tasks[2]["status"] == "FINISHED"
    assert tasks[2]["size"] == 1234
    assert tasks[2]["execution_time"] == pytest.approx(2.0)
    assert tasks[2]["messages"][0]["text"] == "ObjectEvent count: 1"
    assert tasks[1]["messages"][-1]["level"] == "ERROR"


def test_show_prints_fields_and_messages(settings, names, capsys) -> None:
    """
    show prints every field and the task's messages.
    """
    assert run(settings, "tasks", "show", names["failed"]) == 0
    out = capsys.readouterr().out
    assert f"Name:           {names['failed']}" in out
    assert "Status:         FAILED" in out
    assert "SHA-256:        " + "cd" * 32 in out
    assert "ERROR    Step 'Well-formed' failed: the file is empty." in out


def test_show_json_includes_messages(settings, names, capsys) -> None:
    """
    show --json prints one task object with its messages.
    """
    assert run(settings, "tasks", "show", names["finished"], "--json") == 0
    task = json.loads(capsys.readouterr().out)
    assert set(task) == FIELDS | {"messages"}
    assert task["messages"][0]["level"] == "INFO"
    assert task["messages"][0]["text"] == "ObjectEvent count: 1"


def test_show_accepts_a_unique_prefix(settings, names, capsys) -> None:
    """
    The first digits of a name are enough when only one task has them.
    """
    others = [n for k, n in names.items() if k != "queued"]
    length = 8
    while any(n.startswith(names["queued"][:length]) for n in others):
        length += 1
    prefix = names["queued"][:length]
    assert run(settings, "tasks", "show", prefix) == 0
    assert names["queued"] in capsys.readouterr().out


def test_show_unknown_task(settings, names, capsys) -> None:
    """
    An unknown name prints an error on stderr and exits 1.
    """
    assert run(settings, "tasks", "show", "zzzz") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "there is no task named 'zzzz'" in captured.err


def test_missing_database(settings, capsys) -> None:
    """
    Before the server has ever run there is no database; the command says
    so and exits 1 without creating one.
    """
    assert run(settings, "tasks", "list") == 1
    assert "does not exist yet" in capsys.readouterr().err
    assert not settings.db.exists()


def test_the_admin_command_has_tasks(settings, names, capsys) -> None:
    """
    quartet-sftpd tasks list works through the real admin command.
    """
    from quartet_sftpd.cli import main

    assert main(["--db", str(settings.db), "tasks", "list", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_retry_requeues_a_failed_task(settings, names, capsys) -> None:
    """
    retry moves a FAILED task back to QUEUED, keeps its messages and adds
    one saying an operator queued it again.
    """
    assert run(settings, "tasks", "retry", names["failed"][:10]) == 0
    assert "is queued again" in capsys.readouterr().out
    store = TaskStore(settings.db)
    task = store.get(names["failed"])
    store.close()
    assert task is not None
    assert task.status == "QUEUED"
    assert task.started is None and task.ended is None
    texts = [m.text for m in task.messages]
    assert "Step 'Well-formed' failed: the file is empty." in texts
    assert texts[-1] == "Queued again by an operator (tasks retry)."


@pytest.mark.parametrize("which", ["finished", "queued"])
def test_retry_refuses_a_task_that_did_not_fail(settings, names, capsys, which) -> None:
    """
    Only a FAILED task can be retried; the refusal is one sentence naming
    the task's status.
    """
    assert run(settings, "tasks", "retry", names[which]) == 1
    assert capsys.readouterr().err == (
        f"quartet-sftpd: error: task {names[which]} is {which.upper()}; "
        "only a FAILED task can be retried.\n"
    )


class RetriedMeanwhile(TaskStore):
    """
    A task store in which another operator's retry queues the task between
    the command's read of it and its own retry.
    """

    def requeue(self, name: str, note: str) -> None:
        super().requeue(name, "Queued again by another operator.")
        super().requeue(name, note)


def test_retry_of_a_task_retried_meanwhile(
    settings, names, capsys, monkeypatch
) -> None:
    """
    A task that stops being FAILED while the command runs is refused in the
    same sentence, naming the status it has now.
    """
    monkeypatch.setattr(cli_tasks, "TaskStore", RetriedMeanwhile)
    assert run(settings, "tasks", "retry", names["failed"]) == 1
    assert capsys.readouterr().err == (
        f"quartet-sftpd: error: task {names['failed']} is QUEUED; "
        "only a FAILED task can be retried.\n"
    )


def test_retry_wait_reports_when_no_server_runs_it(settings, names, capsys) -> None:
    assert run(settings, "tasks", "retry", names["failed"], "--wait", "0.3") == 1
    assert (
        "has not ended after 0.3 s; is the server running?" in capsys.readouterr().err
    )
