"""
The C{user} sub-commands: add, list and remove users, add and remove keys.

They write the files the server reads at each login (see
L{quartet_sftpd.users}), so a change applies at the next login without a
restart.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from quartet_sftpd.authorized_keys import AuthorizedKey
from quartet_sftpd.config import Settings
from quartet_sftpd.users import (
    UnknownUserError,
    UserStore,
    check_name,
    parse_key_file,
)


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
        action="append",
        required=True,
        help="an OpenSSH .pub file or authorized_keys file; repeat for more",
    )
    add.set_defaults(handler=add_user)

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
    key_remove.add_argument("fingerprint", help="SHA256:... as `user list` shows")
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
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_user(settings: Settings, args: argparse.Namespace) -> int:
    """
    Create a user who logs in with the public keys in the given files.
    """
    check_name(args.name)
    keys = _read_keys(args.key_files)
    store = UserStore(settings.users_dir)
    store.add(args.name, keys)
    print(f"Added user {args.name} with {len(keys)} key(s):")
    for key in keys:
        print(f"  {_describe(key)}")
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
    Stop a user from logging in with one key, named by its fingerprint.
    """
    fingerprint = args.fingerprint
    if not fingerprint.startswith("SHA256:"):
        fingerprint = f"SHA256:{fingerprint}"
    key = UserStore(settings.users_dir).remove_key(args.name, fingerprint)
    print(f"Removed key {_describe(key)} from user {args.name}.")
    return 0


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
        except UnknownUserError:
            # Removed while we were listing.
            continue
        users.append((name, keys, problems))

    if args.json:
        print(json.dumps({"users": [_as_json(*user) for user in users]}, indent=2))
        return 0
    if not users:
        print(
            f"No users in {settings.users_dir}: add one with "
            "`quartet-sftpd user add NAME --key FILE`."
        )
    for name, keys, problems in users:
        print(name)
        for key in keys:
            print(f"  {_describe(key)}")
        if not keys:
            print("  (no usable key: this user cannot log in)")
        for problem in problems:
            print(f"  warning: {problem}")
    return 0


def _as_json(name: str, keys: list[AuthorizedKey], problems: list[str]) -> dict:
    """
    One user for C{user list --json}; these field names are stable.
    """
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
    }
