"""
Malformed input: random and mutated SFTP packets fed to the protocol layer
(hypothesis, no sockets), and random bytes, mutated SSH messages and garbage
SFTP packets sent to the live server over loopback.

The protocol must never raise, must answer every request that has an id
exactly once, and must never put an exception trace in a reply; the live
server must go on serving other sessions and a normal upload afterwards.
Both runs are bounded in time so that they fit in CI.
"""

from __future__ import annotations

import io
import random
import shutil
import socket
import struct
import tempfile
import time
from pathlib import Path

import paramiko
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.conch.ssh import filetransfer as fx

from quartet_sftpd.sftp.wire import string, u32, u64

from .server import EPCIS_DIR, Server, make_key
from .sftp_client import Harness

#: A handle the fuzzer may name: the first upload the preamble opens.
HANDLE = b"<handle>"

#: Request bodies after the id, as well-behaved clients send them; the
#: fuzzer mutates them.  HANDLE is replaced by a real open handle.
TEMPLATES: list[tuple[int, bytes]] = [
    (fx.FXP_OPEN, string(b"/EPCIS/f.xml") + u32(0x1A) + u32(0)),
    (fx.FXP_OPEN, string(b"/EPCIS/../EPCIS/.x.tmp") + u32(0x1A) + u32(4) + u32(0o644)),
    (fx.FXP_WRITE, string(HANDLE) + u64(0) + string(b"<epcis/>")),
    (fx.FXP_WRITE, string(HANDLE) + u64(2**40) + string(b"x")),
    (fx.FXP_CLOSE, string(HANDLE)),
    (fx.FXP_READ, string(HANDLE) + u64(0) + u32(4096)),
    (fx.FXP_FSTAT, string(HANDLE)),
    (fx.FXP_FSETSTAT, string(HANDLE) + u32(8) + u32(1) + u32(2)),
    (fx.FXP_SETSTAT, string(b"/EPCIS/f.xml") + u32(4) + u32(0o600)),
    (fx.FXP_STAT, string(b"/EPCIS/f.xml")),
    (fx.FXP_LSTAT, string(b"/")),
    (fx.FXP_OPENDIR, string(b"/EPCIS")),
    (fx.FXP_READDIR, string(HANDLE)),
    (fx.FXP_REALPATH, string(b"../..//EPCIS/./")),
    (fx.FXP_RENAME, string(b"/EPCIS/.x.tmp") + string(b"/EPCIS/x.xml")),
    (fx.FXP_REMOVE, string(b"/EPCIS/f.xml")),
    (fx.FXP_MKDIR, string(b"/new") + u32(0)),
    (fx.FXP_RMDIR, string(b"/EPCIS")),
    (fx.FXP_READLINK, string(b"/EPCIS")),
    (fx.FXP_SYMLINK, string(b"/a") + string(b"/b")),
    (
        fx.FXP_EXTENDED,
        string(b"posix-rename@openssh.com") + string(b"/a") + string(b"/b"),
    ),
    (fx.FXP_EXTENDED, string(b"statvfs@openssh.com") + string(b"/EPCIS")),
    (fx.FXP_EXTENDED, string(b"fstatvfs@openssh.com") + string(HANDLE)),
    (fx.FXP_EXTENDED, string(b"fsync@openssh.com") + string(HANDLE)),
    (fx.FXP_EXTENDED, string(b"limits@openssh.com")),
    (fx.FXP_EXTENDED, string(b"no-such@example.com") + b"\x00" * 9),
]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[int, bytes]:
    """
    One request: a template with bytes flipped, cut, inserted or appended,
    or random bytes of a random kind.
    """
    if draw(st.integers(0, 9)) == 0:
        return draw(st.integers(0, 255)), draw(st.binary(max_size=64))
    kind, body = draw(st.sampled_from(TEMPLATES))
    data = bytearray(body)
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["flip", "cut", "insert", "append", "length"]))
        spot = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "flip" and data:
            data[spot] = draw(st.integers(0, 255))
        elif how == "cut":
            del data[spot:]
        elif how == "insert":
            data[spot:spot] = draw(st.binary(min_size=1, max_size=8))
        elif how == "append":
            data += draw(st.binary(min_size=1, max_size=16))
        elif how == "length" and len(data) >= 4:
            # A string length that lies.
            data[spot : spot + 4] = struct.pack("!L", draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        kind = draw(st.integers(0, 255))
    return kind, bytes(data)


def frame(kind: int, body: bytes) -> bytes:
    return struct.pack("!LB", len(body) + 1, kind) + body


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    requests=st.lists(mutated(), min_size=1, max_size=12),
    chunk=st.integers(1, 64),
)
def test_malformed_sftp_packets_get_one_clean_reply_each(
    requests: list[tuple[int, bytes]], chunk: int
) -> None:
    """
    Whatever packets arrive, in whatever pieces: no exception escapes, each
    request with an id gets exactly one reply carrying that id, and no reply
    holds an exception trace.
    """
    folder = Path(tempfile.mkdtemp(prefix="quartet-fuzz-"))
    try:
        harness = Harness(folder)
        client = harness.connect()
        client.init()
        handle = client.open("/EPCIS/fuzz.xml")
        stream = bytearray()
        expected = []
        for number, (kind, body) in enumerate(requests, start=1000):
            body = body.replace(HANDLE, handle)
            if kind == fx.FXP_INIT:
                continue
            stream += frame(kind, u32(number) + body)
            expected.append(number)
        for start in range(0, len(stream), chunk):
            client.protocol.dataReceived(bytes(stream[start : start + chunk]))
        data = client.transport.value()
        assert b"Traceback" not in data
        replies = client.replies()
        assert sorted(reply.request_id for reply in replies) == expected
        client.protocol.connectionLost(None)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _send_garbage(port: int, rng: random.Random) -> bytes:
    """
    Open a raw connection, send a version line (or not) and random bytes,
    and return what the server said.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        raw.settimeout(0.3)
        choice = rng.random()
        if choice < 0.5:
            raw.sendall(b"SSH-2.0-fuzz\r\n")
        if choice < 0.25:
            # A packet header claiming some length, then noise.
            raw.sendall(struct.pack("!LB", rng.choice([0, 5, 35000, 2**31]), 4))
        try:
            raw.sendall(rng.randbytes(rng.randint(1, 2048)))
            while True:
                data = raw.recv(65536)
                if not data:
                    break
                received += data
        except OSError:
            pass
    return received


def _fuzz_channel(server: Server, key: Path, rng: random.Random) -> bytes:
    """
    Log in, start the SFTP subsystem, and send it random and mutated
    packets, then random SSH messages; return what came back.
    """
    transport = paramiko.Transport(("127.0.0.1", server.port))
    received = b""
    try:
        transport.connect(
            username="partner", pkey=paramiko.Ed25519Key.from_private_key_file(str(key))
        )
        channel = transport.open_session()
        channel.invoke_subsystem("sftp")
        channel.settimeout(0.3)
        channel.sendall(frame(fx.FXP_INIT, u32(3)))
        for _ in range(20):
            kind, body = rng.choice(TEMPLATES)
            data = bytearray(u32(rng.randint(0, 2**32 - 1)) + body)
            for _ in range(rng.randint(0, 3)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.2:
                kind = rng.randrange(256)
            channel.sendall(frame(kind, bytes(data)))
        if rng.random() < 0.3:
            channel.sendall(rng.randbytes(rng.randint(1, 600)))
        try:
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                received += data
        except (TimeoutError, OSError):
            pass
        for _ in range(5):
            message = paramiko.Message()
            message.add_byte(bytes([rng.randrange(50, 128)]))
            message.add_bytes(rng.randbytes(rng.randint(0, 64)))
            transport._send_user_message(message)
        time.sleep(0.05)
    except (paramiko.SSHException, EOFError, OSError):
        pass
    finally:
        transport.close()
    return received


def test_live_server_survives_garbage(tmp_path: Path, client_key: Path) -> None:
    """
    For a few seconds, raw connections send random bytes and logged-in
    sessions send mutated SFTP packets and random SSH messages.  A session
    opened before stays usable throughout, nothing the server sent holds a
    trace, and a normal upload works afterwards.
    """
    home = tmp_path / "server"
    home.mkdir()
    server = Server(home, {"ban_threshold": 0, "max_user_sessions": 0})
    server.add_user("partner", client_key)
    server.start()
    rng = random.Random(5)
    try:
        bystander = paramiko.Transport(("127.0.0.1", server.port))
        bystander.connect(
            username="partner",
            pkey=paramiko.Ed25519Key.from_private_key_file(str(client_key)),
        )
        sftp = paramiko.SFTPClient.from_transport(bystander)
        deadline = time.monotonic() + 6
        rounds = 0
        while time.monotonic() < deadline:
            if rounds % 3 == 2:
                received = _fuzz_channel(server, client_key, rng)
            else:
                received = _send_garbage(server.port, rng)
            assert b"Traceback" not in received
            assert server.process is not None and server.process.poll() is None
            rounds += 1
            if rounds % 10 == 0:
                assert sftp.listdir("/") == ["EPCIS"]
        assert rounds >= 10
        sftp.putfo(io.BytesIO(b"<during/>"), "/EPCIS/during.xml")
        bystander.close()

        after = make_key(tmp_path, "after")
        server.add_user("after", after)
        result = server.sftp("after", after, f"put {EPCIS_DIR / 'epcis.xml'} EPCIS/\n")
        assert result.returncode == 0, result.stderr
        tasks = server.wait_for_tasks(2)
        assert sorted(t["file"] for t in tasks) == ["during.xml", "epcis.xml"]
        assert "Unhandled Error" not in server.log()
    finally:
        server.stop()
