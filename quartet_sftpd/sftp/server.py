"""
The SFTP subsystem: the wire-level policy of quartet-sftpd.

Conch's C{FileTransferServer} is built for a real filesystem behind an
C{ISFTPServer}: it calls the same C{close()} for a client's CLOSE and for a
lost connection, drops the reply when a handler raises, and treats trailing
bytes as an assertion.  An upload server has to tell those apart and answer
every request, so this module parses the packets itself (reusing Conch's
constants) and maps each request onto the virtual tree and the intake.

Every request gets exactly one reply.  Errors a client can fix come back as
a sentence; anything unexpected is logged once with its context and the
client reads only that the server failed, never a traceback.  Bytes after a
request's last field are ignored, as OpenSSH's sftp-server ignores them
(rclone 1.60 sends WRITE requests padded past their data).
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.conch.ssh.filetransfer import (
    FX_BAD_MESSAGE,
    FX_EOF,
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_OK,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    FXF_WRITE,
    FXP_ATTRS,
    FXP_CLOSE,
    FXP_DATA,
    FXP_EXTENDED,
    FXP_EXTENDED_REPLY,
    FXP_FSETSTAT,
    FXP_FSTAT,
    FXP_HANDLE,
    FXP_INIT,
    FXP_LSTAT,
    FXP_MKDIR,
    FXP_NAME,
    FXP_OPEN,
    FXP_OPENDIR,
    FXP_READ,
    FXP_READDIR,
    FXP_READLINK,
    FXP_REALPATH,
    FXP_REMOVE,
    FXP_RENAME,
    FXP_RMDIR,
    FXP_SETSTAT,
    FXP_STAT,
    FXP_STATUS,
    FXP_SYMLINK,
    FXP_VERSION,
    FXP_WRITE,
    SFTPError,
)
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from quartet_sftpd.intake import Intake
from quartet_sftpd.sftp.registry import FileEntry
from quartet_sftpd.sftp.results import RESULTS, ResultFile
from quartet_sftpd.sftp.tree import (
    Entry,
    ResultEntry,
    ResultsFolder,
    Root,
    RuleFolder,
    VirtualTree,
    components,
    decode_path,
)
from quartet_sftpd.sftp.upload import Upload
from quartet_sftpd.sftp.wire import (
    BadMessage,
    Reader,
    longname,
    pack_attrs,
    string,
    u32,
    u64,
)

#: Largest SFTP packet accepted, as OpenSSH's server (256 KiB of payload).
MAX_PACKET = 256 * 1024 + 1024
#: Largest READ and WRITE payloads advertised in limits@openssh.com.
MAX_DATA = 255 * 1024
#: Entries per READDIR reply.
READDIR_BATCH = 100

EXTENSIONS = {
    b"posix-rename@openssh.com": b"1",
    b"statvfs@openssh.com": b"2",
    b"fstatvfs@openssh.com": b"2",
    b"fsync@openssh.com": b"1",
    b"limits@openssh.com": b"1",
}

_ERRNO_CODES = {
    errno.ENOENT: FX_NO_SUCH_FILE,
    errno.EACCES: FX_PERMISSION_DENIED,
    errno.EPERM: FX_PERMISSION_DENIED,
}

_FOLDER_MODE = 0o40775
_ROOT_MODE = 0o40555
_RESULTS_MODE = 0o40555
_RESULT_MODE = 0o100444
_READ_ONLY = "Results are read-only; they change as your uploads are processed."


class ISessionContext(Protocol):
    """
    What one SFTP session needs from the server around it.
    """

    user: str
    peer: str
    tree: VirtualTree
    intake: Intake
    max_handles: int
    max_upload_size: int | None
    started: float
    #: Whether the server is shutting down (so open uploads are its doing).
    stopping: bool
    #: Why the server closed this connection itself, if it did.
    ended_because: str | None

    def run_blocking(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Run blocking disk work off the reactor thread.
        """

    def results(self, rule: str) -> Deferred[dict[str, ResultFile]]:
        """
        The user's result files in one rule, by file name.
        """


class _Listing:
    """
    An open directory handle: the entries, sent in batches.
    """

    def __init__(self, entries: list[tuple[str, dict[str, int]]]) -> None:
        self.entries = entries
        self.position = 0


class _Download:
    """
    A result file open for reading: its text, made when it was opened.
    """

    def __init__(self, result: ResultFile) -> None:
        self.data = result.text()
        self.mtime = int(result.mtime)

    def attrs(self) -> dict[str, int]:
        return _result_attrs(len(self.data), self.mtime)


def _result_attrs(size: int, mtime: float) -> dict[str, int]:
    return {
        "size": size,
        "uid": 0,
        "gid": 0,
        "permissions": _RESULT_MODE,
        "atime": int(mtime),
        "mtime": int(mtime),
    }


_Handle = Upload | _Listing | _Download


class SFTPServerProtocol(TwistedProtocol):
    """
    One SFTP session, speaking protocol version 3 as OpenSSH does.
    """

    _log = Logger()

    def __init__(self, context: ISessionContext) -> None:
        self.context = context
        self._buffer = bytearray()
        self._handles: dict[bytes, _Handle] = {}
        self._next_handle = 0
        self._initialised = False
        self._open = True
        self._warned_overflow = False
        self._noted_trailing = False
        self._dispatch: dict[int, Callable[[bytes, Reader], Deferred[Any] | None]] = {
            FXP_OPEN: self._open_file,
            FXP_CLOSE: self._close,
            FXP_READ: self._read,
            FXP_WRITE: self._write,
            FXP_LSTAT: self._stat,
            FXP_STAT: self._stat,
            FXP_FSTAT: self._fstat,
            FXP_SETSTAT: self._setstat,
            FXP_FSETSTAT: self._fsetstat,
            FXP_OPENDIR: self._opendir,
            FXP_READDIR: self._readdir,
            FXP_REMOVE: self._remove,
            FXP_MKDIR: self._mkdir,
            FXP_RMDIR: self._rmdir,
            FXP_REALPATH: self._realpath,
            FXP_RENAME: self._rename,
            FXP_READLINK: self._readlink,
            FXP_SYMLINK: self._symlink,
            FXP_EXTENDED: self._extended,
        }

    # Framing

    def dataReceived(self, data: bytes) -> None:
        """
        Split the byte stream into packets and handle each in turn.
        """
        self._buffer += data
        buffer = self._buffer
        while len(buffer) >= 5:
            (length,) = struct.unpack_from("!L", buffer)
            if length > MAX_PACKET or length < 1:
                self._log.warn(
                    "closing SFTP session of {user} from {peer}: a packet claims "
                    "{length} bytes",
                    user=self.context.user,
                    peer=self.context.peer,
                    length=length,
                )
                self._buffer = bytearray()
                self.transport.loseConnection()
                return
            if len(buffer) < 4 + length:
                return
            kind = buffer[4]
            payload = bytes(buffer[5 : 4 + length])
            del buffer[: 4 + length]
            self._packet(kind, payload)

    def _packet(self, kind: int, payload: bytes) -> None:
        if kind == FXP_INIT:
            self._init(payload)
            return
        if len(payload) < 4:
            self._log.warn(
                "ignoring an SFTP packet of type {kind} without a request id from "
                "{user}",
                kind=kind,
                user=self.context.user,
            )
            return
        request_id = payload[:4]
        handler = self._dispatch.get(kind)
        if handler is None:
            self._status(
                request_id, FX_OP_UNSUPPORTED, f"Request type {kind} is not supported."
            )
            return
        reader = Reader(payload, 4)
        try:
            result = handler(request_id, reader)
        except Exception:
            self._fail(Failure(), request_id, kind)
            return
        finally:
            if reader.trailing and not self._noted_trailing:
                self._noted_trailing = True
                self._log.debug(
                    "ignoring {count} bytes after a request of type {kind} from "
                    "{user}, as OpenSSH does (logged once per session)",
                    count=reader.trailing,
                    kind=kind,
                    user=self.context.user,
                )
        if isinstance(result, Deferred):
            result.addErrback(self._fail, request_id, kind)

    def _fail(self, failure: Failure, request_id: bytes, kind: int) -> None:
        """
        Answer a request that failed, with a code and a sentence.
        """
        error = failure.value
        if isinstance(error, SFTPError):
            code, message = error.code, str(error.message)
        elif isinstance(error, BadMessage):
            code, message = FX_BAD_MESSAGE, f"Malformed request: {error}."
            self._log.warn(
                "malformed SFTP request of type {kind} from {user}: {error}",
                kind=kind,
                user=self.context.user,
                error=str(error),
            )
        elif isinstance(error, OSError) and error.errno in _ERRNO_CODES:
            code, message = _ERRNO_CODES[error.errno], str(error.strerror)
        elif isinstance(error, OSError) and error.errno == errno.EEXIST:
            code, message = FX_FAILURE, str(error.strerror)
        else:
            self._log.failure(
                "SFTP request of type {kind} from {user} failed",
                failure,
                kind=kind,
                user=self.context.user,
                peer=self.context.peer,
            )
            code, message = FX_FAILURE, "The server failed to handle this request."
        self._status(request_id, code, message)

    def _send(self, kind: int, data: bytes) -> None:
        if self._open:
            self.transport.write(struct.pack("!LB", len(data) + 1, kind) + data)

    def _status(self, request_id: bytes, code: int, message: str) -> None:
        self._send(
            FXP_STATUS,
            request_id + u32(code) + string(message.encode("utf-8")) + string(b"en"),
        )

    def _ok(self, request_id: bytes, message: str = "OK") -> None:
        self._status(request_id, FX_OK, message)

    def _names(
        self, request_id: bytes, names: list[tuple[str, str, dict[str, int]]]
    ) -> None:
        body = b"".join(
            string(n.encode("utf-8")) + string(ln.encode("utf-8")) + pack_attrs(a)
            for n, ln, a in names
        )
        self._send(FXP_NAME, request_id + u32(len(names)) + body)

    def _attrs(self, request_id: bytes, attrs: dict[str, int]) -> None:
        self._send(FXP_ATTRS, request_id + pack_attrs(attrs))

    # Session

    def _init(self, payload: bytes) -> None:
        # The client's version is at least 3 in practice; this server speaks
        # 3, like OpenSSH, whatever higher version the client offers.
        self._initialised = True
        body = u32(3) + b"".join(string(k) + string(v) for k, v in EXTENSIONS.items())
        self._send(FXP_VERSION, body)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        The channel closed.  Uploads still open were not CLOSEd by the
        client, so they are aborted, never completed.
        """
        self._open = False
        ended = self.context.ended_because
        if self.context.stopping:
            why = "the server stopped before the client's CLOSE"
        elif ended:
            why = f"the server closed the connection before CLOSE: {ended}"
        else:
            why = "the connection was lost before CLOSE"
        handles, self._handles = self._handles, {}
        for handle in handles.values():
            if isinstance(handle, Upload):
                self.context.intake.abort(handle, why)

    # Handles

    def _check_handle_limit(self) -> None:
        if len(self._handles) >= self.context.max_handles:
            raise SFTPError(
                FX_FAILURE,
                f"Too many open files: this server allows {self.context.max_handles} "
                "per session; close some first.",
            )

    def _new_handle(self, obj: _Handle) -> bytes:
        self._check_handle_limit()
        self._next_handle += 1
        handle = b"%d" % self._next_handle
        self._handles[handle] = obj
        return handle

    def _handle(self, reader: Reader) -> tuple[bytes, _Handle]:
        handle = reader.string()
        try:
            return handle, self._handles[handle]
        except KeyError:
            raise SFTPError(
                FX_FAILURE, "Invalid handle: it was never opened or is already closed."
            ) from None

    def _upload(self, reader: Reader) -> tuple[bytes, Upload]:
        handle, obj = self._handle(reader)
        if isinstance(obj, _Download):
            raise SFTPError(FX_PERMISSION_DENIED, _READ_ONLY)
        if not isinstance(obj, Upload):
            raise SFTPError(FX_FAILURE, "This handle is a folder, not a file.")
        return handle, obj

    def _result(self, node: ResultEntry) -> Deferred[ResultFile]:
        d = self.context.results(node.rule)

        def found(results: dict[str, ResultFile]) -> ResultFile:
            if node.name not in results:
                raise OSError(
                    errno.ENOENT,
                    f"{node.name} is not one of your results in "
                    f"/{node.folder}/{RESULTS}.",
                )
            return results[node.name]

        return d.addCallback(found)

    # Attributes of the tree

    def _folder_attrs(self, root: bool = False) -> dict[str, int]:
        started = int(self.context.started)
        return {
            "size": 0,
            "uid": 0,
            "gid": 0,
            "permissions": _ROOT_MODE if root else _FOLDER_MODE,
            "atime": started,
            "mtime": started,
        }

    def _entry(self, node: Entry) -> FileEntry:
        entry = self.context.intake.registry.get(
            self.context.user, node.folder, node.name
        )
        if entry is None:
            raise OSError(
                errno.ENOENT, f"{node.name} does not exist in /{node.folder}."
            )
        return entry

    def _node_attrs(self, raw_path: bytes) -> dict[str, int] | Deferred[dict[str, int]]:
        node = self.context.tree.resolve(raw_path)
        if isinstance(node, Root):
            return self._folder_attrs(root=True)
        if isinstance(node, RuleFolder):
            return self._folder_attrs()
        if isinstance(node, ResultsFolder):
            return {**self._folder_attrs(), "permissions": _RESULTS_MODE}
        if isinstance(node, ResultEntry):
            return self._result(node).addCallback(
                lambda result: _result_attrs(len(result.text()), result.mtime)
            )
        return self._entry(node).attrs()

    # Requests

    def _open_file(self, request_id: bytes, reader: Reader) -> None:
        raw = reader.string()
        flags = reader.u32()
        reader.attrs()  # size and owner attributes sent with OPEN are ignored
        reader.end()

        tree = self.context.tree
        parts = components(decode_path(raw))
        if len(parts) == 1 and parts[0] not in tree.folders():
            # "put x /x": a file in the root, not a missing folder.
            raise SFTPError(
                FX_PERMISSION_DENIED,
                f"Files cannot be uploaded into / itself. {tree.where_files_go()}",
            )
        node = tree.resolve(raw)
        if isinstance(node, ResultEntry):
            return self._open_result(request_id, node, flags)
        if not isinstance(node, Entry):
            raise SFTPError(
                FX_FAILURE,
                f"{node.path} is a folder. {self.context.tree.where_files_go()}",
            )
        if not flags & FXF_WRITE:
            raise SFTPError(
                FX_PERMISSION_DENIED,
                "This server only receives files; nothing can be downloaded from "
                f"{node.path}.",
            )
        # Refuse before a staging file exists, so that a refused OPEN leaves
        # nothing behind to quarantine.
        self._check_handle_limit()
        upload = self.context.intake.open(
            self.context.user, node, flags, max_size=self.context.max_upload_size
        )
        handle = self._new_handle(upload)
        self._send(FXP_HANDLE, request_id + string(handle))

    def _open_result(
        self, request_id: bytes, node: ResultEntry, flags: int
    ) -> Deferred[Any]:
        if flags & FXF_WRITE:
            raise SFTPError(FX_PERMISSION_DENIED, _READ_ONLY)

        def opened(result: ResultFile) -> None:
            handle = self._new_handle(_Download(result))
            self._send(FXP_HANDLE, request_id + string(handle))

        return self._result(node).addCallback(opened)

    def _close(self, request_id: bytes, reader: Reader) -> Deferred[Any] | None:
        handle, obj = self._handle(reader)
        reader.end()
        # From here on the upload is the intake's: a lost connection no
        # longer aborts it, because the client did send its CLOSE.
        del self._handles[handle]
        if isinstance(obj, (_Listing, _Download)):
            self._ok(request_id)
            return None

        d = self.context.intake.close(obj)

        def closed(task: str | None) -> None:
            if task is None:
                self._ok(request_id, f"{obj.name} received; waiting for its rename.")
            else:
                self._ok(request_id, f"{obj.name} received as task {task}.")

        d.addCallback(closed)
        return d

    def _read(self, request_id: bytes, reader: Reader) -> None:
        _, obj = self._handle(reader)
        offset = reader.u64()
        length = min(reader.u32(), MAX_DATA)
        reader.end()
        if isinstance(obj, _Download):
            chunk = obj.data[offset : offset + length]
            if not chunk:
                self._status(request_id, FX_EOF, "End of file.")
            else:
                self._send(FXP_DATA, request_id + string(chunk))
            return
        if not isinstance(obj, Upload):
            raise SFTPError(FX_FAILURE, "This handle is a folder, not a file.")
        upload = obj
        if upload.fd is None:
            raise SFTPError(FX_FAILURE, "This file is being closed.")
        data = os.pread(upload.fd, length, offset)
        if not data:
            self._status(request_id, FX_EOF, "End of file.")
            return
        self._send(FXP_DATA, request_id + string(data))

    def _write(self, request_id: bytes, reader: Reader) -> None:
        _, upload = self._upload(reader)
        offset = reader.u64()
        data = reader.string()
        reader.end()
        try:
            upload.write(offset, data)
        except SFTPError:
            if upload.error is not None and not upload.error_logged:
                upload.error_logged = True
                self._log.warn(
                    "write failed for {user}'s {name} in {rule}: {reason}",
                    user=upload.user,
                    name=upload.name,
                    rule=upload.rule,
                    reason=upload.error.message,
                )
            raise
        self._ok(request_id)

    def _stat(self, request_id: bytes, reader: Reader) -> Deferred[Any] | None:
        raw = reader.string()
        reader.end()
        attrs = self._node_attrs(raw)
        if isinstance(attrs, Deferred):
            return attrs.addCallback(lambda found: self._attrs(request_id, found))
        self._attrs(request_id, attrs)
        return None

    def _fstat(self, request_id: bytes, reader: Reader) -> None:
        _, obj = self._handle(reader)
        reader.end()
        if isinstance(obj, _Listing):
            self._attrs(request_id, self._folder_attrs())
        else:
            self._attrs(request_id, obj.attrs())

    def _setstat(self, request_id: bytes, reader: Reader) -> None:
        raw = reader.string()
        attrs = reader.attrs()
        reader.end()
        node = self.context.tree.resolve(raw)
        if isinstance(node, (ResultsFolder, ResultEntry)):
            raise SFTPError(FX_PERMISSION_DENIED, _READ_ONLY)
        if isinstance(node, Entry):
            entry = self._entry(node)
            _apply_attrs(entry, attrs)
        # Times and modes of folders are the server's; accepting the request
        # keeps clients that copy folder attributes (lftp mirror) happy.
        self._ok(request_id)

    def _fsetstat(self, request_id: bytes, reader: Reader) -> None:
        _, obj = self._handle(reader)
        attrs = reader.attrs()
        reader.end()
        if isinstance(obj, Upload):
            if "size" in attrs:
                obj.truncate(int(attrs["size"]))  # type: ignore[arg-type]
            if "mtime" in attrs:
                obj.mtime = int(attrs["mtime"])  # type: ignore[arg-type]
        self._ok(request_id)

    def _opendir(self, request_id: bytes, reader: Reader) -> Deferred[Any] | None:
        raw = reader.string()
        reader.end()
        node = self.context.tree.resolve(raw)
        if isinstance(node, ResultEntry):
            raise SFTPError(FX_FAILURE, f"{node.path} is a file, not a folder.")
        if isinstance(node, Entry):
            self._entry(node)
            raise SFTPError(FX_FAILURE, f"{node.path} is a file, not a folder.")
        if isinstance(node, ResultsFolder):
            return self.context.results(node.rule).addCallback(
                self._open_results_listing, request_id
            )
        entries = [(".", self._folder_attrs(isinstance(node, Root)))]
        entries.append(("..", self._folder_attrs(root=True)))
        if isinstance(node, Root):
            for folder in sorted(self.context.tree.folders()):
                entries.append((folder, self._folder_attrs()))
        else:
            results = {**self._folder_attrs(), "permissions": _RESULTS_MODE}
            entries.append((RESULTS, results))
            registry = self.context.intake.registry
            for entry in registry.listing(self.context.user, node.folder):
                entries.append((entry.name, entry.attrs()))
        self._send_listing_handle(request_id, entries)
        return None

    def _open_results_listing(
        self, results: dict[str, ResultFile], request_id: bytes
    ) -> None:
        entries = [
            (".", {**self._folder_attrs(), "permissions": _RESULTS_MODE}),
            ("..", self._folder_attrs()),
        ]
        for name in sorted(results):
            result = results[name]
            entries.append((name, _result_attrs(len(result.text()), result.mtime)))
        self._send_listing_handle(request_id, entries)

    def _send_listing_handle(
        self, request_id: bytes, entries: list[tuple[str, dict[str, int]]]
    ) -> None:
        handle = self._new_handle(_Listing(entries))
        self._send(FXP_HANDLE, request_id + string(handle))

    def _readdir(self, request_id: bytes, reader: Reader) -> None:
        _, listing = self._handle(reader)
        reader.end()
        if not isinstance(listing, _Listing):
            raise SFTPError(FX_FAILURE, "This handle is a file, not a folder.")
        batch = listing.entries[listing.position : listing.position + READDIR_BATCH]
        if not batch:
            self._status(request_id, FX_EOF, "End of folder.")
            return
        listing.position += len(batch)
        now = time.time()
        owner = self.context.user
        self._names(
            request_id, [(name, longname(name, a, owner, now), a) for name, a in batch]
        )

    def _remove(self, request_id: bytes, reader: Reader) -> Deferred[Any]:
        raw = reader.string()
        reader.end()
        node = self.context.tree.resolve(raw)
        if isinstance(node, (ResultsFolder, ResultEntry)):
            raise SFTPError(FX_PERMISSION_DENIED, _READ_ONLY)
        if not isinstance(node, Entry):
            raise SFTPError(FX_PERMISSION_DENIED, f"{node.path} is a folder and stays.")
        d = self.context.intake.remove(self.context.user, node)
        d.addCallback(lambda _: self._ok(request_id, f"{node.name} removed."))
        return d

    def _mkdir(self, request_id: bytes, reader: Reader) -> None:
        raw = reader.string()
        reader.attrs()
        reader.end()
        parts = components(self._decode(raw))
        if len(parts) == 1 and parts[0] in self.context.tree.folders():
            raise SFTPError(FX_FAILURE, f"/{parts[0]} already exists.")
        raise SFTPError(
            FX_PERMISSION_DENIED,
            "Folders cannot be created here. " + self.context.tree.where_files_go(),
        )

    def _rmdir(self, request_id: bytes, reader: Reader) -> None:
        reader.string()
        reader.end()
        raise SFTPError(
            FX_PERMISSION_DENIED, "Rule folders are managed by the server and stay."
        )

    def _decode(self, raw: bytes) -> str:
        return decode_path(raw)

    def _realpath(self, request_id: bytes, reader: Reader) -> None:
        raw = reader.string()
        reader.end()
        parts = components(self._decode(raw))
        # As OpenSSH: the last component may be missing, its parent may not.
        if len(parts) > 2:
            self.context.tree.resolve(raw)
        if len(parts) == 2:
            self.context.tree.resolve(("/" + parts[0]).encode("utf-8"))
        path = "/" + "/".join(parts)
        self._names(request_id, [(path, path, {})])

    def _rename(self, request_id: bytes, reader: Reader) -> Deferred[Any]:
        old = reader.string()
        new = reader.string()
        reader.end()
        return self._do_rename(request_id, old, new)

    def _do_rename(self, request_id: bytes, old: bytes, new: bytes) -> Deferred[Any]:
        tree = self.context.tree
        source, target = tree.resolve(old), tree.resolve(new)
        for node in (source, target):
            if isinstance(node, (ResultsFolder, ResultEntry)):
                raise SFTPError(FX_PERMISSION_DENIED, _READ_ONLY)
        if not isinstance(source, Entry) or not isinstance(target, Entry):
            raise SFTPError(
                FX_PERMISSION_DENIED, "Rule folders cannot be renamed or replaced."
            )
        d = self.context.intake.rename(self.context.user, source, target)

        def renamed(task: str | None) -> None:
            if task is None:
                self._ok(request_id, f"{source.name} renamed to {target.name}.")
            else:
                self._ok(request_id, f"{target.name} received as task {task}.")

        d.addCallback(renamed)
        return d

    def _readlink(self, request_id: bytes, reader: Reader) -> None:
        reader.string()
        reader.end()
        raise SFTPError(FX_NO_SUCH_FILE, "There are no symbolic links here.")

    def _symlink(self, request_id: bytes, reader: Reader) -> None:
        reader.string()
        reader.string()
        reader.end()
        raise SFTPError(
            FX_PERMISSION_DENIED, "Symbolic links cannot be created on this server."
        )

    # Extensions

    def _extended(self, request_id: bytes, reader: Reader) -> Deferred[Any] | None:
        name = reader.string()
        if name == b"posix-rename@openssh.com":
            old, new = reader.string(), reader.string()
            reader.end()
            return self._do_rename(request_id, old, new)
        if name in (b"statvfs@openssh.com", b"fstatvfs@openssh.com"):
            if name == b"statvfs@openssh.com":
                self.context.tree.resolve(reader.string())
            else:
                self._handle(reader)
            reader.end()
            return self._statvfs(request_id)
        if name == b"fsync@openssh.com":
            _, upload = self._upload(reader)
            reader.end()
            return self._fsync(request_id, upload)
        if name == b"limits@openssh.com":
            reader.end()
            self._send(
                FXP_EXTENDED_REPLY,
                request_id
                + u64(MAX_PACKET)
                + u64(MAX_DATA)
                + u64(MAX_DATA)
                + u64(self.context.max_handles),
            )
            return None
        if name == b"hardlink@openssh.com":
            raise SFTPError(
                FX_OP_UNSUPPORTED, "Hard links cannot be created on this server."
            )
        shown = name.decode("utf-8", "replace")[:64]
        raise SFTPError(FX_OP_UNSUPPORTED, f"The extension {shown} is not supported.")

    def _statvfs(self, request_id: bytes) -> Deferred[Any]:
        d = self.context.run_blocking(os.statvfs, self.context.intake.archive.root)

        def reply(st: os.statvfs_result) -> None:
            fields = (
                st.f_bsize,
                st.f_frsize,
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_favail,
                0,
                st.f_flag & 0x3,
                st.f_namemax,
            )
            self._send(
                FXP_EXTENDED_REPLY, request_id + b"".join(u64(f) for f in fields)
            )

        d.addCallback(reply)
        return d

    def _fsync(self, request_id: bytes, upload: Upload) -> Deferred[Any]:
        fd = upload.fd
        if fd is None:
            raise SFTPError(FX_FAILURE, "This file is being closed.")
        d = maybeDeferred(self.context.run_blocking, os.fsync, fd)
        d.addCallback(lambda _: self._ok(request_id))
        return d


def _apply_attrs(entry: FileEntry, attrs: dict[str, Any]) -> None:
    """
    Record times and permissions a client sets on one of its uploads; they
    change what the client sees, never the archived file.
    """
    if "mtime" in attrs:
        entry.mtime = float(attrs["mtime"])
    if "permissions" in attrs:
        entry.permissions = int(attrs["permissions"]) & 0o7777


__all__ = ["EXTENSIONS", "ISessionContext", "SFTPServerProtocol"]
