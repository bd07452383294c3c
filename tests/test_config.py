"""
Loading the settings: defaults, the config file, options, and the sentence
a bad value gets.  No server is started.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quartet_sftpd.config import SHIPPED_RULES, ConfigError, load_settings


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "quartet-sftpd.toml"
    path.write_text(text)
    return path


def test_no_config_gives_the_documented_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Without a config file every path resolves against the current folder
    and the shipped rules file is used.
    """
    monkeypatch.chdir(tmp_path)
    settings = load_settings()

    assert settings.listen == "tcp:2222:interface=127.0.0.1"
    assert settings.keys == tmp_path / "keys"
    assert settings.archive == tmp_path / "archive"
    assert settings.db == tmp_path / "quartet-sftpd.sqlite3"
    assert settings.rules == SHIPPED_RULES
    assert settings.file_mode == 0o640


def test_relative_paths_follow_the_config_file_and_options_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Paths in a config file resolve against its folder, not the current
    one; an option given beside the file wins over the file's value.
    """
    monkeypatch.chdir(tmp_path)
    config = write_config(
        tmp_path / "etc",
        'archive = "processed"\nkeys = "/srv/keys"\nlisten = "tcp:2300"\n',
    )
    settings = load_settings(config, {"listen": "tcp:2301", "db": "tasks.db"})

    assert settings.archive == tmp_path / "etc" / "processed"
    assert settings.keys == Path("/srv/keys")
    assert settings.db == tmp_path / "etc" / "tasks.db"
    assert settings.listen == "tcp:2301"


@pytest.mark.parametrize("value", ['"0640"', '"640"', "0o640", "416"])
def test_file_mode_as_octal_text_or_number(tmp_path: Path, value: str) -> None:
    settings = load_settings(write_config(tmp_path, f"file_mode = {value}\n"))
    assert settings.file_mode == 0o640


@pytest.mark.parametrize("value", ['"0999"', '"rwx"', "0o7777", "-1"])
def test_a_bad_file_mode_is_named_with_its_form(tmp_path: Path, value: str) -> None:
    """
    A file mode that is not octal or does not fit in 0777 is refused with a
    sentence that shows the expected form.
    """
    with pytest.raises(ConfigError) as raised:
        load_settings(write_config(tmp_path, f"file_mode = {value}\n"))
    assert str(raised.value).startswith("setting 'file_mode' has the value ")
    assert str(raised.value).endswith(
        'which is not an octal file mode such as "0640" (or 0o640).'
    )


def test_other_bad_values_name_their_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write_config(tmp_path, 'max_sessions = "many"\n'))
    assert str(raised.value) == (
        "setting 'max_sessions' has the value 'many', which is not a valid int."
    )


def test_a_missing_config_file_says_how_to_start_without_one(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(tmp_path / "nowhere.toml")
    assert str(raised.value) == (
        f"config file {tmp_path / 'nowhere.toml'} does not exist: check the "
        "path, or leave --config out to start on the defaults."
    )
    assert not os.path.exists(tmp_path / "nowhere.toml")
