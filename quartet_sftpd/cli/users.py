"""
The C{user} sub-commands: add, show, list, disable, enable and remove users,
add and remove keys, grant rules, set session limits and passwords.

They write the files the server reads at each login (see
L{quartet_sftpd.users}), so a change applies at the next login without a
restart; the running server ends the open sessions of a user who is removed
or disabled, or of a key or password that is taken away, within its
C{reload_interval}.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quartet_sftpd.auth import hash_password
from quartet_sftpd.authorized_keys import AuthorizedKey
from quartet_sftpd.config import Settings
from quartet_sftpd.rules import RulesError, load_rules
from quartet_sftpd.sftp.tree import folder_names
from quartet_sftpd.users import (
    UnknownUserError,
    UserError,
    UserStore,
    check_name,
    parse_key_file,
)


class UsageError(Exception):
    """
    The arguments of a command do not go together; the message says how to
    fix them.  The command exits with status 2, as for argparse's errors.
    """


def register(subparsers: Any) -> None:
    """
    Add the C{user} command and its sub-commands to the admin command.
    """
    user = subparsers.add_parser(
        "user",
        help="manage who may log in",
        description="Manage the users who may log in and their public keys.",
    )
    commands = user.add_subparsers(title="user commands", metavar="COMMAND")
    commands.required = True

    add = commands.add_parser(
        "add", help="create a user with public keys", description=add_user.__doc__
    )
    add.add_argument("name", help="the user name partners log in with")
    add.add_argument(
        "--key",
        dest="key_files",
        metavar="FILE",
        type=Path,
        action="extend",
        nargs="+",
        default=[],
        help="OpenSSH .pub files or authorized_keys files",
    )
    add.add_argument(
        "--rules",
        metavar="R1,R2",
        help="the only rules the user may upload to (default: all rules)",
    )
    add.add_argument(
        "--password",
        action="store_true",
        help="also let the user log in with a password (prompted, or read "
        "from standard input when it is not a terminal)",
    )
    add.add_argument(
        "--max-sessions",
        metavar="N",
        type=int,
        help="sessions the user may hold at once (default: max_user_sessions)",
    )
    add.set_defaults(handler=add_user)

    show = commands.add_parser(
        "show", help="show one user", description=show_user.__doc__
    )
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=show_user)

    rules = commands.add_parser(
        "rules", help="choose the rules a user sees", description=set_rules.__doc__
    )
    rules.add_argument("name")
    which = rules.add_mutually_exclusive_group(required=True)
    which.add_argument("rules", nargs="?", metavar="R1,R2", help="rule names")
    which.add_argument("--all", action="store_true", help="every rule, now and later")
    rules.set_defaults(handler=set_rules)

    for verb, handler, text in (
        ("disable", disable_user, "refuse a user's logins and end its sessions"),
        ("enable", enable_user, "let a disabled user log in again"),
    ):
        sub = commands.add_parser(verb, help=text, description=handler.__doc__)
        sub.add_argument("name")
        sub.set_defaults(handler=handler)

    sessions = commands.add_parser(
        "sessions",
        help="set how many sessions a user may hold",
        description=set_sessions.__doc__,
    )
    sessions.add_argument("name")
    limit = sessions.add_mutually_exclusive_group(required=True)
    limit.add_argument("limit", nargs="?", type=int, metavar="N", help="0: no limit")
    limit.add_argument(
        "--default", action="store_true", help="the server's max_user_sessions"
    )
    sessions.set_defaults(handler=set_sessions)

    password = commands.add_parser(
        "password", help="set or remove a password", description=set_password.__doc__
    )
    password.add_argument("name")
    password.add_argument(
        "--remove", action="store_true", help="remove the password instead"
    )
    password.set_defaults(handler=set_password)

    listing = commands.add_parser(
        "list", help="list users and their keys", description=list_users.__doc__
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=list_users)

    remove = commands.add_parser(
        "remove", help="remove a user", description=remove_user.__doc__
    )
    remove.add_argument("name")
    remove.set_defaults(handler=remove_user)

    key = commands.add_parser("key", help="add or remove one user's keys")
    key_commands = key.add_subparsers(title="key commands", metavar="COMMAND")
    key_commands.required = True
    key_add = key_commands.add_parser(
        "add", help="give a user more keys", description=add_keys.__doc__
    )
    key_add.add_argument("name")
    key_add.add_argument("key_files", metavar="FILE", type=Path, nargs="+")
    key_add.set_defaults(handler=add_keys)
    key_remove = key_commands.add_parser(
        "remove", help="take a key from a user", description=remove_key.__doc__
    )
    key_remove.add_argument("name")
    key_remove.add_argument(
        "key",
        metavar="KEY",
        help="a fingerprint (SHA256:... as `user show` prints it) or a public key file",
    )
    key_remove.set_defaults(handler=remove_key)


def _read_keys(files: list[Path]) -> list[AuthorizedKey]:
    keys: list[AuthorizedKey] = []
    for path in files:
        keys.extend(parse_key_file(path))
    return keys


def _describe(key: AuthorizedKey) -> str:
    """
    One key as a line of text: fingerprint, type, comment, limits.
    """
    limits = []
    if "from" in key.options:
        limits.append(f"from {key.options['from']}")
    if key.expires is not None:
        limits.append(f"expires {_utc(key.expires)}")
    text = f"{key.fingerprint} {key.key_type}"
    if key.comment:
        text += f" {key.comment}"
    if limits:
        text += f" ({', '.join(limits)})"
    return text


def _utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rule_names(settings: Settings, text: str) -> list[str]:
    """
    The rule names of a comma-separated list, as the rules file names them;
    a folder name (dashes for spaces) stands for its rule.

    With a capture backend other than the built-in one, the rules live
    elsewhere (in QU4RTET), and the names are taken as given.

    @raise UserError: a name is no rule of the rules file, or the list is
        empty.
    """
    wanted = [name.strip() for name in text.split(",") if name.strip()]
    if not wanted:
        raise UserError("no rule was named: give R1,R2 or --all.")
    if settings.capture != "builtin":
        return list(dict.fromkeys(wanted))
    try:
        rules = list(load_rules(settings.rules))
    except RulesError as error:
        raise UserError(f"the rules cannot be checked: {error}") from None
    folders = folder_names(rules)
    chosen, unknown = [], []
    for name in wanted:
        rule = name if name in rules else folders.get(name)
        if rule is None:
            unknown.append(name)
        elif rule not in chosen:
            chosen.append(rule)
    if unknown:
        raise UserError(
            f"{', '.join(repr(n) for n in unknown)} "
            f"{'is no rule' if len(unknown) == 1 else 'are no rules'} of "
            f"{settings.rules}; the rules are: {', '.join(rules) or 'none'}."
        )
    return chosen


def _read_password(name: str) -> bytes:
    """
    A new password for user C{name}: asked twice on a terminal, else the
    first line of standard input.

    @raise UserError: the two entries differ, or the password is empty or
        too long for bcrypt.
    """
    if sys.stdin.isatty():
        first = getpass.getpass(f"New password for {name}: ")
        if getpass.getpass("Again: ") != first:
            raise UserError("the two passwords differ; nothing was changed.")
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    password = first.encode("utf-8")
    if not password:
        raise UserError("the password is empty; nothing was changed.")
    if len(password) > 72:
        raise UserError(
            "the password is longer than 72 bytes, more than bcrypt uses; "
            "choose a shorter one."
        )
    return password


def add_user(settings: Settings, args: argparse.Namespace) -> int:
    """
    Create a user who logs in with the public keys in the given files (or a
    password), and sees the given rules or all of them.
    """
    check_name(args.name)
    if not args.key_files and not args.password:
        raise UsageError(
            f"give {args.name}'s public key with --key FILE (or, less safely, "
            "--password)."
        )
    keys = _read_keys(args.key_files)
    rules = None if args.rules is None else _rule_names(settings, args.rules)
    password = _read_password(args.name) if args.password else None
    store = UserStore(settings.users_dir)
    if store.exists(args.name):
        raise UserError(
            f"user {args.name} already exists: add keys with `quartet-sftpd user "
            f"key add {args.name} FILE`, change it with `user rules` or `user "
            "password`, or remove the user first."
        )
    changes: dict[str, Any] = {
        "rules": rules,
        "max_sessions": _session_limit(args.max_sessions),
    }
    if password is not None:
        changes["password"] = hash_password(password)
    # Settings first: the user exists, and may log in, only once the keys
    # file appears, so no login ever sees the user without its rules.
    store.update_settings(args.name, new_user=True, **changes)
    store.add(args.name, keys, keyless=True)
    way = f"{len(keys)} key(s)" + (" and a password" if password else "")
    print(f"Added user {args.name} in {settings.users_dir} with {way}:")
    for key in keys:
        print(f"  {_describe(key)}")
    print(f"Rules: {', '.join(rules) if rules is not None else 'all'}")
    return 0


def show_user(settings: Settings, args: argparse.Namespace) -> int:
    """
    Show one user: keys, rules, password, state and limits.
    """
    store = UserStore(settings.users_dir)
    keys, problems = store.keys(args.name), store.problems(args.name)
    details = _as_json(args.name, keys, problems, store.settings(args.name))
    if args.json:
        print(json.dumps(details, indent=2))
        return 0
    _print_user(args.name, keys, problems, details, full=True)
    return 0


def _print_user(
    name: str,
    keys: list[AuthorizedKey],
    problems: list[str],
    details: dict,
    full: bool = False,
) -> None:
    """
    Print one user; C{full} adds the lines that only say "the default".
    """
    state = " (disabled)" if details["disabled"] else ""
    print(f"{name}{state}")
    for key in keys:
        print(f"  {_describe(key)}")
    if not keys and not details["password"]:
        print("  (no usable key: this user cannot log in)")
    for problem in problems:
        print(f"  warning: {problem}")
    rules = details["rules"]
    if rules is not None or full:
        print(f"  rules: {', '.join(rules) if rules is not None else 'all'}")
    if details["password"] or full:
        print(f"  password: {'set' if details['password'] else 'none'}")
    if details["max_sessions"] is not None or full:
        limit = details["max_sessions"]
        print(f"  max sessions: {'the default' if limit is None else limit}")


def set_rules(settings: Settings, args: argparse.Namespace) -> int:
    """
    Choose the rules a user sees and may upload to: R1,R2 (rule or folder
    names), or --all for every rule, including rules added later.
    """
    store = UserStore(settings.users_dir)
    store.settings(args.name)
    rules = None if args.all else _rule_names(settings, args.rules)
    store.update_settings(args.name, rules=rules)
    shown = "all rules" if rules is None else ", ".join(rules)
    print(f"User {args.name} now sees {shown}.")
    return 0


def disable_user(settings: Settings, args: argparse.Namespace) -> int:
    """
    Refuse every login of a user, keeping its keys and settings; the
    server ends its open sessions.
    """
    store = UserStore(settings.users_dir)
    if store.settings(args.name).get("disabled"):
        print(f"User {args.name} is already disabled.")
        return 0
    store.update_settings(args.name, disabled=True)
    print(f"Disabled user {args.name}; its open sessions end within seconds.")
    return 0


def enable_user(settings: Settings, args: argparse.Namespace) -> int:
    """
    Let a disabled user log in again.
    """
    store = UserStore(settings.users_dir)
    if not store.settings(args.name).get("disabled"):
        print(f"User {args.name} is already enabled.")
        return 0
    store.update_settings(args.name, disabled=None)
    print(f"Enabled user {args.name}.")
    return 0


def _session_limit(limit: int | None) -> int | None:
    """
    Check a per-user session limit given on the command line.

    @raise UsageError: it is negative.
    """
    if limit is not None and limit < 0:
        raise UsageError("a session limit cannot be negative; use 0 for no limit.")
    return limit


def set_sessions(settings: Settings, args: argparse.Namespace) -> int:
    """
    Set how many sessions a user may hold at once (0 for no limit), or go
    back to the server's max_user_sessions with --default.  New logins
    beyond the limit are refused; open sessions are not ended.
    """
    limit = None if args.default else _session_limit(args.limit)
    UserStore(settings.users_dir).update_settings(args.name, max_sessions=limit)
    if limit is None:
        shown = f"the server's default ({settings.max_user_sessions})"
    else:
        shown = "no limit" if limit == 0 else str(limit)
    print(f"User {args.name} may now hold {shown} sessions at once.")
    return 0


def set_password(settings: Settings, args: argparse.Namespace) -> int:
    """
    Set a user's password (prompted twice, or read from standard input
    when it is not a terminal), or remove it with --remove.  Only a bcrypt
    hash is stored.
    """
    store = UserStore(settings.users_dir)
    store.settings(args.name)
    if args.remove:
        store.update_settings(args.name, password=None)
        print(f"Removed the password of {args.name}.")
        return 0
    hashed = hash_password(_read_password(args.name))
    store.update_settings(args.name, password=hashed)
    print(f"Set the password of {args.name}.")
    if not settings.password_auth:
        print("Note: password_auth is false in the settings, so it is not used.")
    return 0


def add_keys(settings: Settings, args: argparse.Namespace) -> int:
    """
    Let an existing user log in with more public keys.
    """
    check_name(args.name)
    keys = _read_keys(args.key_files)
    store = UserStore(settings.users_dir)
    if not store.exists(args.name):
        raise UnknownUserError(
            f"there is no user {args.name}: create it with "
            f"`quartet-sftpd user add {args.name} --key FILE`."
        )
    new = {key.fingerprint for key in store.add(args.name, keys, add_keys=True)}
    for key in keys:
        state = "added" if key.fingerprint in new else "already there"
        print(f"  {_describe(key)}: {state}")
    print(f"User {args.name} has {len(new)} new key(s).")
    return 0


def remove_key(settings: Settings, args: argparse.Namespace) -> int:
    """
    Stop a user from logging in with a key, named by its fingerprint (with
    or without C{SHA256:}) or given as a public key file, whose keys the
    user has are all taken away, or none if that cannot be done.
    """
    if args.key.startswith("SHA256:") or not Path(args.key).is_file():
        fingerprint = _fingerprint(args.key, args.name)
        fingerprints, described_as = [fingerprint], f"key {fingerprint}"
    else:
        keys = _read_keys([Path(args.key)])
        fingerprints = [key.fingerprint for key in keys]
        described_as = f"key in {args.key}"
    store = UserStore(settings.users_dir)
    for key in store.remove_keys(args.name, fingerprints, described_as):
        print(f"Removed key {_describe(key)} from user {args.name}.")
    return 0


#: A SHA-256 key fingerprint as OpenSSH prints it, without its C{SHA256:}.
_FINGERPRINT = re.compile(r"^[A-Za-z0-9+/]{43}$")


def _fingerprint(given: str, name: str) -> str:
    """
    The fingerprint a C{user key remove} argument that is not a file names,
    with its C{SHA256:}.

    @raise UsageError: it is no fingerprint either.
    """
    if given.startswith("SHA256:"):
        return given
    if _FINGERPRINT.match(given):
        return f"SHA256:{given}"
    raise UsageError(
        f"{given} is neither a key fingerprint nor a file: give a fingerprint "
        f"(SHA256:...) as `quartet-sftpd user show {name}` prints it, or the "
        "path of a public key file."
    )


def remove_user(settings: Settings, args: argparse.Namespace) -> int:
    """
    Remove a user: their key and settings files.  Uploads already archived
    stay where they are.
    """
    UserStore(settings.users_dir).remove(args.name)
    print(f"Removed user {args.name}; they can no longer log in.")
    return 0


def list_users(settings: Settings, args: argparse.Namespace) -> int:
    """
    List the users with the fingerprints of their keys, and any line of a
    key file that the server skips.
    """
    store = UserStore(settings.users_dir)
    users = []
    for name in store.names():
        try:
            keys, problems = store.keys(name), store.problems(name)
            try:
                own = store.settings(name)
            except UnknownUserError:
                raise
            except UserError as error:
                own, problems = {"disabled": True}, [*problems, str(error)]
        except UnknownUserError:
            # Removed while we were listing.
            continue
        users.append((name, keys, problems, _as_json(name, keys, problems, own)))

    if args.json:
        print(json.dumps({"users": [user[3] for user in users]}, indent=2))
        return 0
    if not users:
        print(
            f"No users in {settings.users_dir}: add one with "
            "`quartet-sftpd user add NAME --key FILE`."
        )
    for name, keys, problems, details in users:
        _print_user(name, keys, problems, details)
    return 0


def _as_json(
    name: str,
    keys: list[AuthorizedKey],
    problems: list[str],
    own: dict[str, Any] | None = None,
) -> dict:
    """
    One user for C{user list --json} and C{user show --json}; these field
    names are stable: C{name}, C{keys} (each with C{fingerprint}, C{type},
    C{comment}, C{options}, C{expires}), C{problems}, C{rules} (L{None} for
    all), C{disabled}, C{password} (whether one is set) and C{max_sessions}
    (L{None} for the server's default).
    """
    own = own or {}
    return {
        "name": name,
        "keys": [
            {
                "fingerprint": key.fingerprint,
                "type": key.key_type,
                "comment": key.comment,
                "options": dict(key.options),
                "expires": None if key.expires is None else _utc(key.expires),
            }
            for key in keys
        ],
        "problems": problems,
        "rules": own.get("rules"),
        "disabled": bool(own.get("disabled", False)),
        "password": bool(own.get("password")),
        "max_sessions": own.get("max_sessions"),
    }
