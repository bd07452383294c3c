"""
twistd glue: the command-line options of C{twistd quartet-sftpd} and the
function that turns them into the running service.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

from twisted.python import usage

from quartet_sftpd.config import ConfigError, Settings, load_settings
from quartet_sftpd.logs import configure

#: Settings that can be given as options; each overrides the config file.
OVERRIDES = [
    ("listen", "endpoint to listen on [default: tcp:2222:interface=127.0.0.1]"),
    ("keys", "folder of host keys and of users/ [default: keys]"),
    ("archive", "archive folder [default: archive]"),
    ("group", "unix group of archived files [default: the process's group]"),
    ("rules", "rules file of the built-in engine [default: the shipped one]"),
    ("db", "task store, an SQLite file [default: quartet-sftpd.sqlite3]"),
    ("capture", "capture backend: builtin, quartet or http [default: builtin]"),
    ("django-settings", "QU4RTET's Django settings module (capture = quartet)"),
    ("log-level", "lowest log level written: debug, info, warn [default: info]"),
]


class Options(usage.Options):
    """
    Options of C{twistd quartet-sftpd}.
    """

    synopsis = "[--config FILE] [--listen ENDPOINT] [--archive DIR] ..."
    longdesc = (
        "An SFTP server that shows one folder per capture rule, archives every "
        "completed upload and runs the rule on it.  Every option overrides the "
        "setting of the same name in the config file."
    )
    optParameters = [
        ["config", "c", None, "TOML config file (or $QUARTET_SFTPD_CONFIG)"],
    ] + [[name, None, None, doc] for name, doc in OVERRIDES]

    def postOptions(self) -> None:
        """
        Load the settings now, so that a bad config stops twistd with one
        sentence rather than a traceback.
        """
        overrides = {name.replace("-", "_"): self[name] for name, _ in OVERRIDES}
        config = self["config"] or os.environ.get("QUARTET_SFTPD_CONFIG")
        try:
            self.settings: Settings = load_settings(config, overrides)
            self.settings.group_id()
        except ConfigError as error:
            refuse_to_start(error)
        self._choose_logger()

    def _choose_logger(self) -> None:
        """
        Unless twistd was given a C{--logger}, log through an observer that
        honours C{log_level} (twistd's own writes debug events too).
        """
        parent = getattr(self, "parent", None)
        if parent is None or parent.get("logger") is not None:
            return
        level, logfile = self.settings.log_level, parent.get("logfile")
        if logfile is None and not parent.get("nodaemon"):
            logfile = "twistd.log"  # where twistd itself logs a daemon
        configure(level, logfile)
        parent["logger"] = "quartet_sftpd.logs.observer"


def refuse_to_start(error: Exception) -> NoReturn:
    """
    Stop twistd before it starts, with the one sentence that says what to fix
    on standard error and exit status 1.  A settings error is not a misuse of
    twistd's options, so twistd's usage text and a traceback would only bury
    that sentence.
    """
    print(f"quartet-sftpd cannot start: {error}", file=sys.stderr)
    raise SystemExit(1)


def makeService(options: Options) -> Any:
    """
    Build the server from parsed options.

    A listen endpoint, rules file or host key that cannot be used stops
    twistd with a sentence and exit status 1 (see L{refuse_to_start}).
    """
    from quartet_sftpd.service import build_service

    try:
        return build_service(options.settings)
    except ConfigError as error:
        refuse_to_start(error)
