"""
Public key logins: which keys are accepted, what is refused and logged, and
how the client's address reaches the C{from=} check.  No sockets: the
checker gets credentials with real signatures, and the userauth service a
recording transport.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bcrypt
from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import userauth
from twisted.conch.ssh.address import SSHTransportAddress
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.keys import Key
from twisted.cred.credentials import SSHPrivateKey, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from quartet_sftpd.auth import (
    Login,
    NoSuchUser,
    PeerSSHPrivateKey,
    UserAuthServer,
    UserKeyChecker,
    UserPasswordChecker,
    hash_password,
    make_checkers,
    peer_host,
)
from quartet_sftpd.hostkeys import fingerprint
from quartet_sftpd.users import UserStore
from tests.sshkeys import private_key, public_line, write_keys

ED25519 = private_key("ed25519")
RSA = private_key("rsa")
STRANGER = private_key("ecdsa")
NOW = datetime(2030, 6, 1, tzinfo=UTC).timestamp()


def credentials(
    key: Key,
    username: bytes = b"alice",
    algorithm: bytes | None = None,
    signed: bool = True,
    peer: Any = None,
    sign_as: bytes | None = None,
) -> SSHPrivateKey:
    """
    Credentials as Conch's userauth service builds them, signed by C{key}
    (with C{sign_as} as the signature algorithm, if given).
    """
    algorithm = algorithm or key.sshType()
    data = b"session-id and request"
    signature = key.sign(data, signatureType=sign_as or algorithm) if signed else None
    blob = key.public().blob()
    signed_data = data if signed else None
    if peer is None:
        return SSHPrivateKey(username, algorithm, blob, signed_data, signature)
    return PeerSSHPrivateKey(username, algorithm, blob, signed_data, signature, peer)


def temporary_folder(case: SynchronousTestCase) -> Path:
    """
    A new folder outside the work tree, removed after the test (trial's
    C{mktemp} would put it under the current folder).
    """
    folder = Path(tempfile.mkdtemp(prefix="quartet-auth-"))
    case.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return folder


def address(host: str) -> SSHTransportAddress:
    kind = IPv6Address if ":" in host else IPv4Address
    return SSHTransportAddress(kind("TCP", host, 50022))


class CheckerTests(SynchronousTestCase):
    """
    L{UserKeyChecker} over a user store in a temporary folder.
    """

    def setUp(self) -> None:
        self.users_dir = temporary_folder(self) / "users"
        self.keys_file = write_keys(
            self.users_dir / "alice.keys",
            public_line(ED25519, "alice"),
            public_line(RSA, "alice rsa"),
        )
        self.checker = UserKeyChecker(UserStore(self.users_dir), now=lambda: NOW)

    def refused(self, creds: SSHPrivateKey) -> dict[str, Any]:
        """
        Check that C{creds} are refused, and return the one warning logged.
        """
        with capturedLogs() as events:
            self.failureResultOf(self.checker.requestAvatarId(creds), UnauthorizedLogin)
        [event] = [e for e in events if e["log_level"].name == "warn"]
        return event

    def test_signed_login_gives_the_user_name(self) -> None:
        """
        A valid signature from one of the user's keys logs in; the avatar ID
        is the user name as bytes.
        """
        self.assertEqual(
            self.successResultOf(self.checker.requestAvatarId(credentials(ED25519))),
            b"alice",
        )

    def test_rsa_sha2_signatures(self) -> None:
        """
        An RSA key may sign with rsa-sha2-256 and rsa-sha2-512.
        """
        for algorithm in (b"rsa-sha2-256", b"rsa-sha2-512"):
            creds = credentials(RSA, algorithm=algorithm)
            self.assertEqual(
                self.successResultOf(self.checker.requestAvatarId(creds)), b"alice"
            )

    def test_query_for_an_authorized_key(self) -> None:
        """
        An unsigned query for an acceptable key is answered with
        L{ValidPublicKey}, so that Conch sends PK_OK and the client signs.
        """
        creds = credentials(ED25519, signed=False)
        self.failureResultOf(self.checker.requestAvatarId(creds), ValidPublicKey)

    def test_unknown_key_is_refused_and_logged(self) -> None:
        """
        A key that is not the user's is refused, with or without signature,
        and each refusal is logged once with user, fingerprint and reason.
        """
        for signed in (False, True):
            event = self.refused(credentials(STRANGER, signed=signed))
            self.assertEqual(event["user"], "alice")
            self.assertTrue(event["fingerprint"].startswith("SHA256:"))
            self.assertIn("not one of the user's", event["reason"])

    def test_unknown_and_impossible_users(self) -> None:
        """
        Unknown users are refused the same way, whatever bytes the client
        sent as a name; the name is logged with control characters escaped
        and no path outside the users folder is ever read.
        """
        (self.users_dir.parent / "secret.keys").write_text(public_line(ED25519))
        for name in (b"bob", b"../secret", b"\xff\xfe", b"alice\nroot"):
            event = self.refused(credentials(ED25519, username=name))
            self.assertEqual(event["reason"], "there is no such user")
            self.assertNotIn("\n", event["user"])

    def test_bad_signature_is_refused(self) -> None:
        """
        A signature over other data, or by another key, is refused.
        """
        creds = credentials(ED25519)
        creds.sigData = b"something else"
        self.assertIn("signature", self.refused(creds)["reason"])
        forged = credentials(STRANGER)
        forged.blob = ED25519.public().blob()
        self.assertIn("signature", self.refused(forged)["reason"])

    def test_signature_algorithm_must_match_the_request(self) -> None:
        """
        A request naming rsa-sha2-512 must carry an rsa-sha2-512 signature;
        an algorithm that does not fit the key is refused too.
        """
        creds = credentials(RSA, algorithm=b"rsa-sha2-512", sign_as=b"rsa-sha2-256")
        self.refused(creds)
        mismatched = credentials(ED25519)
        mismatched.algName = b"rsa-sha2-256"
        self.refused(mismatched)

    def test_expired_key_is_refused(self) -> None:
        """
        A key past its expiry-time is refused, even to an unsigned query;
        before that moment it is accepted.
        """
        write_keys(
            self.keys_file,
            public_line(ED25519, "", 'expiry-time="20300601Z"'),
            public_line(RSA, "", 'expiry-time="20300531Z"'),
        )
        self.successResultOf(self.checker.requestAvatarId(credentials(ED25519)))
        event = self.refused(credentials(RSA, signed=False))
        self.assertIn("expired at 2030-05-31 00:00:00 UTC", event["reason"])

    def test_from_option(self) -> None:
        """
        A key with C{from=} is accepted only from an address the option
        allows, and refused when the client's address is unknown.
        """
        write_keys(self.keys_file, public_line(ED25519, "", 'from="10.0.0.0/8"'))
        ok = credentials(ED25519, peer=address("10.1.2.3"))
        login = self.checker.requestAvatarId(ok)
        self.assertEqual(self.successResultOf(login), b"alice")
        event = self.refused(credentials(ED25519, peer=address("192.0.2.1")))
        self.assertEqual(event["peer"], "192.0.2.1")
        self.assertIn('from="10.0.0.0/8"', event["reason"])
        self.assertIn("unknown address", self.refused(credentials(ED25519))["reason"])

    def test_same_key_on_two_lines(self) -> None:
        """
        A key listed twice with different limits is accepted if any of its
        lines allows the login.
        """
        write_keys(
            self.keys_file,
            public_line(ED25519, "", 'from="10.0.0.0/8"'),
            public_line(ED25519, "", 'from="192.0.2.0/24"'),
        )
        creds = credentials(ED25519, peer=address("192.0.2.9"))
        self.successResultOf(self.checker.requestAvatarId(creds))

    def test_changed_key_file_applies_to_the_next_login(self) -> None:
        """
        Removing a key from the file refuses it at the next login.
        """
        self.successResultOf(self.checker.requestAvatarId(credentials(RSA)))
        write_keys(self.keys_file, public_line(ED25519))
        self.refused(credentials(RSA))

    def test_logs_hold_no_key_material(self) -> None:
        """
        Nothing logged for a refusal holds the key blob or the signature.
        """
        creds = credentials(STRANGER)
        event = self.refused(creds)
        text = repr(event)
        self.assertNotIn(repr(creds.blob)[2:40], text)
        self.assertNotIn(repr(creds.signature)[2:40], text)

    def test_make_checkers(self) -> None:
        """
        The portal's checkers handle public key credentials.
        """
        [checker] = make_checkers(UserStore(self.users_dir))
        self.assertIsInstance(checker, UserKeyChecker)


class PeerHostTests(SynchronousTestCase):
    """
    L{peer_host} finds the IP address text in whatever address it gets.
    """

    def test_addresses(self) -> None:
        self.assertEqual(peer_host(address("192.0.2.1")), "192.0.2.1")
        self.assertEqual(peer_host(IPv6Address("TCP", "::1", 22)), "::1")
        self.assertIsNone(peer_host(None))
        self.assertIsNone(peer_host(object()))


@implementer(IConchUser)
class _Avatar:
    pass


class _Realm:
    """
    A realm that records the avatar IDs and minds it is given.
    """

    def __init__(self) -> None:
        self.logins: list[tuple[Any, Any]] = []

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        self.logins.append((avatarId, mind))
        return IConchUser, _Avatar(), lambda: None


class _Transport:
    """
    The part of an SSH server transport the userauth service uses; records
    the packets sent.
    """

    sessionID = b"\x01" * 32

    def __init__(self, portal: Portal, peer: SSHTransportAddress) -> None:
        self.factory = self
        self.portal = portal
        self.peer = peer
        self.packets: list[tuple[int, bytes]] = []
        self.service: Any = None

    def getPeer(self) -> SSHTransportAddress:
        return self.peer

    def isEncrypted(self, direction: str) -> bool:
        return True

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.packets.append((kind, payload))

    def getService(self, transport: Any, name: bytes) -> Any:
        return object

    def setService(self, service: Any) -> None:
        self.service = service

    def sendDisconnect(self, reason: int, description: bytes) -> None:
        self.packets.append((-1, description))


class UserAuthServerTests(SynchronousTestCase):
    """
    L{UserAuthServer} carries the client's address from the transport to
    the checker and the realm.
    """

    def setUp(self) -> None:
        users_dir = temporary_folder(self) / "users"
        write_keys(
            users_dir / "alice.keys",
            public_line(ED25519, "", 'from="10.0.0.0/8"'),
        )
        self.realm = _Realm()
        self.portal = Portal(self.realm, make_checkers(UserStore(users_dir)))

    def connect(self, host: str) -> tuple[UserAuthServer, _Transport]:
        transport = _Transport(self.portal, address(host))
        server = UserAuthServer()
        server.transport = transport
        server.clock = Clock()
        server.serviceStarted()
        return server, transport

    def request(self, server: UserAuthServer, signed: bool) -> None:
        algorithm, blob = b"ssh-ed25519", ED25519.public().blob()
        head = NS(b"alice") + NS(b"ssh-connection") + NS(b"publickey")
        body = bytes([signed]) + NS(algorithm) + NS(blob)
        if signed:
            data = NS(server.transport.sessionID) + bytes(
                [userauth.MSG_USERAUTH_REQUEST]
            )
            body += NS(ED25519.sign(data + head + body, signatureType=algorithm))
        server.ssh_USERAUTH_REQUEST(head + body)

    def test_allowed_address_logs_in(self) -> None:
        """
        From an allowed address the query gets PK_OK, the signed request
        succeeds, and the realm gets the client's address as the mind.
        """
        server, transport = self.connect("10.0.0.5")
        self.request(server, signed=False)
        self.request(server, signed=True)
        kinds = [kind for kind, _ in transport.packets]
        self.assertEqual(
            kinds, [userauth.MSG_USERAUTH_PK_OK, userauth.MSG_USERAUTH_SUCCESS]
        )
        self.assertEqual(self.realm.logins, [(b"alice", address("10.0.0.5"))])

    def test_other_address_is_refused(self) -> None:
        """
        From an address outside C{from=} the key is not even offered PK_OK,
        and a signed request fails.
        """
        server, transport = self.connect("192.0.2.1")
        self.request(server, signed=False)
        self.request(server, signed=True)
        kinds = [kind for kind, _ in transport.packets]
        self.assertEqual(kinds, [userauth.MSG_USERAUTH_FAILURE] * 2)
        self.assertEqual(self.realm.logins, [])


def _now(f: Any, *args: Any) -> Any:
    """
    Run a blocking call at once, as the tests' stand-in for a thread pool.
    """
    return maybeDeferred(f, *args)


FAST_HASH = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(4)).decode("ascii")


class DisabledUserTests(SynchronousTestCase):
    """
    A disabled user cannot log in, with any key.
    """

    def test_disabled_user_is_refused(self) -> None:
        users_dir = temporary_folder(self) / "users"
        write_keys(users_dir / "alice.keys", public_line(ED25519))
        store = UserStore(users_dir)
        checker = UserKeyChecker(store)
        self.successResultOf(checker.requestAvatarId(credentials(ED25519)))
        store.update_settings("alice", disabled=True)
        with capturedLogs() as events:
            login = checker.requestAvatarId(credentials(ED25519, signed=False))
            self.failureResultOf(login, UnauthorizedLogin)
        self.assertEqual(
            [e["reason"] for e in events if e["log_level"].name == "warn"],
            ["the user is disabled"],
        )
        store.update_settings("alice", disabled=None)
        self.successResultOf(checker.requestAvatarId(credentials(ED25519)))


class _CountingRunner:
    """
    Runs blocking calls at once and records which bcrypt hash each one
    checked.
    """

    def __init__(self) -> None:
        self.hashes: list[bytes] = []

    def __call__(self, f: Any, password: bytes, hashed: bytes) -> Any:
        self.hashes.append(hashed)
        return maybeDeferred(f, password, hashed)


class PasswordCheckerTests(SynchronousTestCase):
    """
    L{UserPasswordChecker} over bcrypt hashes in users' settings.
    """

    def setUp(self) -> None:
        users_dir = temporary_folder(self) / "users"
        write_keys(users_dir / "alice.keys", public_line(ED25519))
        write_keys(users_dir / "bob.keys", public_line(RSA))
        self.store = UserStore(users_dir)
        self.store.update_settings("alice", password=FAST_HASH)
        self.runner = _CountingRunner()
        self.checker = UserPasswordChecker(self.store, self.runner, rounds=4)

    def login(self, user: bytes, password: bytes) -> Any:
        return self.checker.requestAvatarId(UsernamePassword(user, password))

    def test_right_password_logs_in(self) -> None:
        self.assertEqual(
            self.successResultOf(self.login(b"alice", b"correct horse")), b"alice"
        )

    def test_refusals(self) -> None:
        """
        A wrong password, a user without one, a disabled user and an
        unknown user are all refused; only the last as L{NoSuchUser}.
        """
        self.failureResultOf(self.login(b"alice", b"wrong"), UnauthorizedLogin)
        self.failureResultOf(self.login(b"bob", b"correct horse"), UnauthorizedLogin)
        self.failureResultOf(self.login(b"nobody", b"correct horse"), NoSuchUser)
        self.store.update_settings("alice", disabled=True)
        failure = self.failureResultOf(
            self.login(b"alice", b"correct horse"), UnauthorizedLogin
        )
        self.assertNotIsInstance(failure.value, NoSuchUser)

    def test_every_attempt_costs_one_bcrypt_check(self) -> None:
        """
        Known user or not, password set or not: each attempt runs exactly
        one bcrypt check of the same cost, so timing tells nothing.
        """
        for user in (b"alice", b"bob", b"nobody", b"../etc"):
            self.failureResultOf(self.login(user, b"guess"), UnauthorizedLogin)
        self.assertEqual(len(self.runner.hashes), 4)
        costs = {hashed.split(b"$")[2] for hashed in self.runner.hashes}
        self.assertEqual(costs, {b"04"})

    def test_hash_password(self) -> None:
        """
        Stored passwords are bcrypt hashes; empty and overlong ones are
        refused.
        """
        hashed = hash_password(b"s3cret pass", rounds=4)
        self.assertTrue(hashed.startswith("$2b$04$"))
        self.assertTrue(bcrypt.checkpw(b"s3cret pass", hashed.encode()))
        for bad in (b"", b"x" * 73):
            self.assertRaises(ValueError, hash_password, bad)

    def test_make_checkers_offers_passwords_only_when_switched_on(self) -> None:
        self.assertEqual(len(make_checkers(self.store, password_auth=False)), 1)
        [_, checker] = make_checkers(self.store, password_auth=True, run_blocking=_now)
        self.assertIsInstance(checker, UserPasswordChecker)


class _Policy:
    """
    A login policy that records what it is told and bans after C{limit}
    failures.
    """

    def __init__(self, limit: int = 2, refusal: str | None = None) -> None:
        self.failures: list[tuple[str | None, str]] = []
        self.logins: list[Login] = []
        self.limit = limit
        self.refusal = refusal

    def login_failed(self, host: str | None, user: str) -> bool:
        self.failures.append((host, user))
        return len(self.failures) >= self.limit

    def logged_in(self, avatar: Any, login: Login) -> str | None:
        self.logins.append(login)
        return self.refusal


class PolicyTests(SynchronousTestCase):
    """
    L{UserAuthServer} reports failed logins to the factory's policy, and
    lets it refuse a login.
    """

    def setUp(self) -> None:
        users_dir = temporary_folder(self) / "users"
        write_keys(users_dir / "alice.keys", public_line(ED25519))
        store = UserStore(users_dir)
        store.update_settings("alice", password=FAST_HASH)
        self.realm = _Realm()
        self.portal = Portal(
            self.realm, make_checkers(store, password_auth=True, run_blocking=_now)
        )

    def connect(self, policy: _Policy) -> tuple[UserAuthServer, _Transport]:
        transport = _Transport(self.portal, address("192.0.2.1"))
        transport.policy = policy  # type: ignore[attr-defined]
        server = UserAuthServer()
        server.transport = transport
        server.clock = Clock()
        server.serviceStarted()
        return server, transport

    def key_request(self, server: UserAuthServer, key: Key, signed: bool) -> None:
        algorithm, blob = key.sshType(), key.public().blob()
        head = NS(b"alice") + NS(b"ssh-connection") + NS(b"publickey")
        body = bytes([signed]) + NS(algorithm) + NS(blob)
        if signed:
            data = NS(server.transport.sessionID) + bytes(
                [userauth.MSG_USERAUTH_REQUEST]
            )
            body += NS(key.sign(data + head + body, signatureType=algorithm))
        server.ssh_USERAUTH_REQUEST(head + body)

    def password_request(self, server: UserAuthServer, user: bytes, pw: bytes) -> None:
        head = NS(user) + NS(b"ssh-connection") + NS(b"password")
        server.ssh_USERAUTH_REQUEST(head + b"\x00" + NS(pw))
        server.clock.advance(server.passwordDelay)

    def test_queries_are_not_failures_but_signed_refusals_are(self) -> None:
        """
        Asking whether a key would do is no failure; a signed refusal is,
        and so is a wrong password.
        """
        policy = _Policy(limit=10)
        server, _ = self.connect(policy)
        self.key_request(server, STRANGER, signed=False)
        self.assertEqual(policy.failures, [])
        self.key_request(server, STRANGER, signed=True)
        self.password_request(server, b"alice", b"wrong")
        self.assertEqual(policy.failures, [("192.0.2.1", "alice")] * 2)

    def test_unknown_users_count_even_for_queries(self) -> None:
        policy = _Policy(limit=10)
        server, _ = self.connect(policy)
        head = NS(b"root") + NS(b"ssh-connection") + NS(b"publickey")
        body = b"\x00" + NS(b"ssh-ed25519") + NS(ED25519.public().blob())
        server.ssh_USERAUTH_REQUEST(head + body)
        self.assertEqual(policy.failures, [("192.0.2.1", "root")])

    def test_a_ban_disconnects_at_once(self) -> None:
        """
        The failure that bans the address ends the connection with a
        message; no failure reply follows.
        """
        server, transport = self.connect(_Policy(limit=2))
        self.password_request(server, b"alice", b"one")
        self.password_request(server, b"alice", b"two")
        self.assertEqual(transport.packets[0][0], userauth.MSG_USERAUTH_FAILURE)
        self.assertEqual(
            transport.packets[1:],
            [(-1, b"Too many failed logins from your address; try again later.")],
        )

    def test_successful_logins_are_recorded_with_their_key(self) -> None:
        policy = _Policy()
        server, transport = self.connect(policy)
        self.key_request(server, ED25519, signed=True)
        self.password_request(server, b"alice", b"correct horse")
        self.assertEqual(
            policy.logins,
            [
                Login("alice", "publickey", fingerprint(ED25519), "192.0.2.1"),
                Login("alice", "password", "", "192.0.2.1"),
            ],
        )
        kinds = [kind for kind, _ in transport.packets]
        self.assertEqual(kinds, [userauth.MSG_USERAUTH_SUCCESS] * 2)

    def test_policy_refusal_logs_out_and_disconnects(self) -> None:
        """
        A login the policy refuses (a session limit) logs the avatar out
        again and disconnects with the policy's sentence.
        """
        logouts = []
        self.realm.requestAvatar = lambda avatar_id, mind, *i: (  # type: ignore
            IConchUser,
            _Avatar(),
            lambda: logouts.append(avatar_id),
        )
        server, transport = self.connect(_Policy(refusal="User alice has 2 sessions."))
        self.key_request(server, ED25519, signed=True)
        self.assertEqual(transport.packets, [(-1, b"User alice has 2 sessions.")])
        self.assertEqual(logouts, [b"alice"])

    def test_password_is_offered_only_while_some_user_has_one(self) -> None:
        """
        The failure reply lists C{password} only when the policy says some
        user has a password.
        """
        for passwords, methods in (
            (True, b"publickey,password"),
            (False, b"publickey"),
        ):
            policy = _Policy()
            policy.passwords = passwords  # type: ignore[attr-defined]
            server, transport = self.connect(policy)
            self.key_request(server, STRANGER, signed=True)
            [(kind, payload)] = transport.packets
            self.assertEqual(kind, userauth.MSG_USERAUTH_FAILURE)
            self.assertEqual(getNS(payload)[0], methods)
