"""
Limits on connections and sessions: who may connect, how many may be logged
in, how long a client has to log in, and how long a session may stay silent.

L{GuardedFactory} is the server's SSH factory with these limits,
L{GuardedTransport} its transport and L{LimitedConnection} its connection
service.  L{LoginPolicy} is what the userauth
service (L{quartet_sftpd.auth.UserAuthServer}) consults: it counts failed
logins into L{quartet_sftpd.bans.AddressBans}, enforces the session limits,
and remembers how each session logged in, so that the server can end the
sessions of a user or key that is taken away (L{LoginPolicy.revocation}).

A session here is one logged-in SSH connection.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from twisted.conch.ssh import connection
from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh.common import NS, getNS
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

from quartet_sftpd.auth import Login, peer_host
from quartet_sftpd.bans import AddressBans
from quartet_sftpd.config import Settings
from quartet_sftpd.factory import SFTPFactory, SFTPServerTransport
from quartet_sftpd.users import UnknownUserError, UserError, UserStore

#: Messages that do not count as activity for the idle timeout: ignore and
#: debug messages, and global requests such as OpenSSH's
#: C{keepalive@openssh.com} and their replies.
KEEPALIVE_MESSAGES = frozenset({2, 4, 80, 81, 82})

#: Seconds a client that does not read gets to take a disconnect message
#: before its connection is cut.
CLOSE_GRACE = 5.0


if TYPE_CHECKING:
    from quartet_sftpd.metrics import Metrics


class LoginPolicy:
    """
    The server's rules for logins: bans, session limits and revocation.

    @ivar logins: each logged-in avatar and how it logged in.
    @ivar passwords: whether password logins are on and some user has a
        password, as of the last L{refresh}.
    """

    _log = Logger()

    def __init__(self, settings: Settings, users: UserStore, bans: AddressBans) -> None:
        """
        @param settings: C{max_sessions}, C{max_user_sessions} and
            C{password_auth} are read from it.
        @param users: the user store, for per-user limits and revocation.
        @param bans: where failed logins are counted.
        """
        self.settings = settings
        self.users = users
        self.bans = bans
        self.logins: dict[Any, Login] = {}
        self.passwords = False
        #: Where logins are counted for the metrics endpoint, if anywhere.
        self.metrics: Metrics | None = None
        self.refresh()

    def refresh(self) -> None:
        """
        Find out again whether any user has a password (see
        L{passwords}); the server calls this every C{reload_interval}.
        """
        if not self.settings.password_auth:
            self.passwords = False
            return
        found = False
        for name in self.users.names():
            try:
                if self.users.settings(name).get("password"):
                    found = True
                    break
            except UserError:
                continue
        self.passwords = found

    def login_failed(self, host: str | None, user: str) -> bool:
        """
        Count a failed login from C{host}.

        @return: whether C{host} is banned now.
        """
        if self.metrics is not None:
            self.metrics.login("refused")
        return self.bans.failed(host, user)

    def user_limit(self, user: str) -> int:
        """
        How many sessions C{user} may hold at once: the user's own
        C{max_sessions}, else the server's C{max_user_sessions}; 0 for no
        limit.
        """
        try:
            own = self.users.settings(user).get("max_sessions")
        except UserError:
            own = None
        return self.settings.max_user_sessions if own is None else own

    def logged_in(self, avatar: Any, login: Login) -> str | None:
        """
        Admit a new session, or say why not.

        @param avatar: the user's new avatar.
        @param login: how it logged in.
        @return: L{None} if the session is admitted (and now counted), or
            a sentence for the client if a limit refuses it.
        """
        total = self.settings.max_sessions
        if total and len(self.logins) >= total:
            return (
                f"The server already has {total} sessions, its limit; try again later."
            )
        limit = self.user_limit(login.user)
        mine = sum(1 for other in self.logins.values() if other.user == login.user)
        if limit and mine >= limit:
            return (
                f"User {login.user} already has {mine} "
                f"session{'' if mine == 1 else 's'} open, the limit; close one and "
                "try again."
            )
        if login.method == "password" and not login.credential:
            hashed = self._password(login.user) or ""
            login = Login(login.user, login.method, hashed, login.peer)
        self.logins[avatar] = login
        if self.metrics is not None:
            self.metrics.login("accepted")
            self.metrics.sessions.set(len(self.logins))
        return None

    def logged_out(self, avatar: Any) -> None:
        """
        The session of C{avatar} ended.
        """
        self.logins.pop(avatar, None)
        if self.metrics is not None:
            self.metrics.sessions.set(len(self.logins))

    def _password(self, user: str) -> str | None:
        if not self.settings.password_auth:
            return None
        password = self.users.settings(user).get("password")
        return password if isinstance(password, str) else None

    def revocation(self, login: Login) -> str | None:
        """
        Why a session that logged in as C{login} may no longer go on, or
        L{None} if it may: the user was removed or disabled, or the key or
        password it used was taken away or changed.
        """
        try:
            if self.users.settings(login.user).get("disabled", False):
                return "the user was disabled"
            if login.method == "password":
                if self._password(login.user) != login.credential:
                    return "the user's password was changed or removed"
                return None
            keys = self.users.keys(login.user)
        except UnknownUserError:
            return "the user was removed"
        except UserError:
            return "the user's settings file cannot be read"
        if not any(key.fingerprint == login.credential for key in keys):
            return "the key was removed"
        return None


class GuardedTransport(SFTPServerTransport):
    """
    The SSH server transport with a login grace time and an idle timeout,
    both read from the factory's settings.

    Before login, the connection is closed C{login_grace_time} seconds after
    it was made.  After login, it is closed when the client sent nothing but
    keepalives for C{idle_timeout} seconds (open uploads are then aborted,
    as for any lost connection).
    """

    factory: GuardedFactory
    _grace_call: IDelayedCall | None = None
    _idle_call: IDelayedCall | None = None
    _cut_call: IDelayedCall | None = None
    #: The message of L{close_with}, once the server decided to close.
    closed_because: str | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.unauthenticated.add(self)
        grace = self.factory.settings.login_grace_time
        if grace:
            self._grace_call = self.factory.clock.callLater(grace, self._grace_over)

    def setService(self, service: Any) -> None:
        super().setService(service)
        if service.name == b"ssh-connection":
            self.factory.unauthenticated.discard(self)
            self._cancel("_grace_call")
            idle = self.factory.settings.idle_timeout
            if idle:
                self._idle_call = self.factory.clock.callLater(idle, self._idle_over)

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        """
        Handle one SSH message, counting it as activity unless it is a
        keepalive.

        Conch's connection service raises on some malformed messages (a
        global request without its flag, a reply nobody asked for); the
        reactor would log that as an unhandled error with a trace and drop
        the connection.  Here the connection is closed with a protocol
        error and one warning (the trace is logged at debug level).
        """
        idle = self._idle_call
        if idle is not None and messageNum not in KEEPALIVE_MESSAGES:
            idle.reset(self.factory.settings.idle_timeout)
        try:
            super().dispatchMessage(messageNum, payload)
        except Exception as error:
            peer = peer_host(self.transport.getPeer())
            self._log.failure(
                "malformed SSH message of type {kind} from {peer}",
                level=LogLevel.debug,
                kind=messageNum,
                peer=peer,
            )
            self._log.warn(
                "closing connection from {peer}: malformed SSH message of type "
                "{kind} ({error})",
                peer=peer,
                kind=messageNum,
                error=f"{type(error).__name__}: {error}",
            )
            self.close_with(
                ssh_transport.DISCONNECT_PROTOCOL_ERROR,
                f"Malformed SSH message of type {messageNum}.",
            )

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.unauthenticated.discard(self)
        for name in ("_grace_call", "_idle_call", "_cut_call"):
            self._cancel(name)
        super().connectionLost(reason)

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        setattr(self, name, None)
        if call is not None and call.active():
            call.cancel()

    def _grace_over(self) -> None:
        self._grace_call = None
        self._log.warn(
            "closing connection from {peer}: not logged in after {seconds} s",
            peer=peer_host(self.transport.getPeer()),
            seconds=self.factory.settings.login_grace_time,
        )
        self.close_with(
            ssh_transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
            "Login took too long.",
        )

    def _idle_over(self) -> None:
        self._idle_call = None
        avatar = getattr(self, "avatar", None)
        self._log.info(
            "closing idle session of {user} from {peer} after {seconds} s",
            user=getattr(avatar, "user", None),
            peer=peer_host(self.transport.getPeer()),
            seconds=self.factory.settings.idle_timeout,
        )
        self.close_with(
            ssh_transport.DISCONNECT_BY_APPLICATION,
            f"Idle for {self.factory.settings.idle_timeout:g} seconds; "
            "connect again to go on.",
        )

    def close_with(self, code: int, message: str) -> None:
        """
        Send the client a disconnect message and close the connection; cut
        it after L{CLOSE_GRACE} seconds if the client does not read.
        """
        self.closed_because = message
        self.sendDisconnect(code, message.encode("utf-8"))
        if self._cut_call is None:
            self._cut_call = self.factory.clock.callLater(
                CLOSE_GRACE, self.transport.abortConnection
            )


class LimitedConnection(connection.SSHConnection):
    """
    Conch's C{ssh-connection} service, refusing a channel beyond the
    factory's C{max_channels} with C{SSH_OPEN_ADMINISTRATIVELY_PROHIBITED}
    and a sentence, as OpenSSH does past its C{MaxSessions}.
    """

    _log = Logger()

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        limit = self.transport.factory.settings.max_channels
        if not limit or len(self.channels) < limit:
            super().ssh_CHANNEL_OPEN(packet)
            return
        _, rest = getNS(packet)
        (sender,) = struct.unpack(">L", rest[:4])
        self._log.warn(
            "refused a channel for {user}: {count} are open, the limit (max_channels)",
            user=getattr(getattr(self.transport, "avatar", None), "user", None),
            count=len(self.channels),
        )
        text = f"This server allows {limit} sessions per connection."
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
            + NS(text.encode("utf-8"))
            + NS(b""),
        )


class GuardedFactory(SFTPFactory):
    """
    The SSH factory with the server's limits: a banned address, or one more
    connection than C{max_unauthenticated} not yet logged in, is closed
    before the SSH banner.

    @ivar policy: the login policy the userauth service consults.
    @ivar login_grace_time: read by the userauth service.
    @ivar unauthenticated: the transports not logged in yet.
    """

    protocol = GuardedTransport
    services = {**SFTPFactory.services, b"ssh-connection": LimitedConnection}
    _log = Logger()

    def __init__(
        self,
        portal: Portal,
        host_keys: dict[bytes, Any],
        *,
        settings: Settings,
        policy: LoginPolicy,
        clock: IReactorTime,
    ) -> None:
        super().__init__(portal, host_keys)
        self.settings = settings
        self.policy = policy
        self.clock = clock
        self.login_grace_time = settings.login_grace_time
        self.unauthenticated: set[GuardedTransport] = set()
        self._full = False

    def buildProtocol(self, addr: Any) -> Any:
        host = peer_host(addr)
        if self.policy.bans.remaining(host):
            self._log.debug("refused connection from banned {peer}", peer=host)
            return None
        limit = self.settings.max_unauthenticated
        if limit and len(self.unauthenticated) >= limit:
            if not self._full:
                self._log.warn(
                    "refusing connections: {count} are not logged in yet, the "
                    "limit (max_unauthenticated)",
                    count=len(self.unauthenticated),
                    peer=host,
                )
            self._full = True
            return None
        self._full = False
        return super().buildProtocol(addr)


__all__ = ["GuardedFactory", "GuardedTransport", "LimitedConnection", "LoginPolicy"]
