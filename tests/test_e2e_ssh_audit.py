"""
ssh-audit (the PyPI package) against a server on its default algorithm
lists: nothing it rates as failing is offered.
"""

from __future__ import annotations

import json
import subprocess
import sys

from .server import Server

#: ssh-audit's exit status when some algorithm fails its checks.
AUDIT_FAILURE = 3


def test_ssh_audit_finds_no_failing_algorithm(server: Server) -> None:
    """
    Every key exchange, host key, cipher and MAC the server offers passes
    ssh-audit (warnings remain: no post-quantum protection outside
    mlkem768x25519-sha256, encrypt-and-MAC, a 2048-bit group exchange
    modulus); there are no known CVEs for the banner.
    """
    result = subprocess.run(
        [sys.executable, "-m", "ssh_audit", "--json", "--skip-rate-test"]
        + ["--port", str(server.port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != AUDIT_FAILURE, result.stdout + result.stderr
    assert result.stdout.startswith("{"), result.stdout + result.stderr
    report = json.loads(result.stdout)
    offered = {
        section: [entry["algorithm"] for entry in report[section]]
        for section in ("kex", "key", "enc", "mac")
    }
    failing = [
        entry["algorithm"]
        for section in offered
        for entry in report[section]
        if entry.get("notes", {}).get("fail")
    ]
    assert failing == [], report
    assert report["cves"] == []
    assert offered["kex"][:2] == ["mlkem768x25519-sha256", "curve25519-sha256"]
    assert "diffie-hellman-group-exchange-sha256" in offered["kex"]
    assert offered["key"] == ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]
    assert "aes128-ctr" in offered["enc"]
    assert "hmac-sha2-256" in offered["mac"]
