"""
The SSH factory: host keys, the algorithms offered, and the services.

The algorithm lists keep what current clients need and drop what ssh-audit
fails: SHA-1 and MD5 MACs, SHA-1 key exchange, SHA-1 RSA signatures
(C{ssh-rsa}), DSA, CBC modes, 3DES, and the NIST curves (ECDH key exchange
and ECDSA host keys).  Every client tested still finds a match:

 - OpenSSH 9.9 and later take C{mlkem768x25519-sha256}, older ones, libssh2
   (curl), Go (rclone), paramiko and asyncssh C{curve25519-sha256};
 - Java clients without Curve25519 (JSch forks on Java 8, Apache MINA) take
   C{diffie-hellman-group-exchange-sha256} with an C{rsa-sha2-512} host
   key.  The original JSch 0.1.55 knows neither RSA-SHA2 nor Ed25519 host
   keys and cannot connect; its maintained fork can.

Conch offers no fixed-group C{diffie-hellman-group14-sha256} or
C{group16-sha512}; group exchange covers the clients that would use them.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from twisted.conch.openssh_compat.primes import parseModuliFile
from twisted.conch.ssh import connection, keys, transport
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.factory import SSHFactory
from twisted.cred.portal import Portal
from twisted.logger import Logger

from quartet_sftpd.auth import UserAuthServer
from quartet_sftpd.ciphers import AEAD_CIPHERS, AEADTransportMixin

#: Key exchange, strongest first.  Group exchange needs a moduli file.
KEY_EXCHANGES = [
    b"mlkem768x25519-sha256",
    b"curve25519-sha256",
    b"curve25519-sha256@libssh.org",
    b"diffie-hellman-group-exchange-sha256",
]
CIPHERS = [*AEAD_CIPHERS, b"aes128-ctr", b"aes192-ctr", b"aes256-ctr"]
MACS = [b"hmac-sha2-256", b"hmac-sha2-512"]
HOST_KEY_ALGORITHMS = [
    b"ssh-ed25519",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
]
MODULI = "/etc/ssh/moduli"


def offered_as(key_type: bytes) -> list[bytes]:
    """
    The host key algorithms offered for a host key of C{key_type}: an RSA key
    (C{ssh-rsa}) is offered only with SHA-2 signatures, and a key whose type
    is not in L{HOST_KEY_ALGORITHMS} (ECDSA) not at all.
    """
    if key_type == b"ssh-rsa":
        return [a for a in HOST_KEY_ALGORITHMS if a.startswith(b"rsa-sha2-")]
    return [key_type] if key_type in HOST_KEY_ALGORITHMS else []


def unmatched_part(
    packet: bytes, server: transport.SSHServerTransport
) -> tuple[str, list[bytes], list[bytes]] | None:
    """
    The first part of a client's KEXINIT that shares no algorithm with
    C{server}: its name, the client's list and the server's; L{None} when
    every part has a match (or the packet is too short to tell, which
    Conch's own parsing then reports).
    """
    try:
        lists = getNS(packet[16:], 8)[:8]
    except (struct.error, IndexError):
        return None
    kex, host_keys, cipher_cs, cipher_sc, mac_cs, mac_sc, zip_cs, zip_sc = (
        (value.split(b",") if value else []) for value in lists
    )
    # Conch negotiates a MAC even for an AEAD cipher, which then ignores it,
    # so the MAC lists must meet as well.
    parts = [
        ("key exchange", kex, server.supportedKeyExchanges),
        ("host key algorithm", host_keys, server.supportedPublicKeys),
        ("cipher", cipher_cs, server.supportedCiphers),
        ("cipher", cipher_sc, server.supportedCiphers),
        ("MAC", mac_cs, server.supportedMACs),
        ("MAC", mac_sc, server.supportedMACs),
        ("compression", zip_cs, server.supportedCompressions),
        ("compression", zip_sc, server.supportedCompressions),
    ]
    for name, theirs, ours in parts:
        if not set(theirs) & set(ours):
            return name, theirs, list(ours)
    return None


class SFTPServerTransport(AEADTransportMixin, transport.SSHServerTransport):
    """
    The server side of the SSH transport, with this server's algorithms.
    """

    supportedKeyExchanges = [
        k
        for k in KEY_EXCHANGES
        if k in transport.SSHTransportBase.supportedKeyExchanges
    ]
    supportedCiphers = [
        c
        for c in CIPHERS
        if c in AEAD_CIPHERS or c in transport.SSHTransportBase.supportedCiphers
    ]
    supportedMACs = MACS
    ourVersionString = b"SSH-2.0-quartet_sftpd"

    def ssh_KEXINIT(self, packet: bytes) -> None:
        """
        Before Conch negotiates, find a part of the client's offer that has
        nothing in common with this server's; if there is one, disconnect
        saying which, and log it, instead of Conch's bare "couldn't match all
        kex parts".  A client that only knows algorithms dropped for
        ssh-audit (libssh2 1.10 asks for C{ssh-rsa} host keys when its
        known_hosts lists the RSA key first) then learns why.
        """
        missing = unmatched_part(packet, self)
        if missing is None:
            super().ssh_KEXINIT(packet)
            return
        part, theirs, ours = missing
        peer = self.transport.getPeer() if self.transport else None
        self._log.info(
            "refused {peer}: no {part} in common; it offers {theirs}, this server "
            "{ours}",
            peer=getattr(peer, "host", "?"),
            part=part,
            theirs=b",".join(theirs).decode("ascii", "replace")[:300],
            ours=b",".join(ours).decode("ascii"),
        )
        self.sendDisconnect(
            transport.DISCONNECT_KEY_EXCHANGE_FAILED,
            f"No {part} in common: this server offers "
            f"{b', '.join(ours).decode('ascii')}.".encode("ascii"),
        )

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """
        The client disconnected.  A plain goodbye (as every client sends after
        its last command) is no error; anything else is logged as a warning.
        """
        if reasonCode == transport.DISCONNECT_BY_APPLICATION:
            self._log.debug("client disconnected")
            return
        self._log.warn(
            "client disconnected with code {code}: {reason}",
            code=reasonCode,
            reason=description.decode("utf-8", "replace"),
        )


class SFTPFactory(SSHFactory):
    """
    Builds an SSH server transport for each connection.
    """

    protocol = SFTPServerTransport
    services = {
        b"ssh-userauth": UserAuthServer,
        b"ssh-connection": connection.SSHConnection,
    }
    _log = Logger()

    def __init__(self, portal: Portal, host_keys: dict[bytes, keys.Key]) -> None:
        """
        @param portal: checks credentials and makes avatars.
        @param host_keys: private host keys by key type.
        """
        self.portal = portal
        self.privateKeys = dict(host_keys)
        self.publicKeys = {name: key.public() for name, key in host_keys.items()}

    def getPrimes(self) -> dict[int, list[tuple[int, int]]] | None:
        """
        The Diffie-Hellman groups for group exchange, from OpenSSH's moduli
        file when the machine has one.
        """
        if os.path.exists(MODULI):
            return parseModuliFile(MODULI)
        return None

    def buildProtocol(self, addr: Any) -> SFTPServerTransport:
        t = super().buildProtocol(addr)
        t.supportedPublicKeys = [
            a for a in t.supportedPublicKeys if a in HOST_KEY_ALGORITHMS
        ]
        return t
