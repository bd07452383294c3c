"""
Partner accounts against the real server: revoking keys and users ends
their open sessions, per-user rules, bans after failed logins, session
limits, idle timeout, login grace time and the upload size limit.

Sessions are held open with paramiko; accounts are changed with the admin
command while the server runs.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paramiko
import pytest

from .server import EPCIS_DIR, Server, make_key

EPCIS = EPCIS_DIR / "epcis.xml"


def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """
    Poll C{check} until it returns something true; fail after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"still not true after {timeout} s: {check}")


def connect(server: Server, user: str, key: Path) -> paramiko.Transport:
    """
    A paramiko transport logged in as C{user} with C{key}.

    @raise paramiko.SSHException: the login failed or the server closed
        the connection.
    """
    transport = paramiko.Transport(("127.0.0.1", server.port))
    try:
        transport.connect(
            username=user, pkey=paramiko.Ed25519Key.from_private_key_file(str(key))
        )
    except Exception:
        transport.close()
        raise
    return transport


@contextmanager
def session(server: Server, user: str, key: Path) -> Iterator[paramiko.SFTPClient]:
    transport = connect(server, user, key)
    try:
        yield paramiko.SFTPClient.from_transport(transport)
    finally:
        transport.close()


def refused(server: Server, user: str, key: Path) -> bool:
    """
    Whether a login as C{user} with C{key} fails.
    """
    try:
        connect(server, user, key).close()
    except (paramiko.SSHException, EOFError, OSError):
        return True
    return False


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "client"
    folder.mkdir()
    return {name: make_key(folder, name) for name in ("first", "second", "other")}


def start(tmp_path: Path, **settings: Any) -> Server:
    home = tmp_path / "server"
    home.mkdir()
    rules = home / "rules.toml"
    rules.write_text(
        "".join(
            f'[[rule]]\nname = "{name}"\n[[rule.step]]\nname = "W"\n'
            'class = "quartet_sftpd.steps.WellFormedXML"\n'
            for name in ("EPCIS", "Returns")
        )
    )
    server = Server(home, {"rules": "rules.toml", **settings})
    server.start()
    return server


def cli_ok(server: Server, *args: str) -> str:
    result = server.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_revoking_keys_and_users_ends_their_sessions(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """
    Removing a key ends the sessions that logged in with it (others of the
    same user go on) and refuses it at the next login; disabling the user
    ends the rest, enabling lets it back in, removing it ends everything.
    An upload left open by an ended session is quarantined, not completed.
    """
    server = start(tmp_path)
    try:
        first, second = keys["first"], keys["second"]
        cli_ok(server, "user", "add", "partner", "--key", f"{first}.pub")
        cli_ok(server, "user", "key", "add", "partner", f"{second}.pub")
        listing = cli_ok(server, "user", "list")
        fingerprint = listing.split()[1]
        assert fingerprint.startswith("SHA256:") and "first" in listing

        with (
            session(server, "partner", first) as one,
            session(server, "partner", second) as two,
        ):
            upload = one.open("/EPCIS/half.xml", "wb")
            upload.write(b"<half")
            upload.flush()
            cli_ok(server, "user", "key", "remove", "partner", fingerprint)
            wait_until(lambda: not one.get_channel().get_transport().is_active())
            assert two.listdir("/") == ["EPCIS", "Returns"]
            assert refused(server, "partner", first)

            cli_ok(server, "user", "disable", "partner")
            wait_until(lambda: not two.get_channel().get_transport().is_active())
            assert refused(server, "partner", second)
        cli_ok(server, "user", "enable", "partner")
        with session(server, "partner", second) as three:
            assert three.listdir("/") == ["EPCIS", "Returns"]
            cli_ok(server, "user", "remove", "partner")
            wait_until(lambda: not three.get_channel().get_transport().is_active())
        assert refused(server, "partner", second)

        wait_until(server.quarantined)
        [partial] = server.quarantined()
        assert partial.read_bytes() == b"<half"
        meta = json.loads(partial.with_name(partial.name + ".json").read_text())
        assert meta["name"] == "half.xml"
        assert meta["reason"] == (
            "the server closed the connection before CLOSE: "
            "Your access was revoked: the key was removed."
        )
        assert server.tasks() == []
        log = server.log()
        assert (
            "ending the session of partner from 127.0.0.1: the key was removed" in log
        )
        assert "the user was disabled" in log and "the user was removed" in log
    finally:
        server.stop()


def test_users_see_and_upload_to_only_their_rules(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """
    A user granted EPCIS sees only /EPCIS and cannot upload into /Returns;
    granting all rules shows both, also in a session already open (from the
    server's next refresh on); another user never sees the first one's
    uploads.
    """
    server = start(tmp_path)
    try:
        cli_ok(
            server,
            "user",
            "add",
            "acme",
            "--key",
            f"{keys['first']}.pub",
            "--rules",
            "EPCIS",
        )
        cli_ok(server, "user", "add", "globex", "--key", f"{keys['other']}.pub")
        refusal = server.cli("user", "rules", "acme", "EPCIS,Invoices")
        assert refusal.returncode == 1 and "'Invoices' is no rule" in refusal.stderr

        with session(server, "acme", keys["first"]) as acme:
            assert acme.listdir("/") == ["EPCIS"]
            with pytest.raises(IOError, match="There is no folder /Returns"):
                acme.putfo(io.BytesIO(b"<x/>"), "/Returns/r.xml", confirm=False)
            acme.put(str(EPCIS), "/EPCIS/acme.xml")
            cli_ok(server, "user", "rules", "acme", "--all")
            wait_until(lambda: acme.listdir("/") == ["EPCIS", "Returns"])
            acme.put(str(EPCIS), "/Returns/acme.xml")
            assert "acme.xml" in acme.listdir("/Returns")
        with session(server, "globex", keys["other"]) as globex:
            assert globex.listdir("/") == ["EPCIS", "Returns"]
            assert "acme.xml" not in globex.listdir("/EPCIS")
            assert "acme.xml" not in globex.listdir("/Returns")
        tasks = server.wait_for_tasks(2)
        assert sorted(t["rule"] for t in tasks) == ["EPCIS", "Returns"]
        assert {t["user"] for t in tasks} == {"acme"}
    finally:
        server.stop()


def test_failed_logins_ban_the_address_until_the_ban_ends(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """
    Three failed logins within the window ban the address: the third
    attempt's connection is closed, new connections are refused even with
    the right key, and the ban is logged once; after ban_time the right key
    works again.
    """
    server = start(tmp_path, ban_threshold=3, ban_window=60, ban_time=3)
    try:
        cli_ok(server, "user", "add", "partner", "--key", f"{keys['first']}.pub")
        for _ in range(3):
            assert refused(server, "partner", keys["other"])
        assert refused(server, "partner", keys["first"])
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            assert raw.recv(100) == b""
        assert server.log().count("banned 127.0.0.1 for 3 s after 3 failed logins") == 1
        wait_until(lambda: not refused(server, "partner", keys["first"]), timeout=10)
    finally:
        server.stop()


def test_session_limit_upload_size_idle_timeout_and_grace_time(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """
    With max_user_sessions = 1 a second session is refused with a message,
    and with max_channels = 2 a third channel on one connection is refused;
    a fourth open file fails with max_handles = 3;
    a WRITE past max_upload_size fails with a sentence and the upload is
    quarantined, not captured; a silent session is closed after
    idle_timeout, which frees its place; a client that never logs in is
    closed after login_grace_time.
    """
    server = start(
        tmp_path,
        max_user_sessions=1,
        max_channels=2,
        max_handles=3,
        max_upload_size=1000,
        idle_timeout=3,
        login_grace_time=1,
    )
    try:
        cli_ok(server, "user", "add", "partner", "--key", f"{keys['first']}.pub")
        with session(server, "partner", keys["first"]) as one:
            with pytest.raises(paramiko.SSHException):
                connect(server, "partner", keys["first"])
            transport = one.get_channel().get_transport()
            transport.open_session().close()
            extra = transport.open_session()
            with pytest.raises(paramiko.ChannelException) as prohibited:
                transport.open_session()
            assert (
                prohibited.value.code
                == paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
            )
            extra.close()
            handles = [one.open(f"/EPCIS/.open{n}.tmp", "wb") for n in range(3)]
            with pytest.raises(IOError, match="Too many open files"):
                one.open("/EPCIS/.open3.tmp", "wb")
            for handle in handles:
                handle.close()
            # Paramiko's put() pipelines its WRITEs and ignores a failed
            # CLOSE, so write unpipelined to read the server's answer.
            big = one.open("/EPCIS/big.xml", "wb")
            big.write(b"x" * 600)
            with pytest.raises(IOError, match="larger than the 1000 bytes"):
                big.write(b"x" * 600)
            big.close()
            one.putfo(io.BytesIO(b"<small/>"), "/EPCIS/small.xml")
            started = time.monotonic()
            wait_until(lambda: not transport.is_active(), timeout=10)
            assert time.monotonic() - started >= 2.5
        with session(server, "partner", keys["first"]) as again:
            assert again.listdir("/") == ["EPCIS", "Returns"]

        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            started = time.monotonic()
            while raw.recv(4096):
                pass
            assert 0.5 < time.monotonic() - started < 5

        [task] = server.wait_for_tasks(1)
        assert task["file"] == "small.xml"
        reasons = [p.with_suffix(".json").read_text() for p in server.quarantined()]
        assert sum('"name": "big.xml"' in reason for reason in reasons) == 1
        log = server.log()
        assert "User partner already has 1 session open" in log
        assert "refused a channel for partner: 2 are open" in log
        assert "closing idle session of partner" in log
        assert "not logged in after 1.0 s" in log
    finally:
        server.stop()


def test_password_login_and_its_removal(tmp_path: Path) -> None:
    """
    A user added with --password (read from standard input) logs in with
    it and uploads; a wrong password is refused; removing the password
    ends the open session and refuses the next login.
    """
    server = start(tmp_path)
    try:
        result = server.cli("user", "add", "carol", "--password", input="tr0ub4dor&3\n")
        assert result.returncode == 0, result.stderr

        def login(password: str) -> paramiko.Transport:
            transport = paramiko.Transport(("127.0.0.1", server.port))
            transport.connect(username="carol", password=password)
            return transport

        def offered() -> bool:
            # The server offers passwords once its refresh sees one.
            try:
                login("guess").close()
            except paramiko.BadAuthenticationType:
                return False
            except paramiko.AuthenticationException:
                return True
            raise AssertionError("a wrong password was accepted")

        wait_until(offered)
        transport = login("tr0ub4dor&3")
        try:
            sftp = paramiko.SFTPClient.from_transport(transport)
            sftp.put(str(EPCIS), "/EPCIS/by-password.xml")
            cli_ok(server, "user", "password", "carol", "--remove")
            wait_until(lambda: not transport.is_active())
        finally:
            transport.close()
        with pytest.raises(paramiko.SSHException):
            login("tr0ub4dor&3").close()
        [task] = server.wait_for_tasks(1)
        assert task["user"] == "carol"
        assert "tr0ub4dor" not in server.log()
    finally:
        server.stop()
