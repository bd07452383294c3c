"""
Socket-free CPU cost of quartet-sftpd's upload path, layer by layer, in CPU
seconds per GB (10^9 bytes) of file data; figures that other load on a
shared machine barely moves, unlike the wall-clock ones of C{run.py}:

    python bench/micro.py [--mib 128]

  - transport: Conch's SSH transport (with L{quartet_sftpd.ciphers} mixed
    in) reading CHANNEL_DATA packets of 32 KiB sealed by asyncssh, per
    cipher, fed in 64 KiB reads as TCP delivers them; the packets are only
    decrypted, checked and split, not dispatched;
  - sftp: the SFTP server protocol (L{tests.sftp_client.Harness}) handling
    WRITE requests of 32 KiB written to a file, fed in 64 KiB pieces, and
    then the CLOSE (fsync, hash, archive, task record) on its own.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from asyncssh.encryption import get_encryption  # noqa: E402
from twisted.conch.ssh import filetransfer as fx  # noqa: E402
from twisted.conch.ssh import transport  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from quartet_sftpd.ciphers import AEADCiphers, AEADTransportMixin  # noqa: E402
from tests.sftp_client import Harness  # noqa: E402

CHUNK = 32 * 1024
READ = 64 * 1024
MSG_CHANNEL_DATA = 94
KEY_SIZES = {
    b"aes128-ctr": 16,
    b"aes256-ctr": 32,
    b"aes128-gcm@openssh.com": 16,
    b"aes256-gcm@openssh.com": 32,
    b"chacha20-poly1305@openssh.com": 64,
}


class _Counting(AEADTransportMixin, transport.SSHServerTransport):
    def __init__(self) -> None:
        self.count = 0

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.count += 1


def transport_cost(cipher: bytes, mib: int) -> float:
    """
    CPU seconds per GB for the transport to read C{mib} MiB of channel data.
    """
    mac = b"hmac-sha2-256"
    iv, key, integ = os.urandom(64), os.urandom(64), os.urandom(64)
    ciphers = AEADCiphers(cipher, cipher, mac, mac)
    ciphers.setKeys(iv, key, iv, key, integ, integ)
    server = _Counting()
    server.transport = StringTransport()
    server.gotVersion = True
    server.buf = b""
    server.currentEncryptions = ciphers

    aead = "gcm" in cipher.decode() or "poly" in cipher.decode()
    iv_size = 12 if b"gcm" in cipher else 16
    peer = get_encryption(
        cipher, key[: KEY_SIZES[cipher]], iv[:iv_size], mac, integ[:32]
    )
    block = 8 if b"chacha" in cipher else 16
    payload = struct.pack("!BLL", MSG_CHANNEL_DATA, 0, CHUNK) + os.urandom(CHUNK)
    count = mib * 1024 * 1024 // CHUNK
    wire = bytearray()
    for seq in range(count):
        aligned = (1 + len(payload)) + (0 if aead else 4)
        padding = -aligned % block
        padding += block if padding < 4 else 0
        packet = bytes((padding,)) + payload + os.urandom(padding)
        sealed, tag = peer.encrypt_packet(seq, struct.pack("!L", len(packet)), packet)
        wire += sealed + tag
    data = bytes(wire)
    del wire

    began = time.process_time()
    for start in range(0, len(data), READ):
        server.dataReceived(data[start : start + READ])
    spent = time.process_time() - began
    assert server.count == count, (server.count, count)
    return spent / (count * CHUNK / 1e9)


def sftp_cost(mib: int) -> tuple[float, float]:
    """
    CPU seconds per GB for the SFTP protocol to take C{mib} MiB of WRITE
    requests, and for the CLOSE that follows.
    """
    with tempfile.TemporaryDirectory(prefix="quartet-micro-") as folder:
        harness = Harness(Path(folder))
        client = harness.connect()
        client.init()
        handle = client.open("/EPCIS/micro.bin")
        body = os.urandom(CHUNK)
        count = mib * 1024 * 1024 // CHUNK
        requests = bytearray()
        for index in range(count):
            fields = (
                struct.pack("!L", index + 100)
                + struct.pack("!L", len(handle))
                + handle
                + struct.pack("!QL", index * CHUNK, CHUNK)
                + body
            )
            requests += struct.pack("!LB", len(fields) + 1, fx.FXP_WRITE) + fields
        data = bytes(requests)
        del requests

        began = time.process_time()
        for start in range(0, len(data), READ):
            client.protocol.dataReceived(data[start : start + READ])
            client.transport.clear()
        writes = time.process_time() - began
        began = time.process_time()
        code, message = client.close(handle)
        close = time.process_time() - began
        assert code == fx.FX_OK, message
        gb = count * CHUNK / 1e9
        return writes / gb, close / gb


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=128)
    args = parser.parse_args(argv)
    print(f"CPU seconds per GB of file data, {args.mib} MiB per figure")
    for cipher in KEY_SIZES:
        if cipher.endswith(b"-ctr"):
            label = f"transport {cipher.decode()} + hmac-sha2-256"
        else:
            label = f"transport {cipher.decode()}"
        print(f"{label:<48}{transport_cost(cipher, args.mib):>8.2f}")
    writes, close = sftp_cost(args.mib)
    print(f"{'sftp WRITE requests, to the page cache':<48}{writes:>8.2f}")
    print(f"{'sftp CLOSE (fsync, re-read and hash, archive)':<48}{close:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
