"""
The server's settings: defaults, the TOML config file and option overrides.

Every setting has a default, so the server starts with no config file at all.
A config file may set any of them; an option on the command line wins over the
file.  Relative paths resolve against the folder of the config file, or
against the current folder when there is none.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The rules file shipped inside the package, used when `rules` is not set.
SHIPPED_RULES = Path(__file__).parent / "data" / "rules.toml"

#: Names that a client uploads under while the transfer runs, then renames.
DEFAULT_TEMP_PATTERNS = (
    "*.filepart",
    "*.partial",
    "*.part",
    "*.tmp",
    ".*",
)


#: What a setting's value should look like, where its type alone says too
#: little.
_EXPECTED = {
    "file_mode": 'an octal file mode such as "0640" (or 0o640)',
}


class ConfigError(Exception):
    """
    A setting is missing, of the wrong type or out of range; the message says
    which and how to fix it.
    """


@dataclass(frozen=True)
class Settings:
    """
    Everything the server and the admin command need to know.

    Paths are absolute once loaded through L{load_settings}.
    """

    listen: str = "tcp:2222:interface=127.0.0.1"
    keys: Path = Path("keys")
    archive: Path = Path("archive")
    group: str | int | None = None
    rules: Path = SHIPPED_RULES
    db: Path = Path("quartet-sftpd.sqlite3")

    #: Mode of archived files; rule folders get 0o775.
    file_mode: int = 0o640
    #: Where aborted and expired uploads go; default `<archive>/.partial`.
    quarantine: Path | None = None
    #: Seconds a quarantined partial is kept before it is removed.
    partial_max_age: float = 7 * 24 * 3600.0
    #: Client names that are staged on CLOSE and completed by a RENAME.
    temp_patterns: tuple[str, ...] = DEFAULT_TEMP_PATTERNS
    #: Seconds a staged temporary upload waits for its RENAME.
    staged_max_age: float = 24 * 3600.0
    #: Seconds a completed upload stays visible to its uploader.
    recent_visibility: float = 600.0
    #: Threads that run rules at once.
    rule_workers: int = 4
    #: Seconds a rule's quick checks may hold the client's CLOSE reply.
    check_timeout: float = 2.0
    #: Seconds within which the same bytes to the same rule are a duplicate.
    duplicate_window: float = 7 * 24 * 3600.0
    #: Days of a partner's uploads listed in each rule folder's @results.
    results_days: float = 30.0
    #: Twisted endpoint serving Prometheus metrics at /metrics; "" is off.
    metrics_listen: str = ""
    #: Seconds between checks of the rules file and the user folder.
    reload_interval: float = 2.0

    #: Open files and folders one session may hold.
    max_handles: int = 64
    #: Largest upload accepted, in bytes; 0 means no limit.
    max_upload_size: int = 0

    #: Whether users who have a password may log in with it.
    password_auth: bool = True
    #: Logged-in connections at once, all users together; 0 means no limit.
    max_sessions: int = 100
    #: Logged-in connections one user may hold at once (a user's own
    #: C{max_sessions} setting overrides it); 0 means no limit.  rclone
    #: alone opens up to its transfers plus checkers (12 by default).
    max_user_sessions: int = 20
    #: Connections not logged in yet, at once; more are closed at connect.
    max_unauthenticated: int = 64
    #: Channels (SFTP sessions) one connection may have open at once, as
    #: OpenSSH's MaxSessions; 0 means no limit.
    max_channels: int = 10
    #: Seconds a logged-in connection may stay silent before it is closed;
    #: 0 means never.
    idle_timeout: float = 1800.0
    #: Seconds a client has from connecting to logging in; 0 means no limit.
    login_grace_time: float = 120.0
    #: Failed logins from one address within C{ban_window} that ban it;
    #: 0 turns bans off.
    ban_threshold: int = 10
    #: Seconds over which failed logins are counted.
    ban_window: float = 600.0
    #: Seconds of a first ban; each further ban of the address doubles it.
    ban_time: float = 600.0
    #: The longest ban, and how long past bans are remembered, in seconds.
    ban_max_time: float = 86400.0

    #: Lowest level of log events written: debug, info, warn or error.
    log_level: str = "info"

    #: This server's name when several share one archive: each then stages
    #: uploads in progress in C{<archive>/.staging/<node>}.
    node: str = ""

    capture: str = "builtin"
    #: QU4RTET's Django settings module (capture = "quartet"); default
    #: $DJANGO_SETTINGS_MODULE.
    django_settings: str | None = None
    #: QU4RTET's base URL (capture = "http") and its credentials; the
    #: password and token may come from $QUARTET_SFTPD_CAPTURE_PASSWORD and
    #: $QUARTET_SFTPD_CAPTURE_TOKEN instead, and are never shown.
    capture_url: str = ""
    capture_user: str = ""
    capture_password: str = field(default="", repr=False)
    capture_token: str = field(default="", repr=False)

    @property
    def quarantine_dir(self) -> Path:
        """
        The quarantine folder for aborted uploads.
        """
        return self.quarantine or self.archive / ".partial"

    @property
    def staging_dir(self) -> Path:
        """
        The folder of uploads in progress; on the archive's filesystem so
        that a completed upload moves into the archive atomically, and one
        per C{node} when several servers share an archive.
        """
        staging = self.archive / ".staging"
        return staging / self.node if self.node else staging

    @property
    def users_dir(self) -> Path:
        """
        The folder of user key and settings files.
        """
        return self.keys / "users"

    def group_id(self) -> int:
        """
        The numeric unix group for archived files and rule folders.

        @raise ConfigError: the group name does not exist.
        """
        if self.group is None:
            return os.getegid()
        if isinstance(self.group, int):
            return self.group
        if self.group.isdigit():
            return int(self.group)
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise ConfigError(
                f"group {self.group!r} does not exist on this machine: create it "
                "(groupadd) or set `group` to an existing name or number."
            ) from None


#: Limits for which a negative value is refused at start.
_NOT_NEGATIVE = (
    "max_handles",
    "max_upload_size",
    "max_sessions",
    "max_user_sessions",
    "max_unauthenticated",
    "max_channels",
    "idle_timeout",
    "login_grace_time",
    "ban_threshold",
    "ban_window",
    "ban_time",
    "ban_max_time",
)

_PATH_KEYS = ("keys", "archive", "rules", "db", "quarantine")
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any, base: Path) -> Any:
    """
    Turn one raw value (from TOML or a command-line string) into the type
    the setting needs.
    """
    default = _FIELDS[name].default
    if name in _PATH_KEYS:
        path = Path(os.path.expanduser(str(value)))
        return path if path.is_absolute() else (base / path).resolve()
    if name == "group":
        if isinstance(value, int) or value is None:
            return value
        return str(value)
    if name == "file_mode":
        mode = int(value, 8) if isinstance(value, str) else int(value)
        if not 0 <= mode <= 0o777:
            raise ValueError(value)
        return mode
    if name == "temp_patterns":
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        return tuple(str(p) for p in value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in ("true", "false", "yes", "no", "1", "0"):
            raise ValueError(value)
        return text in ("true", "yes", "1")
    if isinstance(default, float):
        return float(value)
    if isinstance(default, int):
        return int(value)
    return str(value)


def load_settings(
    config: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """
    Read the settings from a config file (optional) and overrides.

    @param config: path of a TOML config file, or L{None} for defaults only.
    @param overrides: setting name to value (a string as typed on the
        command line is fine); L{None} values are ignored.
    @return: the settings with absolute paths.
    @raise ConfigError: the file cannot be read, has an unknown key or a value
        of the wrong type.
    """
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if config is not None:
        path = Path(config).expanduser().resolve()
        try:
            with path.open("rb") as handle:
                raw = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist: check the path, or leave "
                "--config out to start on the defaults."
            ) from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(
                f"config file {path} is not valid TOML: {error}."
            ) from None
        base = path.parent
        unknown = sorted(set(raw) - set(_FIELDS))
        if unknown:
            raise ConfigError(
                f"config file {path} has unknown settings: {', '.join(unknown)}. "
                f"Known settings are: {', '.join(sorted(_FIELDS))}."
            )

    values: dict[str, Any] = {}
    merged = dict(raw)
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for name, value in merged.items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}.")
        try:
            values[name] = _coerce(name, value, base)
        except (TypeError, ValueError):
            expected = _EXPECTED.get(
                name, f"a valid {type(_FIELDS[name].default).__name__}"
            )
            raise ConfigError(
                f"setting {name!r} has the value {value!r}, which is not {expected}."
            ) from None
    for name in _PATH_KEYS:
        if name not in values and isinstance(_FIELDS[name].default, Path):
            values[name] = _coerce(name, _FIELDS[name].default, base)

    settings = Settings(**values)
    if settings.capture not in ("builtin", "quartet", "http"):
        raise ConfigError(
            f"capture = {settings.capture!r} is not a capture backend: use "
            "'builtin', 'quartet' or 'http'."
        )
    if settings.node and (
        settings.node.startswith(".") or "/" in settings.node or "\0" in settings.node
    ):
        raise ConfigError(
            f"node = {settings.node!r} cannot name a folder: use letters, digits, "
            "dashes and dots, not starting with a dot."
        )
    if settings.log_level not in ("debug", "info", "warn", "error", "critical"):
        raise ConfigError(
            f"log_level = {settings.log_level!r} is not a level: use debug, info, "
            "warn or error."
        )
    if settings.rule_workers < 1:
        raise ConfigError("rule_workers must be at least 1.")
    for name in _NOT_NEGATIVE:
        if getattr(settings, name) < 0:
            raise ConfigError(f"{name} cannot be negative; use 0 for no limit.")
    return settings


__all__ = [
    "ConfigError",
    "DEFAULT_TEMP_PATTERNS",
    "SHIPPED_RULES",
    "Settings",
    "load_settings",
]
