"""
Removing what is old: archived files, ended tasks and quarantined uploads.

Blocking functions for the admin command (C{quartet-sftpd archive prune}) and
the server's own periodic clean-up of the quarantine.  Nothing still needed
is ever removed: a task that is QUEUED or RUNNING keeps its archived file,
and the archive's own folders (C{.staging}, C{.partial}) are left to the
server, which owns the uploads in progress.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quartet_sftpd.tasks import TaskStore

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """
    Seconds in a duration such as C{90d}, C{12h}, C{30m}, C{45s} or C{2w}.
    The unit is required: a bare C{90} is refused rather than taken as
    seconds, since an operator who meant days would lose nearly everything.

    @raise ValueError: with a sentence, when the text is not a duration.
    """
    match = _DURATION.match(text.lower())
    if not match:
        raise ValueError(
            f"{text!r} is not a duration: write a number with s, m, h, d or w, "
            "such as 90d."
        )
    number, unit = match.groups()
    if not unit:
        raise ValueError(
            f"{text!r} has no unit: write {number}d for days, or use s, m, h or w."
        )
    return float(number) * _UNITS[unit]


@dataclass
class Pruned:
    """
    What a prune removed (or, in a dry run, would remove).
    """

    archived: list[Path] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    quarantined: list[Path] = field(default_factory=list)
    bytes: int = 0


def old_files(folder: Path, cutoff: float) -> Iterator[tuple[Path, int]]:
    """
    The regular files directly in C{folder} last modified before C{cutoff},
    with their sizes; a missing folder has none.
    """
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if entry.is_file(follow_symlinks=False) and info.st_mtime < cutoff:
            yield Path(entry.path), info.st_size


def prune_quarantine(folder: Path, cutoff: float, dry_run: bool = False) -> list[Path]:
    """
    Remove quarantined uploads (and their C{.json} sidecars) quarantined
    before C{cutoff}.  Age counts from the sidecar, written when the upload
    was quarantined (the file's own time is its last write, which may be
    much earlier); a file without a sidecar counts from its last write.
    Sidecars whose file is gone are removed at the same age.

    @return: the uploads removed (or, in a dry run, that would be).
    """
    removed = []
    for path, _ in old_files(folder, float("inf")):
        sidecar = path.with_name(path.name + ".json")
        if path.suffix == ".json":
            upload = path.with_name(path.name[: -len(".json")])
            if not upload.exists() and _older(path, cutoff) and not dry_run:
                path.unlink(missing_ok=True)
            continue
        if not _older(sidecar if sidecar.exists() else path, cutoff):
            continue
        if not dry_run:
            path.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def prune_archive(
    archive: Path,
    quarantine: Path,
    store: TaskStore,
    cutoff: float,
    dry_run: bool = False,
) -> Pruned:
    """
    Remove archived files and ended tasks from before C{cutoff}, and
    quarantined uploads older than it.

    @param archive: the archive folder; its rule folders are pruned.
    @param quarantine: the quarantine folder.
    @param store: the task store.
    @param cutoff: POSIX time; older things go.
    @param dry_run: only report what would go.
    """
    result = Pruned()
    keep = store.open_archive_paths()
    for folder in sorted(archive.iterdir()) if archive.is_dir() else []:
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        for path, size in old_files(folder, cutoff):
            if str(path) in keep:
                continue
            if not dry_run:
                path.unlink(missing_ok=True)
            result.archived.append(path)
            result.bytes += size

    tasks = store.ended_before(cutoff)
    result.tasks = [task.name for task in tasks]
    if not dry_run:
        store.delete(result.tasks)
    result.quarantined = prune_quarantine(quarantine, cutoff, dry_run)
    return result
