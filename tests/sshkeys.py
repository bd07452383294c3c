"""
Test keys, made fresh in memory for each test and written only into the
test's temporary folder.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.conch.ssh.keys import Key

_MAKERS = {
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1()),
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


def private_key(kind: str = "ed25519") -> Key:
    """
    A new private key: C{ed25519}, C{ecdsa} (P-256) or C{rsa} (2048 bits).
    """
    pem = _MAKERS[kind]().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return Key.fromString(pem)


def public_line(key: Key, comment: str = "", options: str = "") -> str:
    """
    An authorized_keys line for C{key}.
    """
    line = key.public().toString("OPENSSH").decode("ascii")
    if comment:
        line += f" {comment}"
    return f"{options} {line}" if options else line


def write_keys(path: Path, *lines: str) -> Path:
    """
    Write authorized_keys lines to C{path} and return it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path
