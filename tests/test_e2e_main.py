"""
The main job, end to end: the real twistd process, a partner with a fresh
key, OpenSSH sftp and paramiko uploading the sample EPCIS document.
"""

from __future__ import annotations

import grp
import hashlib
import io
import os
import re
import shlex
import stat
import subprocess
import time
import uuid
from pathlib import Path

import paramiko
import pytest

from .server import EPCIS_DIR, Server, make_key, require

EPCIS = EPCIS_DIR / "epcis.xml"


def _messages(task: dict) -> str:
    return "\n".join(m["text"] for m in task["messages"])


def test_upload_with_sftp_is_archived_and_captured(
    server: Server, client_key: Path
) -> None:
    """
    The issue's walk-through: ls shows EPCIS, put epcis.xml, and within a
    second the archive holds the identical bytes (mode 0640, the server's
    group) and one FINISHED task counts the document's four events.
    """
    result = server.sftp("partner", client_key, "ls\n")
    assert result.returncode == 0, result.stderr
    assert "EPCIS" in result.stdout

    started = time.monotonic()
    result = server.sftp("partner", client_key, f"put {EPCIS} EPCIS/\n")
    assert result.returncode == 0, result.stderr
    [task] = server.wait_for_tasks(1)
    assert time.monotonic() - started < 5

    [archived] = server.archived()
    assert archived.read_bytes() == EPCIS.read_bytes()
    assert archived.name.startswith("epcis.xml-")
    info = archived.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_gid == os.getegid()

    assert task["status"] == "FINISHED", task
    assert task["rule"] == "EPCIS"
    assert task["user"] == "partner"
    assert task["sha256"] == hashlib.sha256(EPCIS.read_bytes()).hexdigest()
    details = server.task(task["name"])
    text = _messages(details)
    for kind in ("Object", "Aggregation", "Transaction", "Transformation"):
        assert f"{kind}Event count: 1" in text, text
    assert "Event count: 4" in text


def test_refusals_are_clean_and_the_server_keeps_serving(
    server: Server, client_key: Path, tmp_path: Path
) -> None:
    """
    ls /etc, put ../../tmp/x and mkdir fail with a message; an unknown key is
    refused; the server still serves afterwards.
    """
    sample = tmp_path / "x.xml"
    sample.write_bytes(b"<x/>")
    # A name of its own, so that nothing else's /tmp/x can mislead the check.
    escape = f"escape-{uuid.uuid4().hex}"
    result = server.sftp(
        "partner",
        client_key,
        f"-ls /etc\n-put {sample} ../../tmp/{escape}\n-mkdir /new\nls /\n",
    )
    # OpenSSH's sftp prints its own text for each status code; clients that
    # show the server's message (paramiko below, WinSCP, FileZilla) read
    # the sentence that names the rule folders.
    assert result.returncode == 0, result.stderr
    assert '"/etc" not found' in result.stderr
    assert f'"/../../tmp/{escape}": No such file or directory' in result.stderr
    assert 'mkdir "/new": Permission denied' in result.stderr
    assert not Path("/tmp", escape).exists()
    assert server.archived() == []

    stranger = make_key(tmp_path, "stranger")
    result = server.sftp("partner", stranger, "ls\n")
    assert result.returncode != 0
    assert "Permission denied" in result.stderr

    result = server.sftp("partner", client_key, f"put {sample} EPCIS/\n")
    assert result.returncode == 0, result.stderr
    server.wait_for_tasks(1)


def test_shell_and_exec_are_refused_politely(server: Server, client_key: Path) -> None:
    """
    An exec request gets "SFTP only" on stderr and exit status 1, and the
    log names the refused command once per connection; a terminal is
    refused quietly and a shell like an exec; the SFTP channel opened on the
    same connection afterwards works.
    """
    result = subprocess.run(
        [require("ssh"), "-p", str(server.port)]
        + server.ssh_options(client_key)
        + ["partner@127.0.0.1", "ls", "/"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "SFTP only" in result.stderr
    assert result.stdout == ""
    assert "refused exec request 'ls /' from partner" in server.log()

    # Run in a terminal (util-linux's script), ssh asks for a terminal, then
    # for a shell; the partner reads why neither is given.
    interactive = shlex.join(
        [require("ssh"), "-p", str(server.port)]
        + server.ssh_options(client_key)
        + ["partner@127.0.0.1"]
    )
    result = subprocess.run(
        [require("script"), "-qec", interactive, "/dev/null"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "PTY allocation request failed" in result.stdout
    assert "This server offers SFTP only" in result.stdout

    transport = paramiko.Transport(("127.0.0.1", server.port))
    try:
        transport.connect(
            username="partner",
            pkey=paramiko.Ed25519Key.from_private_key_file(str(client_key)),
        )
        for command in ("md5sum /EPCIS/a", "sha1sum /EPCIS/a"):
            channel = transport.open_session()
            channel.exec_command(command)
            assert channel.recv_exit_status() == 1
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None and sftp.listdir("/") == ["EPCIS"]
    finally:
        transport.close()
    log = server.log()
    assert "refused exec request 'md5sum /EPCIS/a'" in log
    assert "sha1sum" not in log  # the same connection's second refusal: debug
    assert "refused shell request from partner at 127.0.0.1" in log
    assert "pty-req" not in log and "unhandled request" not in log


def test_paramiko_put_with_confirm(server: Server, client_key: Path) -> None:
    """
    paramiko's put(confirm=True) STATs the file right after CLOSE; the
    just-uploaded file is visible with its final size.
    """
    transport = paramiko.Transport(("127.0.0.1", server.port))
    try:
        transport.connect(
            username="partner",
            pkey=paramiko.Ed25519Key.from_private_key_file(str(client_key)),
        )
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        assert "EPCIS" in sftp.listdir("/")
        attrs = sftp.put(str(EPCIS), "/EPCIS/from-paramiko.xml", confirm=True)
        assert attrs.st_size == EPCIS.stat().st_size
        with pytest.raises(IOError) as refused:
            sftp.listdir("/etc")
        assert "There is no folder /etc" in str(refused.value)
        assert "Upload files into one of the rule folders: /EPCIS" in str(refused.value)
        with pytest.raises(IOError) as refused:
            sftp.putfo(io.BytesIO(b"<x/>"), "/in-root.xml", confirm=False)
        assert "Files cannot be uploaded into / itself" in str(refused.value)
        with pytest.raises(IOError) as refused:
            sftp.mkdir("/new")
        assert "Folders cannot be created here" in str(refused.value)
    finally:
        transport.close()
    [task] = server.wait_for_tasks(1)
    assert task["file"] == "from-paramiko.xml"
    assert server.archived()[0].read_bytes() == EPCIS.read_bytes()


def test_users_and_rules_change_without_restart(
    tmp_path: Path, client_key: Path
) -> None:
    """
    A user added while the server runs can log in at once, a removed one
    cannot; a rule added to the rules file appears as a folder and gets its
    archive folder, with the configured group and mode 0775.
    """
    group = grp.getgrnam("daemon")
    home = tmp_path / "home"
    home.mkdir()
    rules = home / "rules.toml"
    rules.write_text(
        '[[rule]]\nname = "EPCIS"\n[[rule.step]]\nname = "Well-formed"\n'
        'class = "quartet_sftpd.steps.WellFormedXML"\n'
    )
    server = Server(home, {"rules": "rules.toml", "group": "daemon"})
    server.start()
    try:
        assert "Permission denied" in server.sftp("newbie", client_key, "ls\n").stderr
        server.add_user("newbie", client_key)
        assert server.sftp("newbie", client_key, "ls\n").returncode == 0

        rules.write_text(
            rules.read_text()
            + '[[rule]]\nname = "Shipping Notices"\n[[rule.step]]\nname = "W"\n'
            'class = "quartet_sftpd.steps.WellFormedXML"\n'
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listing = server.sftp("newbie", client_key, "ls\n").stdout
            if "Shipping-Notices" in listing:
                break
            time.sleep(0.2)
        assert "Shipping-Notices" in listing
        folder = server.archive / "Shipping-Notices"
        assert folder.is_dir()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o775
        assert folder.stat().st_gid == group.gr_gid

        result = server.sftp("newbie", client_key, f"put {EPCIS} Shipping-Notices/\n")
        assert result.returncode == 0, result.stderr
        [task] = server.wait_for_tasks(1)
        assert task["rule"] == "Shipping Notices"
        assert server.archived("Shipping-Notices")[0].stat().st_gid == group.gr_gid

        assert server.cli("user", "remove", "newbie").returncode == 0
        assert server.sftp("newbie", client_key, "ls\n").returncode != 0
    finally:
        server.stop()


def test_host_keys_are_kept_across_restarts(tmp_path: Path) -> None:
    """
    The first start makes the three host keys (0600); a restart reuses them
    byte for byte, and the log gives each fingerprint with the algorithms it
    is offered under.
    """
    home = tmp_path / "home"
    home.mkdir()
    server = Server(home)
    server.start()
    server.stop()
    first = {p.name: p.read_bytes() for p in (home / "keys").glob("ssh_host_*")}
    assert set(first) >= {
        "ssh_host_ed25519_key",
        "ssh_host_ecdsa_key",
        "ssh_host_rsa_key",
    }
    for name in first:
        if not name.endswith(".pub"):
            assert stat.S_IMODE((home / "keys" / name).stat().st_mode) == 0o600
    server.start()
    server.stop()
    second = {p.name: p.read_bytes() for p in (home / "keys").glob("ssh_host_*")}
    assert first == second
    log = server.log()
    assert re.search(r"host key ssh-ed25519 SHA256:\S+, offered as ssh-ed25519", log)
    assert re.search(
        r"host key ssh-rsa SHA256:\S+, offered as rsa-sha2-512, rsa-sha2-256", log
    )
    assert re.search(r"host key ecdsa-sha2-nistp256 SHA256:\S+, kept but not", log)


def test_a_server_that_cannot_listen_exits_with_status_1(tmp_path: Path) -> None:
    """
    A port that is taken stops the server with a logged reason and exit
    status 1, so that a supervisor sees the failure.
    """
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        home = tmp_path / "home"
        home.mkdir()
        port = taken.getsockname()[1]
        server = Server(home, {"listen": f"tcp:{port}:interface=127.0.0.1"})
        with pytest.raises(AssertionError, match="did not start"):
            server.start(timeout=20)
        assert server.process is not None
        assert server.process.wait(20) == 1
        assert "quartet-sftpd could not start" in server.log()
        assert "Address already in use" in server.log()
        assert "Traceback" not in server.log()
    finally:
        taken.close()


@pytest.mark.parametrize(
    "setting, sentence",
    [
        ({"listen": 2224}, "listen = '2224' is not a Twisted endpoint"),
        ({"listen": "localhost:2224"}, "write it as tcp:PORT:interface=ADDRESS"),
        ({"rules": "missing.toml"}, "missing.toml cannot be read"),
        ({"lsiten": "tcp:2224"}, "has unknown settings: lsiten."),
        ({"file_mode": "rwx"}, "setting 'file_mode' has the value 'rwx'"),
    ],
)
def test_a_bad_config_stops_the_server_with_one_sentence(
    tmp_path: Path, setting: dict, sentence: str
) -> None:
    """
    A config the server cannot use stops twistd at once with exit status 1
    and one sentence naming the setting, without twistd's usage text or a
    traceback, and before any host key, archive or task store is made.
    """
    server = Server(tmp_path, setting)

    with pytest.raises(AssertionError, match="did not start"):
        server.start(timeout=20)

    assert server.process is not None and server.process.wait(20) == 1
    output = server.log()
    assert output.startswith("quartet-sftpd cannot start: ")
    assert sentence in output
    assert "Traceback" not in output and "Usage:" not in output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "quartet-sftpd.toml",
        "server.log",
    ]
