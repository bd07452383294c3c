"""
What each user has uploaded lately, as their SFTP clients need to see it.

Rule folders hold no real files: a completed upload is archived and handed to
its rule at once.  Clients still expect to see what they just wrote (paramiko
STATs right after CLOSE, rclone lists to verify, WinSCP renames its
C{.filepart} file and then sets its times), so each user sees, in each rule
folder, the names they uploaded recently, with their final size.  Other users
never see them.

An entry is in one of these states:

 - C{uploading}: open for writing in some session of the user;
 - C{staged}: a temporary name (C{*.filepart} and the like) that was closed
   and waits for the RENAME that completes it; it holds a staging file;
 - C{done}: completed, archived and handed to its rule;
 - C{partial}: aborted (the connection dropped); the bytes are in
   quarantine, and OpenSSH's C{reput} may continue them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quartet_sftpd.digest import RunningDigest

UPLOADING = "uploading"
STAGED = "staged"
DONE = "done"
PARTIAL = "partial"

Key = tuple[str, str, str]


@dataclass
class FileEntry:
    """
    One name in one user's view of a rule folder.

    @ivar path: the staging file (C{staged}) or quarantined file
        (C{partial}); None otherwise.
    @ivar task: the task name, for C{done} entries.
    @ivar digest: for C{staged} entries, the hash kept up while the upload
        arrived, which the RENAME that completes it finishes.
    """

    user: str
    folder: str
    rule: str
    name: str
    state: str
    size: int
    mtime: float
    permissions: int = 0o640
    path: Path | None = None
    task: str | None = None
    digest: RunningDigest | None = None
    since: float = field(default_factory=time.time)

    @property
    def key(self) -> Key:
        return (self.user, self.folder, self.name)

    def attrs(self) -> dict[str, int]:
        """
        SFTP attributes: a regular file of the entry's size.
        """
        return {
            "size": self.size,
            "permissions": 0o100000 | (self.permissions & 0o7777),
            "uid": 0,
            "gid": 0,
            "atime": int(self.mtime),
            "mtime": int(self.mtime),
        }


class UploadRegistry:
    """
    The recent uploads of every user, shared by all their sessions.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[Key, FileEntry] = {}

    def get(self, user: str, folder: str, name: str) -> FileEntry | None:
        """
        The entry of a name, or None.
        """
        return self._entries.get((user, folder, name))

    def put(self, entry: FileEntry) -> FileEntry | None:
        """
        Record an entry, replacing (and returning) any under the same name.
        """
        entry.since = self._clock()
        previous = self._entries.get(entry.key)
        self._entries[entry.key] = entry
        return previous

    def remove(self, entry: FileEntry) -> None:
        """
        Forget an entry, if it is still the one under its name.
        """
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]

    def listing(self, user: str, folder: str) -> list[FileEntry]:
        """
        The entries one user sees in one rule folder, by name.
        """
        found = [
            e for (u, f, _), e in self._entries.items() if u == user and f == folder
        ]
        return sorted(found, key=lambda e: e.name)

    def expired(self, ages: dict[str, float]) -> Iterator[FileEntry]:
        """
        Remove and yield the entries older than the age given for their
        state; states not in C{ages} never expire here.
        """
        now = self._clock()
        for entry in list(self._entries.values()):
            limit = ages.get(entry.state)
            if limit is not None and now - entry.since > limit:
                del self._entries[entry.key]
                yield entry

    def staged(self) -> list[FileEntry]:
        """
        Every staged entry, for shutdown.
        """
        return [e for e in self._entries.values() if e.state == STAGED]
