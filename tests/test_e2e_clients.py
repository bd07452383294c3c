"""
The SFTP clients partners really use, against the real twistd process: each
test uploads with one client the way its users do, then checks what an
operator would: the archive holds exactly the bytes sent, and the task store
has one task per upload, under the client's name, with the bytes' SHA-256.

WinSCP (Windows only) and FileZilla are desktop programs a test cannot
drive, so their habits are replayed with paramiko, request by request.
paramiko's own C{put(confirm=True)} is in C{test_e2e_main.py}.

One server serves the whole module (each test uses its own file names), so
that starting servers does not dominate the run time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest

from .server import Server, make_key, require

USER = "partner"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clients")


@pytest.fixture(scope="module")
def key(home: Path) -> Path:
    folder = home / "client"
    folder.mkdir()
    return make_key(folder)


@pytest.fixture(scope="module")
def server(home: Path, key: Path) -> Iterator[Server]:
    """
    One running server for the module, with user C{partner} holding C{key}.
    """
    folder = home / "server"
    folder.mkdir()
    instance = Server(folder)
    instance.add_user(USER, key)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    return folder


def write(
    folder: Path, name: str, size: int = 0, text: bytes = b""
) -> tuple[Path, bytes]:
    """
    A local file of random bytes (or C{text}); its path and content.
    """
    data = text or os.urandom(size)
    path = folder / name
    path.write_bytes(data)
    return path, data


def host_key_line(server: Server, kind: str = "ed25519") -> str:
    """
    The server's public host key, as C{known_hosts} line for its port.
    """
    public = (server.home / "keys" / f"ssh_host_{kind}_key.pub").read_text().split()
    return f"[127.0.0.1]:{server.port} {public[0]} {public[1]}\n"


def known_hosts(server: Server, folder: Path) -> Path:
    """
    A C{known_hosts} file with the server's Ed25519 and RSA host keys (Go's
    SSH library, in rclone, may choose either).
    """
    path = folder / "known_hosts"
    path.write_text(host_key_line(server) + host_key_line(server, "rsa"))
    return path


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 60)
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def tasks_for(
    server: Server, name: str, count: int, timeout: float = 20.0
) -> list[dict]:
    """
    Wait until C{count} tasks exist for uploads named C{name} and all ended;
    fail if more appear.
    """
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = [t for t in server.tasks() if t["file"] == name]
        ended = [t for t in found if t["status"] in ("FINISHED", "FAILED")]
        if len(found) >= count and len(ended) == len(found):
            break
        time.sleep(0.1)
    assert len(found) == count, f"{name}: expected {count} tasks, have {found}"
    return found


def assert_received(server: Server, name: str, *contents: bytes) -> list[dict]:
    """
    Each of C{contents} was received under C{name}, in any order: one task
    each, in rule EPCIS from user partner, with the right SHA-256, and an
    archived copy holding exactly those bytes; nothing else under that name.
    """
    tasks = tasks_for(server, name, len(contents))
    expected = sorted(hashlib.sha256(c).hexdigest() for c in contents)
    assert sorted(t["sha256"] for t in tasks) == expected
    by_digest = {hashlib.sha256(c).hexdigest(): c for c in contents}
    for task in tasks:
        assert task["rule"] == "EPCIS" and task["user"] == USER
        archived = Path(task["archive_path"])
        assert archived.parent == server.archive / "EPCIS"
        assert archived.read_bytes() == by_digest[task["sha256"]]
    prefix = name.encode()[:218].decode("utf-8", "ignore") + "-"
    copies = [p for p in server.archived() if p.name.startswith(prefix)]
    assert len(copies) == len(contents), copies
    return tasks


def quarantined_names(server: Server) -> list[str]:
    """
    The client names of the uploads in quarantine, from their records.
    """
    return sorted(
        json.loads(p.with_name(p.name + ".json").read_text())["name"]
        for p in server.quarantined()
    )


def wait_for_partial(
    server: Server, key: Path, name: str, timeout: float = 10.0
) -> int:
    """
    Wait until an aborted upload is listed to its uploader with the bytes
    that arrived; return that size.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        transport = connect(server, key)
        try:
            client = paramiko.SFTPClient.from_transport(transport)
            assert client is not None
            size = client.stat(f"/EPCIS/{name}").st_size or 0
        finally:
            transport.close()
        if size and name in quarantined_names(server):
            return size
        time.sleep(0.1)
    raise AssertionError(f"{name} was not listed as a partial upload\n{server.log()}")


def ssh_command(server: Server, key: Path, folder: Path) -> list[str]:
    """
    C{ssh} options that trust exactly the server's host key and print every
    warning (LogLevel stays at its default).
    """
    return [
        "-i",
        str(key),
        "-o",
        f"UserKnownHostsFile={known_hosts(server, folder)}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
    ]


def sftp(
    server: Server, key: Path, folder: Path, commands: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return run(
        [require("sftp"), "-b", "-", "-P", str(server.port), *extra]
        + ssh_command(server, key, folder)
        + [f"{USER}@127.0.0.1"],
        input=commands,
    )


# OpenSSH


def test_openssh_sftp_commands(server: Server, key: Path, files: Path) -> None:
    """
    OpenSSH 9 sftp with no algorithm options and its default log level
    connects without a single warning; put -f (fsync@openssh.com), put -p
    (FSETSTAT of times), ls -l, rename of a staged temporary name
    (posix-rename@openssh.com), df (statvfs@openssh.com) and the refused hard
    link all behave, and each put arrives once with its bytes.
    """
    plain, plain_data = write(files, "sftp-plain.xml", 70_000)
    kept, kept_data = write(files, "sftp-times.xml", 5_000)
    os.utime(kept, (1_577_923_200, 1_577_923_200))  # 2020-01-02
    staged, staged_data = write(files, "sftp-staged.xml", 3_000)
    result = sftp(
        server,
        key,
        files,
        f"put -f {plain} EPCIS/\n"
        f"put -p {kept} EPCIS/\n"
        f"put {staged} EPCIS/sftp-staged.xml.filepart\n"
        "rename EPCIS/sftp-staged.xml.filepart EPCIS/sftp-staged.xml\n"
        "-ln EPCIS/sftp-plain.xml EPCIS/sftp-link.xml\n"
        "ls -l EPCIS\n"
        "df -h EPCIS\n",
    )
    assert result.returncode == 0, result.stderr
    # The only line on stderr is sftp's own report of the refused hard link.
    assert result.stderr.splitlines() == [
        "Server does not support hardlink@openssh.com extension"
    ]
    lines = {line.split()[-1]: line for line in result.stdout.splitlines()}
    assert lines["sftp-plain.xml"].startswith("-rw-r-----")
    assert lines["sftp-plain.xml"].split()[4] == "70000"
    assert "Jan 02  2020" in lines["sftp-times.xml"]
    assert "sftp-staged.xml" in lines
    assert "sftp-staged.xml.filepart" not in lines
    assert "sftp-link.xml" not in lines
    assert "%Capacity" in result.stdout
    assert_received(server, "sftp-plain.xml", plain_data)
    assert_received(server, "sftp-times.xml", kept_data)
    assert_received(server, "sftp-staged.xml", staged_data)
    tasks_for(server, "sftp-staged.xml.filepart", 0)


def test_openssh_reput_continues_an_interrupted_put(
    server: Server, key: Path, files: Path
) -> None:
    """
    A throttled put killed midway leaves a partial upload, listed with the
    bytes that arrived; reput sends the rest, and the archive holds the whole
    file, once, with no gap and nothing left in quarantine.
    """
    big, data = write(files, "sftp-reput.bin", 4_000_000)
    client = subprocess.Popen(
        [require("sftp"), "-b", "-", "-l", "2000", "-P", str(server.port)]
        + ssh_command(server, key, files)
        + [f"{USER}@127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert client.stdin is not None
    client.stdin.write(f"put {big} EPCIS/\n".encode())
    client.stdin.flush()
    # Kill it once some bytes are on the server's disk, however slowly the
    # (shared) machine started it.
    staging = server.archive / ".staging"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(p.stat().st_size > 200_000 for p in staging.iterdir()):
            break
        time.sleep(0.05)
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()

    size = wait_for_partial(server, key, "sftp-reput.bin")
    assert 0 < size < len(data)
    listing = sftp(server, key, files, "ls -l EPCIS/sftp-reput.bin\n")
    assert listing.stdout.split()[-5] == str(size), listing.stdout

    result = sftp(server, key, files, f"reput {big} EPCIS/\n")
    assert result.returncode == 0, result.stderr
    assert_received(server, "sftp-reput.bin", data)
    assert "sftp-reput.bin" not in quarantined_names(server)
    assert "resuming partner's upload of sftp-reput.bin" in server.log()


def test_openssh_scp_new_and_existing_names(
    server: Server, key: Path, files: Path
) -> None:
    """
    scp in SFTP mode opens without TRUNC, writes and sets the size with
    FSETSTAT; a second and a third copy under the same name (longer, then
    shorter) are archived exactly as sent, and scp exits 0 each time.
    """
    contents = [os.urandom(1_000), os.urandom(300_000), os.urandom(10)]
    for data in contents:
        source, _ = write(files, "local.bin", text=data)
        result = run(
            [require("scp"), "-P", str(server.port)]
            + ssh_command(server, key, files)
            + [str(source), f"{USER}@127.0.0.1:EPCIS/scp.bin"]
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    assert_received(server, "scp.bin", *contents)


# libssh2, lftp, rclone, asyncssh


def curl_upload(server: Server, key: Path, upload: Path, *options: str) -> list[str]:
    """
    The curl command line that uploads C{upload} into /EPCIS/ with C{key}.
    """
    return [
        require("curl"),
        "--silent",
        "--show-error",
        "--key",
        str(key),
        "--pubkey",
        f"{key}.pub",
        *options,
        "-T",
        str(upload),
        f"sftp://{USER}@127.0.0.1:{server.port}/EPCIS/",
    ]


def test_curl_libssh2(server: Server, key: Path, files: Path) -> None:
    """
    curl -T (libssh2 1.10) checks the server's Ed25519 host key by its
    SHA-256 fingerprint, and uploads into the rule folder by its URL.
    """
    upload, data = write(files, "curl.xml", 50_000)
    public = (server.home / "keys" / "ssh_host_ed25519_key.pub").read_text().split()[1]
    digest = hashlib.sha256(base64.b64decode(public)).digest()
    fingerprint = base64.b64encode(digest).decode().rstrip("=")
    result = run(curl_upload(server, key, upload, "--hostpubsha256", fingerprint))
    assert result.returncode == 0, result.stderr
    assert_received(server, "curl.xml", data)


def test_curl_with_known_hosts(server: Server, key: Path, files: Path) -> None:
    """
    curl also checks the host key against C{~/.ssh/known_hosts}.  libssh2
    1.10 then asks only for the type of the first line it finds: with the
    Ed25519 line (as README says to write it) the upload works; with the RSA
    line first it asks for SHA-1 C{ssh-rsa}, which this server does not
    offer, and the server logs which part did not match.
    """
    upload, data = write(files, "curl-known.xml", 30_000)
    home = files / "home"
    (home / ".ssh").mkdir(parents=True)
    command = curl_upload(server, key, upload)
    environment = dict(os.environ, HOME=str(home))

    (home / ".ssh" / "known_hosts").write_text(
        host_key_line(server, "rsa") + host_key_line(server)
    )
    refused = run(command, env=environment)
    (home / ".ssh" / "known_hosts").write_text(host_key_line(server))
    accepted = run(command, env=environment)

    assert refused.returncode != 0
    assert "no host key algorithm in common; it offers ssh-rsa" in server.log()
    assert accepted.returncode == 0, accepted.stderr
    assert_received(server, "curl-known.xml", data)


def test_lftp_put_and_mirror(server: Server, key: Path, files: Path) -> None:
    """
    lftp over OpenSSH's ssh: put, then mirror -R of a local folder (which
    also sets the files' times and modes).
    """
    single, single_data = write(files, "lftp-put.xml", 20_000)
    tree = files / "tree"
    tree.mkdir()
    _, first = write(tree, "lftp-mirror-1.xml", 1_000)
    _, second = write(tree, "lftp-mirror-2.xml", 2_000)
    connect = " ".join(["ssh", "-a", "-x"] + ssh_command(server, key, files))
    script = (
        f"set sftp:connect-program '{connect}'; set net:max-retries 1; "
        "set cmd:fail-exit yes; "
        f"open -u {USER}, sftp://127.0.0.1:{server.port}; "
        f"put {single} -o EPCIS/lftp-put.xml; mirror -R {tree} EPCIS"
    )
    result = run([require("lftp"), "-c", script])
    assert result.returncode == 0, result.stderr
    assert_received(server, "lftp-put.xml", single_data)
    assert_received(server, "lftp-mirror-1.xml", first)
    assert_received(server, "lftp-mirror-2.xml", second)


def test_rclone_copyto_and_copy(server: Server, key: Path, files: Path) -> None:
    """
    rclone copyto and copy: it tries exec for md5sum and sha1sum, reads the
    refusal (exit status 1) and carries on over SFTP with no error; after
    each upload it sets the time and STATs the file to verify its size.
    """
    single, single_data = write(files, "rclone-copyto.xml", 40_000)
    tree = files / "tree"
    tree.mkdir()
    _, first = write(tree, "rclone-copy-1.xml", 1_500)
    _, second = write(tree, "rclone-copy-2.xml", 2_500)
    env = dict(os.environ)
    env.update(
        RCLONE_CONFIG_Q_TYPE="sftp",
        RCLONE_CONFIG_Q_HOST="127.0.0.1",
        RCLONE_CONFIG_Q_PORT=str(server.port),
        RCLONE_CONFIG_Q_USER=USER,
        RCLONE_CONFIG_Q_KEY_FILE=str(key),
        RCLONE_CONFIG_Q_KNOWN_HOSTS_FILE=str(known_hosts(server, files)),
    )
    config = files / "rclone.conf"
    config.write_text("")
    rclone = [require("rclone"), "--config", str(config), "-vv"]
    for command in (
        ["copyto", str(single), "Q:EPCIS/rclone-copyto.xml"],
        ["copy", str(tree), "Q:EPCIS"],
    ):
        result = run(rclone + command, env=env)
        assert result.returncode == 0, result.stderr
        assert "ERROR" not in result.stderr, result.stderr
    # The first run tried the hash commands and saved that they fail.
    assert "md5sum_command = none" in config.read_text()
    assert_received(server, "rclone-copyto.xml", single_data)
    assert_received(server, "rclone-copy-1.xml", first)
    assert_received(server, "rclone-copy-2.xml", second)


def test_newer_rclone_partial_names(server: Server, key: Path) -> None:
    """
    Newer rclone releases upload to NAME.XXXXXX.partial, SETSTAT its time
    and rename it to NAME (posix-rename when offered); the rclone tested
    above, 1.60, writes in place, so this replays the newer habit: the
    rename completes the upload under NAME.
    """
    data = os.urandom(20_000)
    temp = "/EPCIS/rclone-new.xml.3f9a1c.partial"
    transport = connect(server, key)
    try:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        with client.open(temp, "wb") as remote:
            remote.write(data)
        client.utime(temp, (1_700_000_000, 1_700_000_000))
        client.posix_rename(temp, "/EPCIS/rclone-new.xml")
        assert client.stat("/EPCIS/rclone-new.xml").st_mtime == 1_700_000_000
    finally:
        transport.close()
    assert_received(server, "rclone-new.xml", data)


def test_asyncssh_put(server: Server, key: Path, files: Path) -> None:
    """
    asyncssh checks the host key against known_hosts, puts a file and
    STATs it: the size is the file's.
    """
    upload, data = write(files, "asyncssh.bin", 600_000)

    async def put() -> int:
        async with asyncssh.connect(
            "127.0.0.1",
            server.port,
            username=USER,
            client_keys=[str(key)],
            known_hosts=str(known_hosts(server, files)),
        ) as connection:
            async with connection.start_sftp_client() as client:
                await client.put(str(upload), "/EPCIS/asyncssh.bin")
                return (await client.stat("/EPCIS/asyncssh.bin")).size

    assert asyncio.run(put()) == len(data)
    assert_received(server, "asyncssh.bin", data)


# WinSCP and FileZilla, request by request


def connect(
    server: Server, key: Path, **security: tuple[str, ...]
) -> paramiko.Transport:
    """
    A paramiko transport, logged in as partner; C{security} narrows the
    algorithms offered (C{kex}, C{key_types}, C{ciphers}, C{digests}).
    """
    transport = paramiko.Transport(("127.0.0.1", server.port))
    options = transport.get_security_options()
    for name, value in security.items():
        setattr(options, name, value)
    transport.connect(
        username=USER, pkey=paramiko.Ed25519Key.from_private_key_file(str(key))
    )
    return transport


def test_winscp_filepart_rename_setstat(server: Server, key: Path) -> None:
    """
    WinSCP uploads NAME.filepart, CLOSEs, RENAMEs it to NAME, then SETSTATs
    NAME's times and mode; overwriting, it first REMOVEs the old NAME.  A
    255-byte CJK name works, although its .filepart name is 264 bytes.
    """
    name = "出荷" * 41 + "xxxxx.xml"
    assert len(name.encode()) == 255
    temp = name + ".filepart"
    stamp = 1_600_000_000
    contents = [os.urandom(150_000), os.urandom(1_000)]
    transport = connect(server, key)
    try:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        assert client.normalize(".") == "/"
        for data in contents:
            if name in client.listdir("/EPCIS"):
                client.remove(f"/EPCIS/{name}")
            with client.open(f"/EPCIS/{temp}", "wb") as remote:
                remote.write(data)
            client.rename(f"/EPCIS/{temp}", f"/EPCIS/{name}")
            client.utime(f"/EPCIS/{name}", (stamp, stamp))
            client.chmod(f"/EPCIS/{name}", 0o644)
            attrs = client.stat(f"/EPCIS/{name}")
            assert attrs.st_size == len(data)
            assert attrs.st_mtime == stamp
            assert attrs.st_mode == 0o100644
    finally:
        transport.close()
    assert_received(server, name, *contents)
    tasks_for(server, temp, 0)
    assert all(len(p.name.encode()) <= 255 for p in server.archived())


def test_winscp_resumes_an_interrupted_filepart(server: Server, key: Path) -> None:
    """
    WinSCP resumes a large upload whose connection dropped: it STATs the
    NAME.filepart left behind, reopens it without TRUNC for appending, sends
    the rest and RENAMEs it; the archive holds the whole file once.
    """
    data = os.urandom(900_000)
    temp = "winscp-resume.xml.filepart"
    transport = connect(server, key)
    try:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        remote = client.open(f"/EPCIS/{temp}", "wb")
        remote.write(data[:300_000])
        remote.flush()
    finally:
        transport.close()

    assert wait_for_partial(server, key, temp) == 300_000
    transport = connect(server, key)
    try:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        done = client.stat(f"/EPCIS/{temp}").st_size
        assert done == 300_000
        with client.open(f"/EPCIS/{temp}", "ab") as remote:
            remote.write(data[done:])
        client.rename(f"/EPCIS/{temp}", "/EPCIS/winscp-resume.xml")
    finally:
        transport.close()
    assert_received(server, "winscp-resume.xml", data)
    assert temp not in quarantined_names(server)


def test_filezilla_reads_types_from_longnames(server: Server, key: Path) -> None:
    """
    FileZilla takes "folder or file" from the first letter of each
    listing's longname and the size from its fifth field: rule folders
    read C{d}, uploads C{-}, and a 5 GiB size (past 32 bits) is printed
    whole, as FSTAT reports it during the upload.
    """
    huge = 5 * 1024**3
    transport = connect(server, key)
    try:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        [folder] = client.listdir_attr("/")
        assert folder.filename == "EPCIS" and folder.longname.startswith("d")
        client.putfo(io.BytesIO(b"<x/>"), "/EPCIS/filezilla.xml")
        remote = client.open("/EPCIS/filezilla-huge.bin", "wb")
        remote.truncate(huge)
        assert remote.stat().st_size == huge
    finally:
        # Dropping the connection with the file open aborts the upload: it
        # stays listed to its uploader, with its size, as a partial.
        transport.close()

    assert wait_for_partial(server, key, "filezilla-huge.bin") == huge
    transport = connect(server, key)
    try:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        entries = {a.filename: a for a in client.listdir_attr("/EPCIS")}
        small, big = entries["filezilla.xml"], entries["filezilla-huge.bin"]
        assert small.longname.startswith("-rw-r-----")
        assert small.longname.split()[4] == "4"
        assert small.longname.endswith(" filezilla.xml")
        assert big.longname.startswith("-") and big.longname.split()[4] == str(huge)
        assert big.st_size == huge
        client.remove("/EPCIS/filezilla-huge.bin")
    finally:
        transport.close()
    assert_received(server, "filezilla.xml", b"<x/>")
    tasks_for(server, "filezilla-huge.bin", 0)


def test_open_with_read_and_write(server: Server, key: Path) -> None:
    """
    An OPEN with READ and WRITE (paramiko's "w+", as some Java tools do) is
    an upload; FSTAT reports the bytes so far, the bytes read back are the
    ones written, and posix-rename of a staged name completes it.
    """
    data = os.urandom(70_000)
    transport = connect(server, key)
    try:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        with client.open("/EPCIS/both.xml.part", "w+") as remote:
            remote.write(data[:50_000])
            remote.flush()
            assert remote.stat().st_size == 50_000
            remote.write(data[50_000:])
            remote.seek(0)
            assert remote.read(10) == data[:10]
        client.posix_rename("/EPCIS/both.xml.part", "/EPCIS/both.xml")
    finally:
        transport.close()
    assert_received(server, "both.xml", data)


# Algorithms


def test_java_style_client_with_group_exchange_and_rsa(
    server: Server, key: Path
) -> None:
    """
    A client limited to what JSch forks on Java 8 and Apache MINA share
    with this server (diffie-hellman-group-exchange-sha256, an rsa-sha2-512
    host key, aes128-ctr, hmac-sha2-256) connects and uploads.
    """
    transport = connect(
        server,
        key,
        kex=("diffie-hellman-group-exchange-sha256",),
        key_types=("rsa-sha2-512",),
        ciphers=("aes128-ctr",),
        digests=("hmac-sha2-256",),
    )
    try:
        assert transport.host_key_type == "rsa-sha2-512"
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        client.putfo(io.BytesIO(b"<java/>"), "/EPCIS/java.xml")
    finally:
        transport.close()
    assert_received(server, "java.xml", b"<java/>")


@pytest.mark.parametrize(
    "option",
    [
        "KexAlgorithms=diffie-hellman-group14-sha1,diffie-hellman-group-exchange-sha1,"
        "diffie-hellman-group1-sha1",
        "KexAlgorithms=ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521",
        "MACs=hmac-sha1,hmac-md5,hmac-sha1-etm@openssh.com,umac-64@openssh.com",
        "Ciphers=aes128-cbc,aes256-cbc,3des-cbc",
        "HostKeyAlgorithms=ssh-rsa,ecdsa-sha2-nistp256,ssh-dss",
    ],
)
def test_weak_algorithms_are_not_offered(
    server: Server, key: Path, files: Path, option: str
) -> None:
    """
    An OpenSSH client limited to SHA-1 key exchange, NIST-curve key
    exchange, SHA-1 or MD5 MACs, CBC ciphers, or SHA-1 RSA, ECDSA and DSA
    host keys finds nothing in common with the server.
    """
    result = run(
        [require("ssh"), "-p", str(server.port), "-o", option]
        + ssh_command(server, key, files)
        + [f"{USER}@127.0.0.1", "true"]
    )
    assert result.returncode == 255
    assert "no matching" in result.stderr, result.stderr
