"""
A packet-level SFTP client for socket-free tests of the server protocol:
it builds requests byte by byte and reads back the replies the server wrote
into a StringTransport.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.conch.ssh import filetransfer as fx
from twisted.internet.testing import StringTransport

from quartet_sftpd.archive import Archive
from quartet_sftpd.intake import Intake
from quartet_sftpd.sftp.registry import UploadRegistry
from quartet_sftpd.sftp.server import SFTPServerProtocol
from quartet_sftpd.sftp.tree import VirtualTree
from quartet_sftpd.sftp.wire import Reader, string, u32, u64

from .fakes import ImmediateReactor, ImmediateThreadPool, RecordingBackend

WRITE_CREATE = fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_TRUNC


@dataclass
class Reply:
    kind: int
    request_id: int
    body: Reader

    def status(self) -> tuple[int, str]:
        assert self.kind == fx.FXP_STATUS, f"expected a status, got {self.kind}"
        code = self.body.u32()
        return code, self.body.string().decode("utf-8")


class Session:
    """
    One user's context around a protocol under test.
    """

    def __init__(self, user: str, intake: Intake, tree: VirtualTree) -> None:
        self.user = user
        self.peer = "127.0.0.1:50000"
        self.tree = tree
        self.intake = intake
        self.max_handles = 8
        self.max_upload_size: int | None = None
        self.started = time.time()
        #: Tasks the results view shows (a test fills it).
        self.tasks: list[Any] = []
        self.stopping = False
        self.ended_because: str | None = None

    def run_blocking(self, f: Any, *args: Any) -> Any:
        from twisted.internet.defer import maybeDeferred

        return maybeDeferred(f, *args)

    def results(self, rule: str) -> Any:
        from twisted.internet.defer import succeed

        from quartet_sftpd.sftp.results import result_files

        mine = [t for t in self.tasks if t.user == self.user and t.rule == rule]
        return succeed(result_files(mine))


class Harness:
    """
    A server protocol over a StringTransport, with an archive in a temporary
    folder and a recording backend.
    """

    def __init__(
        self,
        root: Path,
        rules: tuple[str, ...] = ("EPCIS",),
        archive_class: type[Archive] = Archive,
        threadpool: Any = None,
    ) -> None:
        self.backend = RecordingBackend(rules)
        self.archive = archive_class(
            root / "archive",
            gid=os.getegid(),
            threadpool=threadpool or ImmediateThreadPool(),
            reactor=ImmediateReactor(),
        )
        self.archive.prepare()
        self.registry = UploadRegistry()
        self.intake = Intake(
            self.archive,
            self.backend,  # type: ignore[arg-type]
            self.registry,
            temp_patterns=("*.filepart", "*.tmp", ".*"),
            recent_visibility=600,
            staged_max_age=3600,
        )

    def connect(self, user: str = "alice") -> Client:
        tree = VirtualTree(self.backend.rule_names)
        session = Session(user, self.intake, tree)
        protocol = SFTPServerProtocol(session)  # type: ignore[arg-type]
        transport = StringTransport()
        protocol.makeConnection(transport)
        return Client(protocol, transport, session)

    def archived(self, folder: str = "EPCIS") -> list[Path]:
        path = self.archive.root / folder
        return sorted(path.iterdir()) if path.exists() else []

    def quarantined(self) -> list[Path]:
        return sorted(
            p for p in self.archive.quarantine.iterdir() if p.suffix != ".json"
        )


class Client:
    def __init__(
        self, protocol: SFTPServerProtocol, transport: StringTransport, session: Session
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        self.session = session
        self._next = 0

    def send_raw(self, kind: int, body: bytes) -> None:
        self.protocol.dataReceived(struct.pack("!LB", len(body) + 1, kind) + body)

    def request(self, kind: int, *fields: bytes) -> int:
        self._next += 1
        self.send_raw(kind, u32(self._next) + b"".join(fields))
        return self._next

    def replies(self) -> list[Reply]:
        data = self.transport.value()
        self.transport.clear()
        out = []
        while data:
            (length,) = struct.unpack("!L", data[:4])
            kind = data[4]
            body = data[5 : 4 + length]
            data = data[4 + length :]
            if kind == fx.FXP_VERSION:
                out.append(Reply(kind, 0, Reader(body)))
            else:
                out.append(
                    Reply(kind, struct.unpack("!L", body[:4])[0], Reader(body, 4))
                )
        return out

    def one(self) -> Reply:
        replies = self.replies()
        assert len(replies) == 1, f"expected one reply, got {replies}"
        return replies[0]

    def init(self) -> dict[bytes, bytes]:
        self.send_raw(fx.FXP_INIT, u32(3))
        reply = self.one()
        assert reply.body.u32() == 3
        extensions = {}
        while True:
            try:
                name = reply.body.string()
            except Exception:
                break
            extensions[name] = reply.body.string()
        return extensions

    def open(self, path: str, flags: int = WRITE_CREATE) -> bytes:
        self.request(fx.FXP_OPEN, string(path.encode()), u32(flags), u32(0))
        reply = self.one()
        assert reply.kind == fx.FXP_HANDLE, reply.status()
        return reply.body.string()

    def open_status(self, path: str, flags: int = WRITE_CREATE) -> tuple[int, str]:
        self.request(fx.FXP_OPEN, string(path.encode()), u32(flags), u32(0))
        return self.one().status()

    def write(self, handle: bytes, offset: int, data: bytes) -> tuple[int, str]:
        self.request(fx.FXP_WRITE, string(handle), u64(offset), string(data))
        return self.one().status()

    def close(self, handle: bytes) -> tuple[int, str]:
        self.request(fx.FXP_CLOSE, string(handle))
        return self.one().status()

    def path_request(self, kind: int, path: str) -> Reply:
        self.request(kind, string(path.encode()))
        return self.one()

    def realpath(self, path: str) -> str | tuple[int, str]:
        reply = self.path_request(fx.FXP_REALPATH, path)
        if reply.kind == fx.FXP_STATUS:
            return reply.status()
        assert reply.body.u32() == 1
        return reply.body.string().decode()

    def listdir(self, path: str) -> list[tuple[str, str, dict[str, object]]]:
        reply = self.path_request(fx.FXP_OPENDIR, path)
        assert reply.kind == fx.FXP_HANDLE, reply.status()
        handle = reply.body.string()
        entries = []
        while True:
            self.request(fx.FXP_READDIR, string(handle))
            reply = self.one()
            if reply.kind == fx.FXP_STATUS:
                assert reply.status()[0] == fx.FX_EOF
                break
            for _ in range(reply.body.u32()):
                name = reply.body.string().decode()
                long = reply.body.string().decode()
                entries.append((name, long, reply.body.attrs()))
        assert self.close(handle)[0] == fx.FX_OK
        return entries

    def write_all(self, handle: bytes, data: bytes, chunk: int = 32768) -> None:
        """
        WRITE C{data} from offset 0 in pieces of C{chunk}, each answered OK.
        """
        for offset in range(0, len(data), chunk):
            assert (
                self.write(handle, offset, data[offset : offset + chunk])[0] == fx.FX_OK
            )

    def upload(self, path: str, data: bytes, chunk: int = 32768) -> tuple[int, str]:
        handle = self.open(path)
        self.write_all(handle, data, chunk)
        return self.close(handle)
