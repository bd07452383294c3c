"""
Upload integrity, end to end: the real twistd process and real clients
(paramiko at the packet level, OpenSSH sftp), checking what reaches the
archive, the quarantine and the task store against what each client was
told, through reordered writes, holes, dropped connections, temporary
names, a kill -9 mid-burst, a full disk and a rule that disappears.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from paramiko.sftp import CMD_CLOSE, CMD_OPEN, CMD_WRITE, SFTP_OK, int64
from paramiko.sftp_attr import SFTPAttributes
from twisted.conch.ssh.filetransfer import FXF_CREAT, FXF_TRUNC, FXF_WRITE

from quartet_sftpd.archive import Archive
from quartet_sftpd.hostkeys import load_or_create_host_keys
from quartet_sftpd.rules import RuleContext, Step
from quartet_sftpd.tasks import TaskStore

from .fakes import ImmediateReactor, ImmediateThreadPool
from .server import Server, make_key

WRITE_CREATE = FXF_WRITE | FXF_CREAT | FXF_TRUNC
CHUNK = 32 * 1024

XML_STEPS = (
    '[[rule.step]]\nname = "Well-formed"\nclass = "quartet_sftpd.steps.WellFormedXML"\n'
)


class SlowStep(Step):
    """
    A step that takes a while, so that a kill finds tasks QUEUED or RUNNING.
    It is loaded by the server process from this module.
    """

    def execute(self, data: Any, rule_context: RuleContext) -> Any:
        time.sleep(0.15)
        self.info("slow step saw %s bytes", len(data))
        return None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def messages(server: Server, task: dict[str, Any]) -> str:
    return "\n".join(m["text"] for m in server.task(task["name"])["messages"])


def sidecar(partial: Path) -> dict[str, Any]:
    return json.loads(partial.with_name(partial.name + ".json").read_text())


def wait_until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """
    Poll C{check} until it returns something true, and return that.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Replies:
    """
    Collects the replies paramiko reads for requests sent without waiting.
    """

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, str]] = {}

    def _async_response(self, kind: int, msg: paramiko.Message, num: int) -> None:
        code = msg.get_int()
        self.got[num] = (code, msg.get_text())


class RawSFTP:
    """
    A paramiko SFTP session on a socket this test owns, sending requests
    one packet at a time: writes at explicit offsets, pipelined and in any
    order, and a CLOSE that need not wait for its reply.
    """

    def __init__(self, server: Server, user: str, key: Path) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        self.transport = paramiko.Transport(self.sock)
        self.transport.connect(
            username=user, pkey=paramiko.Ed25519Key.from_private_key_file(str(key))
        )
        sftp = paramiko.SFTPClient.from_transport(self.transport)
        assert sftp is not None
        self.sftp = sftp
        self.replies = _Replies()

    def open(self, path: str, flags: int = WRITE_CREATE) -> bytes:
        kind, msg = self.sftp._request(CMD_OPEN, path, flags, SFTPAttributes())
        return msg.get_binary()

    def send_write(self, handle: bytes, offset: int, data: bytes) -> int:
        return self.sftp._async_request(
            self.replies, CMD_WRITE, handle, int64(offset), data
        )

    def wait(self, nums: list[int]) -> dict[int, tuple[int, str]]:
        """
        Read replies until every request in C{nums} has one.
        """
        while not all(n in self.replies.got for n in nums):
            self.sftp._read_response()
        return {n: self.replies.got[n] for n in nums}

    def write_all(self, handle: bytes, pieces: list[tuple[int, bytes]]) -> None:
        """
        Send every write before reading any reply; all must succeed.
        """
        nums = [self.send_write(handle, offset, data) for offset, data in pieces]
        for code, text in self.wait(nums).values():
            assert code == SFTP_OK, text

    def close(self, handle: bytes) -> None:
        """
        CLOSE and wait for the reply; a failure raises paramiko's IOError.
        """
        self.sftp._request(CMD_CLOSE, handle)

    def send_close(self, handle: bytes) -> None:
        self.sftp._async_request(self.replies, CMD_CLOSE, handle)

    def drop(self) -> None:
        """
        Drop the TCP connection at once, without any SSH goodbye.
        """
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.transport.close()

    def quit(self) -> None:
        self.transport.close()


def pieces_of(data: bytes, size: int = CHUNK) -> list[tuple[int, bytes]]:
    return [
        (offset, data[offset : offset + size]) for offset in range(0, len(data), size)
    ]


@pytest.fixture(scope="module")
def host_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    One set of host keys for every server of this module: making an RSA key
    for each would cost more than most of these tests.
    """
    folder = tmp_path_factory.mktemp("host") / "keys"
    load_or_create_host_keys(folder)
    return folder


@pytest.fixture
def servers(tmp_path: Path, host_keys: Path) -> Iterator[Callable[..., Server]]:
    """
    Make servers in temporary folders; each is stopped at the end.
    """
    made: list[Server] = []

    def make(
        settings: dict[str, Any] | None = None, rules: str | None = None
    ) -> Server:
        home = tmp_path / f"server{len(made)}"
        home.mkdir()
        shutil.copytree(host_keys, home / "keys")
        values = dict(settings or {})
        if rules is not None:
            (home / "rules.toml").write_text(rules)
            values["rules"] = "rules.toml"
        server = Server(home, values)
        made.append(server)
        return server

    yield make
    for server in made:
        if server.process is not None and server.process.poll() is None:
            server.stop()


@pytest.fixture
def server(servers: Callable[..., Server], client_key: Path) -> Server:
    instance = servers()
    instance.add_user("partner", client_key)
    instance.start()
    return instance


def archived_bytes(server: Server, folder: str = "EPCIS") -> list[bytes]:
    return [path.read_bytes() for path in server.archived(folder)]


def assert_task_matches(task: dict[str, Any], data: bytes, name: str) -> None:
    assert task["file"] == name
    assert task["size"] == len(data)
    assert task["sha256"] == sha256(data)
    assert Path(task["archive_path"]).read_bytes() == data


# 1. Packet level: offsets, holes, CLOSE and disconnects


def test_reordered_pipelined_writes_archive_the_exact_bytes(
    server: Server, client_key: Path
) -> None:
    """
    Writes sent all at once, in shuffled order, land at their offsets: the
    archive holds exactly the client's bytes and the task's sha256 is theirs.
    """
    data = random.Random(1).randbytes(300_000)
    pieces = pieces_of(data)
    random.Random(2).shuffle(pieces)
    client = RawSFTP(server, "partner", client_key)
    try:
        handle = client.open("/EPCIS/shuffled.bin")
        client.write_all(handle, pieces)
        client.close(handle)
    finally:
        client.quit()

    [task] = server.wait_for_tasks(1)
    assert_task_matches(task, data, "shuffled.bin")
    assert archived_bytes(server) == [data]
    assert server.quarantined() == []


def test_hole_at_close_fails_the_close_and_quarantines(
    server: Server, client_key: Path
) -> None:
    """
    Bytes 64 KiB to 96 KiB never sent: the CLOSE fails with a sentence
    saying the file is incomplete, no task exists, the archive is empty and
    the bytes that did arrive are in quarantine.
    """
    data = random.Random(3).randbytes(160 * 1024)
    pieces = [p for p in pieces_of(data) if p[0] != 2 * CHUNK]
    client = RawSFTP(server, "partner", client_key)
    try:
        handle = client.open("/EPCIS/holey.bin")
        client.write_all(handle, pieces)
        with pytest.raises(IOError) as refused:
            client.close(handle)
    finally:
        client.quit()

    assert "incomplete" in str(refused.value)
    assert f"bytes {2 * CHUNK} to {3 * CHUNK - 1} never arrived" in str(refused.value)
    assert server.tasks() == []
    assert server.archived() == []
    [partial] = server.quarantined()
    kept = partial.read_bytes()
    assert len(kept) == len(data)
    assert kept[: 2 * CHUNK] == data[: 2 * CHUNK]
    assert kept[3 * CHUNK :] == data[3 * CHUNK :]
    meta = sidecar(partial)
    assert (meta["user"], meta["rule"], meta["name"]) == (
        "partner",
        "EPCIS",
        "holey.bin",
    )
    assert "incomplete" in meta["reason"]


def test_reput_after_a_hole_continues_from_the_bytes_before_it(
    server: Server, client_key: Path, tmp_path: Path
) -> None:
    """
    After a CLOSE refused for a hole, the uploader is shown only the bytes
    before the hole, so OpenSSH's reput sends everything after them and the
    task gets exactly the client's file, never the hole's zeros.
    """
    data = random.Random(8).randbytes(160 * 1024)
    pieces = [p for p in pieces_of(data) if p[0] != 2 * CHUNK]
    client = RawSFTP(server, "partner", client_key)
    try:
        handle = client.open("/EPCIS/again.bin")
        client.write_all(handle, pieces)
        with pytest.raises(IOError):
            client.close(handle)
        assert client.sftp.stat("/EPCIS/again.bin").st_size == 2 * CHUNK
    finally:
        client.quit()

    local = tmp_path / "again.bin"
    local.write_bytes(data)
    result = server.sftp("partner", client_key, f"reput {local} EPCIS/again.bin\n")
    assert result.returncode == 0, result.stderr
    [task] = server.wait_for_tasks(1)
    assert_task_matches(task, data, "again.bin")
    assert archived_bytes(server) == [data]
    assert server.quarantined() == []


def test_close_then_immediate_disconnect_completes(
    server: Server, client_key: Path
) -> None:
    """
    A CLOSE sent right before the client drops the TCP connection, without
    waiting for its reply, still completes: one task, the exact bytes.
    """
    data = random.Random(4).randbytes(100_000)
    client = RawSFTP(server, "partner", client_key)
    handle = client.open("/EPCIS/last-word.bin")
    client.write_all(handle, pieces_of(data))
    client.send_close(handle)
    client.drop()

    [task] = server.wait_for_tasks(1)
    assert_task_matches(task, data, "last-word.bin")
    assert archived_bytes(server) == [data]
    assert server.quarantined() == []


def test_disconnect_mid_file_is_an_abort(server: Server, client_key: Path) -> None:
    """
    A connection dropped with the file open: no task, nothing archived, the
    bytes that arrived in quarantine with a sidecar saying whose they were,
    and an "upload aborted" event in the log.
    """
    data = random.Random(5).randbytes(96 * 1024)
    client = RawSFTP(server, "partner", client_key)
    handle = client.open("/EPCIS/cut-off.bin")
    client.write_all(handle, pieces_of(data))
    client.drop()

    [partial] = wait_until(server.quarantined, "the aborted upload's quarantine")
    meta = wait_until(lambda: sidecar(partial), "the sidecar")
    assert partial.read_bytes() == data
    assert meta["user"] == "partner"
    assert meta["rule"] == "EPCIS"
    assert meta["name"] == "cut-off.bin"
    assert meta["bytes_received"] == len(data)
    assert "connection was lost" in meta["reason"]
    assert wait_until(
        lambda: "upload aborted: partner's cut-off.bin" in server.log(), "the log event"
    )
    assert server.tasks() == []
    assert server.archived() == []


def test_server_stop_with_a_file_open_is_an_abort(
    server: Server, client_key: Path
) -> None:
    """
    SIGTERM while a client has a file open: the server stops cleanly, the
    upload is aborted (quarantined, logged, no task), never completed.
    """
    data = random.Random(9).randbytes(64 * 1024)
    client = RawSFTP(server, "partner", client_key)
    try:
        client.write_all(client.open("/EPCIS/open-at-stop.bin"), pieces_of(data))
        # twistd ends a SIGTERM shutdown by dying of the same signal.
        assert server.stop() in (0, -signal.SIGTERM)
    finally:
        client.quit()

    [partial] = server.quarantined()
    assert partial.read_bytes() == data
    meta = sidecar(partial)
    assert (meta["name"], meta["bytes_received"]) == ("open-at-stop.bin", len(data))
    assert meta["reason"] == "the server stopped before the client's CLOSE"
    assert "upload aborted: partner's open-at-stop.bin" in server.log()
    assert server.tasks() == []
    assert server.archived() == []


# 2. Temporary names


def test_temporary_name_is_completed_by_rename(
    server: Server, client_key: Path
) -> None:
    """
    An upload to x.xml.filepart makes no task; RENAME (plain, then
    posix-rename@openssh.com for a second file) to the final name makes
    exactly one task each, under the final name, with the exact bytes.
    """
    first, second = b"<first/>", b"<second/>"
    client = RawSFTP(server, "partner", client_key)
    try:
        client.sftp.putfo(io.BytesIO(first), "/EPCIS/x.xml.filepart", confirm=False)
        client.sftp.putfo(io.BytesIO(second), "/EPCIS/y.xml.filepart", confirm=False)
        assert server.tasks() == []
        assert server.archived() == []
        client.sftp.rename("/EPCIS/x.xml.filepart", "/EPCIS/x.xml")
        client.sftp.posix_rename("/EPCIS/y.xml.filepart", "/EPCIS/y.xml")
        listing = client.sftp.listdir("/EPCIS")
        assert {"x.xml", "y.xml"} <= set(listing)
        assert not {"x.xml.filepart", "y.xml.filepart"} & set(listing)
    finally:
        client.quit()

    tasks = {task["file"]: task for task in server.wait_for_tasks(2)}
    assert sorted(tasks) == ["x.xml", "y.xml"]
    assert_task_matches(tasks["x.xml"], first, "x.xml")
    assert_task_matches(tasks["y.xml"], second, "y.xml")
    assert sorted(p.name.rsplit("-", 5)[0] for p in server.archived()) == [
        "x.xml",
        "y.xml",
    ]
    assert server.quarantined() == []


def test_temporary_name_uploaded_twice_keeps_the_first_in_quarantine(
    server: Server, client_key: Path
) -> None:
    """
    A client that uploads x.xml.filepart again before renaming it (a retry)
    gets one task, with the second upload's bytes; the first upload's bytes
    are quarantined, not left behind in staging.
    """
    client = RawSFTP(server, "partner", client_key)
    try:
        client.sftp.putfo(
            io.BytesIO(b"<try-1/>"), "/EPCIS/x.xml.filepart", confirm=False
        )
        client.sftp.putfo(
            io.BytesIO(b"<try-2/>"), "/EPCIS/x.xml.filepart", confirm=False
        )
        client.sftp.rename("/EPCIS/x.xml.filepart", "/EPCIS/x.xml")
    finally:
        client.quit()

    [task] = server.wait_for_tasks(1)
    assert_task_matches(task, b"<try-2/>", "x.xml")
    [partial] = wait_until(server.quarantined, "the first upload's quarantine")
    assert partial.read_bytes() == b"<try-1/>"
    assert "replaced by a new upload" in sidecar(partial)["reason"]
    assert list((server.archive / ".staging").iterdir()) == []


def test_staged_upload_never_renamed_expires_into_quarantine(
    servers: Callable[..., Server], client_key: Path
) -> None:
    """
    With staged_max_age = 1 s, a .filepart nobody renames is quarantined by
    the periodic refresh, with no task.
    """
    server = servers({"staged_max_age": 1, "reload_interval": 0.5})
    server.add_user("partner", client_key)
    server.start()
    client = RawSFTP(server, "partner", client_key)
    try:
        client.sftp.putfo(
            io.BytesIO(b"<forgotten/>"), "/EPCIS/z.xml.filepart", confirm=False
        )
    finally:
        client.quit()

    [partial] = wait_until(server.quarantined, "the staged upload's expiry", 6)
    meta = wait_until(lambda: sidecar(partial), "the sidecar")
    assert partial.read_bytes() == b"<forgotten/>"
    assert (meta["user"], meta["name"]) == ("partner", "z.xml.filepart")
    assert "never renamed" in meta["reason"]
    assert server.tasks() == []
    assert server.archived() == []


# 3. Zero bytes


def test_zero_byte_upload_with_openssh_is_archived_and_failed_by_the_rule(
    server: Server, client_key: Path, tmp_path: Path
) -> None:
    """
    An empty file put with OpenSSH sftp is a complete upload: archived (0
    bytes) and handed to the rule, whose XML step fails it as empty.
    """
    empty = tmp_path / "marker.xml"
    empty.write_bytes(b"")
    result = server.sftp("partner", client_key, f"put {empty} EPCIS/\n")
    assert result.returncode == 0, result.stderr

    [task] = server.wait_for_tasks(1)
    assert_task_matches(task, b"", "marker.xml")
    assert task["status"] == "FAILED"
    assert "the file is empty" in messages(server, task)
    assert archived_bytes(server) == [b""]


# 4. kill -9 during a burst


def test_kill_9_during_a_burst_loses_no_acknowledged_upload(
    servers: Callable[..., Server], client_key: Path
) -> None:
    """
    Eight clients upload 200 KiB files; the server is killed with SIGKILL
    mid-burst and started again.  Every upload whose CLOSE succeeded is
    archived with its task (tasks cut short run again, marked recovered);
    the archive holds only exact client files; staging leftovers are
    quarantined.
    """
    rules = (
        '[[rule]]\nname = "EPCIS"\n[[rule.step]]\nname = "Slow"\n'
        'class = "tests.test_e2e_integrity.SlowStep"\n'
    )
    server = servers({"rule_workers": 2}, rules=rules)
    server.add_user("partner", client_key)
    server.start()

    files = {
        f"t{t}-{n}.bin": random.Random(t * 100 + n).randbytes(200 * 1024)
        for t in range(8)
        for n in range(6)
    }
    acknowledged: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def upload(thread: int) -> None:
        try:
            client = RawSFTP(server, "partner", client_key)
        except Exception:
            return
        try:
            for n in range(6):
                name = f"t{thread}-{n}.bin"
                # Not putfo(): paramiko's own CLOSE ignores a connection
                # reset, so it can return as if the server had said OK.
                handle = client.open(f"/EPCIS/{name}")
                client.write_all(handle, pieces_of(files[name]))
                client.close(handle)
                with lock:
                    acknowledged.append(name)
                    if len(acknowledged) >= 12:
                        enough.set()
        except Exception:
            return
        finally:
            client.quit()

    # One upload is surely in the middle of its file when the kill comes.
    held = RawSFTP(server, "partner", client_key)
    held_data = random.Random(99).randbytes(64 * 1024)
    held.write_all(held.open("/EPCIS/held-open.bin"), pieces_of(held_data))

    threads = [threading.Thread(target=upload, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    assert enough.wait(30), server.log()
    server.stop(signal.SIGKILL)
    for thread in threads:
        thread.join(30)
    held.quit()
    with lock:
        told_ok = list(acknowledged)

    before = {task["name"]: task["status"] for task in server.tasks()}
    interrupted = {
        name for name, status in before.items() if status in ("QUEUED", "RUNNING")
    }
    leftovers = list((server.archive / ".staging").iterdir())
    assert interrupted, before
    assert leftovers

    server.start()
    tasks = server.wait_for_tasks(len(before), timeout=30)
    assert {task["name"] for task in tasks} == set(before)
    by_file = {task["file"]: task for task in tasks}
    for name in told_ok:
        assert_task_matches(by_file[name], files[name], name)
    # Messages straight from the store: one `tasks show` per task would be
    # dozens of processes.
    store = TaskStore(server.home / "tasks.sqlite3", create=False)
    try:
        for task in tasks:
            assert task["status"] == "FINISHED", task
            stored = store.get(task["name"])
            assert stored is not None
            recovered = [
                m for m in stored.messages if "Recovered after a restart" in m.text
            ]
            assert len(recovered) == (1 if task["name"] in interrupted else 0), stored
    finally:
        store.close()

    exact = {sha256(data) for data in files.values()}
    for path in server.archived():
        assert sha256(path.read_bytes()) in exact, path
    assert list((server.archive / ".staging").iterdir()) == []
    quarantined = server.quarantined()
    assert {p.name for p in leftovers} <= {p.name for p in quarantined}
    for partial in quarantined:
        assert "found in staging at start" in sidecar(partial)["reason"]
    assert held_data in [p.read_bytes() for p in quarantined]
    assert server.log().count("was left by an earlier run") == len(leftovers)


# 5. Full disk


@pytest.fixture
def small_archive(tmp_path: Path) -> Iterator[Path]:
    """
    A 2 MiB tmpfs for the archive; unmounted at the end (a test asks for
    it before its servers, so that they are stopped first).
    """
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0775", "tmpfs", str(folder)],
        check=True,
    )
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_full_disk_fails_the_upload_once_and_the_next_one_fits(
    small_archive: Path, servers: Callable[..., Server], client_key: Path
) -> None:
    """
    A 3 MiB upload into a 2 MiB archive fails with "disk is full" for the
    client and one event in the log; nothing half-written is in the archive,
    and a small upload afterwards, in another session, succeeds.
    """
    server = servers({"archive": str(small_archive)})
    server.add_user("partner", client_key)
    server.start()
    big = random.Random(6).randbytes(3 * 1024 * 1024)
    small = random.Random(7).randbytes(100 * 1024)

    # paramiko's put() pipelines its writes and never reads their replies
    # (it only notices the size afterwards, with confirm=True), so the file
    # is written the plain way, where each WRITE waits for its status.
    client = RawSFTP(server, "partner", client_key)
    try:
        with pytest.raises(IOError) as refused:
            with client.sftp.open("/EPCIS/big.bin", "wb") as remote:
                for offset in range(0, len(big), CHUNK):
                    remote.write(big[offset : offset + CHUNK])
    finally:
        client.quit()
    assert "big.bin was not accepted: the server's disk is full" in str(refused.value)
    assert server.archived() == []
    assert server.tasks() == []
    assert server.log().count("disk is full") == 1, server.log()
    [partial] = wait_until(server.quarantined, "the refused upload's record")
    meta = sidecar(partial)
    assert meta["name"] == "big.bin" and "disk is full" in meta["reason"]
    assert 0 < meta["bytes_received"] < len(big)
    assert meta["bytes_kept"] == 0 and partial.stat().st_size == 0

    other = RawSFTP(server, "partner", client_key)
    try:
        other.sftp.putfo(io.BytesIO(small), "/EPCIS/small.bin", confirm=False)
    finally:
        other.quit()
    [task] = server.wait_for_tasks(1)
    assert_task_matches(task, small, "small.bin")
    assert archived_bytes(server) == [small]
    assert server.log().count("disk is full") == 1, server.log()


# 6. Same name, same time


def test_same_name_at_the_same_time_gives_two_archives(
    server: Server, client_key: Path, tmp_path: Path
) -> None:
    """
    Two users, and two sessions of one user, upload report.bin at once with
    interleaved writes: each upload gets its own archive file and task.
    """
    other_key = make_key(tmp_path, "other")
    server.add_user("other", other_key)
    bodies = [random.Random(10 + i).randbytes(128 * 1024) for i in range(3)]
    clients = [
        RawSFTP(server, "partner", client_key),
        RawSFTP(server, "partner", client_key),
        RawSFTP(server, "other", other_key),
    ]
    try:
        handles = [c.open("/EPCIS/report.bin") for c in clients]
        for offset in range(0, 128 * 1024, CHUNK):
            for client, handle, body in zip(clients, handles, bodies, strict=True):
                client.write_all(handle, [(offset, body[offset : offset + CHUNK])])
        for client, handle in zip(clients, handles, strict=True):
            client.close(handle)
    finally:
        for client in clients:
            client.quit()

    tasks = server.wait_for_tasks(3)
    assert sorted(task["user"] for task in tasks) == ["other", "partner", "partner"]
    assert sorted(task["sha256"] for task in tasks) == sorted(sha256(b) for b in bodies)
    for task in tasks:
        assert task["file"] == "report.bin"
        assert sha256(Path(task["archive_path"]).read_bytes()) == task["sha256"]
    assert sorted(archived_bytes(server)) == sorted(bodies)


# 7. Rule gone


def test_rule_removed_between_open_and_close(
    servers: Callable[..., Server], client_key: Path
) -> None:
    """
    The Temp rule disappears while a file is open in it: the CLOSE still
    archives the bytes and records a FAILED task saying the rule no longer
    exists; a new OPEN in /Temp fails with a sentence naming the folders.
    """
    epcis = '[[rule]]\nname = "EPCIS"\n' + XML_STEPS
    temp = '[[rule]]\nname = "Temp"\n' + XML_STEPS
    server = servers({"reload_interval": 0.5}, rules=epcis + temp)
    server.add_user("partner", client_key)
    server.start()
    data = b"<late/>"

    client = RawSFTP(server, "partner", client_key)
    try:
        handle = client.open("/Temp/late.xml")
        client.write_all(handle, [(0, data)])
        (server.home / "rules.toml").write_text(epcis)
        wait_until(lambda: "rules reloaded" in server.log(), "the rules reload")
        client.close(handle)
        with pytest.raises(IOError) as refused:
            client.open("/Temp/later.xml")
    finally:
        client.quit()

    assert "There is no folder /Temp." in str(refused.value)
    assert "Upload files into one of the rule folders: /EPCIS." in str(refused.value)
    [task] = server.wait_for_tasks(1)
    assert_task_matches(task, data, "late.xml")
    assert task["status"] == "FAILED"
    assert "no longer exists" in messages(server, task)
    assert archived_bytes(server, "Temp") == [data]


# 8. Quarantine expiry


def test_prune_quarantine_removes_only_old_partials(tmp_path: Path) -> None:
    """
    Uploads quarantined longer ago than the maximum age go, with their
    sidecars; younger ones stay.  The age counts from quarantining (the
    sidecar's time), not from the file's last write; a file without a
    sidecar counts from its last write, and a sidecar without its file is
    removed once old.
    """
    archive = Archive(
        tmp_path / "archive",
        gid=os.getegid(),
        threadpool=ImmediateThreadPool(),  # type: ignore[arg-type]
        reactor=ImmediateReactor(),
    )
    archive.prepare()
    now = 1_000_000.0

    def make(name: str, written: float, quarantined: float | None) -> None:
        partial = archive.quarantine / name
        partial.write_bytes(b"partial bytes")
        os.utime(partial, (now - written, now - written))
        if quarantined is not None:
            meta = partial.with_name(name + ".json")
            meta.write_text("{}")
            os.utime(meta, (now - quarantined, now - quarantined))

    make("old", written=7200, quarantined=3600)
    make("written-long-ago", written=7200, quarantined=60)
    make("young", written=60, quarantined=60)
    make("old-no-sidecar", written=3600, quarantined=None)
    orphan = archive.quarantine / "gone.json"
    orphan.write_text("{}")
    os.utime(orphan, (now - 3600, now - 3600))

    removed: list[int] = []
    archive.prune_quarantine(600.0, now=now).addCallback(removed.append)

    assert removed == [2]
    assert sorted(p.name for p in archive.quarantine.iterdir()) == [
        "written-long-ago",
        "written-long-ago.json",
        "young",
        "young.json",
    ]
