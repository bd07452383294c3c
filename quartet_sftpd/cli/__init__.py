"""
The admin command, C{quartet-sftpd}: global options for the settings, then
a sub-command.

Each sub-command module has C{register(subparsers)}, which adds its parsers
and gives each C{set_defaults(handler=fn)}; C{fn(settings, args)} does the
work and returns the exit status.  An error the admin can fix is printed as
one sentence, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from quartet_sftpd.cli import archive, tasks, users
from quartet_sftpd.config import ConfigError, load_settings
from quartet_sftpd.users import UserError

PROG = "quartet-sftpd"

# Global option to the setting it overrides; stored under "setting_NAME" so
# that a sub-command's own arguments cannot clash with them.
_OVERRIDES = {
    "keys": "folder of host keys and user files (setting `keys`)",
    "archive": "folder of archived uploads (setting `archive`)",
    "rules": "the rules file (setting `rules`)",
    "db": "the task database (setting `db`)",
    "group": "unix group of archived files (setting `group`)",
}


def build_parser() -> argparse.ArgumentParser:
    """
    The parser of the whole command, with every sub-command registered.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage the users and tasks of a quartet-sftpd server.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the server's TOML config file (default: $QUARTET_SFTPD_CONFIG)",
    )
    for name, text in _OVERRIDES.items():
        parser.add_argument(
            f"--{name}",
            dest=f"setting_{name}",
            metavar="GROUP" if name == "group" else "PATH",
            help=text,
        )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    users.register(subparsers)
    tasks.register(subparsers)
    archive.register(subparsers)
    return parser


def _fail(message: object) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the admin command.

    @param argv: the arguments after the program name; L{None} for
        C{sys.argv[1:]}.
    @return: the exit status: 0 on success, 1 when the command could not
        be done (a L{UserError} or a file that cannot be written), 2 for a
        usage or settings error (L{ConfigError}, or arguments that do not
        go together).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        # argparse has printed the usage error or the help already.
        return exit.code if isinstance(exit.code, int) else 2
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        _fail("name a command, such as `user list`; see --help for all of them.")
        return 2

    overrides = {name: getattr(args, f"setting_{name}") for name in _OVERRIDES}
    try:
        config = args.config or os.environ.get("QUARTET_SFTPD_CONFIG") or None
        settings = load_settings(config, overrides)
        return int(handler(settings, args))
    except (ConfigError, users.UsageError) as error:
        _fail(error)
        return 2
    except UserError as error:
        _fail(error)
        return 1
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        _fail(
            f"cannot use{where}: {error.strerror or error}. Check that the path "
            "exists and run the command as the user the server runs as."
        )
        return 1
