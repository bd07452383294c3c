"""
The avatar of a logged-in user: an SSH session that serves the C{sftp}
subsystem and nothing else.

Shell, exec and pty requests, agent and X11 forwarding, and every channel
type but C{session} (so port forwarding too) are refused.  A shell or exec
request gets a sentence on stderr and exit status 1 rather than a bare
failure, so that a person who typed C{ssh partner@host} reads why.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import common
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.connection import EXTENDED_DATA_STDERR
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from quartet_sftpd.sftp.results import ResultFile, result_files
from quartet_sftpd.sftp.server import SFTPServerProtocol
from quartet_sftpd.sftp.tree import VirtualTree

if TYPE_CHECKING:
    from quartet_sftpd.service import SFTPContext

#: Bytes a client may send before waiting for a window adjustment.  Conch's
#: 128 KiB default throttles bulk uploads; the SFTP layer writes each packet
#: straight to disk, so a larger window costs no memory of its own.
CHANNEL_WINDOW = 8 * 1024 * 1024
#: Largest SSH data packet accepted on a channel.
CHANNEL_MAX_PACKET = 256 * 1024

SFTP_ONLY = (
    b"This server offers SFTP only: connect with sftp, scp or an SFTP client.\r\n"
)


class SFTPUser(ConchUser):
    """
    A logged-in user; owns the user's view of the rule folders.
    """

    def __init__(self, user: str, context: SFTPContext) -> None:
        super().__init__()
        self.user = user
        self.context = context
        #: The rules this user may see (None: all), read at login and again
        #: at each of the server's periodic refreshes, so that no request
        #: reads the user's settings file.
        self.allowed_rules = context.allowed_rules(user)
        self.tree = VirtualTree(context.backend.rule_names, lambda: self.allowed_rules)
        self.channelLookup[b"session"] = SFTPChannel
        self.channels: set[SFTPChannel] = set()
        #: Kinds of command request already refused on this connection, so
        #: that a client probing for hash commands (rclone asks several
        #: times) is logged once per kind.
        self.refused: set[str] = set()

    def logout(self) -> None:
        """
        The SSH connection ended.
        """
        self.context.logged_out(self)


class _Session:
    """
    What one SFTP session needs from the server (L{ISessionContext}).
    """

    def __init__(self, avatar: SFTPUser, peer: str) -> None:
        context = avatar.context
        self.user = avatar.user
        self.peer = peer
        self.tree = avatar.tree
        self.intake = context.intake
        self.max_handles = context.settings.max_handles
        self.max_upload_size = context.settings.max_upload_size or None
        self.started = context.started
        self.run_blocking: Callable[..., Any] = context.run_blocking
        self._backend = context.backend
        self._results_days = context.settings.results_days
        self._server = context
        self._avatar = avatar

    @property
    def stopping(self) -> bool:
        """
        Whether the server is shutting down.
        """
        return self._server.stopping

    @property
    def ended_because(self) -> str | None:
        """
        The message the server closed this connection with (an idle timeout,
        revoked access), or L{None} while it has not closed it.
        """
        connection = getattr(self._avatar, "conn", None)
        return getattr(getattr(connection, "transport", None), "closed_because", None)

    def results(self, rule: str) -> Deferred[dict[str, ResultFile]]:
        """
        The user's result files in one rule (none when the capture backend
        keeps no task store).
        """
        find = getattr(self._backend, "results", None)
        if find is None:
            return succeed({})
        since = time.time() - self._results_days * 86400
        return find(self.user, rule, since).addCallback(result_files)


class SFTPChannel(SSHChannel):
    """
    A C{session} channel that can only become an SFTP session.
    """

    name = b"session"
    _log = Logger()
    #: The clock the refusal of shell and exec waits on; the global reactor
    #: (imported late, after twistd chose it) unless a test sets one.
    clock: IReactorTime | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["localWindow"] = CHANNEL_WINDOW
        kwargs["localMaxPacket"] = CHANNEL_MAX_PACKET
        super().__init__(*args, **kwargs)
        self.protocol: SFTPServerProtocol | None = None
        self._refusing = False

    @property
    def peer(self) -> str:
        address = self.conn.transport.transport.getPeer()
        host = getattr(address, "host", str(address))
        port = getattr(address, "port", "")
        return f"{host}:{port}" if port else str(host)

    def channelOpen(self, specificData: bytes) -> None:
        self.avatar.channels.add(self)

    def request_subsystem(self, data: bytes) -> int:
        """
        Start the SFTP subsystem; any other subsystem is refused.
        """
        name, _ = common.getNS(data)
        if name != b"sftp" or self.protocol is not None:
            self._log.warn(
                "refused subsystem {subsystem} for {user}",
                subsystem=name.decode("utf-8", "replace"),
                user=self.avatar.user,
            )
            return 0
        self.protocol = SFTPServerProtocol(_Session(self.avatar, self.peer))
        self.protocol.makeConnection(self)
        return 1

    def _refuse_command(self, what: str, command: bytes = b"") -> int:
        shown = command.decode("utf-8", "replace")[:100]
        emit = self._log.debug if what in self.avatar.refused else self._log.warn
        self.avatar.refused.add(what)
        emit(
            "refused {what} request{shown} from {user} at {peer} (SFTP only; "
            "further ones on this connection are logged at debug)",
            what=what,
            command=shown,
            shown=f" {shown!r}" if shown else "",
            user=self.avatar.user,
            peer=self.peer,
        )
        # Conch sends the request's success reply after this method returns.
        # Closing the channel here would put that reply after our CLOSE, and
        # Go's SSH library (rclone) drops the whole connection on a message
        # for a channel it already forgot; so the refusal waits a turn.
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor as clock
        self._refusing = True
        clock.callLater(0, self._exit_refused)
        return 1

    def _exit_refused(self) -> None:
        if self.localClosed or self.remoteClosed or self.closing:
            return
        self.writeExtended(EXTENDED_DATA_STDERR, SFTP_ONLY)
        self.conn.sendRequest(self, b"exit-status", struct.pack("!L", 1))
        self.conn.sendEOF(self)
        self.loseConnection()

    def request_shell(self, data: bytes) -> int:
        return self._refuse_command("shell")

    def request_exec(self, data: bytes) -> int:
        try:
            command = common.getNS(data)[0]
        except (struct.error, IndexError):
            command = b""
        return self._refuse_command("exec", command)

    def request_pty_req(self, data: bytes) -> int:
        # A terminal is asked for before a shell; the shell's refusal is the
        # one worth logging, so this one is refused quietly.
        self._log.debug("refused a terminal for {user}", user=self.avatar.user)
        return 0

    def request_env(self, data: bytes) -> int:
        # OpenSSH sends LANG and the like; they mean nothing to SFTP.
        return 0

    def dataReceived(self, data: bytes) -> None:
        if self.protocol is not None:
            self.protocol.dataReceived(data)

    def eofReceived(self) -> None:
        # The client sends nothing more: the session is over.  As sshd does
        # when its sftp-server exits, say so with exit status 0: OpenSSH's
        # scp (SFTP mode) waits for its ssh and fails when ssh reports none.
        # A refusal on its way (ssh sends EOF right after its exec request
        # when stdin is empty) closes the channel itself, with status 1.
        if self._refusing:
            return
        if self.protocol is not None:
            self.conn.sendRequest(self, b"exit-status", struct.pack("!L", 0))
        self.conn.sendClose(self)

    def closed(self) -> None:
        self.avatar.channels.discard(self)
        if self.protocol is not None:
            protocol, self.protocol = self.protocol, None
            protocol.connectionLost(Failure(ConnectionError("channel closed")))


@implementer(IRealm)
class SFTPRealm:
    """
    Makes an L{SFTPUser} for each authenticated user.
    """

    def __init__(self, context: SFTPContext) -> None:
        self._context = context

    def requestAvatar(
        self, avatarId: bytes | str, mind: object, *interfaces: Any
    ) -> tuple[Any, SFTPUser, Callable[[], None]]:
        """
        @param avatarId: the user name from the checker.
        @return: C{(IConchUser, avatar, logout)}.
        @raise NotImplementedError: no interface this realm provides was asked.
        """
        if IConchUser not in interfaces:
            raise NotImplementedError("this realm only makes SSH avatars")
        user = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        avatar = SFTPUser(user, self._context)
        self._context.logged_in(avatar)
        return IConchUser, avatar, avatar.logout


__all__ = ["SFTPChannel", "SFTPRealm", "SFTPUser"]
