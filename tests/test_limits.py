"""
Session limits, revocation, login grace time, idle timeout and refused
connections, without sockets and on an injected clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.conch.ssh import transport as ssh_transport
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from quartet_sftpd.auth import Login
from quartet_sftpd.bans import AddressBans
from quartet_sftpd.config import Settings
from quartet_sftpd.hostkeys import fingerprint
from quartet_sftpd.limits import GuardedFactory, GuardedTransport, LoginPolicy
from quartet_sftpd.realm import SFTPUser
from quartet_sftpd.service import SFTPContext
from quartet_sftpd.users import UserStore
from tests.sshkeys import private_key, public_line, write_keys

ALICE = private_key("ed25519")
SPARE = private_key("ecdsa")
HOST_KEY = private_key("ed25519")


@pytest.fixture
def users(tmp_path: Path) -> UserStore:
    folder = tmp_path / "users"
    write_keys(folder / "alice.keys", public_line(ALICE), public_line(SPARE))
    write_keys(folder / "bob.keys", public_line(SPARE))
    return UserStore(folder)


def policy(users: UserStore, **settings: Any) -> LoginPolicy:
    clock = Clock()
    return LoginPolicy(Settings(**settings), users, AddressBans(clock, threshold=2))


def key_login(user: str = "alice", key: Any = ALICE) -> Login:
    return Login(user, "publickey", fingerprint(key), "192.0.2.1")


def test_per_user_session_limit(users: UserStore) -> None:
    """
    A user gets max_user_sessions sessions; one more is refused with a
    sentence, other users are not affected, and a logout frees a place.
    """
    rules = policy(users, max_user_sessions=2)
    first, second, third = object(), object(), object()
    assert rules.logged_in(first, key_login()) is None
    assert rules.logged_in(second, key_login()) is None
    refusal = rules.logged_in(third, key_login())
    assert refusal is not None and "already has 2 sessions" in refusal
    assert rules.logged_in(object(), key_login("bob", SPARE)) is None
    rules.logged_out(first)
    assert rules.logged_in(third, key_login()) is None


def test_a_users_own_limit_wins(users: UserStore) -> None:
    """
    C{max_sessions} in the user's settings overrides the server default,
    either way.
    """
    users.update_settings("alice", max_sessions=1)
    rules = policy(users, max_user_sessions=5)
    assert rules.logged_in(object(), key_login()) is None
    assert rules.logged_in(object(), key_login()) is not None
    assert rules.user_limit("bob") == 5


def test_global_session_limit(users: UserStore) -> None:
    """
    max_sessions counts every user's sessions together.
    """
    rules = policy(users, max_sessions=2, max_user_sessions=0)
    assert rules.logged_in(object(), key_login()) is None
    assert rules.logged_in(object(), key_login("bob", SPARE)) is None
    refusal = rules.logged_in(object(), key_login("bob", SPARE))
    assert refusal is not None and "2 sessions" in refusal


def test_revocation(users: UserStore) -> None:
    """
    A session stays valid while its user and key do; removing the key it
    used, disabling or removing the user revokes it.
    """
    rules = policy(users)
    assert rules.revocation(key_login()) is None
    assert rules.revocation(key_login("alice", SPARE)) is None
    users.remove_key("alice", fingerprint(SPARE))
    assert rules.revocation(key_login("alice", SPARE)) == "the key was removed"
    assert rules.revocation(key_login()) is None
    users.update_settings("alice", disabled=True)
    assert rules.revocation(key_login()) == "the user was disabled"
    users.remove("bob")
    assert rules.revocation(key_login("bob", SPARE)) == "the user was removed"


def test_password_sessions_end_when_the_password_changes(users: UserStore) -> None:
    """
    The policy records the hash a password session logged in with; a new
    password, or none, revokes the session.
    """
    users.update_settings("alice", password="$2b$04$first")
    rules = policy(users)
    avatar = object()
    assert rules.logged_in(avatar, Login("alice", "password", "", None)) is None
    login = rules.logins[avatar]
    assert login.credential == "$2b$04$first"
    assert rules.revocation(login) is None
    users.update_settings("alice", password="$2b$04$second")
    assert "password" in (rules.revocation(login) or "")


class RecordingTransport(GuardedTransport):
    """
    The guarded transport, recording the disconnect messages it sends
    (before key exchange they would only be queued).
    """

    def connectionMade(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        super().connectionMade()

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self.sent.append((reason, desc))
        super().sendDisconnect(reason, desc)


def guarded(**settings: Any) -> tuple[GuardedFactory, Clock]:
    clock = Clock()
    values = {"login_grace_time": 30.0, "idle_timeout": 60.0}
    values.update(settings)
    bans = AddressBans(clock, threshold=1)
    rules = LoginPolicy(Settings(**values), UserStore(Path("/nonexistent")), bans)
    factory = GuardedFactory(
        Portal(None),  # type: ignore[arg-type]
        {b"ssh-ed25519": HOST_KEY},
        settings=Settings(**values),
        policy=rules,
        clock=clock,
    )
    factory.protocol = RecordingTransport
    factory.startFactory()
    return factory, clock


def connect(factory: GuardedFactory, host: str = "192.0.2.1") -> Any:
    """
    A transport built by the factory over a StringTransport, or L{None} if
    the factory refused the connection.
    """
    transport = factory.buildProtocol(IPv4Address("TCP", host, 50000))
    if transport is not None:
        transport.makeConnection(
            StringTransport(peerAddress=IPv4Address("TCP", host, 1))
        )
    return transport


class _ConnectionService:
    name = b"ssh-connection"

    def __init__(self) -> None:
        self.packets: list[int] = []

    def serviceStarted(self) -> None:
        pass

    def serviceStopped(self) -> None:
        pass

    def packetReceived(self, kind: int, payload: bytes) -> None:
        self.packets.append(kind)


def test_login_grace_time() -> None:
    """
    A client that has not logged in after login_grace_time is disconnected;
    one that logged in in time is not.
    """
    factory, clock = guarded()
    slow, quick = connect(factory), connect(factory)
    clock.advance(10)
    quick.setService(_ConnectionService())
    clock.advance(20)
    assert slow.transport.disconnecting
    assert slow.sent == [
        (
            ssh_transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
            b"Login took too long.",
        )
    ]
    assert not quick.transport.disconnecting


def test_idle_timeout_counts_activity_but_not_keepalives() -> None:
    """
    After login, a connection is closed once it has been silent for
    idle_timeout; channel data resets the timer, keepalive requests do not.
    """
    factory, clock = guarded()
    client = connect(factory)
    service = _ConnectionService()
    client.setService(service)
    clock.advance(50)
    client.dispatchMessage(94, b"channel data")  # MSG_CHANNEL_DATA
    clock.advance(50)
    client.dispatchMessage(80, b"keepalive@openssh.com")  # MSG_GLOBAL_REQUEST
    assert not client.transport.disconnecting
    clock.advance(10)
    assert client.transport.disconnecting
    assert service.packets == [94, 80]


def test_disconnected_client_that_does_not_read_is_cut() -> None:
    """
    After a disconnect message, a client that never lets the connection
    close is aborted a few seconds later; timers stop when it is gone.
    """
    factory, clock = guarded()
    client = connect(factory)
    clock.advance(30)
    assert client.transport.disconnecting
    clock.advance(5)
    assert client.transport.disconnected
    client.connectionLost(None)
    assert clock.getDelayedCalls() == []


def test_banned_addresses_and_floods_are_refused_at_connect() -> None:
    """
    A banned address gets no transport at all; neither does a connection
    beyond max_unauthenticated, until one logs in or goes away.
    """
    factory, _ = guarded(max_unauthenticated=2)
    factory.policy.bans.failed("198.51.100.9")
    assert connect(factory, "198.51.100.9") is None
    first, second = connect(factory), connect(factory)
    assert connect(factory) is None
    first.setService(_ConnectionService())
    third = connect(factory)
    assert third is not None
    second.connectionLost(None)
    assert connect(factory) is not None


def test_idle_disconnect_message() -> None:
    """
    An idle client reads why it was disconnected.
    """
    factory, clock = guarded(idle_timeout=1)
    client = connect(factory)
    client.setService(_ConnectionService())
    clock.advance(1)
    assert client.sent == [
        (
            ssh_transport.DISCONNECT_BY_APPLICATION,
            b"Idle for 1 seconds; connect again to go on.",
        )
    ]


def test_passwords_are_offered_only_when_some_user_has_one(users: UserStore) -> None:
    """
    The policy offers password logins once a user has a password, and
    never when password_auth is off.
    """
    rules = policy(users)
    assert not rules.passwords
    users.update_settings("bob", password="$2b$04$x")
    rules.refresh()
    assert rules.passwords
    assert not policy(users, password_auth=False).passwords


class _Wire:
    """
    The transport under an avatar's connection, recording the disconnects
    the server asks of it through L{GuardedTransport.close_with}.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    def close_with(self, code: int, message: str) -> None:
        self.sent.append((code, message))


class _Avatar:
    def __init__(self, user: str) -> None:
        self.user = user
        self.conn = type("Connection", (), {"transport": _Wire()})()


def test_context_ends_revoked_sessions_and_hides_rules(users: UserStore) -> None:
    """
    The server's context disconnects exactly the sessions whose key was
    removed, once, and a user's rules come from its settings; a user whose
    settings cannot be read sees no rule.
    """
    unused: Any = None
    context = SFTPContext(Settings(), unused, unused, unused, unused, users)
    context.policy = policy(users)
    kept, revoked = _Avatar("alice"), _Avatar("alice")
    context.policy.logged_in(kept, key_login("alice", ALICE))
    context.policy.logged_in(revoked, key_login("alice", SPARE))
    users.remove_key("alice", fingerprint(SPARE))
    assert context.end_revoked_sessions() == 1
    assert context.end_revoked_sessions() == 0
    assert revoked.conn.transport.sent == [
        (
            ssh_transport.DISCONNECT_BY_APPLICATION,
            "Your access was revoked: the key was removed.",
        )
    ]
    assert kept.conn.transport.sent == []

    assert context.allowed_rules("alice") is None
    users.update_settings("alice", rules=["EPCIS"])
    assert context.allowed_rules("alice") == {"EPCIS"}
    (users.users_dir / "alice.toml").write_text("rules = [\n")
    assert context.allowed_rules("alice") == set()
    assert context.allowed_rules("nobody") == set()


class _Rules:
    """
    A capture backend as far as a user's tree needs one: its rule names.
    """

    def rule_names(self) -> tuple[str, ...]:
        return ("EPCIS", "Returns")


def test_open_sessions_see_rule_changes_at_the_next_refresh(
    users: UserStore,
) -> None:
    """
    A logged-in user's folders come from the rules read at login; a change
    to the user's rules reaches the open session when the server refreshes,
    not before (no request reads the settings file).
    """
    unused: Any = None
    context = SFTPContext(Settings(), _Rules(), unused, unused, unused, users)
    alice = SFTPUser("alice", context)
    context.logged_in(alice)
    assert sorted(alice.tree.folders()) == ["EPCIS", "Returns"]

    users.update_settings("alice", rules=["EPCIS"])
    assert sorted(alice.tree.folders()) == ["EPCIS", "Returns"]
    context.refresh_allowed_rules()
    assert sorted(alice.tree.folders()) == ["EPCIS"]
    assert sorted(SFTPUser("alice", context).tree.folders()) == ["EPCIS"]
