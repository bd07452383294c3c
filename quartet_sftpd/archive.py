"""
The archive on disk: staging files, atomic commit, quarantine.

Layout under the archive root::

    <archive>/<rule folder>/<name>-<uuid>   completed uploads, mode 0640
    <archive>/.staging/<uuid>               uploads in progress (0600)
    <archive>/.partial/<uuid>               aborted uploads (quarantine)
    <archive>/.partial/<uuid>.json          what each aborted upload was

Staging lives on the archive's filesystem so that completing an upload is a
rename, never a copy: a file appears in a rule folder whole or not at all.
Everything that can block on a disk (fsync, rename, chown, hashing, removal)
runs in the archive's thread pool; only opening a staging file and writing
into it happen on the reactor thread, as plain page-cache writes.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from quartet_sftpd.digest import RunningDigest, hash_file
from quartet_sftpd.prune import prune_quarantine

_T = TypeVar("_T")

#: Longest name a POSIX filesystem takes for one path component, in bytes.
NAME_MAX = 255
#: `-` and a UUID in its 36-character text form.
_UUID_SUFFIX = 37
#: Uploads at least this large are fsynced and hashed at the same time, in
#: two threads of the pool; smaller ones in one trip to the pool, where a
#: second thread would cost more than the overlap saves.
PARALLEL_COMMIT = 8 << 20


def archive_name(name: str, unique: str) -> str:
    """
    The file name an upload gets in its rule folder: the client's name,
    shortened at a character boundary when needed so that the name with its
    unique suffix still fits in one path component.

    @param name: the client's file name (one component, already checked).
    @param unique: the unique suffix (a UUID in text form).
    """
    raw = name.encode("utf-8")[: NAME_MAX - _UUID_SUFFIX]
    return raw.decode("utf-8", "ignore") + "-" + unique


@dataclass(frozen=True)
class Committed:
    """
    Where a committed upload now is and what exactly it holds.
    """

    path: Path
    size: int
    sha256: str


class Archive:
    """
    Staging, commit and quarantine of uploads under one archive root.

    @ivar root: the archive folder.
    """

    _log = Logger()

    def __init__(
        self,
        root: Path,
        *,
        gid: int,
        file_mode: int = 0o640,
        quarantine: Path | None = None,
        staging: Path | None = None,
        threadpool: ThreadPool,
        reactor: Any,
    ) -> None:
        """
        @param root: the archive folder; created if missing.
        @param gid: unix group for archived files and rule folders.
        @param file_mode: mode of archived files.
        @param quarantine: folder for aborted uploads (default
            C{<root>/.partial}).
        @param staging: folder for uploads in progress, on the archive's
            filesystem (default C{<root>/.staging}); each server sharing an
            archive needs its own, since a starting server quarantines what
            it finds there.
        @param threadpool: where blocking disk work runs.
        @param reactor: the reactor that the thread pool reports back to.
        """
        self.root = root
        self.staging = staging or root / ".staging"
        self.quarantine = quarantine or root / ".partial"
        self._gid = gid
        self._file_mode = file_mode
        self._pool = threadpool
        self._reactor = reactor

    def _in_thread(self, f: Callable[..., _T], *args: Any) -> Deferred[_T]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def run_blocking(self, f: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """
        Run blocking work on a staging file in the archive's thread pool.

        @return: a Deferred firing with C{f(*args)}.
        """
        return self._in_thread(f, *args)

    def prepare(self) -> list[Path]:
        """
        Create the archive's own folders and quarantine any staging file left
        by a server that stopped without finishing it.  Blocking; called once
        at start, before the server listens.

        @return: the quarantined leftovers.
        """
        for folder, mode in ((self.root, 0o775), (self.staging, 0o700)):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, mode)
        self.quarantine.mkdir(parents=True, exist_ok=True)
        os.chmod(self.quarantine, 0o750)
        self._set_group(self.root)

        leftovers = []
        for entry in sorted(self.staging.iterdir()):
            size = entry.stat().st_size
            meta = {
                "reason": "found in staging at start: the server stopped "
                "before this upload was completed",
                "bytes_received": size,
            }
            self._quarantine_file(entry, meta)
            leftovers.append(entry)
            self._log.warn(
                "upload aborted: staging file {path} ({size} bytes) was left by "
                "an earlier run and is quarantined",
                path=str(entry),
                size=size,
            )
        return leftovers

    def _set_group(self, path: Path) -> None:
        if os.stat(path).st_gid != self._gid:
            os.chown(path, -1, self._gid)

    def rule_folder(self, folder: str) -> Path:
        """
        The archive folder of one rule folder name.
        """
        return self.root / folder

    def ensure_rule_folder(self, folder: str) -> None:
        """
        Create a rule's archive folder, group-owned and mode 0775, if missing.
        Blocking (a mkdir and a chown); safe to call often.
        """
        path = self.rule_folder(folder)
        try:
            path.mkdir(mode=0o775)
        except FileExistsError:
            return
        os.chmod(path, 0o775)
        self._set_group(path)
        self._log.info(
            "created archive folder {path} for rule folder {folder}",
            path=str(path),
            folder=folder,
        )

    def ensure_rule_folders(self, folders: list[str]) -> Deferred[None]:
        """
        Create the archive folders of several rules, in the thread pool.

        @return: a Deferred that fires with None when all exist.
        """

        def ensure_all() -> None:
            for folder in folders:
                self.ensure_rule_folder(folder)

        return self._in_thread(ensure_all)

    def open_staging(self) -> tuple[Path, int]:
        """
        Create a new, empty staging file.

        @return: its path and an open read-write file descriptor.
        @raise OSError: the staging folder is not writable or the disk full.
        """
        path = self.staging / str(uuid.uuid4())
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return path, fd

    def reopen_staging(self, path: Path) -> int:
        """
        Open an existing staging file again, to continue writing it.
        """
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def commit(
        self,
        staging: Path,
        fd: int | None,
        folder: str,
        name: str,
        size: int = 0,
        digest: RunningDigest | None = None,
    ) -> Deferred[Committed]:
        """
        Make a finished upload permanent: fsync its bytes, give it its group
        and mode, hash it, move it atomically into the rule's archive folder
        and fsync that folder, so that it survives a crash from the moment
        this fires.

        @param staging: the staging file.
        @param fd: its open descriptor, which this closes, or None.
        @param folder: the rule folder name.
        @param name: the client's file name.
        @param size: about how many bytes the file holds; from
            L{PARALLEL_COMMIT} on, the fsync and the hashing overlap.
        @param digest: the hash kept up while the upload arrived, if any;
            the commit waits for its work in progress and finishes it.
        @return: a Deferred firing with a L{Committed}, or failing with the
            L{OSError} that stopped it; on failure nothing is left in the
            rule folder and the staging file is still in place.
        """
        ready = digest.settled() if digest is not None else succeed(None)
        if size < PARALLEL_COMMIT:
            ready.addCallback(
                lambda _: self._in_thread(
                    self._commit, staging, fd, folder, name, digest
                )
            )
            return ready
        if fd is None:
            ready.addCallback(lambda _: self._in_thread(_open_to_read, staging))
        else:
            ready.addCallback(lambda _: fd)
        ready.addCallback(self._sync_and_hash, digest)
        ready.addCallback(
            lambda hashed: self._in_thread(self._place, staging, folder, name, *hashed)
        )
        return ready

    def _commit(
        self,
        staging: Path,
        fd: int | None,
        folder: str,
        name: str,
        digest: RunningDigest | None,
    ) -> Committed:
        if fd is None:
            fd = _open_to_read(staging)
        try:
            self._sync(fd)
            size, sha256 = self._own_and_hash(fd, digest)
        finally:
            os.close(fd)
        return self._place(staging, folder, name, size, sha256)

    def _sync_and_hash(
        self, fd: int, digest: RunningDigest | None
    ) -> Deferred[tuple[int, str]]:
        """
        fsync and hash a staging file in two threads at once, then close it.

        @return: a Deferred firing with its size and sha256, or failing with
            the first L{OSError}, once neither thread uses the descriptor.
        """
        both = DeferredList(
            [
                self._in_thread(self._sync, fd),
                self._in_thread(self._own_and_hash, fd, digest),
            ],
            consumeErrors=True,
        )

        def closed(results: list[tuple[bool, Any]]) -> Any:
            os.close(fd)
            for ok, result in results:
                if not ok:
                    return result
            return results[1][1]

        return both.addCallback(closed)

    def _sync(self, fd: int) -> None:
        """
        Flush a staging file's bytes to the disk.
        """
        os.fsync(fd)

    def _own_and_hash(self, fd: int, digest: RunningDigest | None) -> tuple[int, str]:
        os.fchown(fd, -1, self._gid)
        os.fchmod(fd, self._file_mode)
        return digest.finish(fd) if digest is not None else hash_file(fd)

    def _place(
        self, staging: Path, folder: str, name: str, size: int, digest: str
    ) -> Committed:
        """
        Move a synced staging file into its rule folder, durably.
        """
        self.ensure_rule_folder(folder)
        target = self.rule_folder(folder) / archive_name(name, str(uuid.uuid4()))
        os.rename(staging, target)
        _fsync_dir(target.parent)
        return Committed(target, size, digest)

    def quarantine_upload(
        self,
        staging: Path,
        fd: int | None,
        meta: dict[str, Any],
        *,
        keep_bytes: bool = True,
    ) -> Deferred[Path]:
        """
        Move an aborted or refused upload out of the way, with a JSON sidecar
        saying whose it was and why it stopped.

        The sidecar's C{bytes_kept} says how many bytes the quarantined file
        holds.  It is 0 when C{keep_bytes} is false (an upload the full disk
        stopped: its bytes would only keep the disk full) and also when the
        disk is too full to write even the sidecar: then the bytes are given
        up so that the record of what arrived can be written.

        @param staging: the staging file.
        @param fd: its open descriptor, which this closes, or None.
        @param meta: what to record (user, rule, name, reason...); the bytes
            received (unless given), the bytes kept and the time are added.
        @param keep_bytes: whether to keep the partial bytes.
        @return: a Deferred firing with the quarantined file's path, or
            failing with the L{OSError} that stopped the move (the staging
            file then stays, and L{prepare} quarantines it at the next start).
        """

        def move() -> Path:
            if fd is not None:
                os.close(fd)
            return self._quarantine_file(staging, meta, keep_bytes)

        return self._in_thread(move)

    def _quarantine_file(
        self, staging: Path, meta: dict[str, Any], keep_bytes: bool = True
    ) -> Path:
        target = self.quarantine / staging.name
        record = dict(meta)
        record.setdefault("bytes_received", staging.stat().st_size)
        now = time.time()
        record["quarantined"] = now
        record["quarantined_utc"] = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)
        )
        if not keep_bytes:
            os.truncate(staging, 0)
        record["bytes_kept"] = staging.stat().st_size
        sidecar = target.with_name(target.name + ".json")
        try:
            _write_json(sidecar, record)
        except OSError as error:
            if (
                error.errno not in (errno.ENOSPC, errno.EDQUOT)
                or not record["bytes_kept"]
            ):
                raise
            os.truncate(staging, 0)
            record["bytes_kept"] = 0
            _write_json(sidecar, record)
            self._log.warn(
                "the disk is too full to quarantine {path} with its bytes; kept "
                "only its record, {sidecar}",
                path=str(staging),
                sidecar=str(sidecar),
            )
        os.rename(staging, target)
        _fsync_dir(self.quarantine)
        return target

    def discard_staging(self, staging: Path, fd: int | None) -> Deferred[None]:
        """
        Remove a staging file whose bytes nobody needs (an empty upload the
        client removed again, for example).
        """

        def remove() -> None:
            if fd is not None:
                os.close(fd)
            try:
                os.unlink(staging)
            except FileNotFoundError:
                pass

        return self._in_thread(remove)

    def prune_quarantine(
        self, max_age: float, now: float | None = None
    ) -> Deferred[int]:
        """
        Remove quarantined uploads quarantined more than C{max_age} seconds
        ago, with their sidecars.  The age counts from the sidecar's writing
        (the file's own time is its last write, which may be much earlier);
        a file without a sidecar counts from its last write.  Sidecars left
        without their file are removed at the same age.

        @param max_age: seconds a quarantined upload is kept.
        @param now: the current POSIX time (default: the clock's).
        @return: a Deferred firing with the number of uploads removed.
        """

        def prune() -> int:
            limit = (now if now is not None else time.time()) - max_age
            return len(prune_quarantine(self.quarantine, limit))

        return self._in_thread(prune)

    def statvfs(self) -> os.statvfs_result:
        """
        The figures of the archive's filesystem (blocking, but a single call).
        """
        return os.statvfs(self.root)


def _open_to_read(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """
    Write a JSON record, readable by the server's user only like the bytes
    beside it, replacing any earlier (perhaps cut short) one.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _fsync_dir(path: Path) -> None:
    """
    fsync a folder so that a rename into it is durable.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as error:
        # Some filesystems refuse fsync on a folder; the rename is as
        # durable there as they can make it.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
