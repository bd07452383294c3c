"""
The C{user} commands of the admin command, run through C{main()} against a
key home in a temporary folder.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tomllib
from pathlib import Path

import bcrypt
import pytest

from quartet_sftpd.cli import main
from tests.sshkeys import private_key, public_line, write_keys

ALICE = private_key("ed25519")
SPARE = private_key("ecdsa")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """
    A folder with two partners' public key files; the key home is
    C{home/keys}, not created yet.
    """
    write_keys(tmp_path / "alice.pub", public_line(ALICE, "alice@acme"))
    write_keys(tmp_path / "spare.pub", public_line(SPARE, "spare"))
    return tmp_path


def run(home: Path, *argv: str) -> int:
    return main(["--keys", str(home / "keys"), *argv])


def fingerprints(home: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert run(home, "user", "list", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    return {u["name"]: [k["fingerprint"] for k in u["keys"]] for u in listing["users"]}


def test_user_add_writes_the_keys_file(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    C{user add} writes C{keys/users/NAME.keys} (0640) in a users folder
    (0750) and prints the fingerprints it added.
    """
    assert run(home, "user", "add", "alice", "--key", str(home / "alice.pub")) == 0
    out = capsys.readouterr().out
    keys_file = home / "keys" / "users" / "alice.keys"
    assert stat.S_IMODE(os.stat(keys_file).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(keys_file.parent).st_mode) == 0o750
    assert keys_file.read_text() == public_line(ALICE, "alice@acme") + "\n"
    assert "Added user alice" in out
    assert "SHA256:" in out and "alice@acme" in out


def test_user_add_with_several_key_files(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    C{--key} may be repeated or take several files; every key lands in the
    user's file.
    """
    assert (
        run(
            home,
            "user",
            "add",
            "alice",
            "--key",
            str(home / "alice.pub"),
            "--key",
            str(home / "spare.pub"),
        )
        == 0
    )
    assert len(fingerprints(home, capsys)["alice"]) == 2
    bob = [
        "user",
        "add",
        "bob",
        "--key",
        str(home / "alice.pub"),
        str(home / "spare.pub"),
    ]
    assert run(home, *bob) == 0
    assert len(fingerprints(home, capsys)["bob"]) == 2


def test_user_add_refuses_an_existing_user(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    Adding a user again fails with status 1 and one sentence that names
    C{user key add}; the file is left as it was.
    """
    run(home, "user", "add", "alice", "--key", str(home / "alice.pub"))
    before = (home / "keys" / "users" / "alice.keys").read_bytes()
    capsys.readouterr()
    assert run(home, "user", "add", "alice", "--key", str(home / "spare.pub")) == 1
    err = capsys.readouterr().err
    assert err.startswith("quartet-sftpd: error: user alice already exists")
    assert "user key add alice" in err
    assert "Traceback" not in err
    assert (home / "keys" / "users" / "alice.keys").read_bytes() == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["user", "add", "Alice", "--key", "alice.pub"], "cannot be a user name"),
        (["user", "add", "bob", "--key", "missing.pub"], "cannot read the key file"),
        (["user", "remove", "nobody"], "there is no user nobody"),
        (["user", "key", "add", "nobody", "alice.pub"], "user add nobody --key"),
    ],
)
def test_refusals_are_one_sentence(
    home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    """
    What the admin can fix is reported as one line on stderr, status 1.
    """
    monkeypatch.chdir(home)
    assert run(home, *argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_private_key_file_is_refused(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    Giving a private key file by mistake is refused and nothing is written.
    """
    private = home / "id_ed25519"
    private.write_bytes(ALICE.toString("OPENSSH"))
    assert run(home, "user", "add", "alice", "--key", str(private)) == 1
    assert "private key" in capsys.readouterr().err
    assert not (home / "keys" / "users" / "alice.keys").exists()


def test_config_errors_exit_2(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    A settings problem is reported in one sentence with status 2.
    """
    assert main(["--config", str(home / "nope.toml"), "user", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("quartet-sftpd: error: config file")
    assert "Traceback" not in err


def test_usage_errors_exit_2(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    No command, or a command without its arguments, prints the usage.
    """
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err
    assert run(home, "user", "add", "alice") == 2
    assert "--key" in capsys.readouterr().err


def test_config_file_sets_the_key_home(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    Without C{--keys}, the key home comes from the config file, relative to
    the file's folder.
    """
    config = home / "site" / "server.toml"
    config.parent.mkdir()
    config.write_text('keys = "partner-keys"\n')
    argv = ["--config", str(config), "user", "add", "alice"]
    assert main([*argv, "--key", str(home / "alice.pub")]) == 0
    assert (home / "site" / "partner-keys" / "users" / "alice.keys").is_file()


def test_user_list(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{user list} prints each user with its key fingerprints, limits, and a
    warning for each line the server skips; C{--json} has stable fields.
    """
    assert run(home, "user", "list") == 0
    assert "No users" in capsys.readouterr().out

    run(home, "user", "add", "alice", "--key", str(home / "alice.pub"))
    write_keys(
        home / "keys" / "users" / "bob.keys",
        public_line(SPARE, "bob", 'from="10.0.0.0/8",expiry-time="20300101Z"'),
        "ssh-ed25519 broken",
    )
    capsys.readouterr()
    assert run(home, "user", "list") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "alice"
    assert out[1].startswith("  SHA256:") and out[1].endswith("ssh-ed25519 alice@acme")
    assert out[2] == "bob"
    assert out[3].endswith("(from 10.0.0.0/8, expires 2030-01-01T00:00:00Z)")
    assert out[4].startswith("  warning: line 2 is skipped")

    assert run(home, "user", "list", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    bob = listing["users"][1]
    assert bob["name"] == "bob"
    assert bob["keys"] == [
        {
            "fingerprint": bob["keys"][0]["fingerprint"],
            "type": "ecdsa-sha2-nistp256",
            "comment": "bob",
            "options": {"from": "10.0.0.0/8", "expiry-time": "20300101Z"},
            "expires": "2030-01-01T00:00:00Z",
        }
    ]
    assert len(bob["problems"]) == 1


def test_user_remove(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{user remove} deletes the user's files; the user is gone from the list.
    """
    run(home, "user", "add", "alice", "--key", str(home / "alice.pub"))
    (home / "keys" / "users" / "alice.toml").write_text("x = 1\n")
    assert run(home, "user", "remove", "alice") == 0
    assert list((home / "keys" / "users").iterdir()) == []
    assert fingerprints(home, capsys) == {}


def test_user_key_add_and_remove(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    C{user key add} adds keys to an existing user (once each) and
    C{user key remove} takes one away by its fingerprint, with or without
    the C{SHA256:} prefix; the last key cannot be removed.
    """
    run(home, "user", "add", "alice", "--key", str(home / "alice.pub"))
    assert run(home, "user", "key", "add", "alice", str(home / "spare.pub")) == 0
    assert run(home, "user", "key", "add", "alice", str(home / "spare.pub")) == 0
    assert "already there" in capsys.readouterr().out
    first, spare = fingerprints(home, capsys)["alice"]

    bare = spare.removeprefix("SHA256:")
    assert run(home, "user", "key", "remove", "alice", bare) == 0
    assert fingerprints(home, capsys) == {"alice": [first]}
    assert run(home, "user", "key", "remove", "alice", first) == 1
    assert capsys.readouterr().err == (
        f"quartet-sftpd: error: removing key {first} would leave user alice with "
        "no key: add another key first, or remove the user with "
        "`quartet-sftpd user remove alice`.\n"
    )


def test_user_key_remove_by_key_file(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    C{user key remove} also takes the public key file the key came from; an
    argument that is neither a fingerprint nor a file is refused with a
    sentence saying what is expected.
    """
    run(home, "user", "add", "alice", "--key", str(home / "alice.pub"))
    run(home, "user", "key", "add", "alice", str(home / "spare.pub"))
    first, _ = fingerprints(home, capsys)["alice"]

    assert run(home, "user", "key", "remove", "alice", str(home / "spare.pub")) == 0
    assert "Removed key" in capsys.readouterr().out
    assert fingerprints(home, capsys) == {"alice": [first]}
    assert run(home, "user", "key", "remove", "alice", "spare_key.pub") == 2
    assert capsys.readouterr().err == (
        "quartet-sftpd: error: spare_key.pub is neither a key fingerprint nor a "
        "file: give a fingerprint (SHA256:...) as `quartet-sftpd user show alice` "
        "prints it, or the path of a public key file.\n"
    )


def test_user_key_remove_by_a_file_of_several_keys(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    Given a file of several keys, C{user key remove} takes away those the
    user has and passes over the others; it changes nothing, with one
    sentence and status 1, when the user has none of them or they are all
    its keys.
    """
    run(home, "user", "add", "alice", "--key", str(home / "alice.pub"))
    run(home, "user", "key", "add", "alice", str(home / "spare.pub"))
    first, spare = fingerprints(home, capsys)["alice"]
    other = write_keys(home / "other.pub", public_line(private_key(), "other"))
    both = write_keys(
        home / "both.pub", (home / "spare.pub").read_text(), other.read_text()
    )
    every = write_keys(
        home / "every.pub", (home / "alice.pub").read_text(), both.read_text()
    )
    keys_file = home / "keys" / "users" / "alice.keys"
    before = keys_file.read_bytes()

    assert run(home, "user", "key", "remove", "alice", str(every)) == 1
    assert capsys.readouterr().err == (
        f"quartet-sftpd: error: removing key in {every} would leave user alice "
        "with no key: add another key first, or remove the user with "
        "`quartet-sftpd user remove alice`.\n"
    )
    assert run(home, "user", "key", "remove", "alice", str(other)) == 1
    assert capsys.readouterr().err == (
        f"quartet-sftpd: error: user alice has no key in {other}: see its keys "
        "with `quartet-sftpd user show alice`.\n"
    )
    assert keys_file.read_bytes() == before

    assert run(home, "user", "key", "remove", "alice", str(both)) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Removed key {spare} ecdsa-sha2-nistp256 spare from ")
    assert out.count("Removed key") == 1
    assert fingerprints(home, capsys) == {"alice": [first]}


def rules_file(home: Path) -> Path:
    """
    A rules file with three rules, one with a space in its name.
    """
    path = home / "rules.toml"
    path.write_text(
        "".join(
            f'[[rule]]\nname = "{name}"\n[[rule.step]]\nname = "W"\n'
            'class = "quartet_sftpd.steps.WellFormedXML"\n'
            for name in ("EPCIS", "Shipping Notices", "Returns")
        )
    )
    return path


def run_with_rules(home: Path, *argv: str) -> int:
    return main(["--keys", str(home / "keys"), "--rules", str(rules_file(home)), *argv])


def show(home: Path, capsys: pytest.CaptureFixture[str], name: str) -> dict:
    capsys.readouterr()
    assert run(home, "user", "show", name, "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_user_add_with_rules(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{--rules} takes rule names or folder names; the user's settings file
    (0640) names the rules; a rule that does not exist is refused and no
    user is created.
    """
    key = str(home / "alice.pub")
    args = ["user", "add", "alice", "--key", key, "--rules", "EPCIS,Shipping-Notices"]
    assert run_with_rules(home, *args) == 0
    assert "Rules: EPCIS, Shipping Notices" in capsys.readouterr().out
    settings_file = home / "keys" / "users" / "alice.toml"
    assert stat.S_IMODE(os.stat(settings_file).st_mode) == 0o640
    assert show(home, capsys, "alice")["rules"] == ["EPCIS", "Shipping Notices"]

    args = ["user", "add", "bob", "--key", key, "--rules", "EPCIS,Invoices"]
    assert run_with_rules(home, *args) == 1
    err = capsys.readouterr().err
    assert "'Invoices' is no rule" in err
    assert "EPCIS, Shipping Notices, Returns" in err
    assert not (home / "keys" / "users" / "bob.keys").exists()
    assert not (home / "keys" / "users" / "bob.toml").exists()


def test_user_rules(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{user rules NAME R1,R2} replaces the granted rules, C{--all} grants
    every rule again; unknown rules and unknown users are refused.
    """
    run(home, "user", "add", "alice", "--key", str(home / "alice.pub"))
    assert show(home, capsys, "alice")["rules"] is None
    assert run_with_rules(home, "user", "rules", "alice", "Returns") == 0
    assert "now sees Returns" in capsys.readouterr().out
    assert show(home, capsys, "alice")["rules"] == ["Returns"]
    assert run_with_rules(home, "user", "rules", "alice", "Nope") == 1
    assert show(home, capsys, "alice")["rules"] == ["Returns"]
    assert run_with_rules(home, "user", "rules", "alice", "--all") == 0
    assert show(home, capsys, "alice")["rules"] is None
    assert run_with_rules(home, "user", "rules", "bob", "EPCIS") == 1
    assert "no user" in capsys.readouterr().err
    assert run_with_rules(home, "user", "rules", "alice") == 2


def test_disable_and_enable(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{user disable} marks the user disabled (shown by show and list) and
    C{user enable} undoes it, keeping the keys; either says so when there is
    nothing to change.
    """
    run(home, "user", "add", "alice", "--key", str(home / "alice.pub"))
    assert run(home, "user", "disable", "alice") == 0
    assert show(home, capsys, "alice")["disabled"] is True
    assert run(home, "user", "disable", "alice") == 0
    assert capsys.readouterr().out == "User alice is already disabled.\n"
    assert run(home, "user", "list") == 0
    assert capsys.readouterr().out.startswith("alice (disabled)\n")
    assert run(home, "user", "enable", "alice") == 0
    details = show(home, capsys, "alice")
    assert details["disabled"] is False
    assert len(details["keys"]) == 1
    assert run(home, "user", "enable", "alice") == 0
    assert capsys.readouterr().out == "User alice is already enabled.\n"
    assert run(home, "user", "disable", "bob") == 1


def test_user_show(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{user show} prints keys, rules, password and session limit.
    """
    run_with_rules(
        home,
        "user",
        "add",
        "alice",
        "--key",
        str(home / "alice.pub"),
        "--rules",
        "EPCIS",
    )
    capsys.readouterr()
    assert run(home, "user", "show", "alice") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "alice"
    assert lines[1].startswith("  SHA256:")
    assert lines[2:] == [
        "  rules: EPCIS",
        "  password: none",
        "  max sessions: the default",
    ]
    assert run(home, "user", "show", "bob") == 1


def test_passwords_from_standard_input(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    C{--password} reads the password from standard input when it is not a
    terminal and stores only a bcrypt hash; C{user password --remove}
    removes it.  A user may have a password and no key.
    """
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    assert run(home, "user", "add", "carol", "--password") == 0
    assert "with 0 key(s) and a password" in capsys.readouterr().out
    text = (home / "keys" / "users" / "carol.toml").read_text()
    assert "correct horse" not in text
    stored = tomllib.loads(text)["password"]
    assert bcrypt.checkpw(b"correct horse", stored.encode())
    assert show(home, capsys, "carol")["password"] is True

    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert run(home, "user", "password", "carol") == 1
    assert "empty" in capsys.readouterr().err
    assert run(home, "user", "password", "carol", "--remove") == 0
    assert show(home, capsys, "carol")["password"] is False


def test_session_limits(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{--max-sessions} at add and C{user sessions} set a user's own session
    limit; C{--default} goes back to the server's; negative is a usage
    error.
    """
    key = str(home / "alice.pub")
    assert run(home, "user", "add", "alice", "--key", key, "--max-sessions", "3") == 0
    assert show(home, capsys, "alice")["max_sessions"] == 3
    assert run(home, "user", "sessions", "alice", "0") == 0
    assert "no limit" in capsys.readouterr().out
    assert show(home, capsys, "alice")["max_sessions"] == 0
    assert run(home, "user", "sessions", "alice", "--default") == 0
    assert "default (20)" in capsys.readouterr().out
    assert show(home, capsys, "alice")["max_sessions"] is None
    assert run(home, "user", "sessions", "alice", "-1") == 2


def test_config_comes_from_the_environment_like_the_server(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Without C{--config}, the command reads C{$QUARTET_SFTPD_CONFIG} as twistd
    does, so a user is added where the server looks, whatever the current
    folder; the output names that folder.
    """
    site = home / "site"
    site.mkdir()
    (site / "quartet-sftpd.toml").write_text('keys = "partners"\n')
    monkeypatch.setenv("QUARTET_SFTPD_CONFIG", str(site / "quartet-sftpd.toml"))
    monkeypatch.chdir(home)

    added = main(["user", "add", "alice", "--key", str(home / "alice.pub")])

    assert added == 0
    assert (site / "partners" / "users" / "alice.keys").exists()
    assert not (home / "keys").exists()
    assert f"in {site / 'partners' / 'users'}" in capsys.readouterr().out
