"""
The benchmark in bench/ still runs: its smoke sizes against all three
servers (OpenSSH sshd, asyncssh, quartet-sftpd).  No timing is asserted;
the figures themselves are only meaningful at full size.
"""

from __future__ import annotations

import re
import subprocess
import sys

from .server import REPO

NUMBER = re.compile(r"^\d+(\.\d+)?$")


def _row(output: str, start: str) -> list[str]:
    for line in output.splitlines():
        if line.startswith(start):
            return line[48:].split()
    raise AssertionError(f"no line starting {start!r} in:\n{output}")


def test_bench_smoke_prints_every_figure_for_every_server() -> None:
    """
    C{python bench/run.py --smoke} exits 0 and prints each figure: bulk per
    cipher, many files, many sessions and peak memory with a number for each
    of the three servers, and the CLOSE-to-rule latency for quartet-sftpd.
    """
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    header = _row(output, "figure")
    assert header[:3] == ["openssh", "asyncssh", "quartet"]
    for figure in (
        "bulk 2 MiB aes128-ctr (MB/s)",
        "bulk 2 MiB aes256-ctr (MB/s)",
        "many files 10 x 10 KiB (files/s)",
        "many sessions 6, 3 at once (/s)",
        "peak memory 3 x 1 MiB (MiB)",
    ):
        values = _row(output, figure)
        assert all(NUMBER.match(v) for v in values[:3]), (figure, values)
        assert all(v.endswith("x") for v in values[3:5]), (figure, values)
    for figure in (
        "latency CLOSE to rule start p50",
        "latency CLOSE to rule start p99",
    ):
        values = _row(output, figure)
        assert values[:2] == ["n/a", "n/a"], (figure, values)
        assert NUMBER.match(values[2].lstrip("-")), (figure, values)
    assert _row(output, "bulk 2 MiB aes128-gcm@openssh.com (MB/s)")[0] != "n/a"
