"""
Public key logins: the credentials checker over the user store, and the
userauth service that tells it which address a client connects from.

Conch's L{SSHPrivateKey} credentials carry no client address, which the
C{from="..."} option of a key needs.  L{UserAuthServer} (installed as the
factory's C{ssh-userauth} service) hands the portal L{PeerSSHPrivateKey}
credentials that add it, and passes the address as the login's C{mind} so
that the realm can log it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, NoReturn

from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh.address import SSHTransportAddress
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey, SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from zope.interface import Interface, implementer

from quartet_sftpd.authorized_keys import AuthorizedKey
from quartet_sftpd.hostkeys import fingerprint
from quartet_sftpd.users import UnknownUserError, UserStore


@implementer(ISSHPrivateKey)
class PeerSSHPrivateKey(SSHPrivateKey):
    """
    Public key credentials that also say where the client connects from.

    @ivar peer: the client's address, as the transport reports it.
    """

    def __init__(
        self,
        username: bytes,
        algName: bytes,
        blob: bytes,
        sigData: bytes | None,
        signature: bytes | None,
        peer: IAddress | None,
    ) -> None:
        super().__init__(username, algName, blob, sigData, signature)
        self.peer = peer


def peer_host(peer: object) -> str | None:
    """
    The IP address text of a client address, or L{None} if it has none (a
    UNIX socket, or no address at all).

    @param peer: an L{IAddress}, maybe wrapped in an L{SSHTransportAddress}.
    """
    if isinstance(peer, SSHTransportAddress):
        peer = peer.address
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else None


class _PeerPortal:
    """
    The portal as one connection's userauth service sees it: logins carry
    the client's address.
    """

    def __init__(self, portal: Portal, peer: IAddress) -> None:
        self._portal = portal
        self._peer = peer

    def listCredentialsInterfaces(self) -> list[type[Interface]]:
        return self._portal.listCredentialsInterfaces()

    def login(
        self, credentials: Any, mind: object, *interfaces: type[Interface]
    ) -> Deferred[Any]:
        if isinstance(credentials, SSHPrivateKey) and not isinstance(
            credentials, PeerSSHPrivateKey
        ):
            credentials = PeerSSHPrivateKey(
                credentials.username,
                credentials.algName,
                credentials.blob,
                credentials.sigData,
                credentials.signature,
                self._peer,
            )
        if mind is None:
            mind = self._peer
        return self._portal.login(credentials, mind, *interfaces)


class UserAuthServer(SSHUserAuthServer):
    """
    Conch's C{ssh-userauth} service, with the client's address added to
    public key credentials (see L{PeerSSHPrivateKey}) and given to the realm
    as the C{mind} of the login: an L{SSHTransportAddress}.

    Install it with C{factory.services = {**factory.services,
    b"ssh-userauth": UserAuthServer}}.
    """

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.portal = _PeerPortal(self.portal, self.transport.getPeer())


def _shown(username: bytes) -> str:
    """
    A user name as the client sent it, made safe to log: control characters
    and bytes that are not UTF-8 are escaped, and it is cut at 64 characters.
    """
    text = username[:64].decode("utf-8", errors="backslashreplace")
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


@implementer(ICredentialsChecker)
class UserKeyChecker:
    """
    Checks public key logins against the keys in the user store.

    A login names a user and offers a key.  The key must be one of the
    user's keys, not past its C{expiry-time}, and, if it has a C{from=}
    option, used from an address that the option allows.  A client first
    asks without a signature whether a key would do: the answer is
    L{ValidPublicKey} (Conch then sends C{SSH_MSG_USERAUTH_PK_OK}) only for
    a key that passes all of these checks, as OpenSSH answers.  A signed
    request must also carry a valid signature made with the algorithm it
    names.

    Each refusal is logged once as a warning with the fields C{user},
    C{peer}, C{fingerprint} and C{reason}; the client only learns that the
    login failed.

    A key with a C{from=} option is refused when the credentials carry no
    client address, as Conch's own do not: use L{UserAuthServer}.
    """

    credentialInterfaces = (ISSHPrivateKey,)
    _log = Logger()

    def __init__(self, users: UserStore, now: Callable[[], float] = time.time) -> None:
        """
        @param users: the user store; read at each login, so a changed key
            file applies to the next login.
        @param now: the current POSIX time, for C{expiry-time}.
        """
        self._users = users
        self._now = now

    def requestAvatarId(self, credentials: ISSHPrivateKey) -> Deferred[bytes]:
        """
        Check public key credentials.

        @param credentials: L{ISSHPrivateKey} credentials, best a
            L{PeerSSHPrivateKey}.
        @return: a Deferred that fires with the user name as C{bytes} (as
            Conch passes it; it is ASCII, so C{.decode("ascii")} gives the
            user store's name), or fails with L{ValidPublicKey} when an
            unsigned query names an acceptable key, or with
            L{UnauthorizedLogin} for any refusal.
        """
        return maybeDeferred(self._check, credentials)

    def _check(self, credentials: ISSHPrivateKey) -> bytes:
        username = credentials.username
        peer = peer_host(getattr(credentials, "peer", None))
        try:
            offered = Key.fromString(credentials.blob, type="blob")
        except Exception:
            # Conch parsed this blob already; refuse whatever fails here.
            offered = None
        if offered is None:
            self._refuse(username, peer, "-", "the offered key cannot be read")
        key_print = fingerprint(offered)

        name = username.decode("ascii", errors="replace")
        try:
            entries = [e for e in self._users.keys(name) if e.key == offered]
        except UnknownUserError:
            entries = None
        if entries is None:
            self._refuse(username, peer, key_print, "there is no such user")
        if not entries:
            self._refuse(username, peer, key_print, "the key is not one of the user's")
        refusal = self._first_refusal(entries, peer)
        if refusal is not None:
            self._refuse(username, peer, key_print, refusal)

        if not credentials.signature:
            self._log.debug(
                "Key {fingerprint} of {user} is acceptable; waiting for a signature",
                user=name,
                peer=peer,
                fingerprint=key_print,
            )
            raise ValidPublicKey()
        if not self._signature_valid(offered, credentials):
            self._refuse(username, peer, key_print, "the signature is not valid")
        self._log.info(
            "login: {user} from {peer} with key {fingerprint}",
            user=name,
            peer=peer,
            fingerprint=key_print,
        )
        return username

    def _first_refusal(
        self, entries: list[AuthorizedKey], peer: str | None
    ) -> str | None:
        """
        Why none of the user's lines for the offered key allows this login,
        or L{None} if one does.  Like OpenSSH, every line with the key is
        tried, so one key may be listed with different options.
        """
        now = self._now()
        reasons = []
        for entry in entries:
            if entry.expired(now):
                assert entry.expires is not None
                moment = datetime.fromtimestamp(entry.expires, timezone.utc)
                reasons.append(f"the key expired at {moment:%Y-%m-%d %H:%M:%S} UTC")
            elif not entry.allows_address(peer):
                reasons.append(
                    f'the key\'s from="{entry.options["from"]}" does not allow '
                    f"{peer or 'an unknown address'}"
                )
            else:
                return None
        return reasons[0]

    @staticmethod
    def _signature_valid(key: Key, credentials: ISSHPrivateKey) -> bool:
        """
        Whether the credentials' signature was made by C{key} over their
        signed data, with the algorithm the request names (RFC 4252 section
        7; RFC 8332 for C{rsa-sha2-256} and C{rsa-sha2-512}).
        """
        if credentials.algName not in key.supportedSignatureAlgorithms():
            return False
        try:
            if getNS(credentials.signature)[0] != credentials.algName:
                return False
            return bool(key.verify(credentials.signature, credentials.sigData))
        except Exception:
            # A malformed signature is a refusal, whatever Conch raises.
            return False

    def _refuse(
        self, username: bytes, peer: str | None, key_print: str, reason: str
    ) -> NoReturn:
        """
        Log a refusal and raise L{UnauthorizedLogin}.
        """
        self._log.warn(
            "Refused login of {user} from {peer} with key {fingerprint}: {reason}",
            user=_shown(username),
            peer=peer,
            fingerprint=key_print,
            reason=reason,
        )
        raise UnauthorizedLogin(reason)


def make_checkers(users: UserStore) -> list[ICredentialsChecker]:
    """
    The credential checkers the portal logs users in with: public keys
    only, for now.

    @param users: the user store the checkers read.
    """
    return [UserKeyChecker(users)]
