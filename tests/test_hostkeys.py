"""
Host keys are created once, private from the first byte, and reused on
every later start; a damaged or exposed key stops the server.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.keys import Key

from quartet_sftpd.hostkeys import (
    HostKeyError,
    fingerprints,
    load_or_create_host_keys,
)

FILES = ("ssh_host_ed25519_key", "ssh_host_ecdsa_key", "ssh_host_rsa_key")
TYPES = [b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ssh-rsa"]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A key folder as the first start leaves it (RSA generation is slow, so
    the tests that only read share it).
    """
    keys_dir = tmp_path_factory.mktemp("home") / "keys"
    load_or_create_host_keys(keys_dir)
    return keys_dir


@pytest.fixture
def keys_dir(created: Path, tmp_path: Path) -> Path:
    """
    A private copy of the created key folder, modes kept.
    """
    copy = tmp_path / "keys"
    shutil.copytree(created, copy)
    return copy


def test_first_start_creates_private_keys(tmp_path: Path) -> None:
    """
    The first load creates the folder (0700), three private keys of the
    expected types (0600) and their public halves (0644), even under a
    umask that would leave new files open to everyone.
    """
    keys_dir = tmp_path / "home" / "keys"
    old_umask = os.umask(0)
    try:
        keys = load_or_create_host_keys(keys_dir)
    finally:
        os.umask(old_umask)

    assert list(keys) == TYPES
    assert all(not key.isPublic() for key in keys.values())
    assert keys[b"ssh-rsa"].size() == 3072
    assert mode(keys_dir) == 0o700
    for name in FILES:
        assert mode(keys_dir / name) == 0o600
        assert mode(keys_dir / f"{name}.pub") == 0o644
    assert sorted(p.name for p in keys_dir.iterdir()) == sorted(
        FILES + tuple(f"{n}.pub" for n in FILES)
    )


def test_later_starts_reuse_the_keys(keys_dir: Path) -> None:
    """
    Every later load gives the same keys, so fingerprints never change,
    and leaves the files as they were.
    """
    before = {p.name: p.read_bytes() for p in keys_dir.iterdir()}
    first = load_or_create_host_keys(keys_dir)
    second = load_or_create_host_keys(keys_dir)

    assert fingerprints(first) == fingerprints(second)
    assert {p.name: p.read_bytes() for p in keys_dir.iterdir()} == before


def test_fingerprints_as_openssh_prints_them(keys_dir: Path) -> None:
    """
    Each fingerprint line names the key type and gives the SHA256 form
    that C{ssh-keygen -l} prints for the same file.
    """
    lines = fingerprints(load_or_create_host_keys(keys_dir))
    assert [line.split()[0] for line in lines] == [t.decode() for t in TYPES]
    for name, line in zip(FILES, lines, strict=True):
        output = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(keys_dir / name)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert output.split()[1] == line.split()[1]


def test_public_files_match_private_keys(keys_dir: Path) -> None:
    """
    Each C{.pub} file holds the public half of its private key, and one
    that is missing is written again.
    """
    (keys_dir / "ssh_host_ecdsa_key.pub").unlink()
    keys = load_or_create_host_keys(keys_dir)
    for key_type, name in zip(TYPES, FILES, strict=True):
        public = Key.fromFile(str(keys_dir / f"{name}.pub"))
        assert public == keys[key_type].public()


def test_missing_key_is_created_others_kept(keys_dir: Path) -> None:
    """
    When one key file is missing only that key is made anew.
    """
    before = fingerprints(load_or_create_host_keys(keys_dir))
    (keys_dir / "ssh_host_ed25519_key").unlink()
    after = fingerprints(load_or_create_host_keys(keys_dir))
    assert after[0] != before[0]
    assert after[1:] == before[1:]


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o620, 0o644])
def test_open_permissions_are_refused(keys_dir: Path, bits: int) -> None:
    """
    A host key that users other than its owner can read or change stops the
    load with a message naming the file and the chmod that fixes it.
    """
    path = keys_dir / "ssh_host_rsa_key"
    os.chmod(path, bits)
    with pytest.raises(HostKeyError) as caught:
        load_or_create_host_keys(keys_dir)
    assert str(path) in str(caught.value)
    assert f"chmod 600 {path}" in str(caught.value)


def test_damaged_key_is_refused_not_replaced(keys_dir: Path) -> None:
    """
    A key file that is not a private key stops the load, and the file is
    left for the admin to restore rather than silently regenerated.
    """
    path = keys_dir / "ssh_host_ed25519_key"
    path.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nbroken\n")
    with pytest.raises(HostKeyError) as caught:
        load_or_create_host_keys(keys_dir)
    assert str(path) in str(caught.value)
    assert "backup" in str(caught.value)
    assert b"broken" in path.read_bytes()


def test_public_key_in_private_file_is_refused(keys_dir: Path) -> None:
    """
    A public key copied over a private key file is refused.
    """
    path = keys_dir / "ssh_host_ed25519_key"
    path.write_bytes((keys_dir / "ssh_host_ed25519_key.pub").read_bytes())
    with pytest.raises(HostKeyError, match="not an OpenSSH private key"):
        load_or_create_host_keys(keys_dir)


def test_key_of_the_wrong_type_is_refused(keys_dir: Path) -> None:
    """
    An ed25519 key in the RSA key's file is refused, naming both types.
    """
    shutil.copy(keys_dir / "ssh_host_ed25519_key", keys_dir / "ssh_host_rsa_key")
    with pytest.raises(HostKeyError, match="ssh-ed25519 key where a ssh-rsa"):
        load_or_create_host_keys(keys_dir)


def test_encrypted_key_is_refused(keys_dir: Path) -> None:
    """
    A key protected by a passphrase is refused with the command that
    removes the passphrase.
    """
    path = keys_dir / "ssh_host_ed25519_key"
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path.write_bytes(pem)
    with pytest.raises(HostKeyError, match="passphrase") as caught:
        load_or_create_host_keys(keys_dir)
    assert "ssh-keygen -p" in str(caught.value)


def test_conch_factory_offers_every_key(keys_dir: Path) -> None:
    """
    Given as Conch's C{privateKeys} and C{publicKeys}, the keys are offered
    ed25519 first, and the RSA key also signs with rsa-sha2-512 and
    rsa-sha2-256.
    """
    keys = load_or_create_host_keys(keys_dir)
    factory = SSHFactory()
    factory.privateKeys = keys
    factory.publicKeys = {kind: key.public() for kind, key in keys.items()}
    factory.primes = None
    factory.startFactory()
    transport = factory.buildProtocol(None)
    assert transport.supportedPublicKeys == [
        b"ssh-ed25519",
        b"ecdsa-sha2-nistp256",
        b"rsa-sha2-512",
        b"rsa-sha2-256",
        b"ssh-rsa",
    ]


def test_openssh_reads_the_keys(keys_dir: Path) -> None:
    """
    OpenSSH reads each private key file and derives the same public key as
    the C{.pub} file beside it.
    """
    for name in FILES:
        derived = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(keys_dir / name)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[:2]
        assert (keys_dir / f"{name}.pub").read_text().split()[:2] == derived
