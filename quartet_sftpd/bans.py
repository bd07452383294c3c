"""
Temporary bans of client addresses that keep failing to log in.

An address that fails C{threshold} logins within C{window} seconds is banned
for C{ban_time} seconds: its new connections are closed before the SSH
banner.  Each further ban of the same address doubles its length, up to
C{max_ban_time}; an address that stays out of trouble for C{max_ban_time}
after its last ban starts again from C{ban_time}.

Everything is kept in memory, keyed by the address text, and forgotten at a
restart.  Old entries are dropped as they are met, so the tables hold only
addresses that failed within the window or are banned or remembered.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

if TYPE_CHECKING:
    from quartet_sftpd.metrics import Metrics

#: Seconds between sweeps of forgotten addresses.
SWEEP_INTERVAL = 60.0


@dataclass
class _Record:
    """
    What is known about one address.

    @ivar failures: the times of its recent failed logins, oldest first.
    @ivar banned_until: when its current or last ban ends.
    @ivar bans: how many bans it has had in a row.
    """

    failures: deque[float] = field(default_factory=deque)
    banned_until: float = 0.0
    bans: int = 0


class AddressBans:
    """
    Counts failed logins per client address and bans those with too many.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        threshold: int = 10,
        window: float = 600.0,
        ban_time: float = 600.0,
        max_ban_time: float = 86400.0,
    ) -> None:
        """
        @param clock: gives the time (C{seconds()}); the reactor, or a
            L{twisted.internet.task.Clock} in tests.
        @param threshold: failed logins within C{window} that ban an
            address; 0 turns banning off.
        @param window: seconds over which failures are counted.
        @param ban_time: seconds of a first ban.
        @param max_ban_time: the longest ban, in seconds; also how long an
            address's past bans are remembered.
        """
        self._clock = clock
        self.threshold = threshold
        self.window = window
        self.ban_time = ban_time
        self.max_ban_time = max(max_ban_time, ban_time)
        self._records: dict[str, _Record] = {}
        self._swept = float("-inf")
        #: Where bans are counted for the metrics endpoint, if anywhere.
        self.metrics: Metrics | None = None

    def remaining(self, host: str | None) -> float:
        """
        Seconds until C{host}'s ban ends; 0 if it is not banned.

        @param host: the client's IP address text, or L{None} if unknown
            (never banned).
        """
        record = self._records.get(host or "")
        if record is None:
            return 0.0
        return max(0.0, record.banned_until - self._clock.seconds())

    def failed(self, host: str | None, user: str = "") -> bool:
        """
        Count one failed login from C{host}, and ban it if that makes too
        many.  A ban is logged once, as a warning with the fields C{peer},
        C{failures}, C{seconds} and C{bans}.

        @param host: the client's IP address text; L{None} is not counted.
        @param user: the user name tried, for the log.
        @return: whether C{host} is banned now.
        """
        if not host or self.threshold <= 0:
            return False
        now = self._clock.seconds()
        self._forget_old(now)
        record = self._records.setdefault(host, _Record())
        if record.banned_until > now:
            return True
        if record.banned_until + self.max_ban_time <= now:
            record.bans = 0
        record.failures.append(now)
        while record.failures and record.failures[0] <= now - self.window:
            record.failures.popleft()
        if len(record.failures) < self.threshold:
            return False

        seconds = min(self.ban_time * 2**record.bans, self.max_ban_time)
        record.bans += 1
        record.banned_until = now + seconds
        count = len(record.failures)
        record.failures.clear()
        if self.metrics is not None:
            self.metrics.banned()
        self._log.warn(
            "banned {peer} for {seconds:.0f} s after {failures} failed logins "
            "(last as {user}); ban number {bans}",
            peer=host,
            seconds=seconds,
            failures=count,
            user=user,
            bans=record.bans,
        )
        return True

    def _forget_old(self, now: float) -> None:
        """
        Drop addresses with no recent failure, no ban, and no ban within
        C{max_ban_time}; at most once a minute, so that a flood of failures
        from many addresses costs little.
        """
        if now - self._swept < SWEEP_INTERVAL:
            return
        self._swept = now
        stale = [
            host
            for host, record in self._records.items()
            if (not record.failures or record.failures[-1] <= now - self.window)
            and record.banned_until + self.max_ban_time <= now
        ]
        for host in stale:
            del self._records[host]

    def banned(self) -> dict[str, float]:
        """
        The addresses banned now, each with the seconds its ban has left.
        """
        now = self._clock.seconds()
        return {
            host: record.banned_until - now
            for host, record in self._records.items()
            if record.banned_until > now
        }


__all__ = ["AddressBans"]
