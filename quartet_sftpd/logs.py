"""
Where the server's log goes, and from which level on.

twistd logs every event, debug included, unless told otherwise; Conch logs
several debug events per packet, which would drown the events an operator
needs.  The observer built here drops events below the configured level
(C{log_level}, default C{info}) and writes the rest as text to the file
twistd was given (C{--logfile}) or to standard output.

twistd takes a log observer factory by dotted name (C{--logger}), so the
plugin's options record their choice with L{configure} and name
L{observer} as the factory.
"""

from __future__ import annotations

import sys
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

LEVELS = ("debug", "info", "warn", "error", "critical")

_choice: dict[str, str | None] = {"level": "info", "logfile": None}


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
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(textFileLogObserver(out), [predicate])
