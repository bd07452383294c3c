"""
The user store: names, key files in authorized_keys format with their
options, settings files, and changes that apply without a restart.
"""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import capturedLogs

from quartet_sftpd.authorized_keys import parse_line
from quartet_sftpd.users import (
    UnknownUserError,
    UserError,
    UserStore,
    check_name,
    parse_key_file,
)
from tests.sshkeys import private_key, public_line, write_keys

KEY = private_key("ed25519")
OTHER = private_key("ecdsa")


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    return UserStore(tmp_path / "keys" / "users")


@pytest.mark.parametrize("name", ["a", "alice", "0day", "x.y_z-1", "a" * 32])
def test_valid_names(name: str) -> None:
    """
    Names of 1 to 32 characters of a-z, 0-9, '_', '.', '-' that start with a
    letter or digit are user names.
    """
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Alice", "-a", ".a", "_a", "../etc", "a/b", "a b", "ü", "a" * 33]
)
def test_invalid_names_are_refused(store: UserStore, name: str) -> None:
    """
    Any other name is refused with a sentence saying what a name may be,
    and never touches the filesystem.
    """
    with pytest.raises(UserError, match="1 to 32 characters"):
        check_name(name)
    assert not store.exists(name)
    with pytest.raises(UnknownUserError):
        store.keys(name)
    with pytest.raises(UserError):
        store.add(name, parse_key_file(_pub(store, KEY)))


def _pub(store: UserStore, key, comment: str = "me@example") -> Path:
    path = store.users_dir.parent.parent / f"key{id(key)}.pub"
    return write_keys(path, public_line(key, comment))


def test_a_user_exists_iff_its_keys_file_does(store: UserStore) -> None:
    """
    A C{NAME.keys} file makes a user; a settings file alone does not.
    """
    write_keys(store.users_dir / "alice.keys", public_line(KEY))
    (store.users_dir / "ghost.toml").write_text("rules = []\n")
    (store.users_dir / "Bad Name.keys").write_text(public_line(KEY))
    assert store.names() == ["alice"]
    assert store.exists("alice")
    assert not store.exists("ghost")
    with pytest.raises(UnknownUserError):
        store.keys("ghost")


def test_names_without_a_folder(store: UserStore) -> None:
    """
    Before any user is added there are no users, and no error.
    """
    assert store.names() == []
    assert not store.exists("alice")


def test_keys_with_options_and_comments(store: UserStore) -> None:
    """
    Keys are read with their comment, fingerprint and options; quoted
    option values may hold commas and spaces; blank lines and comments are
    ignored.
    """
    write_keys(
        store.users_dir / "alice.keys",
        "# partner ACME",
        "",
        public_line(KEY, "alice laptop"),
        public_line(OTHER, "", 'from="10.0.0.0/8, 192.0.2.1",no-pty,restrict'),
    )
    first, second = store.keys("alice")
    assert first.key == KEY.public()
    assert first.comment == "alice laptop"
    assert first.fingerprint.startswith("SHA256:")
    assert first.options == {}
    assert second.key == OTHER.public()
    assert second.options == {
        "from": "10.0.0.0/8, 192.0.2.1",
        "no-pty": None,
        "restrict": None,
    }
    assert second.allows_address("192.0.2.1")
    assert not second.allows_address("192.0.2.2")


def test_bad_lines_are_skipped_with_one_warning_each(store: UserStore) -> None:
    """
    Unusable lines are left out, each logged once as a warning naming the
    file and line; reading again without a change logs nothing new.
    """
    path = write_keys(
        store.users_dir / "alice.keys",
        "ssh-ed25519 not-base64!",
        public_line(KEY),
        public_line(OTHER, "", 'command="/bin/sh"'),
        "garbage",
    )
    with capturedLogs() as events:
        assert [k.key for k in store.keys("alice")] == [KEY.public()]
        assert len(store.keys("alice")) == 1
    warnings = [e for e in events if e["log_level"].name == "warn"]
    assert [(e["path"], e["line"], e["user"]) for e in warnings] == [
        (str(path), 1, "alice"),
        (str(path), 3, "alice"),
        (str(path), 4, "alice"),
    ]
    assert "command" in warnings[1]["reason"]
    assert len(store.problems("alice")) == 3


def test_changes_apply_at_the_next_read(store: UserStore) -> None:
    """
    A key file rewritten (by the CLI or a provisioning tool) or edited in
    place is read again at the next call, without a new store.
    """
    path = write_keys(store.users_dir / "alice.keys", public_line(KEY))
    assert [k.key for k in store.keys("alice")] == [KEY.public()]
    write_keys(path, public_line(OTHER))
    assert [k.key for k in store.keys("alice")] == [OTHER.public()]
    with path.open("a") as handle:
        handle.write(public_line(KEY) + "\n")
    assert [k.key for k in store.keys("alice")] == [OTHER.public(), KEY.public()]
    path.unlink()
    with pytest.raises(UnknownUserError):
        store.keys("alice")


@settings(max_examples=200, deadline=None)
@given(content=st.binary(max_size=600))
def test_no_file_content_breaks_a_read(tmp_path_factory, content: bytes) -> None:
    """
    Whatever a key file holds, reading it gives a list of keys, never an
    exception, so a login is refused rather than crashed.
    """
    folder = tmp_path_factory.mktemp("users")
    (folder / "alice.keys").write_bytes(content)
    assert isinstance(UserStore(folder).keys("alice"), list)


def test_add_creates_files_privately(store: UserStore) -> None:
    """
    Adding a user writes C{NAME.keys} with mode 0640 in a users folder with
    mode 0750, one authorized_keys line per key.
    """
    keys = parse_key_file(_pub(store, KEY)) + parse_key_file(_pub(store, OTHER))
    assert store.add("alice", keys) == keys
    path = store.users_dir / "alice.keys"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(store.users_dir).st_mode) == 0o750
    assert [k.fingerprint for k in store.keys("alice")] == [k.fingerprint for k in keys]
    assert path.read_text().splitlines()[0] == public_line(KEY, "me@example")


def test_add_refuses_an_existing_user(store: UserStore) -> None:
    """
    Adding a user who exists is refused with the command that adds keys.
    """
    keys = parse_key_file(_pub(store, KEY))
    store.add("alice", keys)
    with pytest.raises(UserError, match="user key add alice"):
        store.add("alice", keys)


def test_add_keys_keeps_existing_lines(store: UserStore) -> None:
    """
    Adding keys to a user keeps every line of the file as it was (comments
    too), adds only keys the user does not have yet, and returns those.
    """
    path = write_keys(
        store.users_dir / "alice.keys",
        "# managed by hand",
        public_line(KEY, "old", 'from="10.*"'),
    )
    before = path.read_bytes()
    keys = parse_key_file(_pub(store, KEY)) + parse_key_file(_pub(store, OTHER))
    added = store.add("alice", keys, add_keys=True)
    assert [k.key for k in added] == [OTHER.public()]
    assert path.read_bytes().startswith(before)
    assert len(store.keys("alice")) == 2


def test_remove_key(store: UserStore) -> None:
    """
    A key is removed by fingerprint, other lines kept; the last key, or a
    key the user does not have, is refused with what to do instead.
    """
    keys = parse_key_file(_pub(store, KEY)) + parse_key_file(_pub(store, OTHER))
    store.add("alice", keys)
    removed = store.remove_key("alice", keys[0].fingerprint)
    assert removed.key == KEY.public()
    assert [k.key for k in store.keys("alice")] == [OTHER.public()]
    with pytest.raises(UserError, match="has no key"):
        store.remove_key("alice", keys[0].fingerprint)
    with pytest.raises(UserError, match="user remove alice"):
        store.remove_key("alice", keys[1].fingerprint)


def test_remove(store: UserStore) -> None:
    """
    Removing a user removes its key and settings files; removing a user
    who does not exist is refused.
    """
    store.add("alice", parse_key_file(_pub(store, KEY)))
    (store.users_dir / "alice.toml").write_text("x = 1\n")
    store.remove("alice")
    assert not store.exists("alice")
    assert list(store.users_dir.iterdir()) == []
    with pytest.raises(UnknownUserError, match="user list"):
        store.remove("alice")


def test_settings(store: UserStore) -> None:
    """
    Settings come from C{NAME.toml}: empty when there is none, a clear
    error naming the file when it is not TOML.
    """
    store.add("alice", parse_key_file(_pub(store, KEY)))
    assert store.settings("alice") == {}
    path = store.users_dir / "alice.toml"
    path.write_text('rules = ["EPCIS"]\n')
    assert store.settings("alice") == {"rules": ["EPCIS"]}
    path.write_text("rules = [\n")
    with pytest.raises(UserError, match=str(path)):
        store.settings("alice")
    with pytest.raises(UnknownUserError):
        store.settings("bob")


def test_parse_key_file_reads_authorized_keys(tmp_path: Path) -> None:
    """
    A whole authorized_keys file gives each of its keys once, with options.
    """
    path = write_keys(
        tmp_path / "authorized_keys",
        "# two keys",
        public_line(KEY, "a"),
        public_line(OTHER, "b", 'expiry-time="20300101Z"'),
        public_line(KEY, "a again"),
    )
    keys = parse_key_file(path)
    assert [k.comment for k in keys] == ["a", "b"]
    expected = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert keys[1].expires == expected


def test_parse_key_file_reads_ssh2_format(tmp_path: Path) -> None:
    """
    A key exported in the SSH2 format (as PuTTYgen does) is read too.
    """
    pub = write_keys(tmp_path / "key.pub", public_line(KEY, "putty"))
    exported = subprocess.run(
        ["ssh-keygen", "-e", "-f", str(pub)], capture_output=True, check=True
    ).stdout
    path = tmp_path / "key.ssh2"
    path.write_bytes(exported)
    [key] = parse_key_file(path)
    assert key.key == KEY.public()


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no public key"),
        ("# only a comment\n", "holds no public key"),
        ("ssh-ed25519 AAAA-broken\n", "line 1"),
        (public_line(KEY, "", 'command="ls",permitopen="x:1"'), "command, permitopen"),
        (public_line(KEY, "", 'no-pty="1"'), "takes no value"),
        (public_line(KEY, "", "no-pty=1"), "malformed"),
        (public_line(KEY, "", "from"), "needs a value"),
        (public_line(KEY, "", 'from="10.0.0.0/33"'), "not a network"),
        (public_line(KEY, "", 'expiry-time="2030-01-01"'), "YYYYMMDD"),
        (public_line(KEY, "", 'from="10.*'), "no closing quote"),
        (public_line(KEY, "", "no-pty,no-pty"), "appears twice"),
    ],
)
def test_parse_key_file_refusals(tmp_path: Path, content: str, message: str) -> None:
    """
    A key file with no key, a bad line or an option the server cannot
    honour is refused with a sentence naming the problem.
    """
    path = tmp_path / "key.pub"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as caught:
        parse_key_file(path)
    assert str(path) in str(caught.value)


def test_parse_key_file_refuses_private_keys_and_missing_files(tmp_path: Path) -> None:
    """
    A private key given by mistake is refused without echoing it, and a
    file that cannot be read names the file.
    """
    path = tmp_path / "id_ed25519"
    path.write_bytes(KEY.toString("OPENSSH"))
    with pytest.raises(UserError, match="private key") as caught:
        parse_key_file(path)
    assert "BEGIN" not in str(caught.value)
    with pytest.raises(UserError, match="cannot read the key file"):
        parse_key_file(tmp_path / "missing.pub")


@pytest.mark.parametrize(
    "patterns, host, allowed",
    [
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "11.1.2.3", False),
        ("192.0.2.*", "192.0.2.77", True),
        ("192.0.2.?", "192.0.2.77", False),
        ("192.0.2.7", "192.0.2.7", True),
        ("10.0.0.0/8,!10.9.9.9", "10.9.9.9", False),
        ("10.0.0.0/8,!10.9.9.9", "10.9.9.8", True),
        ("!10.9.9.9", "192.0.2.1", False),
        ("2001:db8::/32", "2001:db8::1", True),
        ("2001:DB8:*", "2001:db8::1", True),
        ("192.0.2.0/24", "::ffff:192.0.2.5", True),
        ("*.example.com", "192.0.2.5", False),
        ("*", "192.0.2.5", True),
        ("10.0.0.0/8", None, False),
        ("10.0.0.0/8", "not an address", False),
    ],
)
def test_from_patterns(patterns: str, host: str | None, allowed: bool) -> None:
    """
    C{from=} is read as an OpenSSH pattern-list: CIDR networks, addresses
    and globs, any C{!} match refuses, an unknown address is refused.
    """
    entry = parse_line(public_line(KEY, "", f'from="{patterns}"'))
    assert entry.allows_address(host) is allowed


def test_no_from_allows_any_address() -> None:
    """
    A key without C{from=} may be used from anywhere, even unknown.
    """
    assert parse_line(public_line(KEY)).allows_address(None)


@pytest.mark.parametrize(
    "value, moment",
    [
        ("20300102", datetime(2030, 1, 2).timestamp()),
        ("203001020304Z", datetime(2030, 1, 2, 3, 4, tzinfo=UTC).timestamp()),
        ("20300102030405Z", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
    ],
)
def test_expiry_time(value: str, moment: float) -> None:
    """
    C{expiry-time} is local time, or UTC with a Z; the key is expired only
    after that moment.
    """
    entry = parse_line(public_line(KEY, "", f'expiry-time="{value}"'))
    assert entry.expires == moment
    assert not entry.expired(moment)
    assert entry.expired(moment + 1)


def test_line_round_trip() -> None:
    """
    A key written back as a line reads as the same key, options (with an
    escaped quote) and comment included.
    """
    original = parse_line(
        public_line(KEY, "a b c", 'no-pty,from="10.0.0.1,!\\"x\\"",restrict')
    )
    again = parse_line(original.line())
    assert (again.key, again.options, again.comment) == (
        original.key,
        original.options,
        original.comment,
    )
    assert again.options["from"] == '10.0.0.1,!"x"'


def test_update_settings_writes_atomically_and_removes_with_none(
    store: UserStore,
) -> None:
    """
    update_settings changes some settings, keeps the others, removes those
    set to None, and the next read sees the change.
    """
    store.add("alice", parse_key_file(_pub(store, KEY)))
    store.update_settings("alice", rules=["EPCIS"], max_sessions=2)
    assert store.settings("alice") == {"rules": ["EPCIS"], "max_sessions": 2}
    store.update_settings("alice", disabled=True, max_sessions=None)
    assert store.settings("alice") == {"rules": ["EPCIS"], "disabled": True}
    path = store.users_dir / "alice.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in store.users_dir.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(UnknownUserError):
        store.update_settings("bob", disabled=True)


@pytest.mark.parametrize(
    "content, message",
    [
        ("colour = 'red'\n", "unknown setting 'colour'"),
        ("rules = 'EPCIS'\n", "rules = 'EPCIS' has the wrong type"),
        ("rules = [1]\n", "wrong type"),
        ("disabled = 1\n", "wrong type"),
        ("max_sessions = true\n", "wrong type"),
    ],
)
def test_settings_are_checked(store: UserStore, content: str, message: str) -> None:
    """
    A settings file with an unknown key or a value of the wrong type is an
    error naming the file, never silently ignored.
    """
    store.add("alice", parse_key_file(_pub(store, KEY)))
    (store.users_dir / "alice.toml").write_text(content)
    with pytest.raises(UserError, match=message):
        store.settings("alice")
    with pytest.raises(UserError):
        store.update_settings("alice", rules=["EPCIS"])


def test_a_user_with_a_password_may_lose_its_last_key(store: UserStore) -> None:
    """
    The last key cannot be removed, unless the user has a password to log
    in with.
    """
    [key] = store.add("alice", parse_key_file(_pub(store, KEY)))
    with pytest.raises(UserError, match="would leave user alice with no key"):
        store.remove_key("alice", key.fingerprint)
    store.update_settings("alice", password="$2b$04$x")
    store.remove_key("alice", key.fingerprint)
    assert store.keys("alice") == []
