"""
The user store over C{keys/users/}: who may log in, with which keys.

A user exists when C{NAME.keys} exists; it holds the user's public keys in
OpenSSH's authorized_keys format, so that the admin command and a
provisioning tool can both write it.  C{NAME.toml}, optional, holds the
user's settings (see L{USER_SETTINGS}).  Both are read again whenever they
change on disk, so an edit applies at the next login without a restart.

A line the server cannot use (see L{quartet_sftpd.authorized_keys}) is
refused when a key is added, and skipped with a warning at login.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from twisted.logger import Logger

from quartet_sftpd.atomic import make_private_folder, write_atomically
from quartet_sftpd.authorized_keys import (
    AuthorizedKey,
    BadKeyLine,
    parse_lines,
    parse_rfc4716,
    usable_keys,
)

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")

#: Mode of a user's key file and of the users folder.
KEYS_FILE_MODE = 0o640
USERS_DIR_MODE = 0o750
#: Mode of a user's settings file: it may hold a password hash.
SETTINGS_FILE_MODE = 0o640

#: What C{NAME.toml} may hold, and the type of each value:
#:   - C{rules}: the rule names the user sees; absent means every rule.
#:   - C{disabled}: C{true} refuses every login of the user.
#:   - C{password}: a bcrypt hash; absent means no password login.
#:   - C{max_sessions}: sessions the user may hold at once, overriding the
#:     server's C{max_user_sessions}.
USER_SETTINGS: dict[str, type | tuple[type, ...]] = {
    "rules": list,
    "disabled": bool,
    "password": str,
    "max_sessions": int,
}


class UserError(Exception):
    """
    A user name, key file or user is not what an operation needs; the
    message is a sentence that names the fix.
    """


class UnknownUserError(UserError):
    """
    There is no user of that name.
    """


def _no_such_user(name: str) -> UnknownUserError:
    return UnknownUserError(
        f"there is no user {name}: see the users with `quartet-sftpd user list`."
    )


def check_name(name: str) -> str:
    """
    Return C{name} if it can be a user name.

    @raise UserError: it is not 1 to 32 characters of C{a-z}, C{0-9}, C{_},
        C{.} and C{-}, starting with a letter or digit.
    """
    if not _NAME.fullmatch(name):
        raise UserError(
            f"{name!r} cannot be a user name: use 1 to 32 characters of a-z, 0-9, "
            "'_', '.' and '-', starting with a letter or digit."
        )
    return name


def parse_key_file(path: Path) -> list[AuthorizedKey]:
    """
    Read the public keys an admin gives to C{user add} or C{user key add}.

    Accepts an OpenSSH C{.pub} file, a whole authorized_keys file, or an
    SSH2 (RFC 4716) public key file.  Unlike a user's own key file at login,
    any bad line refuses the whole file, so that nothing is silently left
    out.

    @return: the keys, in file order, each once.
    @raise UserError: the file cannot be read, holds a private key, has a
        bad line or unsupported option, or holds no key.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(
            f"cannot read the key file {path}: {error.strerror}. Give the path of "
            "the partner's public key file (often ending in .pub)."
        ) from None
    if b"PRIVATE KEY" in data:
        raise UserError(
            f"{path} holds a private key, which must stay with its owner: give "
            "the public key (the .pub file) instead."
        )
    if b"---- BEGIN SSH2 PUBLIC KEY ----" in data:
        try:
            keys = parse_rfc4716(data)
        except BadKeyLine as error:
            raise UserError(
                f"{path}: {error}; export the key again in OpenSSH format."
            ) from None
    else:
        keys = []
        for number, _, entry in parse_lines(data):
            if isinstance(entry, str):
                raise UserError(f"{path}, line {number}: {entry}.")
            keys.append(entry)
    if not keys:
        raise UserError(
            f"{path} holds no public key: give a file with a line such as "
            "'ssh-ed25519 AAAA... partner@example'."
        )
    unique: dict[str, AuthorizedKey] = {}
    for key in keys:
        unique.setdefault(key.fingerprint, key)
    return list(unique.values())


@dataclass(frozen=True)
class _SettingsFile:
    """
    What was read from one user's settings file, and the file's identity then.
    """

    identity: tuple[int, ...]
    settings: dict[str, Any]


def _identity(info: os.stat_result) -> tuple[int, ...]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def check_settings(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """
    Check the content of a user's settings file.

    @return: C{settings}.
    @raise UserError: a key is unknown or a value has the wrong type.
    """
    for key, value in settings.items():
        kind = USER_SETTINGS.get(key)
        if kind is None:
            raise UserError(
                f"{path} has the unknown setting {key!r}; known settings are "
                f"{', '.join(sorted(USER_SETTINGS))}."
            )
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if key == "rules" and not wrong:
            wrong = not all(isinstance(rule, str) for rule in value)
        if wrong:
            raise UserError(f"{path}: {key} = {value!r} has the wrong type.")
    return settings


@dataclass(frozen=True)
class _KeysFile:
    """
    What was read from one user's key file, and the file's identity then.
    """

    identity: tuple[int, ...]
    keys: list[AuthorizedKey]
    problems: list[str]


class UserStore:
    """
    The users of the server, one C{NAME.keys} file (and maybe a
    C{NAME.toml}) each in one folder.

    Reads are cheap enough for the reactor thread: a user's key file is
    parsed again only when its size, times or inode changed since the last
    read, so each login costs one C{open} and one C{fstat}.
    """

    _log = Logger()

    def __init__(self, users_dir: Path) -> None:
        """
        @param users_dir: the folder of the user files (C{settings.users_dir});
            it need not exist until a user is added.
        """
        self.users_dir = users_dir
        self._cache: dict[str, _KeysFile] = {}
        self._settings_cache: dict[str, _SettingsFile] = {}

    def _keys_path(self, name: str) -> Path:
        return self.users_dir / f"{check_name(name)}.keys"

    def _file_owner(self) -> tuple[int, int] | None:
        """
        The owner for a file root writes (the admin command run with sudo):
        that of the users folder, so that the server, running as that
        user, can still read it.  L{None} for any other writer.
        """
        if os.geteuid() != 0:
            return None
        info = self.users_dir.stat()
        return info.st_uid, info.st_gid

    def names(self) -> list[str]:
        """
        The names of all users, sorted.
        """
        try:
            entries = list(self.users_dir.glob("*.keys"))
        except OSError:
            return []
        return sorted(
            path.stem
            for path in entries
            if _NAME.fullmatch(path.stem) and path.is_file()
        )

    def exists(self, name: str) -> bool:
        """
        Whether C{name} is a user; C{False} for a name that cannot be one.
        """
        try:
            return self._keys_path(name).is_file()
        except UserError:
            return False

    def keys(self, name: str) -> list[AuthorizedKey]:
        """
        The keys user C{name} may log in with, as the file says now.

        Lines that cannot be used are left out, each logged once as a
        warning with the file and line number; an unreadable file gives no
        keys.  Never raises for the file's content, so a login is refused
        rather than crashed.

        @raise UnknownUserError: there is no such user (or the name cannot
            be one).
        """
        return self._read(name).keys

    def problems(self, name: str) -> list[str]:
        """
        Why lines of user C{name}'s key file are not used, one sentence per
        line, for the admin command.

        @raise UnknownUserError: there is no such user.
        """
        return self._read(name).problems

    def _read(self, name: str) -> _KeysFile:
        try:
            path = self._keys_path(name)
        except UserError as error:
            raise UnknownUserError(str(error)) from None
        try:
            with path.open("rb") as handle:
                identity = _identity(os.fstat(handle.fileno()))
                cached = self._cache.get(name)
                if cached is not None and cached.identity == identity:
                    return cached
                data = handle.read()
        except FileNotFoundError:
            self._cache.pop(name, None)
            raise _no_such_user(name) from None
        except OSError as error:
            self._log.warn(
                "Cannot read the keys of {user} in {path}: {reason}",
                user=name,
                path=str(path),
                reason=error.strerror,
            )
            problem = f"{path} cannot be read: {error.strerror}."
            return _KeysFile((), [], [problem])

        keys, problems = [], []
        for number, _, entry in parse_lines(data):
            if isinstance(entry, str):
                self._log.warn(
                    "Skipping line {line} of {path}: {reason}",
                    user=name,
                    path=str(path),
                    line=number,
                    reason=entry,
                )
                problems.append(f"line {number} is skipped: {entry}.")
            else:
                keys.append(entry)
        self._cache[name] = _KeysFile(identity, keys, problems)
        return self._cache[name]

    def add(
        self,
        name: str,
        keys: list[AuthorizedKey],
        *,
        add_keys: bool = False,
        keyless: bool = False,
    ) -> list[AuthorizedKey]:
        """
        Create user C{name} with C{keys}, or with C{add_keys} add them to it.

        The key file is written atomically with mode 0640; the users folder
        is created with mode 0750 if missing.  Lines already in the file are
        kept byte for byte; a key the user already has is not added twice.

        @param add_keys: add to an existing user (or create it) instead of
            refusing an existing user.
        @param keyless: allow C{keys} to be empty, for a user who logs in
            with a password.
        @return: the keys that were new.
        @raise UserError: the name cannot be a user name, C{keys} is empty
            (and C{keyless} false), or the user exists and C{add_keys} is
            false.
        """
        path = self._keys_path(name)
        if not keys and not keyless:
            raise UserError(f"no key was given for {name}: give at least one.")
        if path.exists() and not add_keys:
            raise UserError(
                f"user {name} already exists: add keys with "
                f"`quartet-sftpd user key add {name} FILE`, or remove the user first."
            )
        make_private_folder(self.users_dir, USERS_DIR_MODE)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        present = {key.fingerprint for key in usable_keys(data)}
        new = []
        for key in keys:
            if key.fingerprint not in present:
                present.add(key.fingerprint)
                new.append(key)
        if data and not data.endswith(b"\n"):
            data += b"\n"
        data += b"".join(key.line().encode("utf-8") + b"\n" for key in new)
        write_atomically(path, data, KEYS_FILE_MODE, owner=self._file_owner())
        return new

    def remove_key(self, name: str, key_fingerprint: str) -> AuthorizedKey:
        """
        Take the key with fingerprint C{key_fingerprint} away from user
        C{name}; other lines of the file are kept byte for byte.

        @return: the key removed.
        @raise UserError: no such user or key, or it is the last key of a
            user who has no password.
        """
        return self.remove_keys(name, [key_fingerprint], f"key {key_fingerprint}")[0]

    def remove_keys(
        self, name: str, fingerprints: Collection[str], described_as: str
    ) -> list[AuthorizedKey]:
        """
        Take every key of C{fingerprints} that user C{name} has away from
        it, in one write, or none of them; keys the user does not have are
        passed over.  Other lines of the file are kept byte for byte.

        @param described_as: how the refusals name the keys: C{key SHA256:...}
            or C{key in FILE}.
        @return: the keys removed.
        @raise UserError: no such user, the user has none of the keys, or
            they are all its keys and it has no password.
        """
        path = self._keys_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise _no_such_user(name) from None
        held = usable_keys(data)
        removed = [k for k in held if k.fingerprint in fingerprints]
        if not removed:
            raise UserError(
                f"user {name} has no {described_as}: see its keys with "
                f"`quartet-sftpd user show {name}`."
            )
        if len(removed) == len(held) and not self._has_password(name):
            raise UserError(
                f"removing {described_as} would leave user {name} with no key: add "
                "another key first, or remove the user with "
                f"`quartet-sftpd user remove {name}`."
            )
        drop = {
            number
            for number, _, entry in parse_lines(data)
            if not isinstance(entry, str) and entry.fingerprint in fingerprints
        }
        kept = [
            raw + b"\n"
            for number, raw in enumerate(data.splitlines(), start=1)
            if number not in drop
        ]
        kept_data = b"".join(kept)
        write_atomically(path, kept_data, KEYS_FILE_MODE, owner=self._file_owner())
        return removed

    def _has_password(self, name: str) -> bool:
        try:
            return bool(self.settings(name).get("password"))
        except UserError:
            return False

    def remove(self, name: str) -> None:
        """
        Remove user C{name}: its key file and its settings file.

        @raise UnknownUserError: there is no such user.
        """
        path = self._keys_path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise _no_such_user(name) from None
        path.with_suffix(".toml").unlink(missing_ok=True)
        self._cache.pop(name, None)
        self._settings_cache.pop(name, None)

    def settings(self, name: str) -> dict[str, Any]:
        """
        User C{name}'s settings from C{NAME.toml}; empty if there is none.

        The file is parsed again only when it changed on disk, so this is
        cheap enough to call for every request.  The dictionary returned is
        shared: do not change it.

        @raise UnknownUserError: there is no such user.
        @raise UserError: the settings file is not valid TOML, has an
            unknown key or a value of the wrong type.
        """
        path = self._keys_path(name).with_suffix(".toml")
        if not self.exists(name):
            raise _no_such_user(name)
        try:
            with path.open("rb") as handle:
                identity = _identity(os.fstat(handle.fileno()))
                cached = self._settings_cache.get(name)
                if cached is not None and cached.identity == identity:
                    return cached.settings
                settings = tomllib.load(handle)
        except FileNotFoundError:
            self._settings_cache.pop(name, None)
            return {}
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise UserError(
                f"the settings file {path} cannot be read ({error}): fix or remove it."
            ) from None
        check_settings(path, settings)
        self._settings_cache[name] = _SettingsFile(identity, settings)
        return settings

    def update_settings(
        self, name: str, *, new_user: bool = False, **changes: Any
    ) -> dict[str, Any]:
        """
        Change some of user C{name}'s settings and write C{NAME.toml} again,
        atomically, with mode 0640.  A change to L{None} removes the setting.

        @param new_user: write the settings of a user about to be created,
            whose keys file does not exist yet: the server then never sees
            the user without its settings.
        @param changes: setting name to its new value, or L{None}.
        @return: the settings as written.
        @raise UnknownUserError: there is no such user (and not C{new_user}).
        @raise UserError: the current file cannot be read, or a change names
            an unknown setting or has the wrong type.
        """
        if new_user:
            check_name(name)
            make_private_folder(self.users_dir, USERS_DIR_MODE)
            settings: dict[str, Any] = {}
        else:
            settings = dict(self.settings(name))
        for key, value in changes.items():
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = value
        path = self._keys_path(name).with_suffix(".toml")
        check_settings(path, settings)
        data = tomli_w.dumps(settings).encode("utf-8")
        write_atomically(path, data, SETTINGS_FILE_MODE, owner=self._file_owner())
        return settings


__all__ = [
    "USER_SETTINGS",
    "AuthorizedKey",
    "UnknownUserError",
    "UserError",
    "UserStore",
    "check_name",
    "parse_key_file",
]
