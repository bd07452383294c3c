"""
The AEAD ciphers in Conch's transport (L{quartet_sftpd.ciphers}: AES-GCM and
chacha20-poly1305), checked without sockets against asyncssh's own
implementation of the same OpenSSH ciphers:
packets the server seals open in asyncssh, packets asyncssh seals are read by
the server, and an altered packet ends the connection.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from asyncssh.encryption import get_encryption
from twisted.conch.ssh import transport
from twisted.conch.ssh.common import NS
from twisted.internet.testing import StringTransport

from quartet_sftpd.ciphers import (
    AEAD_CIPHERS,
    CHACHA20_POLY1305,
    AEADCiphers,
    AEADTransportMixin,
)

ALL = [*AEAD_CIPHERS, CHACHA20_POLY1305]

MSG_IGNORE = 2
MSG_DEBUG = 4


class Transport(AEADTransportMixin, transport.SSHServerTransport):
    """
    A server transport that records the messages it receives.
    """

    def __init__(self) -> None:
        self.received: list[tuple[int, bytes]] = []
        self.disconnected: list[int] = []

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.received.append((messageNum, payload))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self.disconnected.append(reason)
        super().sendDisconnect(reason, desc)


def keyed(cipher: bytes) -> tuple[Transport, StringTransport, dict[str, bytes]]:
    """
    A transport past key exchange with C{cipher} both ways, its wire, and the
    keys (as key exchange would derive them: longer than needed).
    """
    keys = {name: os.urandom(64) for name in ("out_iv", "out_key", "in_iv", "in_key")}
    ciphers = AEADCiphers(cipher, cipher, b"hmac-sha2-256", b"hmac-sha2-256")
    ciphers.setKeys(
        keys["out_iv"], keys["out_key"], keys["in_iv"], keys["in_key"], b"", b""
    )
    server = Transport()
    wire = StringTransport()
    server.transport = wire
    server.gotVersion = True
    server.buf = b""
    server.currentEncryptions = ciphers
    return server, wire, keys


KEY_SIZES = {
    b"aes128-gcm@openssh.com": 16,
    b"aes256-gcm@openssh.com": 32,
    b"chacha20-poly1305@openssh.com": 64,
}
#: What the encrypted part is aligned to.
BLOCKS = {b"chacha20-poly1305@openssh.com": 8}


def peer(cipher: bytes, key: bytes, iv: bytes) -> Any:
    """
    asyncssh's implementation of C{cipher} with the same keys.
    """
    return get_encryption(cipher, key[: KEY_SIZES[cipher]], iv[:12])


def sealed_by(
    other: Any, cipher: bytes, seq: int, number: int, payload: bytes
) -> bytes:
    """
    One packet as the peer puts it on the wire, padded as the cipher needs.
    """
    body = bytes((number,)) + payload
    block = BLOCKS.get(cipher, 16)
    padding = -(1 + len(body)) % block
    padding += block if padding < 4 else 0
    packet = bytes((padding,)) + body + os.urandom(padding)
    sealed, mac = other.encrypt_packet(seq, len(packet).to_bytes(4, "big"), packet)
    return bytes(sealed + mac)


@pytest.mark.parametrize("cipher", ALL)
def test_packets_the_server_sends_open_in_asyncssh(cipher: bytes) -> None:
    """
    Three packets in a row decrypt with asyncssh's implementation (same keys,
    IV and sequence numbers), with their payloads intact and padding that
    aligns the encrypted part to the cipher's block.
    """
    server, wire, keys = keyed(cipher)
    payloads = [NS(b"first"), NS(os.urandom(40_000)), b""]
    for payload in payloads:
        server.sendPacket(MSG_IGNORE, payload)
    data = wire.value()

    other = peer(cipher, keys["out_key"], keys["out_iv"])
    for seq, payload in enumerate(payloads):
        length = int.from_bytes(other.decrypt_header(seq, data[:4], 4)[1], "big")
        assert length % BLOCKS.get(cipher, 16) == 0
        body, mac = data[4 : 4 + length], data[4 + length : 4 + length + 16]
        plain = other.decrypt_packet(seq, data[:4], body, 4, mac)
        assert plain is not None
        padding = plain[0]
        assert 4 <= padding
        assert plain[1:-padding] == bytes((MSG_IGNORE,)) + payload
        data = data[4 + length + 16 :]
    assert data == b""


@pytest.mark.parametrize("cipher", ALL)
def test_packets_asyncssh_sends_reach_the_server(cipher: bytes) -> None:
    """
    Packets sealed by asyncssh, fed to the server in odd-sized pieces, are
    dispatched in order with their payloads.
    """
    server, _, keys = keyed(cipher)
    other = peer(cipher, keys["in_key"], keys["in_iv"])
    messages = [(MSG_IGNORE, NS(b"x" * n)) for n in (0, 7, 32_000)] + [
        (MSG_DEBUG, b"\x00" + NS(b"hello") + NS(b""))
    ]
    stream = b"".join(
        sealed_by(other, cipher, seq, number, payload)
        for seq, (number, payload) in enumerate(messages)
    )

    for start in range(0, len(stream), 997):
        server.dataReceived(stream[start : start + 997])
    assert server.received == messages
    assert server.incomingPacketSequence == len(messages)


@pytest.mark.parametrize("cipher", ALL)
@pytest.mark.parametrize(
    "where, reason",
    [
        (3, transport.DISCONNECT_PROTOCOL_ERROR),
        (10, transport.DISCONNECT_MAC_ERROR),
        (-3, transport.DISCONNECT_MAC_ERROR),
    ],
)
def test_an_altered_packet_ends_the_connection(
    cipher: bytes, where: int, reason: int
) -> None:
    """
    A packet with one bit flipped is not dispatched and the server
    disconnects: in the length, as a protocol error (the length is no longer
    a whole number of blocks); in the ciphertext or the tag, as a MAC error.
    """
    server, wire, keys = keyed(cipher)
    other = peer(cipher, keys["in_key"], keys["in_iv"])
    data = bytearray(sealed_by(other, cipher, 0, MSG_IGNORE, NS(b"abc")))
    data[where] ^= 0x01

    server.dataReceived(bytes(data))
    assert server.received == []
    assert server.disconnected == [reason]
    assert wire.disconnecting

    # Intact, the same packet is accepted.
    server, wire, keys = keyed(cipher)
    other = peer(cipher, keys["in_key"], keys["in_iv"])
    server.dataReceived(sealed_by(other, cipher, 0, MSG_IGNORE, NS(b"abc")))
    assert server.received == [(MSG_IGNORE, NS(b"abc"))]
    assert not wire.disconnecting
