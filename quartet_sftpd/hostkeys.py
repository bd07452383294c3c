"""
The server's host keys: generated once, loaded on every start.

A partner's client remembers the server's host key fingerprint and refuses
to connect when it changes, so a key is created only when its file is
missing, and a file that is there but unusable stops the server with a
message instead of being replaced.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.conch.ssh.keys import EncryptedKeyError, FingerprintFormats, Key
from twisted.logger import Logger

from quartet_sftpd.atomic import make_private_folder, write_atomically
from quartet_sftpd.config import ConfigError

#: Bits of a newly generated RSA host key.
RSA_BITS = 3072

_PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: SSH key type to the file it lives in and how a new one is made, in the
#: order clients are offered them (Conch offers the host key algorithms in
#: the order of the factory's C{privateKeys}).
HOST_KEYS: Mapping[bytes, tuple[str, Callable[[], _PrivateKey]]] = {
    b"ssh-ed25519": ("ssh_host_ed25519_key", ed25519.Ed25519PrivateKey.generate),
    b"ecdsa-sha2-nistp256": (
        "ssh_host_ecdsa_key",
        lambda: ec.generate_private_key(ec.SECP256R1()),
    ),
    b"ssh-rsa": (
        "ssh_host_rsa_key",
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS),
    ),
}

_log = Logger()


class HostKeyError(ConfigError):
    """
    A host key file exists but cannot be used; the message names the file
    and the fix.
    """


def fingerprint(key: Key) -> str:
    """
    The fingerprint of a key as OpenSSH prints it: C{SHA256:} and the
    unpadded base64 of the SHA-256 of the public key blob.
    """
    return "SHA256:" + key.fingerprint(FingerprintFormats.SHA256_BASE64).rstrip("=")


def fingerprints(keys: Mapping[bytes, Key]) -> list[str]:
    """
    One line per host key for the start-up log, such as
    C{ssh-ed25519 SHA256:...}, in the order of C{keys}.
    """
    return [f"{kind.decode('ascii')} {fingerprint(key)}" for kind, key in keys.items()]


def load_or_create_host_keys(keys_dir: Path) -> dict[bytes, Key]:
    """
    Load the server's host keys from C{keys_dir}, creating the missing ones.

    The folder is created with mode 0700 if it is missing.  A missing key is
    generated and written in OpenSSH's private key format with mode 0600,
    with its public half beside it in C{NAME.pub} (mode 0644); an existing
    key is loaded as it is, so its fingerprint never changes.  A missing or
    stale C{.pub} file is rewritten from the private key.

    The result is what L{twisted.conch.ssh.factory.SSHFactory} wants as
    C{privateKeys}; C{{t: k.public() for t, k in result.items()}} is its
    C{publicKeys}.  Conch offers C{rsa-sha2-512}, C{rsa-sha2-256} and
    C{ssh-rsa} for the C{ssh-rsa} key by itself.

    @param keys_dir: the folder of the host key files (setting C{keys}).
    @return: private keys by SSH key type (C{b"ssh-ed25519"},
        C{b"ecdsa-sha2-nistp256"}, C{b"ssh-rsa"}), in the order clients are
        offered them.
    @raise HostKeyError: a key file exists but cannot be read or parsed,
        holds the wrong kind of key, or can be read by others than its owner.
    @raise OSError: the folder or a new key file cannot be written.
    """
    make_private_folder(keys_dir, 0o700)
    keys = {}
    for key_type, (file_name, generate) in HOST_KEYS.items():
        path = keys_dir / file_name
        if not os.path.lexists(path):
            _create(path, generate)
        key = _load(path, key_type)
        _write_public(path.with_name(file_name + ".pub"), key)
        keys[key_type] = key
    return keys


def _create(path: Path, generate: Callable[[], _PrivateKey]) -> None:
    """
    Generate a new private key and write it to C{path}, unless another
    process created that file first.
    """
    data = generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    try:
        write_atomically(path, data, 0o600, replace=False)
    except FileExistsError:
        return
    _log.info("Generated a new host key {path}", path=str(path))


def _load(path: Path, key_type: bytes) -> Key:
    """
    Read the private host key of type C{key_type} from C{path}.

    @raise HostKeyError: see L{load_or_create_host_keys}.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        data = path.read_bytes()
    except OSError as error:
        raise HostKeyError(
            f"host key {path} cannot be read ({error.strerror}): make it a file "
            "owned by the user the server runs as."
        ) from None
    if mode & 0o077:
        raise HostKeyError(
            f"host key {path} has mode {mode:04o}, so users other than its owner "
            f"can read or change it: run `chmod 600 {path}`, and replace the key "
            "if others may have copied it."
        )
    try:
        key = Key.fromString(data)
    except EncryptedKeyError:
        raise HostKeyError(
            f"host key {path} is protected by a passphrase, which the server "
            f"cannot ask for: remove it with `ssh-keygen -p -N '' -f {path}`."
        ) from None
    except Exception:
        # Conch raises several kinds of error on a damaged key; all of them
        # mean the same thing here, and the file's content must not be logged.
        key = None
    if key is None or key.isPublic():
        raise HostKeyError(
            f"host key {path} is not an OpenSSH private key: restore it from a "
            "backup, or move it away to have a new key created at the next start "
            "(partners' clients will then report a changed host key)."
        )
    if key.sshType() != key_type:
        raise HostKeyError(
            f"host key {path} holds a {key.sshType().decode('ascii')} key where a "
            f"{key_type.decode('ascii')} key belongs: put that key back, or move "
            "the file away to have a new key created at the next start."
        )
    return key


def _write_public(path: Path, key: Key) -> None:
    """
    Write the public half of C{key} to C{path} unless it is already there.
    """
    public = key.public()
    try:
        if Key.fromFile(str(path)) == public:
            return
    except Exception:
        # Missing, unreadable or damaged: it is derived data, so rewrite it.
        pass
    line = public.toString("OPENSSH", comment=b"quartet-sftpd host key") + b"\n"
    write_atomically(path, line, 0o644)
