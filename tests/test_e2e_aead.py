"""
AES-GCM end to end: OpenSSH's sftp, forced to each AES-GCM cipher, uploads
through the real server and the archive holds the exact bytes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .server import Server, require


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"])
def test_openssh_uploads_byte_exactly_through_aes_gcm(
    server: Server, client_key: Path, tmp_path: Path, cipher: str
) -> None:
    """
    C{sftp -c CIPHER} (rekeying every 256 KiB, so keys change mid-upload)
    puts a 3 MB file into EPCIS/; it succeeds and the archived copy is
    byte-for-byte the file sent.
    """
    document = tmp_path / "large.xml"
    body = b"<a>" + os.urandom(1_500_000).hex().encode() + b"</a>"
    document.write_bytes(body)

    result = subprocess.run(
        [require("sftp"), "-b", "-", "-P", str(server.port), "-c", cipher]
        + ["-o", "RekeyLimit=256K"]
        + server.ssh_options(client_key)
        + ["partner@127.0.0.1"],
        input=f"put {document} EPCIS/\n",
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    archived = server.archived()
    assert len(archived) == 1
    assert archived[0].read_bytes() == body
