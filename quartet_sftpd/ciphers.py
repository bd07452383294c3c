"""
AEAD ciphers for Conch's SSH transport, as OpenSSH defines them, built on the
cryptography package: C{aes128-gcm@openssh.com} and C{aes256-gcm@openssh.com}
(RFC 5647 with OpenSSH's names, L{AESGCM}), and
C{chacha20-poly1305@openssh.com} (OpenSSH's PROTOCOL.chacha20poly1305).

Conch's transport encrypts a packet whole and appends a separate HMAC of the
plaintext; an AEAD cipher authenticates as it encrypts, so no MAC is
computed.  With AES-GCM the 4-byte packet length stays in clear as the
associated data::

    uint32    packet_length      (clear, the associated data)
    byte      padding_length  \\
    byte[n]   payload          > encrypted, (1 + n + padding) % 16 == 0
    byte[p]   padding         /
    byte[16]  tag

Its nonce is the 12-byte IV from key exchange, a 4-byte fixed field and an
8-byte big-endian invocation counter that grows by one per packet; the key is
the first 16 or 32 bytes of the derived encryption key.  chacha20-poly1305
encrypts the length with a second key and uses the sequence number as nonce.
The negotiated MAC is ignored with all three.

L{AEADTransportMixin} goes before Conch's transport class in a subclass and
adds the ciphers listed in its C{supportedCiphers}; it changes nothing for
the ciphers Conch already has.  L{AEAD_CIPHERS} are the ones worth offering:
measured with C{bench/micro.py}, reading uploads costs the transport about
0.35 CPU seconds per GB with AES-GCM against 1.1 with C{aes128-ctr} and
C{hmac-sha2-256}, but 1.5 with L{CHACHA20_POLY1305} (three cipher contexts
and a Poly1305 per packet), and an OpenSSH client picks chacha20-poly1305
first whenever it is offered.

Limits: the MAC lists must still have a name in common (Conch negotiates one
even when it is ignored), which OpenSSH, PuTTY and asyncssh clients satisfy;
compression works as in Conch.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305
from twisted.conch.ssh import transport
from twisted.python.compat import networkString

_TAG = 16
_MAX_PACKET = 1024 * 1024
_COUNTER_MASK = (1 << 64) - 1
_LENGTH = struct.Struct("!L")


class BadPacket(Exception):
    """
    A packet failed its authentication check.
    """


class _GCM:
    """
    One direction of C{aes128-gcm@openssh.com} or C{aes256-gcm@openssh.com}:
    the key and the nonce's invocation counter.
    """

    block = 16

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:12], "big")

    def _nonce(self) -> bytes:
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & _COUNTER_MASK
        return nonce

    def seal(self, sequence: int, plain: bytes) -> bytes:
        """
        The wire form of a packet: clear length, ciphertext, tag.

        @param sequence: the packet's sequence number (not used by GCM).
        @param plain: padding length, payload and padding.
        """
        header = _LENGTH.pack(len(plain))
        return header + self._aead.encrypt(self._nonce(), plain, header)

    def length(self, sequence: int, header: bytes | memoryview) -> int:
        """
        The packet length announced by a packet's first 4 bytes.
        """
        return int(_LENGTH.unpack_from(header)[0])

    def open(self, sequence: int, packet: memoryview) -> bytes:
        """
        Check and decrypt a whole packet (length, ciphertext and tag).

        @return: padding length, payload and padding.
        @raise BadPacket: the packet was altered or the keys differ.
        """
        try:
            return self._aead.decrypt(self._nonce(), packet[4:], packet[:4])
        except InvalidTag:
            raise BadPacket() from None


def _chacha(
    key: bytes, nonce: bytes, counter: bytes, data: bytes | memoryview
) -> bytes:
    # The original ChaCha20 layout: 64-bit block counter, then 64-bit nonce.
    return (
        Cipher(algorithms.ChaCha20(key, counter + nonce), None).encryptor().update(data)
    )


_BLOCK_0 = bytes(8)
_BLOCK_1 = (1).to_bytes(8, "little")


class _ChaChaPoly:
    """
    One direction of C{chacha20-poly1305@openssh.com} (OpenSSH's
    PROTOCOL.chacha20poly1305): the length is encrypted with the second half
    of the key, the rest with the first half from block 1, and Poly1305,
    keyed by block 0, covers both; the nonce is the sequence number.
    """

    block = 8

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._main = key[:32]
        self._header = key[32:64]

    @staticmethod
    def _nonce(sequence: int) -> bytes:
        return (sequence & 0xFFFFFFFF).to_bytes(8, "big")

    def _poly_key(self, nonce: bytes) -> bytes:
        return _chacha(self._main, nonce, _BLOCK_0, bytes(32))

    def seal(self, sequence: int, plain: bytes) -> bytes:
        nonce = self._nonce(sequence)
        sealed = _chacha(self._header, nonce, _BLOCK_0, _LENGTH.pack(len(plain)))
        sealed += _chacha(self._main, nonce, _BLOCK_1, plain)
        return sealed + Poly1305.generate_tag(self._poly_key(nonce), sealed)

    def length(self, sequence: int, header: bytes | memoryview) -> int:
        clear = _chacha(self._header, self._nonce(sequence), _BLOCK_0, header[:4])
        return int(_LENGTH.unpack(clear)[0])

    def open(self, sequence: int, packet: memoryview) -> bytes:
        nonce = self._nonce(sequence)
        try:
            Poly1305.verify_tag(
                self._poly_key(nonce), packet[:-_TAG], bytes(packet[-_TAG:])
            )
        except InvalidSignature:
            raise BadPacket() from None
        return _chacha(self._main, nonce, _BLOCK_1, packet[4:-_TAG])


#: The AEAD ciphers this module adds, by name: the key bytes each takes and
#: the class of its state.
_AEADS: dict[bytes, tuple[int, type[_GCM] | type[_ChaChaPoly]]] = {
    b"chacha20-poly1305@openssh.com": (64, _ChaChaPoly),
    b"aes128-gcm@openssh.com": (16, _GCM),
    b"aes256-gcm@openssh.com": (32, _GCM),
}
#: The AEAD ciphers worth offering, in the order to list them.
AEAD_CIPHERS = [b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com"]
#: Supported, but slower here than AES-CTR with HMAC (see above).
CHACHA20_POLY1305 = b"chacha20-poly1305@openssh.com"


class AEADCiphers(transport.SSHCiphers):
    """
    Conch's L{transport.SSHCiphers}, which also knows the AEAD ciphers.

    @ivar outAEAD: the outgoing AEAD state, or L{None} for a Conch cipher.
    @ivar inAEAD: the incoming AEAD state, or L{None}.
    """

    outAEAD: _GCM | _ChaChaPoly | None = None
    inAEAD: _GCM | _ChaChaPoly | None = None

    @classmethod
    def negotiated(cls, ciphers: transport.SSHCiphers) -> AEADCiphers:
        """
        The same negotiated algorithms, in this class.
        """
        return cls(
            ciphers.outCipType, ciphers.inCipType, ciphers.outMACType, ciphers.inMACType
        )

    def _getCipher(self, cip: bytes, iv: bytes, key: bytes) -> Any:
        if cip not in _AEADS:
            return super()._getCipher(cip, iv, key)
        # Conch's setKeys builds a stream cipher for both directions; an AEAD
        # direction's is never used (setKeys replaces it).
        return Cipher(algorithms.AES(key[:16]), modes.CTR(iv[:16]))

    def setKeys(
        self,
        outIV: bytes,
        outKey: bytes,
        inIV: bytes,
        inKey: bytes,
        outInteg: bytes,
        inInteg: bytes,
    ) -> None:
        """
        Set up both directions as Conch does, then give each AEAD direction
        its own state and no MAC (the negotiated MAC is ignored).
        """
        super().setKeys(outIV, outKey, inIV, inKey, outInteg, inInteg)
        if self.outCipType in _AEADS:
            size, kind = _AEADS[self.outCipType]
            self.outAEAD = kind(outKey[:size], outIV)
            self.encBlockSize = kind.block
            self.outMAC = (None, b"", b"", 0)
        if self.inCipType in _AEADS:
            size, kind = _AEADS[self.inCipType]
            self.inAEAD = kind(inKey[:size], inIV)
            self.decBlockSize = kind.block
            self.inMAC = (None, b"", b"", 0)
            self.verifyDigestSize = 0


class AEADTransportMixin:
    """
    Adds the AEAD ciphers to a Conch transport class: put it first in the
    bases and list L{AEAD_CIPHERS} (and if wanted L{CHACHA20_POLY1305}) in
    C{supportedCiphers}.

    It swaps the negotiated L{transport.SSHCiphers} for L{AEADCiphers} after
    each KEXINIT, and frames packets itself whenever the current cipher of a
    direction is an AEAD one; otherwise Conch's code runs unchanged.
    """

    # Attributes of SSHTransportBase, declared for type checkers.
    buf: bytes
    transport: Any
    currentEncryptions: transport.SSHCiphers
    nextEncryptions: transport.SSHCiphers
    outgoingCompression: Any
    incomingCompression: Any
    outgoingPacketSequence: int
    incomingPacketSequence: int
    _keyExchangeState: Any
    _KEY_EXCHANGE_NONE: Any
    _blockedByKeyExchange: Any
    _allowedKeyExchangeMessageType: Any
    sendDisconnect: Any

    def ssh_KEXINIT(self, packet: bytes) -> None:
        super().ssh_KEXINIT(packet)  # type: ignore[misc]
        upcoming = getattr(self, "nextEncryptions", None)
        if upcoming is not None and not isinstance(upcoming, AEADCiphers):
            self.nextEncryptions = AEADCiphers.negotiated(upcoming)

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        sealer = getattr(self.currentEncryptions, "outAEAD", None)
        if sealer is None:
            super().sendPacket(messageType, payload)  # type: ignore[misc]
            return
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE:
            if not self._allowedKeyExchangeMessageType(messageType):
                self._blockedByKeyExchange.append((messageType, payload))
                return
        payload = bytes((messageType,)) + payload
        if self.outgoingCompression:
            payload = self.outgoingCompression.compress(
                payload
            ) + self.outgoingCompression.flush(2)
        # The length is outside the encrypted part (or encrypted apart), so
        # only padding length, payload and padding count for the alignment.
        padding = sealer.block - (1 + len(payload)) % sealer.block
        if padding < 4:
            padding += sealer.block
        plain = bytes((padding,)) + payload + os.urandom(padding)
        self.transport.write(sealer.seal(self.outgoingPacketSequence, plain))
        self.outgoingPacketSequence += 1

    def getPacket(self) -> bytes | None:
        opener = getattr(self.currentEncryptions, "inAEAD", None)
        if opener is None:
            return super().getPacket()  # type: ignore[misc]
        buf = self.buf
        if len(buf) < 4:
            return None
        sequence = self.incomingPacketSequence
        length = opener.length(sequence, buf)
        if length > _MAX_PACKET or length % opener.block or length < opener.block:
            self.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR,
                networkString(f"bad packet length {length}"),
            )
            return None
        end = 4 + length + _TAG
        if len(buf) < end:
            return None
        try:
            plain = opener.open(sequence, memoryview(buf)[:end])
        except BadPacket:
            self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, b"bad MAC")
            return None
        self.buf = buf[end:]
        padding = plain[0]
        if padding < 4 or padding >= len(plain):
            self.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR, b"bad padding length"
            )
            return None
        payload = plain[1:-padding]
        if self.incomingCompression:
            try:
                payload = self.incomingCompression.decompress(payload)
            except Exception:
                self.sendDisconnect(
                    transport.DISCONNECT_COMPRESSION_ERROR, b"compression error"
                )
                return None
        self.incomingPacketSequence += 1
        return payload
