"""
Where the server's log goes, and from which level on.

twistd logs every event, debug included, unless told otherwise; Conch logs
several debug events per packet, which would drown the events an operator
needs.  The observer built here drops events below the configured level
(C{log_level}, default C{info}) and writes the rest as text to the file
twistd was given (C{--logfile}) or to standard output.  A few events that
Twisted logs at info for every connection (a channel closing, a transport's
connection lost, a factory starting) count as debug here: the server logs
each login and upload itself.

twistd takes a log observer factory by dotted name (C{--logger}), so the
plugin's options record their choice with L{configure} and name
L{observer} as the factory.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

LEVELS = ("debug", "info", "warn", "error", "critical")

_choice: dict[str, str | None] = {"level": "info", "logfile": None}

#: Formats of Twisted's per-connection info events, treated as debug.
CHATTER = frozenset(
    {
        "sending close {id}",
        "remote close",
        "connection lost",
        "Starting factory {factory!r}",
        "Stopping factory {factory!r}",
    }
)


@implementer(ILogFilterPredicate)
class _DropChatter:
    """
    Drop Twisted's per-connection info events (L{CHATTER}) unless the level
    is debug.
    """

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        if (
            event.get("log_level") == LogLevel.info
            and event.get("log_format") in CHATTER
        ):
            return PredicateResult.no
        return PredicateResult.maybe


def configure(level: str, logfile: str | None) -> None:
    """
    Choose the level and destination that L{observer} will use.
    """
    _choice.update(level=level, logfile=logfile)


def observer() -> ILogObserver:
    """
    The observer chosen with L{configure}; a twistd C{--logger} factory.
    """
    return make_observer(_choice["level"] or "info", _choice["logfile"])


def make_observer(level: str = "info", logfile: str | None = None) -> ILogObserver:
    """
    A text log observer that drops events below C{level}.

    @param level: one of L{LEVELS}.
    @param logfile: a file to append to (rotated by size, as twistd does),
        or None or C{-} for standard output.
    """
    out: TextIO | LogFile
    if logfile in (None, "-"):
        out = sys.stdout
    else:
        out = LogFile.fromFullPath(logfile)
    lowest = LogLevel.levelWithName(level)
    predicates: list[ILogFilterPredicate] = [
        LogLevelFilterPredicate(defaultLogLevel=lowest)
    ]
    if lowest > LogLevel.debug:
        predicates.insert(0, _DropChatter())
    return FilteringLogObserver(textFileLogObserver(out), predicates)
