"""
The C{archive} admin command: clean up what is old.

    quartet-sftpd archive prune --older-than 90d [--dry-run]

removes archived files last modified before then, tasks that ended and were
created before then (with their messages), and quarantined uploads older
than that.  Tasks still QUEUED or RUNNING, and their files, are kept.  With
C{--dry-run} it only lists what it would remove.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from quartet_sftpd.config import Settings
from quartet_sftpd.prune import parse_duration, prune_archive
from quartet_sftpd.tasks import TaskStore, TaskStoreError


def register(subparsers: Any) -> None:
    """
    Add the C{archive} command and its sub-commands.
    """
    parser = subparsers.add_parser(
        "archive",
        help="clean up old archived files, tasks and quarantined uploads",
        description="Clean up old archived files, tasks and quarantined uploads.",
    )
    commands = parser.add_subparsers(dest="archive_command", metavar="COMMAND")
    commands.required = True
    prune = commands.add_parser(
        "prune",
        help="remove old archived files, tasks and quarantined uploads",
        description="Remove archived files, ended tasks and quarantined uploads "
        "older than AGE; tasks still QUEUED or RUNNING, and their files, stay.",
    )
    prune.add_argument(
        "--older-than",
        required=True,
        type=_duration,
        metavar="AGE",
        help="a number with its unit: 90d (days), 12h, 30m, 3600s or 2w",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="only list what would be removed"
    )
    prune.set_defaults(handler=prune_command)


def _duration(text: str) -> float:
    """
    The seconds of an C{--older-than} age; the unit is required (see
    L{parse_duration}), and an age of zero, which would remove everything,
    is refused.

    @raise argparse.ArgumentTypeError: with a sentence naming the form to
        use.
    """
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"an age of {text!r} would remove everything, even what arrived a "
            "moment ago: give an age above zero, such as --older-than 90d."
        )
    return seconds


def prune_command(settings: Settings, args: argparse.Namespace) -> int:
    """
    Remove (or list, with C{--dry-run}) what is older than C{--older-than}.

    @return: the exit status: 1 if the task database cannot be opened.
    """
    stdout = getattr(args, "stdout", None) or sys.stdout
    stderr = getattr(args, "stderr", None) or sys.stderr
    try:
        store = TaskStore(settings.db, create=False)
    except TaskStoreError as error:
        stderr.write(f"quartet-sftpd: error: {error}\n")
        return 1
    cutoff = time.time() - args.older_than
    try:
        result = prune_archive(
            settings.archive, settings.quarantine_dir, store, cutoff, args.dry_run
        )
    finally:
        store.close()

    verb = "Would remove" if args.dry_run else "Removed"
    if args.dry_run:
        for path in result.archived + result.quarantined:
            stdout.write(f"{path}\n")
    stdout.write(
        f"{verb} {len(result.archived)} archived files ({result.bytes} bytes), "
        f"{len(result.tasks)} tasks and {len(result.quarantined)} quarantined "
        "uploads.\n"
    )
    return 0
