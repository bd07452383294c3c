"""
The path of an upload from OPEN to its rule: open, complete, stage, abort.

This is the one place that decides what becomes of bytes a client sent:

 - an explicit CLOSE of a complete upload under a final name commits it to
   the archive and submits it to the capture backend; the CLOSE is answered
   only after both succeeded;
 - an explicit CLOSE under a temporary name (C{*.filepart} and the like)
   stages it; the RENAME to a final name completes it;
 - anything else (a lost connection, a hole, a write error, a limit, server
   shutdown) aborts it into quarantine, with no task.

Nothing here runs a rule, and nothing here blocks the reactor: commits and
quarantines go to the archive's thread pool.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.conch.ssh.filetransfer import (
    FX_FAILURE,
    FX_FILE_ALREADY_EXISTS,
    FX_NO_SUCH_FILE,
    SFTPError,
)
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from quartet_sftpd.archive import Archive, Committed
from quartet_sftpd.capture import (
    ArchivedUpload,
    CaptureUnavailableError,
    ICaptureBackend,
    UploadRejected,
)
from quartet_sftpd.digest import RunningDigest
from quartet_sftpd.sftp.registry import (
    DONE,
    PARTIAL,
    STAGED,
    UPLOADING,
    FileEntry,
    UploadRegistry,
)
from quartet_sftpd.sftp.tree import Entry, check_name
from quartet_sftpd.sftp.upload import Upload, disk_error

if TYPE_CHECKING:
    from quartet_sftpd.metrics import Metrics

FXF_APPEND = 0x04
FXF_CREAT = 0x08
FXF_TRUNC = 0x10
FXF_EXCL = 0x20


class Intake:
    """
    Opens, completes, stages and aborts uploads for every session.
    """

    _log = Logger()

    def __init__(
        self,
        archive: Archive,
        backend: ICaptureBackend,
        registry: UploadRegistry,
        *,
        temp_patterns: tuple[str, ...],
        recent_visibility: float,
        staged_max_age: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.archive = archive
        self.backend = backend
        self.registry = registry
        self._temp_patterns = temp_patterns
        self._recent_visibility = recent_visibility
        self._staged_max_age = staged_max_age
        self._clock = clock
        self._in_flight: set[Deferred[Any]] = set()
        #: Where uploads are counted for the metrics endpoint, if anywhere.
        self.metrics: Metrics | None = None

    def is_temporary(self, name: str) -> bool:
        """
        Whether a name is one clients upload under and then rename.
        """
        return any(fnmatch.fnmatchcase(name, p) for p in self._temp_patterns)

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        """
        Remember work in progress, so that shutdown can wait for it.
        """
        self._in_flight.add(d)

        def done(result: Any) -> Any:
            self._in_flight.discard(d)
            return result

        d.addBoth(done)
        return d

    def open(
        self,
        user: str,
        entry: Entry,
        flags: int,
        *,
        max_size: int | None = None,
    ) -> Upload:
        """
        Open an upload for writing.

        Every OPEN gets a new, empty staging file: a client can never read or
        extend a file it uploaded before, with one exception that OpenSSH's
        C{reput} needs: opening without TRUNC the name of an upload that was
        cut off continues it from the bytes that arrived.

        @raise SFTPError: the name is not acceptable, or exists under EXCL.
        @raise OSError: the staging file could not be created.
        """
        check_name(entry.name, temporary=self.is_temporary(entry.name))
        existing = self.registry.get(user, entry.folder, entry.name)
        if flags & FXF_EXCL and existing is not None:
            raise SFTPError(
                FX_FILE_ALREADY_EXISTS,
                f"{entry.name} already exists in /{entry.folder}.",
            )
        if not flags & FXF_CREAT and existing is None:
            raise SFTPError(
                FX_NO_SUCH_FILE,
                f"{entry.name} does not exist in /{entry.folder}; open it with "
                "create to upload it.",
            )

        resumed = 0
        if existing is not None and existing.state == PARTIAL and not flags & FXF_TRUNC:
            staging, fd, resumed = self._resume(existing)
        else:
            if existing is not None and existing.state == STAGED:
                self._replace_staged(existing)
            try:
                staging, fd = self.archive.open_staging()
            except OSError as error:
                self._log.error(
                    "cannot create a staging file for {user}'s {name}: {error}",
                    user=user,
                    name=entry.name,
                    error=error.strerror,
                )
                raise disk_error(error, entry.name) from None

        upload = Upload(
            staging,
            fd,
            user=user,
            folder=entry.folder,
            rule=entry.rule,
            name=entry.name,
            append=bool(flags & FXF_APPEND),
            max_size=max_size,
            resumed_size=resumed,
            opened=self._clock(),
        )
        upload.digest = RunningDigest(self.archive.run_blocking)
        self._show(upload, UPLOADING)
        return upload

    def _replace_staged(self, entry: FileEntry) -> None:
        """
        A staged temporary upload is uploaded again under the same name (a
        client retrying): the new upload takes the name, and the old bytes
        go to quarantine rather than being left in staging unaccounted for.
        """
        self.registry.remove(entry)
        if entry.path is None:
            return
        self._log.info(
            "{user}'s temporary upload {name} in {rule} is uploaded again; the "
            "earlier one is quarantined",
            user=entry.user,
            name=entry.name,
            rule=entry.rule,
        )
        meta = self._meta(
            entry.user,
            entry.rule,
            entry.name,
            "replaced by a new upload of the same name",
        )
        d = self.archive.quarantine_upload(entry.path, None, meta)
        d.addErrback(self._quarantine_failed, entry.path)
        self._track(d)

    def _resume(self, entry: FileEntry) -> tuple[Any, int, int]:
        """
        Take an aborted upload's bytes back from quarantine into staging.
        """
        assert entry.path is not None
        staging = self.archive.staging / entry.path.name
        entry.path.rename(staging)
        entry.path.with_name(entry.path.name + ".json").unlink(missing_ok=True)
        fd = self.archive.reopen_staging(staging)
        # Continue from the bytes the client was shown, and never beyond
        # what the file holds: anything after them is not counted as sent.
        size = min(entry.size, os.fstat(fd).st_size)
        os.ftruncate(fd, size)
        entry.size = size
        self.registry.remove(entry)
        self._log.info(
            "resuming {user}'s upload of {name} into {rule} at byte {size}",
            user=entry.user,
            name=entry.name,
            rule=entry.rule,
            size=entry.size,
        )
        return staging, fd, entry.size

    def _show(
        self, upload: Upload, state: str, size: int | None = None, **extra: Any
    ) -> FileEntry:
        entry = FileEntry(
            user=upload.user,
            folder=upload.folder,
            rule=upload.rule,
            name=upload.name,
            state=state,
            size=upload.size if size is None else size,
            mtime=upload.mtime if upload.mtime is not None else self._clock(),
            **extra,
        )
        self.registry.put(entry)
        return entry

    def close(self, upload: Upload) -> Deferred[str | None]:
        """
        The client closed an upload with an explicit CLOSE request.

        @return: a Deferred firing with the task name (None for a staged
            temporary name) once the upload is archived and its task
            recorded; or failing with an L{SFTPError} the client can read,
            in which case the bytes are quarantined and no task exists.
        """
        try:
            upload.check_complete()
        except SFTPError as error:
            return self._track(self._refuse(upload, error))

        if self.is_temporary(upload.name):
            path, fd = upload.staging, upload.take_fd()
            if fd is not None:
                self._settled(upload).addCallback(lambda _: os.close(fd))
            # The RENAME that completes it finishes the running hash.
            self._show(upload, STAGED, path=path, digest=upload.digest)
            self._log.info(
                "staged {user}'s temporary upload {name} in {rule} ({size} bytes), "
                "waiting for its rename",
                user=upload.user,
                name=upload.name,
                rule=upload.rule,
                size=upload.size,
            )
            return succeed(None)

        return self._track(
            self._complete(
                upload.user,
                upload.folder,
                upload.rule,
                upload.name,
                upload.staging,
                upload.take_fd(),
                size=upload.size,
                digest=upload.digest,
                started=upload.opened,
                mtime=upload.mtime,
            )
        )

    def _refuse(self, upload: Upload, error: SFTPError) -> Deferred[Any]:
        if self.metrics is not None:
            self.metrics.upload_refused(upload.rule)
        # A failed write was logged when it happened; a full disk fails
        # every later WRITE and the CLOSE too, and is one event, not many.
        if not (error is upload.error and upload.error_logged):
            self._log.warn(
                "upload refused: {user}'s {name} in {rule}: {reason}",
                user=upload.user,
                name=upload.name,
                rule=upload.rule,
                reason=error.message,
            )
        d = self._quarantine(upload, error.message)
        d.addCallback(lambda _: Failure(error))
        return d

    def _complete(
        self,
        user: str,
        folder: str,
        rule: str,
        name: str,
        staging: Any,
        fd: int | None,
        *,
        size: int,
        digest: RunningDigest | None = None,
        started: float,
        mtime: int | None,
    ) -> Deferred[str]:
        received = self._clock()
        d = self.archive.commit(staging, fd, folder, name, size, digest)

        def archived(committed: Committed) -> Deferred[str]:
            upload = ArchivedUpload(
                user=user,
                rule=rule,
                name=name,
                archive_path=committed.path,
                size=committed.size,
                sha256=committed.sha256,
                received=received,
            )
            submitted = self.backend.submit(upload)
            submitted.addCallback(recorded, upload)
            submitted.addErrback(not_recorded, upload)
            return submitted

        def recorded(task: str, upload: ArchivedUpload) -> str:
            self.registry.put(
                FileEntry(
                    user=user,
                    folder=folder,
                    rule=rule,
                    name=name,
                    state=DONE,
                    size=upload.size,
                    mtime=mtime if mtime is not None else received,
                    task=task,
                )
            )
            if self.metrics is not None:
                self.metrics.upload_completed(rule, upload.size)
            self._log.info(
                "upload completed: {user} sent {name} to {rule}: {size} bytes, "
                "sha256 {sha256}, task {task}, {ms} ms",
                user=user,
                rule=rule,
                name=name,
                size=upload.size,
                sha256=upload.sha256,
                task=task,
                path=str(upload.archive_path),
                ms=round((self._clock() - started) * 1000),
            )
            return task

        def not_recorded(failure: Failure, upload: ArchivedUpload) -> Failure:
            if failure.check(UploadRejected):
                # Archived and recorded, but refused by a quick check or the
                # rule's duplicate policy: the client reads why.
                rejection = failure.value
                self._log.info(
                    "upload rejected: {user}'s {name} for {rule}, task {task}: "
                    "{reason}",
                    user=user,
                    name=name,
                    rule=rule,
                    task=rejection.task,
                    reason=rejection.message,
                    path=str(upload.archive_path),
                )
                self._forget(user, folder, name)
                if self.metrics is not None:
                    self.metrics.upload_refused(rule)
                return Failure(SFTPError(FX_FAILURE, rejection.message))
            if failure.check(CaptureUnavailableError):
                # Archived and recorded; the backend hands it over later.
                self._log.warn(
                    "upload archived as {path} but not yet handed to QU4RTET: "
                    "{user}'s {name} for {rule}: {reason}",
                    path=str(upload.archive_path),
                    user=user,
                    name=name,
                    rule=rule,
                    reason=str(failure.value),
                )
                self._forget(user, folder, name)
                return Failure(SFTPError(FX_FAILURE, str(failure.value)))
            self._log.failure(
                "upload archived as {path} but its task could not be recorded: "
                "{user}'s {name} for {rule}",
                failure,
                path=str(upload.archive_path),
                user=user,
                name=name,
                rule=rule,
            )
            return Failure(
                SFTPError(
                    FX_FAILURE,
                    f"{name} was received and archived, but the server could not "
                    "queue it for processing; the operator has been told.",
                )
            )

        def not_archived(failure: Failure) -> Failure:
            if failure.check(OSError):
                error = failure.value
                self._log.error(
                    "upload not archived: {user}'s {name} for {rule}: {error}",
                    user=user,
                    name=name,
                    rule=rule,
                    error=error.strerror,
                )
                meta = self._meta(
                    user, rule, name, f"archiving failed: {error.strerror}"
                )
                self._forget(user, folder, name)
                q = self.archive.quarantine_upload(staging, None, meta)
                q.addErrback(self._quarantine_failed, staging)
                q.addCallback(lambda _: Failure(disk_error(error, name)))
                return q
            return failure

        d.addCallbacks(archived, not_archived)
        return d

    def _forget(self, user: str, folder: str, name: str) -> None:
        entry = self.registry.get(user, folder, name)
        if entry is not None and entry.state == UPLOADING:
            self.registry.remove(entry)

    def _meta(self, user: str, rule: str, name: str, reason: str) -> dict[str, Any]:
        return {"user": user, "rule": rule, "name": name, "reason": reason}

    def abort(self, upload: Upload, reason: str) -> Deferred[Any]:
        """
        An upload ended without an explicit CLOSE: quarantine its bytes.  The
        uploader keeps seeing it (as a partial, with the bytes that arrived)
        for a while, so that OpenSSH's C{reput} can continue it.

        @return: a Deferred firing when the bytes are in quarantine.
        """
        if self.metrics is not None:
            self.metrics.upload_aborted(upload.rule)
        self._log.warn(
            "upload aborted: {user}'s {name} for {rule} after {size} bytes: {reason}",
            user=upload.user,
            name=upload.name,
            rule=upload.rule,
            size=upload.size,
            reason=reason,
        )
        return self._track(self._quarantine(upload, reason))

    def _quarantine(self, upload: Upload, reason: str) -> Deferred[Any]:
        meta = self._meta(upload.user, upload.rule, upload.name, reason)
        meta["bytes_received"] = upload.size
        # The bytes of an upload a full disk stopped would keep the disk full
        # for every other upload; the sidecar still records what arrived.
        keep = not upload.disk_full
        # Only the bytes before the first hole can be continued: a client
        # resuming (OpenSSH's reput) sends from the size it is shown.
        resumable = upload.contiguous_size() if keep else 0
        fd = upload.take_fd()
        d = self._settled(upload)
        d.addCallback(
            lambda _: self.archive.quarantine_upload(
                upload.staging, fd, meta, keep_bytes=keep
            )
        )

        def quarantined(path: Any) -> None:
            self._forget(upload.user, upload.folder, upload.name)
            if resumable:
                self._show(upload, PARTIAL, path=path, size=resumable)

        def not_quarantined(failure: Failure) -> None:
            self._forget(upload.user, upload.folder, upload.name)
            self._quarantine_failed(failure, upload.staging)

        d.addCallbacks(quarantined, not_quarantined)
        return d

    def _settled(self, upload: Upload) -> Deferred[None]:
        """
        Wait until no hashing uses the upload's descriptor any more.
        """
        if upload.digest is None:
            return succeed(None)
        return upload.digest.settled()

    def _quarantine_failed(self, failure: Failure, staging: Any) -> None:
        self._log.failure(
            "could not quarantine {path}; it stays in staging and is "
            "quarantined at the next start",
            failure,
            path=str(staging),
        )

    def rename(self, user: str, source: Entry, target: Entry) -> Deferred[str | None]:
        """
        Rename one of the user's names.  Renaming a staged temporary upload
        to a final name completes it.

        @return: a Deferred firing with the task name when the rename
            completed an upload, None otherwise.
        @raise SFTPError: (as a failure) the rename is not one this server can do.
        """
        try:
            check_name(target.name, temporary=self.is_temporary(target.name))
            entry = self.registry.get(user, source.folder, source.name)
            if entry is None:
                raise OSError(
                    errno.ENOENT, f"{source.name} does not exist in /{source.folder}."
                )
            if target.folder != source.folder:
                raise SFTPError(
                    FX_FAILURE,
                    "Files can only be renamed within their rule folder.",
                )
            if entry.state != STAGED:
                raise SFTPError(
                    FX_FAILURE,
                    f"{source.name} was already handed to rule {entry.rule} and "
                    "cannot be renamed; only temporary uploads (such as "
                    "*.filepart) can be.",
                )
        except (OSError, SFTPError) as error:
            return fail(error)

        self.registry.remove(entry)
        if self.is_temporary(target.name):
            entry.name = target.name
            self.registry.put(entry)
            return succeed(None)
        return self._track(
            self._complete(
                user,
                entry.folder,
                entry.rule,
                target.name,
                entry.path,
                None,
                size=entry.size,
                digest=entry.digest,
                started=entry.since,
                mtime=int(entry.mtime),
            )
        )

    def remove(self, user: str, entry_node: Entry) -> Deferred[None]:
        """
        REMOVE of one of the user's names.  A done upload is only hidden (its
        archive copy and task stay); a staged one is quarantined, so nothing
        a client sent is ever destroyed by this server.
        """
        entry = self.registry.get(user, entry_node.folder, entry_node.name)
        if entry is None:
            return fail(
                OSError(
                    errno.ENOENT,
                    f"{entry_node.name} does not exist in /{entry_node.folder}.",
                )
            )
        self.registry.remove(entry)
        if entry.state == STAGED and entry.path is not None:
            meta = self._meta(user, entry.rule, entry.name, "removed by the client")
            return self._track(self.archive.quarantine_upload(entry.path, None, meta))
        return succeed(None)

    def expire(self) -> Deferred[Any]:
        """
        Forget old entries; quarantine staged uploads nobody renamed in time.
        """
        ages = {
            DONE: self._recent_visibility,
            PARTIAL: self._recent_visibility,
            STAGED: self._staged_max_age,
        }
        work = []
        for entry in self.registry.expired(ages):
            if entry.state == STAGED and entry.path is not None:
                self._log.warn(
                    "upload aborted: {user}'s temporary upload {name} for {rule} was "
                    "never renamed and expired",
                    user=entry.user,
                    name=entry.name,
                    rule=entry.rule,
                )
                meta = self._meta(entry.user, entry.rule, entry.name, "never renamed")
                work.append(
                    self._track(self.archive.quarantine_upload(entry.path, None, meta))
                )
        return DeferredList(work)

    def drain(self) -> Deferred[Any]:
        """
        Wait for every commit and quarantine in progress.
        """
        return DeferredList(list(self._in_flight))
