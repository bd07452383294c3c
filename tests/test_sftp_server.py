"""
The SFTP protocol's policy, tested without sockets: a packet-level client
talks to the server protocol over a StringTransport, with a real archive in
a temporary folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest
from twisted.conch.ssh import filetransfer as fx

from quartet_sftpd.archive import PARALLEL_COMMIT, Archive
from quartet_sftpd.digest import FOLLOW_STEP
from quartet_sftpd.sftp.server import EXTENSIONS
from quartet_sftpd.sftp.wire import string, u32, u64

from .fakes import HeldThreadPool
from .sftp_client import WRITE_CREATE, Harness

EPCIS = Path(__file__).parent / "data" / "epcis" / "epcis.xml"


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path, rules=("EPCIS", "Shipping Notices", "A-B"))


def test_version_advertises_exactly_the_implemented_extensions(
    harness: Harness,
) -> None:
    """
    INIT is answered with version 3 and the extensions this server
    implements, and nothing else (no hardlink).
    """
    client = harness.connect()
    assert client.init() == EXTENSIONS
    assert b"hardlink@openssh.com" not in EXTENSIONS


def test_root_lists_one_folder_per_rule(harness: Harness) -> None:
    """
    / lists ., .. and one folder per rule, spaces shown as dashes, a rule
    with its own dashes reachable; longnames start with d as FileZilla needs.
    """
    client = harness.connect()
    entries = client.listdir("/")
    names = [name for name, _, _ in entries]
    assert names == [".", "..", "A-B", "EPCIS", "Shipping-Notices"]
    for name, long, attrs in entries:
        assert long.startswith("d"), long
        assert stat.S_ISDIR(attrs["permissions"])  # type: ignore[arg-type]
        assert long.endswith(" " + name)


def test_complete_upload_is_archived_and_submitted(harness: Harness) -> None:
    """
    OPEN, WRITE, CLOSE: the archive holds exactly the bytes, mode 0640, and
    the backend got the upload with its sha256 before CLOSE was answered.
    """
    data = EPCIS.read_bytes()
    client = harness.connect()
    code, message = client.upload("/EPCIS/epcis.xml", data, chunk=4000)

    assert code == fx.FX_OK
    assert "task-1" in message
    [archived] = harness.archived()
    assert archived.read_bytes() == data
    assert archived.name.startswith("epcis.xml-")
    assert stat.S_IMODE(archived.stat().st_mode) == 0o640
    [upload] = harness.backend.submitted
    assert (upload.user, upload.rule, upload.name) == ("alice", "EPCIS", "epcis.xml")
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    assert upload.size == len(data)
    assert upload.archive_path == archived


class FailingSyncArchive(Archive):
    """
    An archive on a disk whose fsync reports an input/output error.
    """

    def _sync(self, fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("size", [10_000, PARALLEL_COMMIT + 12_345])
def test_uploads_small_and_large_are_archived_exactly(
    harness: Harness, size: int
) -> None:
    """
    A small upload is committed in one step, a large one with its fsync and
    hashing overlapped; both archive exactly the bytes with their sha256
    and mode, and leave no descriptor open.
    """
    data = os.urandom(size)
    before = open_descriptors()
    code, _ = harness.connect().upload("/EPCIS/big.bin", data, chunk=256 * 1024)

    assert code == fx.FX_OK
    [archived] = harness.archived()
    assert archived.read_bytes() == data
    assert stat.S_IMODE(archived.stat().st_mode) == 0o640
    [upload] = harness.backend.submitted
    assert (upload.size, upload.sha256) == (size, hashlib.sha256(data).hexdigest())
    assert open_descriptors() == before


@pytest.mark.parametrize("size", [10_000, PARALLEL_COMMIT + 12_345])
def test_failed_fsync_fails_the_close_and_quarantines(
    tmp_path: Path, size: int
) -> None:
    """
    When the disk cannot flush an upload, the CLOSE fails with a sentence,
    nothing reaches the archive or the backend, the bytes are quarantined,
    and no descriptor is left open.
    """
    harness = Harness(tmp_path, archive_class=FailingSyncArchive)
    data = os.urandom(size)
    before = open_descriptors()
    code, message = harness.connect().upload("/EPCIS/big.bin", data, chunk=256 * 1024)

    assert code == fx.FX_FAILURE
    assert message == (
        "big.bin was not accepted: the server's disk reported an input/output "
        "error. Nothing was processed; try again later."
    )
    assert harness.archived() == [] and harness.backend.submitted == []
    [partial] = harness.quarantined()
    assert partial.read_bytes() == data
    assert open_descriptors() == before


def test_large_upload_is_hashed_as_it_arrives(tmp_path: Path) -> None:
    """
    The bytes of a large upload are hashed in the pool while it arrives; a
    CLOSE, or a lost connection, while a step is still being hashed waits
    for it before the descriptor is handed on, and the archive and the
    quarantine get exactly the bytes sent, the archive with their sha256.
    """
    pool = HeldThreadPool()
    harness = Harness(tmp_path, threadpool=pool)
    data = os.urandom(FOLLOW_STEP + 1000)
    client = harness.connect()

    handle = client.open("/EPCIS/big.bin")
    client.write_all(handle, data, 256 * 1024)
    assert len(pool.waiting) == 1  # the first step, not yet run
    client.request(fx.FXP_CLOSE, string(handle))
    assert pool.run_all() == 2  # the step, then the commit
    assert client.one().status()[0] == fx.FX_OK
    [archived] = harness.archived()
    assert archived.read_bytes() == data
    [upload] = harness.backend.submitted
    assert upload.sha256 == hashlib.sha256(data).hexdigest()

    handle = client.open("/EPCIS/cut.bin")
    client.write_all(handle, data[:FOLLOW_STEP], 256 * 1024)
    assert len(pool.waiting) == 1
    client.protocol.connectionLost()
    assert harness.quarantined() == []
    pool.run_all()
    [partial] = harness.quarantined()
    assert partial.read_bytes() == data[:FOLLOW_STEP]


def test_large_temporary_upload_keeps_its_hash_for_the_rename(tmp_path: Path) -> None:
    """
    A large C{.filepart} upload is hashed as it arrives; the RENAME that
    completes it finishes that hash on the staged file, and the task gets
    the sha256 of exactly the bytes sent.
    """
    pool = HeldThreadPool()
    harness = Harness(tmp_path, threadpool=pool)
    data = os.urandom(FOLLOW_STEP + 1000)
    client = harness.connect()

    handle = client.open("/EPCIS/big.bin.filepart")
    client.write_all(handle, data, 256 * 1024)
    client.request(fx.FXP_CLOSE, string(handle))
    pool.run_all()
    assert client.one().status()[0] == fx.FX_OK
    client.request(
        fx.FXP_RENAME, string(b"/EPCIS/big.bin.filepart"), string(b"/EPCIS/big.bin")
    )
    pool.run_all()
    assert client.one().status()[0] == fx.FX_OK

    [archived] = harness.archived()
    assert archived.name.startswith("big.bin-") and archived.read_bytes() == data
    [upload] = harness.backend.submitted
    assert upload.sha256 == hashlib.sha256(data).hexdigest()


def test_writes_out_of_order_land_at_their_offsets(harness: Harness) -> None:
    """
    Pipelined writes that arrive in any order give the exact file.
    """
    data = os.urandom(100_000)
    client = harness.connect()
    handle = client.open("/EPCIS/random.bin")
    chunks = [(o, data[o : o + 7000]) for o in range(0, len(data), 7000)]
    for offset, chunk in reversed(chunks):
        assert client.write(handle, offset, chunk)[0] == fx.FX_OK
    assert client.close(handle)[0] == fx.FX_OK
    assert harness.archived()[0].read_bytes() == data
    assert harness.backend.submitted[0].sha256 == hashlib.sha256(data).hexdigest()


def test_hole_fails_close_and_quarantines(harness: Harness) -> None:
    """
    A CLOSE with bytes missing below the size fails with a sentence, no task
    is made and the bytes go to quarantine.
    """
    client = harness.connect()
    handle = client.open("/EPCIS/holey.xml")
    client.write(handle, 0, b"a" * 100)
    client.write(handle, 200, b"b" * 100)
    code, message = client.close(handle)

    assert code == fx.FX_FAILURE
    assert "incomplete: bytes 100 to 199 never arrived" in message
    assert harness.backend.submitted == []
    assert harness.archived() == []
    [partial] = harness.quarantined()
    meta = json.loads(partial.with_name(partial.name + ".json").read_text())
    assert meta["user"] == "alice" and meta["name"] == "holey.xml"
    assert meta["bytes_received"] == 300


def test_connection_lost_before_close_is_an_abort(harness: Harness) -> None:
    """
    Losing the connection with a file open runs no rule and archives
    nothing: the partial bytes are quarantined with who, what, how much and
    when, readable by the server's user only.
    """
    client = harness.connect()
    handle = client.open("/EPCIS/cut.xml")
    client.write(handle, 0, b"<half")
    client.protocol.connectionLost()

    assert harness.backend.submitted == []
    assert harness.archived() == []
    [partial] = harness.quarantined()
    assert partial.read_bytes() == b"<half"
    sidecar = partial.with_name(partial.name + ".json")
    meta = json.loads(sidecar.read_text())
    assert meta["rule"] == "EPCIS"
    assert meta["bytes_received"] == 5
    assert "connection was lost" in meta["reason"]
    assert meta["quarantined_utc"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(meta["quarantined"])
    )
    assert stat.S_IMODE(partial.stat().st_mode) == 0o600
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600


def test_close_then_connection_lost_still_completes(harness: Harness) -> None:
    """
    A CLOSE that arrived just before the connection dropped completes.
    """
    client = harness.connect()
    handle = client.open("/EPCIS/last.xml")
    client.write(handle, 0, b"<x/>")
    client.request(fx.FXP_CLOSE, string(handle))
    client.protocol.connectionLost()

    [upload] = harness.backend.submitted
    assert upload.name == "last.xml"
    assert harness.quarantined() == []


def test_temporary_name_is_staged_and_rename_completes(harness: Harness) -> None:
    """
    WinSCP's habit: upload x.filepart, RENAME to x, SETSTAT.  Only the rename
    runs the rule, once, under the final name.
    """
    client = harness.connect()
    assert client.upload("/EPCIS/report.xml.filepart", b"<report/>")[0] == fx.FX_OK
    assert harness.backend.submitted == []

    client.request(
        fx.FXP_RENAME,
        string(b"/EPCIS/report.xml.filepart"),
        string(b"/EPCIS/report.xml"),
    )
    code, message = client.one().status()
    assert code == fx.FX_OK, message
    [upload] = harness.backend.submitted
    assert upload.name == "report.xml"
    assert upload.archive_path.read_bytes() == b"<report/>"

    # SETSTAT after the rename succeeds and shows in STAT.
    client.request(
        fx.FXP_SETSTAT,
        string(b"/EPCIS/report.xml"),
        u32(fx.FILEXFER_ATTR_ACMODTIME) + u32(1_000_000) + u32(1_000_000),
    )
    assert client.one().status()[0] == fx.FX_OK
    reply = client.path_request(fx.FXP_STAT, "/EPCIS/report.xml")
    attrs = reply.body.attrs()
    assert attrs["mtime"] == 1_000_000 and attrs["size"] == 9


def test_zero_byte_upload_is_complete(harness: Harness) -> None:
    """
    An empty file is an upload like any other: archived and submitted.
    """
    client = harness.connect()
    handle = client.open("/EPCIS/empty.xml")
    assert client.close(handle)[0] == fx.FX_OK
    [upload] = harness.backend.submitted
    assert upload.size == 0
    assert upload.sha256 == hashlib.sha256(b"").hexdigest()


def test_uploader_sees_recent_upload_and_others_do_not(harness: Harness) -> None:
    """
    A completed upload is listed and STATable for its uploader with its
    final size; another user sees an empty folder.
    """
    alice = harness.connect("alice")
    alice.upload("/EPCIS/mine.xml", b"12345")
    names = [(n, a.get("size")) for n, _, a in alice.listdir("/EPCIS")]
    assert ("mine.xml", 5) in names

    bob = harness.connect("bob")
    assert [n for n, _, _ in bob.listdir("/EPCIS")] == [".", "..", "@results"]
    code, _ = bob.path_request(fx.FXP_STAT, "/EPCIS/mine.xml").status()
    assert code == fx.FX_NO_SUCH_FILE


def test_same_name_twice_gives_two_archives(harness: Harness) -> None:
    """
    Two sessions uploading the same name at once get two archives, each with
    its own bytes.
    """
    one, two = harness.connect("alice"), harness.connect("bob")
    h1, h2 = one.open("/EPCIS/same.xml"), two.open("/EPCIS/same.xml")
    one.write(h1, 0, b"first")
    two.write(h2, 0, b"second")
    assert two.close(h2)[0] == fx.FX_OK
    assert one.close(h1)[0] == fx.FX_OK
    contents = sorted(p.read_bytes() for p in harness.archived())
    assert contents == [b"first", b"second"]


def test_fstat_reports_bytes_received(harness: Harness) -> None:
    client = harness.connect()
    handle = client.open("/EPCIS/f.bin")
    client.write(handle, 0, b"x" * 1234)
    client.request(fx.FXP_FSTAT, string(handle))
    reply = client.one()
    attrs = reply.body.attrs()
    assert attrs["size"] == 1234
    assert stat.S_ISREG(attrs["permissions"])  # type: ignore[arg-type]


def test_fsetstat_size_truncates_like_scp(harness: Harness) -> None:
    """
    OpenSSH scp opens without TRUNC, writes, then sets the final size.
    """
    client = harness.connect()
    handle = client.open("/EPCIS/scp.bin", fx.FXF_WRITE | fx.FXF_CREAT)
    client.write(handle, 0, b"abcdefgh")
    client.request(fx.FXP_FSETSTAT, string(handle), u32(fx.FILEXFER_ATTR_SIZE) + u64(5))
    assert client.one().status()[0] == fx.FX_OK
    assert client.close(handle)[0] == fx.FX_OK
    assert harness.archived()[0].read_bytes() == b"abcde"


@pytest.mark.parametrize(
    "path, expected",
    [
        ("", "/"),
        (".", "/"),
        ("/EPCIS/../EPCIS/./x.xml", "/EPCIS/x.xml"),
        ("../../..", "/"),
        ("EPCIS", "/EPCIS"),
        ("/nothing-here", "/nothing-here"),
    ],
)
def test_realpath_follows_openssh(harness: Harness, path: str, expected: str) -> None:
    assert harness.connect().realpath(path) == expected


def test_realpath_missing_parent_is_no_such_file(harness: Harness) -> None:
    code, message = harness.connect().realpath("/nowhere/x.xml")
    assert code == fx.FX_NO_SUCH_FILE
    assert "/EPCIS" in message


@pytest.mark.parametrize("path", ["/etc/passwd", "../../tmp/x", "/x.xml", "/EPCIS/a/b"])
def test_uploads_outside_rule_folders_are_refused(harness: Harness, path: str) -> None:
    """
    Nothing outside the rule folders is reachable; the refusal names where
    files go (a file in the root itself is a permission refusal, not a
    missing folder).
    """
    code, message = harness.connect().open_status(path)
    if path == "/x.xml":
        assert code == fx.FX_PERMISSION_DENIED
        assert "Files cannot be uploaded into / itself." in message
    else:
        assert code in (fx.FX_NO_SUCH_FILE, fx.FX_FAILURE)
    assert "EPCIS" in message
    assert harness.backend.submitted == []


def test_names_that_cannot_be_stored_are_refused(harness: Harness) -> None:
    client = harness.connect()
    for name, words in [
        (b"/EPCIS/a\\b.xml", "backslash"),
        (b"/EPCIS/" + b"n" * 256, "longer than 255"),
        (b"/EPCIS/\xff\xfe.xml", "UTF-8"),
        (b"/EPCIS/a\x00b", "NUL"),
    ]:
        client.request(fx.FXP_OPEN, string(name), u32(WRITE_CREATE), u32(0))
        code, message = client.one().status()
        assert code == fx.FX_FAILURE
        assert words in message


def test_unicode_names_are_kept(harness: Harness) -> None:
    client = harness.connect()
    name = "Lieferschein ÄÖÜ 出荷.xml"
    assert client.upload(f"/EPCIS/{name}", b"<x/>")[0] == fx.FX_OK
    assert harness.backend.submitted[0].name == name
    assert harness.archived()[0].name.startswith(name + "-")


def test_long_name_fits_the_archive(harness: Harness) -> None:
    """
    A 255-byte name still archives: shortened, with its unique suffix, while
    the task keeps the full name.
    """
    name = "é" * 127 + "x"
    assert len(name.encode()) == 255
    client = harness.connect()
    assert client.upload(f"/EPCIS/{name}", b"1")[0] == fx.FX_OK
    assert harness.backend.submitted[0].name == name
    assert len(harness.archived()[0].name.encode()) <= 255


def test_every_malformed_request_gets_a_reply(harness: Harness) -> None:
    """
    Trailing bytes, a bad handle, an unknown extension or packet type: the
    client always gets a status, never silence or a traceback.
    """
    client = harness.connect()
    client.init()
    # Trailing bytes are ignored, as OpenSSH's server does (rclone sends some).
    client.request(fx.FXP_REALPATH, string(b"/"), b"junk")
    assert client.one().kind == fx.FXP_NAME
    client.request(fx.FXP_CLOSE, string(b"no-such-handle"))
    code, message = client.one().status()
    assert code == fx.FX_FAILURE and "handle" in message
    client.request(
        fx.FXP_EXTENDED, string(b"hardlink@openssh.com"), string(b"a"), string(b"b")
    )
    assert client.one().status()[0] == fx.FX_OP_UNSUPPORTED
    client.request(fx.FXP_EXTENDED, string(b"nonsense@example.com"))
    assert client.one().status()[0] == fx.FX_OP_UNSUPPORTED
    client.request(99)
    assert client.one().status()[0] == fx.FX_OP_UNSUPPORTED
    client.request(fx.FXP_WRITE, b"\x00\x00")
    code, message = client.one().status()
    assert code == fx.FX_BAD_MESSAGE
    assert "Traceback" not in message


def test_folders_cannot_be_made_or_removed(harness: Harness) -> None:
    client = harness.connect()
    reply = client.path_request(fx.FXP_MKDIR, "/new")
    assert reply.kind == fx.FXP_STATUS
    client.replies()
    client.request(fx.FXP_MKDIR, string(b"/new"), u32(0))
    code, message = client.one().status()
    assert code == fx.FX_PERMISSION_DENIED
    assert "Upload files into one of the rule folders" in message
    code, _ = client.path_request(fx.FXP_RMDIR, "/EPCIS").status()
    assert code == fx.FX_PERMISSION_DENIED


def test_reading_is_refused(harness: Harness) -> None:
    code, message = harness.connect().open_status("/EPCIS/x.xml", fx.FXF_READ)
    assert code == fx.FX_PERMISSION_DENIED
    assert "only receives files" in message


def test_disk_full_fails_write_with_reason(harness: Harness, tmp_path: Path) -> None:
    """
    A write the disk refuses (here /dev/full, which always answers ENOSPC)
    fails with a readable status, the CLOSE fails too, and nothing reaches
    the archive or the backend.
    """
    client = harness.connect()
    handle = client.open("/EPCIS/full.xml")
    upload = client.protocol._handles[handle]
    os.close(upload.fd)  # type: ignore[union-attr]
    upload.fd = os.open("/dev/full", os.O_WRONLY)  # type: ignore[union-attr]

    code, message = client.write(handle, 0, b"data")
    assert code == fx.FX_FAILURE
    assert "disk is full" in message
    code, message = client.close(handle)
    assert code == fx.FX_FAILURE and "disk is full" in message
    assert harness.backend.submitted == []
    assert harness.archived() == []


def test_statvfs_and_limits_extensions(harness: Harness) -> None:
    client = harness.connect()
    client.request(fx.FXP_EXTENDED, string(b"statvfs@openssh.com"), string(b"/EPCIS"))
    reply = client.one()
    assert reply.kind == fx.FXP_EXTENDED_REPLY
    block_size = reply.body.u64()
    assert block_size == os.statvfs(harness.archive.root).f_bsize
    client.request(fx.FXP_EXTENDED, string(b"limits@openssh.com"))
    reply = client.one()
    assert reply.kind == fx.FXP_EXTENDED_REPLY
    max_packet, max_read, max_write, max_handles = (reply.body.u64() for _ in range(4))
    assert max_write >= 32768 and max_handles == 8


def test_results_folder_lists_and_serves_only_own_results(harness: Harness) -> None:
    """
    /EPCIS/@results lists one read-only text file per task of the user; the
    file can be downloaded; writing, removing and renaming are refused.
    """
    from quartet_sftpd.tasks import TaskStatus

    from .test_results import task as make_task

    client = harness.connect("acme")
    client.session.tasks = [
        make_task("t1", "good.xml", TaskStatus.FINISHED, 1_796_326_408.0),
        make_task("t2", "bad.xml", TaskStatus.FAILED, 1_796_326_468.0),
    ]
    entries = client.listdir("/EPCIS/@results")
    names = [n for n, _, _ in entries]
    assert names == [
        ".",
        "..",
        "20261203T193328Z FINISHED good.xml.txt",
        "20261203T193428Z FAILED bad.xml.txt",
    ]
    assert all(long.startswith("-r--r--r--") for _, long, _ in entries[2:])

    path = "/EPCIS/@results/20261203T193428Z FAILED bad.xml.txt"
    client.request(fx.FXP_OPEN, string(path.encode()), u32(fx.FXF_READ), u32(0))
    handle = client.one().body.string()
    client.request(fx.FXP_READ, string(handle), u64(0), u32(65536))
    reply = client.one()
    assert reply.kind == fx.FXP_DATA
    text = reply.body.string().decode()
    assert "Status:    FAILED" in text and "Step 'Summary' failed: boom." in text
    assert client.close(handle)[0] == fx.FX_OK

    assert client.open_status(path)[0] == fx.FX_PERMISSION_DENIED
    assert (
        client.path_request(fx.FXP_REMOVE, path).status()[0] == fx.FX_PERMISSION_DENIED
    )
    code, message = client.open_status("/EPCIS/@results")
    assert code == fx.FX_FAILURE
    code, message = client.open_status("/EPCIS/@results/new.xml")
    assert code == fx.FX_PERMISSION_DENIED and "read-only" in message

    other = harness.connect("other")
    assert [n for n, _, _ in other.listdir("/EPCIS/@results")] == [".", ".."]


def test_uploads_named_like_the_results_folder_are_refused(harness: Harness) -> None:
    code, message = harness.connect().open_status("/EPCIS/@results")
    assert code == fx.FX_FAILURE


def test_too_many_open_files_is_refused_before_staging(harness: Harness) -> None:
    """
    Past max_handles an OPEN is refused with a sentence, and leaves no staging
    file or quarantined upload behind.
    """
    client = harness.connect()
    for number in range(client.session.max_handles):
        client.open(f"/EPCIS/f{number}.xml")
    code, message = client.open_status("/EPCIS/one-too-many.xml")
    assert code == fx.FX_FAILURE
    assert "Too many open files" in message
    assert len(list(harness.archive.staging.iterdir())) == client.session.max_handles
    assert harness.quarantined() == []
