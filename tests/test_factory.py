"""
Tests for L{quartet_sftpd.factory}: which host key algorithms each key is
offered as, and the sentence a client gets when its algorithms and the
server's do not meet.
"""

from __future__ import annotations

from twisted.conch.ssh import transport
from twisted.conch.ssh.common import NS
from twisted.internet.testing import StringTransport

from quartet_sftpd.factory import (
    HOST_KEY_ALGORITHMS,
    SFTPServerTransport,
    offered_as,
    unmatched_part,
)


def kexinit(
    kex: bytes = b"curve25519-sha256",
    host_keys: bytes = b"ssh-ed25519",
    cipher: bytes = b"aes128-ctr",
    mac: bytes = b"hmac-sha2-256",
) -> bytes:
    """
    The body of a client's KEXINIT (after the message number).
    """
    lists = [kex, host_keys, cipher, cipher, mac, mac, b"none", b"none", b"", b""]
    return b"\0" * 16 + b"".join(NS(value) for value in lists) + b"\0" + b"\0" * 4


def serving() -> SFTPServerTransport:
    """
    A server transport with the host key algorithms the factory gives it.
    """
    server = SFTPServerTransport()
    server.supportedPublicKeys = list(HOST_KEY_ALGORITHMS)
    return server


def part_of(packet: bytes) -> str | None:
    missing = unmatched_part(packet, serving())
    return None if missing is None else missing[0]


def test_keys_are_offered_without_sha1_or_nist_curves() -> None:
    """
    The RSA key is offered only with SHA-2 signatures, Ed25519 as itself,
    and the ECDSA key not at all.
    """
    assert offered_as(b"ssh-rsa") == [b"rsa-sha2-512", b"rsa-sha2-256"]
    assert offered_as(b"ssh-ed25519") == [b"ssh-ed25519"]
    assert offered_as(b"ecdsa-sha2-nistp256") == []


def test_the_first_part_without_a_match_is_named() -> None:
    """
    An offer that meets the server's in every part has no unmatched part;
    otherwise the first part that does not meet is named with both lists.
    """
    assert part_of(kexinit()) is None
    assert part_of(kexinit(cipher=b"aes128-gcm@openssh.com")) is None
    assert part_of(kexinit(mac=b"hmac-sha1")) == "MAC"
    assert part_of(kexinit(kex=b"diffie-hellman-group1-sha1")) == "key exchange"
    assert part_of(kexinit(cipher=b"aes128-cbc")) == "cipher"
    assert part_of(b"\0" * 10) is None

    missing = unmatched_part(kexinit(host_keys=b"ssh-rsa"), serving())
    assert missing == ("host key algorithm", [b"ssh-rsa"], HOST_KEY_ALGORITHMS)


def test_a_client_offering_only_sha1_rsa_is_told_why() -> None:
    """
    A client that asks only for C{ssh-rsa} host keys is disconnected with a
    sentence naming the host key algorithms this server offers.
    """
    server = serving()
    wire = StringTransport()
    server.makeConnection(wire)
    wire.clear()

    server.ssh_KEXINIT(kexinit(host_keys=b"ssh-rsa"))

    sent = wire.value()
    assert bytes([transport.MSG_DISCONNECT]) in sent
    assert (
        b"No host key algorithm in common: this server offers ssh-ed25519, "
        b"rsa-sha2-512, rsa-sha2-256." in sent
    )
