"""
Logins: the credentials checkers over the user store, and the userauth
service that tells them which address a client connects from.

Conch's credentials carry no client address, which the C{from="..."} option
of a key and the bans of L{quartet_sftpd.bans} need.  L{UserAuthServer}
(installed as the factory's C{ssh-userauth} service) hands the portal
L{PeerSSHPrivateKey} and L{PeerUsernamePassword} credentials that add it,
and passes the address as the login's C{mind} so that the realm can log it
too.  When the factory has a C{policy} (an L{ILoginPolicy}), the service
also reports failed logins to it, and lets it refuse a login that would
exceed a session limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

import bcrypt
from twisted.conch.error import IgnoreAuthentication, ValidPublicKey
from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh.address import SSHTransportAddress
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import (
    ISSHPrivateKey,
    IUsernamePassword,
    SSHPrivateKey,
    UsernamePassword,
)
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from quartet_sftpd.authorized_keys import AuthorizedKey
from quartet_sftpd.hostkeys import fingerprint
from quartet_sftpd.users import UnknownUserError, UserError, UserStore

#: Cost factor of the bcrypt hashes the admin command makes.
BCRYPT_ROUNDS = 12


class NoSuchUser(UnauthorizedLogin):
    """
    A login named a user that does not exist (or cannot exist).
    """


@dataclass(frozen=True)
class Login:
    """
    How a user logged in, so that the server can end the session when that
    way in is taken away.

    @ivar user: the user name.
    @ivar method: C{"publickey"} or C{"password"}.
    @ivar credential: the key's fingerprint, or the password hash, that
        was accepted (empty for a password until the policy records it).
    @ivar peer: the client's IP address text, or L{None}.
    """

    user: str
    method: str
    credential: str
    peer: str | None


class ILoginPolicy(Protocol):
    """
    What the userauth service asks of the server about logins (see
    L{quartet_sftpd.limits.LoginPolicy}).
    """

    def login_failed(self, host: str | None, user: str) -> bool:
        """
        Count a failed login; return whether the address is banned now.
        """

    def logged_in(self, avatar: Any, login: Login) -> str | None:
        """
        Record a successful login; return a sentence if it must be refused
        (a session limit), else L{None}.
        """

    @property
    def passwords(self) -> bool:
        """
        Whether any user has a password: if not, the C{password} method is
        not offered.
        """


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


@implementer(IUsernamePassword)
class PeerUsernamePassword(UsernamePassword):
    """
    Password credentials that also say where the client connects from.

    @ivar peer: the client's address, as the transport reports it.
    """

    def __init__(self, username: bytes, password: bytes, peer: IAddress | None) -> None:
        super().__init__(username, password)
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
    the client's address, and failures and successes go to the factory's
    login policy, if it has one.
    """

    _log = Logger()

    def __init__(self, portal: Portal, peer: IAddress, service: UserAuthServer) -> None:
        self._portal = portal
        self._peer = peer
        self._service = service

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
        elif isinstance(credentials, UsernamePassword) and not isinstance(
            credentials, PeerUsernamePassword
        ):
            credentials = PeerUsernamePassword(
                credentials.username, credentials.password, self._peer
            )
        if mind is None:
            mind = self._peer
        d = self._portal.login(credentials, mind, *interfaces)
        policy = self._service.policy
        if policy is not None:
            d.addCallbacks(
                self._succeeded,
                self._failed,
                callbackArgs=(credentials, policy),
                errbackArgs=(credentials, policy),
            )
        return d

    def _succeeded(self, result: Any, credentials: Any, policy: ILoginPolicy) -> Any:
        """
        Tell the policy who logged in, and how; if it refuses (too many
        sessions), log the user out again and disconnect with its reason.
        """
        _, avatar, logout = result
        name = credentials.username.decode("ascii", errors="replace")
        if isinstance(credentials, SSHPrivateKey):
            key = Key.fromString(credentials.blob, type="blob")
            login = Login(name, "publickey", fingerprint(key), peer_host(self._peer))
        else:
            # The policy, which reads the user store, fills in the hash.
            login = Login(name, "password", "", peer_host(self._peer))
        refusal = policy.logged_in(avatar, login)
        if refusal is None:
            return result
        logout()
        self._log.warn(
            "Refused login of {user} from {peer}: {reason}",
            user=name,
            peer=login.peer,
            reason=refusal,
        )
        self._service.transport.sendDisconnect(
            ssh_transport.DISCONNECT_TOO_MANY_CONNECTIONS, refusal.encode("utf-8")
        )
        return Failure(IgnoreAuthentication())

    def _failed(self, failure: Failure, credentials: Any, policy: ILoginPolicy) -> Any:
        """
        Count a failed login against the client's address: a refused
        password, a refused signed key, or any attempt naming a user who does
        not exist.  A client's unsigned question whether a key would do is
        not a failure, since clients ask it for every key they hold.  When
        the address becomes banned, the connection is closed at once.
        """
        if not failure.check(UnauthorizedLogin):
            return failure
        signed = isinstance(credentials, SSHPrivateKey) and credentials.signature
        password = isinstance(credentials, UsernamePassword)
        if not (signed or password or failure.check(NoSuchUser)):
            return failure
        name = _shown(credentials.username)
        if policy.login_failed(peer_host(self._peer), name):
            self._service.transport.sendDisconnect(
                ssh_transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
                b"Too many failed logins from your address; try again later.",
            )
            return Failure(IgnoreAuthentication())
        return failure


class UserAuthServer(SSHUserAuthServer):
    """
    Conch's C{ssh-userauth} service, with the client's address added to
    the credentials (see L{PeerSSHPrivateKey}) and given to the realm as
    the C{mind} of the login: an L{SSHTransportAddress}.

    If the factory has a C{policy} attribute (an L{ILoginPolicy}), failed
    logins are reported to it, it may refuse a login, and the C{password}
    method is offered only while some user has a password.  The factory's
    C{login_grace_time}, if it has one, replaces Conch's ten hours as the
    time a client has to log in once it asks for this service.

    Install it with C{factory.services = {**factory.services,
    b"ssh-userauth": UserAuthServer}}.
    """

    policy: ILoginPolicy | None = None

    def serviceStarted(self) -> None:
        factory = self.transport.factory
        self.policy = getattr(factory, "policy", None)
        grace = getattr(factory, "login_grace_time", None)
        if grace:
            self.loginTimeout = grace
        super().serviceStarted()
        self.portal = _PeerPortal(self.portal, self.transport.getPeer(), self)
        offered = self.supportedAuthentications
        if b"password" in offered and not getattr(self.policy, "passwords", True):
            # No user has a password: offering the method would only make
            # interactive clients prompt for one that cannot work.
            offered.remove(b"password")


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
            self._refuse(username, peer, key_print, "there is no such user", NoSuchUser)
        if _disabled(self._users, name):
            self._refuse(username, peer, key_print, "the user is disabled")
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
                moment = datetime.fromtimestamp(entry.expires, UTC)
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
        self,
        username: bytes,
        peer: str | None,
        key_print: str,
        reason: str,
        error: type[UnauthorizedLogin] = UnauthorizedLogin,
    ) -> NoReturn:
        """
        Log a refusal and raise C{error}.
        """
        self._log.warn(
            "Refused login of {user} from {peer} with key {fingerprint}: {reason}",
            user=_shown(username),
            peer=peer,
            fingerprint=key_print,
            reason=reason,
        )
        raise error(reason)


def _disabled(users: UserStore, name: str) -> bool:
    """
    Whether user C{name} is disabled; a settings file that cannot be read
    counts as disabled, so that a broken file never widens access.
    """
    try:
        return bool(users.settings(name).get("disabled", False))
    except UnknownUserError:
        return True
    except UserError:
        return True


def hash_password(password: bytes, rounds: int = BCRYPT_ROUNDS) -> str:
    """
    The bcrypt hash of a password, as stored in a user's settings.

    @raise ValueError: the password is empty or longer than bcrypt's 72
        bytes, which it would silently cut.
    """
    if not password:
        raise ValueError("the password is empty")
    if len(password) > 72:
        raise ValueError("the password is longer than 72 bytes")
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds)).decode("ascii")


@implementer(ICredentialsChecker)
class UserPasswordChecker:
    """
    Checks password logins against the bcrypt hashes in users' settings.

    A user without a C{password} setting cannot log in with one.  Every
    attempt, for a known user or not, with a password set or not, costs one
    bcrypt check of the same cost (an unknown user's is made against a
    hash of a random password), so the time of a refusal does not tell
    whether the user exists.  Conch's userauth service then waits its
    C{passwordDelay} (1 s) before answering any refusal.

    The bcrypt check runs in a thread, off the reactor.
    """

    credentialInterfaces = (IUsernamePassword,)
    _log = Logger()

    def __init__(
        self,
        users: UserStore,
        run_blocking: Callable[..., Deferred[Any]] = deferToThread,
        rounds: int = BCRYPT_ROUNDS,
    ) -> None:
        """
        @param users: the user store; read at each login.
        @param run_blocking: runs a blocking call, returning a Deferred that
            fires with its result (default: Twisted's thread pool).
        @param rounds: cost of the decoy hash checked for users who have
            no password; it should match the cost of real hashes.
        """
        self._users = users
        self._run_blocking = run_blocking
        self._decoy = bcrypt.hashpw(b"no password", bcrypt.gensalt(rounds))

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes]:
        """
        Check password credentials.

        @return: a Deferred that fires with the user name as C{bytes}, or
            fails with L{NoSuchUser} or L{UnauthorizedLogin}.
        """
        username = credentials.username
        name = username.decode("ascii", errors="replace")
        peer = peer_host(getattr(credentials, "peer", None))
        stored, reason = None, "there is no such user"
        if self._users.exists(name):
            try:
                stored = self._users.settings(name).get("password")
                reason = "the user has no password"
                if self._users.settings(name).get("disabled", False):
                    stored, reason = None, "the user is disabled"
            except UserError as error:
                stored, reason = None, str(error)
        hashed = stored.encode("ascii", "replace") if stored else self._decoy
        d = self._run_blocking(_check_password, credentials.password, hashed)

        def checked(matches: bool) -> bytes:
            if matches and stored:
                self._log.info(
                    "login: {user} from {peer} with a password", user=name, peer=peer
                )
                return username
            why = reason if not stored else "the password is wrong"
            self._log.warn(
                "Refused password login of {user} from {peer}: {reason}",
                user=_shown(username),
                peer=peer,
                reason=why,
            )
            if why == "there is no such user":
                raise NoSuchUser(why)
            raise UnauthorizedLogin(why)

        return d.addCallback(checked)


def _check_password(password: bytes, hashed: bytes) -> bool:
    """
    Whether C{password} matches a bcrypt hash; a malformed hash matches
    nothing.
    """
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def make_checkers(
    users: UserStore,
    password_auth: bool = False,
    run_blocking: Callable[..., Deferred[Any]] = deferToThread,
) -> list[ICredentialsChecker]:
    """
    The credential checkers the portal logs users in with: public keys,
    and passwords when C{password_auth} is true.

    @param users: the user store the checkers read.
    @param password_auth: offer password logins (only users with a
        password set can use them).
    @param run_blocking: runs the blocking bcrypt checks.
    """
    checkers: list[ICredentialsChecker] = [UserKeyChecker(users)]
    if password_auth:
        checkers.append(UserPasswordChecker(users, run_blocking))
    return checkers
