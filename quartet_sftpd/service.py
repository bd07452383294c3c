"""
The running server: wires settings, keys, users, archive, capture backend
and SSH listener into one Twisted service, and runs the periodic jobs.

Start order: the archive's folders and leftover staging files are dealt with,
the capture backend starts (re-queuing tasks a crash interrupted), rule
folders are created, and only then does the server listen.  Stop order is
the reverse, and waits for every commit in progress, so that an upload whose
CLOSE was being answered is never cut in half by a shutdown.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from quartet_sftpd.archive import Archive
from quartet_sftpd.bans import AddressBans
from quartet_sftpd.capture import ICaptureBackend
from quartet_sftpd.config import ConfigError, Settings
from quartet_sftpd.intake import Intake
from quartet_sftpd.limits import GuardedFactory, LoginPolicy
from quartet_sftpd.metrics import Metrics
from quartet_sftpd.realm import SFTPRealm, SFTPUser
from quartet_sftpd.sftp.registry import UploadRegistry
from quartet_sftpd.sftp.tree import folder_names
from quartet_sftpd.users import UserError

#: Seconds between removals of old quarantined uploads.
PRUNE_INTERVAL = 3600.0


class SFTPContext:
    """
    What every session shares: settings, the intake, the backend, and the
    list of logged-in users.
    """

    _log = Logger()

    def __init__(
        self,
        settings: Settings,
        backend: ICaptureBackend,
        intake: Intake,
        threadpool: ThreadPool,
        reactor: Any,
        users: Any,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.intake = intake
        self.users = users
        self.started = time.time()
        self.avatars: set[SFTPUser] = set()
        self.policy: LoginPolicy | None = None
        #: Set when the server begins to stop, so that uploads it cuts off
        #: are recorded as stopped by the server, not by the client.
        self.stopping = False
        self._pool = threadpool
        self._reactor = reactor
        self._settings_errors: dict[str, str] = {}

    def run_blocking(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Run blocking work in the server's disk thread pool.

        @return: a Deferred firing with C{f}'s result.
        """
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def allowed_rules(self, user: str) -> set[str] | None:
        """
        The rules a user may see: the C{rules} of the user's settings, or
        L{None} for all of them when the user has no C{rules} setting.

        A user who was removed, or whose settings file cannot be read, sees
        no rule at all (the error is logged once), so that a broken file
        never widens access.
        """
        if not self.users:
            return None
        try:
            rules = self.users.settings(user).get("rules")
        except UserError as error:
            if self._settings_errors.get(user) != str(error):
                self._settings_errors[user] = str(error)
                self._log.warn(
                    "{user} sees no rule folder: {reason}", user=user, reason=str(error)
                )
            return set()
        self._settings_errors.pop(user, None)
        return None if rules is None else set(rules)

    def refresh_allowed_rules(self) -> None:
        """
        Read again which rules each logged-in user may see, so that a change
        to a user's rules reaches the sessions already open.
        """
        read: dict[str, set[str] | None] = {}
        for avatar in self.avatars:
            if avatar.user not in read:
                read[avatar.user] = self.allowed_rules(avatar.user)
            avatar.allowed_rules = read[avatar.user]

    def logged_in(self, avatar: SFTPUser) -> None:
        """
        The realm made an avatar for a user who logged in.
        """
        self.avatars.add(avatar)

    def logged_out(self, avatar: SFTPUser) -> None:
        """
        The connection of C{avatar} ended.
        """
        self.avatars.discard(avatar)
        if self.policy is not None:
            self.policy.logged_out(avatar)

    def end_revoked_sessions(self) -> int:
        """
        Disconnect every session whose user was removed or disabled, or
        whose key or password was taken away, with a message saying so.
        Uploads still open in them are aborted.

        @return: how many sessions were ended.
        """
        if self.policy is None:
            return 0
        ended = 0
        for avatar, login in list(self.policy.logins.items()):
            reason = self.policy.revocation(login)
            conn = getattr(avatar, "conn", None)
            if reason is None or conn is None:
                continue
            self._log.warn(
                "ending the session of {user} from {peer}: {reason}",
                user=login.user,
                peer=login.peer,
                reason=reason,
            )
            self.policy.logged_out(avatar)
            conn.transport.close_with(
                DISCONNECT_BY_APPLICATION, f"Your access was revoked: {reason}."
            )
            ended += 1
        return ended


class QuartetSFTPService(MultiService):
    """
    The whole server as one service for twistd.
    """

    _log = Logger()

    def __init__(
        self,
        settings: Settings,
        *,
        host_keys: dict[bytes, Any],
        portal_checkers: list[Any],
        users: Any,
        backend: ICaptureBackend,
        reactor: Any = None,
    ) -> None:
        """
        @param settings: the loaded settings.
        @param host_keys: private host keys by type.
        @param portal_checkers: the credential checkers users log in with.
        @param users: the user store.
        @param backend: where archived uploads become tasks.
        @param reactor: the reactor (default: the global one).
        """
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.settings = settings
        self.backend = backend
        self.reactor = reactor
        self.threadpool = ThreadPool(
            minthreads=1, maxthreads=8, name="quartet-sftpd-disk"
        )
        self.archive = Archive(
            settings.archive,
            gid=settings.group_id(),
            file_mode=settings.file_mode,
            quarantine=settings.quarantine_dir,
            staging=settings.staging_dir,
            threadpool=self.threadpool,
            reactor=reactor,
        )
        self.intake = Intake(
            self.archive,
            backend,
            UploadRegistry(),
            temp_patterns=settings.temp_patterns,
            recent_visibility=settings.recent_visibility,
            staged_max_age=settings.staged_max_age,
        )
        self.context = SFTPContext(
            settings, backend, self.intake, self.threadpool, reactor, users
        )
        self.bans = AddressBans(
            reactor,
            threshold=settings.ban_threshold,
            window=settings.ban_window,
            ban_time=settings.ban_time,
            max_ban_time=settings.ban_max_time,
        )
        self.context.policy = LoginPolicy(settings, users, self.bans)
        self.metrics = Metrics()
        self.bans.metrics = self.metrics
        self.context.policy.metrics = self.metrics
        self.intake.metrics = self.metrics
        if hasattr(backend, "metrics"):
            backend.metrics = self.metrics
        portal = Portal(SFTPRealm(self.context), portal_checkers)
        self.factory = GuardedFactory(
            portal,
            host_keys,
            settings=settings,
            policy=self.context.policy,
            clock=reactor,
        )
        self._folders: set[str] = set()

        self.endpoint = serverFromString(reactor, settings.listen)
        self.port: Any = None
        self.metrics_port: Any = None
        self.ready: Deferred[None] = Deferred()
        TimerService(settings.reload_interval, self.refresh).setServiceParent(self)
        TimerService(PRUNE_INTERVAL, self.prune).setServiceParent(self)

    def startService(self) -> None:
        """
        Prepare the archive, start the backend (which re-queues interrupted
        tasks), and listen only once both are done.  L{ready} fires then; if
        anything fails the reactor stops, since a server that cannot archive
        must not accept uploads.
        """
        self.archive.prepare()
        self.threadpool.start()
        super().startService()
        d = maybeDeferred(self.backend.start)
        d.addCallback(lambda _: self._ensure_folders_now())
        d.addCallback(lambda _: self._listen_metrics())
        d.addCallback(lambda _: self.endpoint.listen(self.factory))
        d.addCallbacks(self._listening, self._not_started)

    def _listen_metrics(self) -> Deferred[None] | None:
        if not self.settings.metrics_listen:
            return None
        endpoint = serverFromString(self.reactor, self.settings.metrics_listen)
        d = endpoint.listen(self.metrics.site())

        def listening(port: Any) -> None:
            self.metrics_port = port
            address = port.getHost()
            self._log.info(
                "metrics at http://{host}:{port}/metrics",
                host=getattr(address, "host", "?"),
                port=getattr(address, "port", "?"),
            )

        return d.addCallback(listening)

    def _listening(self, port: Any) -> None:
        self.port = port
        address = port.getHost()
        self._log.info(
            "quartet-sftpd listening on {host}:{port}; archive {archive}; "
            "rules: {rules}",
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
            listen=self.settings.listen,
            archive=str(self.settings.archive),
            rules=", ".join(sorted(folder_names(self.backend.rule_names()))),
        )
        self.ready.callback(None)

    def _not_started(self, failure: Failure) -> None:
        """
        Starting failed (the port is taken, the task store cannot be
        opened...): log why, stop, and exit with status 1 once the shutdown
        has run, so that supervisor or systemd see a failure.  twistd itself
        has no way to set its exit status.
        """
        if failure.check(CannotListenError, ConfigError, OSError):
            # Expected at a start (a taken port, an unreadable task store): the
            # sentence says it all.
            self._log.critical(
                "quartet-sftpd could not start: {error}", error=failure.value
            )
        else:
            self._log.failure(
                "quartet-sftpd could not start: {error}", failure, error=failure.value
            )
        self.ready.addErrback(lambda _: None)
        self.ready.errback(failure)
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()

    def _ensure_folders_now(self) -> None:
        folders = sorted(folder_names(self.backend.rule_names()))
        for folder in folders:
            self.archive.ensure_rule_folder(folder)
        self._folders = set(folders)

    @inlineCallbacks
    def refresh(self) -> Any:
        """
        End the sessions of revoked users and keys, give open sessions
        their users' current rules, reload the rules if they changed,
        create archive folders for new rules, and expire old entries of the
        upload registry.
        """
        try:
            self.context.end_revoked_sessions()
            self.context.refresh_allowed_rules()
            if self.context.policy is not None:
                self.context.policy.refresh()
        except Exception:
            self._log.failure("checking sessions against the users failed")
        try:
            yield self.backend.refresh()
            folders = set(folder_names(self.backend.rule_names()))
            new = sorted(folders - self._folders)
            if new:
                yield self.archive.ensure_rule_folders(new)
                self._log.info("new rule folders: {folders}", folders=", ".join(new))
            self._folders = folders
            yield self.intake.expire()
        except Exception:
            self._log.failure("periodic refresh failed")

    @inlineCallbacks
    def prune(self) -> Any:
        """
        Remove quarantined uploads older than C{partial_max_age}.
        """
        try:
            removed = yield self.archive.prune_quarantine(self.settings.partial_max_age)
            if removed:
                self._log.info(
                    "removed {count} quarantined uploads older than {days} days",
                    count=removed,
                    days=round(self.settings.partial_max_age / 86400, 1),
                )
        except Exception:
            self._log.failure("pruning the quarantine failed")

    @inlineCallbacks
    def stopService(self) -> Any:
        if self.port is not None:
            yield self.port.stopListening()
        if self.metrics_port is not None:
            yield self.metrics_port.stopListening()
        yield super().stopService()
        self.context.stopping = True
        for avatar in list(self.context.avatars):
            for channel in list(avatar.channels):
                channel.closed()
        yield self.intake.drain()
        yield self.backend.stop()
        self.threadpool.stop()


def check_endpoints(settings: Settings, reactor: Any = None) -> None:
    """
    Check that C{listen} and C{metrics_listen} are Twisted endpoint strings.

    @raise ConfigError: one is not; the message names it and shows the form.
    """
    if reactor is None:
        from twisted.internet import reactor
    for name in ("listen", "metrics_listen"):
        value = getattr(settings, name)
        if name == "metrics_listen" and not value:
            continue
        try:
            serverFromString(reactor, value)
        except (ValueError, TypeError) as error:
            raise ConfigError(
                f"{name} = {value!r} is not a Twisted endpoint ({error}); write "
                "it as tcp:PORT:interface=ADDRESS, for example "
                "tcp:2222:interface=127.0.0.1."
            ) from None


def build_service(settings: Settings, reactor: Any = None) -> QuartetSFTPService:
    """
    Build the server from its settings: load or create the host keys, open
    the user store and the capture backend.

    @raise ConfigError: host keys, rules or group cannot be used; the
        message says which and how to fix it.
    """
    from quartet_sftpd.auth import make_checkers
    from quartet_sftpd.capture.builtin import BuiltinBackend
    from quartet_sftpd.factory import offered_as
    from quartet_sftpd.hostkeys import fingerprints, load_or_create_host_keys
    from quartet_sftpd.rules import RulesError, load_rules
    from quartet_sftpd.users import UserStore

    # Everything that can be checked is checked before anything is made on
    # disk, so that a typo leaves no host keys or archive in a wrong place.
    check_endpoints(settings, reactor)
    if settings.capture == "builtin":
        try:
            load_rules(settings.rules)
        except RulesError as error:
            raise ConfigError(str(error)) from None

    log = Logger(namespace="quartet_sftpd.service")
    host_keys = load_or_create_host_keys(settings.keys)
    for key_type, line in zip(host_keys, fingerprints(host_keys), strict=True):
        offered = b", ".join(offered_as(key_type)).decode("ascii")
        log.info(
            "host key {fingerprint}, {offered}",
            fingerprint=line,
            offered=f"offered as {offered}" if offered else "kept but not offered",
        )
    users = UserStore(settings.users_dir)
    backend: ICaptureBackend
    if settings.capture == "quartet":
        from quartet_sftpd.capture.quartet import QuartetBackend

        backend = QuartetBackend(settings, reactor=reactor)
    elif settings.capture == "http":
        from quartet_sftpd.capture.http import HTTPBackend

        backend = HTTPBackend(settings, reactor=reactor)
    else:
        backend = BuiltinBackend(settings, reactor=reactor)
    return QuartetSFTPService(
        settings,
        host_keys=host_keys,
        portal_checkers=make_checkers(users, settings.password_auth),
        users=users,
        backend=backend,
        reactor=reactor,
    )
