"""
Tests for pruning the archive, the task store and the quarantine, and for
the C{archive prune} admin command.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pytest

from quartet_sftpd.capture import ArchivedUpload
from quartet_sftpd.cli.archive import register
from quartet_sftpd.config import Settings
from quartet_sftpd.prune import parse_duration
from quartet_sftpd.tasks import TaskStore

DAY = 86400.0
NOW = time.time()


def age(path: Path, days: float) -> Path:
    moment = NOW - days * DAY
    os.utime(path, (moment, moment))
    return path


def archived(folder: Path, name: str, days: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"x" * 10)
    return age(path, days)


def record(store: TaskStore, path: Path, status: str) -> str:
    upload = ArchivedUpload("acme", "EPCIS", path.name, path, 10, "ab" * 32, NOW)
    name = store.create(upload).name
    if status in ("FINISHED", "FAILED"):
        store.mark_running(name)
        store.finish(name) if status == "FINISHED" else store.fail(name, "bad")
    return name


@pytest.fixture
def site(tmp_path: Path) -> Settings:
    """
    An archive with old and new files, tasks for some, and quarantined
    uploads, all aged as their names say.
    """
    settings = Settings(archive=tmp_path / "archive", db=tmp_path / "tasks.sqlite3")
    clock = iter([NOW - 100 * DAY, NOW - 100 * DAY, NOW - 1 * DAY])
    store = TaskStore(settings.db, clock=lambda: next(clock, NOW))
    rule = settings.archive / "EPCIS"
    old_done = archived(rule, "old-done.xml", 100)
    old_queued = archived(rule, "old-queued.xml", 100)
    new_done = archived(rule, "new-done.xml", 1)
    record(store, old_done, "FINISHED")
    record(store, old_queued, "QUEUED")
    record(store, new_done, "FINISHED")
    store.close()
    quarantine = settings.archive / ".partial"
    archived(quarantine, "aaa", 100)
    archived(quarantine, "aaa.json", 100)
    archived(quarantine, "bbb", 1)
    archived(quarantine, "bbb.json", 1)
    archived(settings.archive / ".staging", "in-progress", 100)
    return settings


def run(settings: Settings, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="quartet-sftpd")
    register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.handler(settings, args)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_prune_removes_only_what_is_old_and_ended(site: Settings, capsys) -> None:
    """
    Files and ended tasks older than the age go; a QUEUED task's file, newer
    files, staging and newer partials stay.
    """
    assert run(site, "archive", "prune", "--older-than", "90d") == 0
    out = capsys.readouterr().out
    assert "Removed 1 archived files (10 bytes), 1 tasks and 1 quarantined" in out
    assert names(site.archive / "EPCIS") == ["new-done.xml", "old-queued.xml"]
    assert names(site.archive / ".partial") == ["bbb", "bbb.json"]
    assert names(site.archive / ".staging") == ["in-progress"]
    store = TaskStore(site.db)
    remaining = sorted(Path(t.archive_path).name for t in store.list())
    store.close()
    assert remaining == ["new-done.xml", "old-queued.xml"]


def test_dry_run_lists_and_keeps_everything(site: Settings, capsys) -> None:
    before = names(site.archive / "EPCIS"), names(site.archive / ".partial")
    assert run(site, "archive", "prune", "--older-than", "90d", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "Would remove 1 archived files" in out
    assert str(site.archive / "EPCIS" / "old-done.xml") in out
    assert (names(site.archive / "EPCIS"), names(site.archive / ".partial")) == before


@pytest.mark.parametrize(
    "text, seconds",
    [("90d", 90 * DAY), ("12h", 43200), ("30m", 1800), ("45s", 45), ("2w", 14 * DAY)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_bare_number_is_refused_not_taken_as_seconds(site: Settings, capsys) -> None:
    """
    C{--older-than 90} would remove everything older than 90 seconds from
    an operator who meant days: it is refused, showing the form to use, and
    nothing is removed.
    """
    before = names(site.archive / "EPCIS"), names(site.archive / ".partial")
    with pytest.raises(SystemExit) as exit:
        run(site, "archive", "prune", "--older-than", "90")
    assert exit.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: argument --older-than: '90' has no unit: write 90d for days, or "
        "use s, m, h or w.\n"
    )
    assert (names(site.archive / "EPCIS"), names(site.archive / ".partial")) == before


@pytest.mark.parametrize("text", ["0d", "0s", "0.0h"])
def test_a_zero_age_is_refused(site: Settings, capsys, text: str) -> None:
    """
    An age of zero would remove every archived file and ended task: it is
    refused with a sentence showing the form to use, and nothing is removed.
    """
    before = names(site.archive / "EPCIS"), names(site.archive / ".partial")
    with pytest.raises(SystemExit) as exit:
        run(site, "archive", "prune", "--older-than", text)
    assert exit.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"error: argument --older-than: an age of {text!r} would remove "
        "everything, even what arrived a moment ago: give an age above zero, "
        "such as --older-than 90d.\n"
    )
    assert (names(site.archive / "EPCIS"), names(site.archive / ".partial")) == before


def test_archive_help_shows_the_whole_prune_line(
    site: Settings, capsys, monkeypatch
) -> None:
    """
    C{archive --help} on an 80-column terminal shows prune's help as a whole
    phrase on its line.
    """
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit:
        run(site, "archive", "--help")
    assert exit.value.code == 0
    assert (
        "\n    prune     remove old archived files, tasks and quarantined uploads\n"
        in capsys.readouterr().out
    )


def test_bad_duration_is_a_usage_error(site: Settings, capsys) -> None:
    with pytest.raises(SystemExit):
        run(site, "archive", "prune", "--older-than", "soon")
    assert "is not a duration" in capsys.readouterr().err
