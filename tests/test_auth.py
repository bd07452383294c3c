"""
Public key logins: which keys are accepted, what is refused and logged, and
how the client's address reaches the C{from=} check.  No sockets: the
checker gets credentials with real signatures, and the userauth service a
recording transport.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import userauth
from twisted.conch.ssh.address import SSHTransportAddress
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from quartet_sftpd.auth import (
    PeerSSHPrivateKey,
    UserAuthServer,
    UserKeyChecker,
    make_checkers,
    peer_host,
)
from quartet_sftpd.users import UserStore
from tests.sshkeys import private_key, public_line, write_keys

ED25519 = private_key("ed25519")
RSA = private_key("rsa")
STRANGER = private_key("ecdsa")
NOW = datetime(2030, 6, 1, tzinfo=timezone.utc).timestamp()


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
