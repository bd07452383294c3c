"""
Benchmark quartet-sftpd against OpenSSH's sftp server and asyncssh's, side by
side on loopback, with the same clients:

    python bench/run.py            # the full sizes (several minutes)
    python bench/run.py --smoke    # tiny sizes, a few seconds (what CI runs)

Figures, for each server, with the ratio to OpenSSH:

  - bulk: one upload of C{--bulk-mib} MiB with OpenSSH C{sftp -b}, once per
    cipher (C{-c}); MB/s (10^6 bytes), whole C{sftp} run including login;
  - many files: C{--files} files of 10 KiB in one C{sftp} session; files/s,
    until quartet-sftpd's rule runs have all ended;
  - many sessions: C{--sessions} connect-upload-quit C{sftp} sessions,
    C{--parallel} at a time; sessions/s, rule runs included likewise;
  - latency (quartet-sftpd only): from the client's CLOSE reply (paramiko)
    to the rule's first step starting, p50 and p99 over C{--latency-uploads}
    sequential uploads;
  - peak memory: the highest summed RSS of the server's processes (sampled
    from /proc every 50 ms) during C{--memory-clients} concurrent uploads of
    C{--memory-mib} MiB each, rule runs included.

Every C{sftp} client uses the same key exchange (C{--kex}) and, for ciphers
that are not AEAD, the same MAC (C{--macs}), so that servers differ only in
themselves.  A cipher a server does not offer shows as C{n/a}.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import asyncssh

import twisted

REPO = Path(__file__).resolve().parent.parent
# First, ahead of site-packages: some QU4RTET dependencies install a
# top-level "tests" package of their own.
sys.path.insert(0, str(REPO))

from bench.servers import (  # noqa: E402
    RULE,
    SERVERS,
    BenchServer,
    Quartet,
    offered_ciphers,
)
from tests.server import make_key, require  # noqa: E402

CIPHERS = [
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
]
WORKLOADS = ["bulk", "files", "sessions", "latency", "memory"]
MB = 1_000_000
MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sizes:
    """
    How big each workload is.
    """

    bulk_mib: int = 512
    files: int = 1000
    sessions: int = 300
    parallel: int = 20
    latency_uploads: int = 200
    memory_clients: int = 50
    memory_mib: int = 64


SMOKE = Sizes(
    bulk_mib=2,
    files=10,
    sessions=6,
    parallel=3,
    latency_uploads=10,
    memory_clients=3,
    memory_mib=1,
)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Client:
    """
    OpenSSH's C{sftp} in batch mode, the same options for every server.
    """

    def __init__(self, key: Path, kex: str, macs: str) -> None:
        self.key = key
        self.kex = kex
        self.macs = macs
        self.sftp = require("sftp")

    def command(self, server: BenchServer, cipher: str | None = None) -> list[str]:
        options = [
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if self.kex:
            options += ["-o", f"KexAlgorithms={self.kex}"]
        if cipher:
            options += ["-c", cipher]
        if self.macs and not (cipher and ("gcm" in cipher or "poly1305" in cipher)):
            options += ["-o", f"MACs={self.macs}"]
        return (
            [self.sftp, "-b", "-", "-P", str(server.port), "-i", str(self.key)]
            + options
            + [f"{server.user}@127.0.0.1"]
        )

    def run(
        self, server: BenchServer, commands: str, cipher: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(server, cipher),
            input=commands,
            capture_output=True,
            text=True,
            timeout=3600,
        )

    def check(
        self, server: BenchServer, commands: str, cipher: str | None = None
    ) -> None:
        result = self.run(server, commands, cipher)
        if result.returncode != 0:
            raise RuntimeError(
                f"sftp into {server.name} failed ({result.returncode}): "
                f"{result.stderr.strip()}"
            )


def make_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            f.write(chunk)
            left -= len(chunk)
    return path


def digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def uploaded_digests(server: BenchServer) -> list[str]:
    return [digest(p) for p in server.uploads.iterdir() if p.is_file()]


# -- the workloads; each returns its figure, or None where it does not apply --


def bulk(
    server: BenchServer, client: Client, source: Path, cipher: str, repeat: int
) -> tuple[float, float] | None:
    """
    MB/s of one upload of C{source} with C{cipher}, and the server's CPU
    seconds per GB (10^9 bytes) during it; the medians of C{repeat} uploads,
    each checked byte for byte (by SHA-256) afterwards.
    """
    expected = [digest(source)]
    if cipher not in offered_ciphers(server.port):
        return None
    rates = []
    costs = []
    for _ in range(repeat):
        began = time.monotonic()
        cpu = tree_cpu(server.pid())
        result = client.run(server, f"put {source} {RULE}/bulk.bin\n", cipher)
        elapsed = time.monotonic() - began
        cpu = tree_cpu(server.pid()) - cpu
        if result.returncode != 0:
            raise RuntimeError(f"bulk upload into {server.name}: {result.stderr}")
        size = source.stat().st_size
        server.settle(1)
        if uploaded_digests(server) != expected:
            raise RuntimeError(f"{server.name} did not store the exact bytes")
        server.clear()
        rates.append(size / MB / elapsed)
        costs.append(cpu / (size / 1e9))
    return statistics.median(rates), statistics.median(costs)


def many_files(
    server: BenchServer, client: Client, sources: list[Path]
) -> tuple[float, float]:
    """
    Files/s of uploading C{sources} in one session, rule runs included, and
    the server's CPU milliseconds per file.
    """
    commands = "".join(f"put {path} {RULE}/\n" for path in sources)
    cpu = tree_cpu(server.pid())
    began = time.monotonic()
    client.check(server, commands)
    server.settle(len(sources))
    elapsed = time.monotonic() - began
    cpu = tree_cpu(server.pid()) - cpu
    server.clear()
    return len(sources) / elapsed, cpu * 1000 / len(sources)


def many_sessions(
    server: BenchServer, client: Client, source: Path, count: int, parallel: int
) -> tuple[float, float]:
    """
    Sessions/s of C{count} connect-upload-quit sessions, C{parallel} at once,
    and the server's CPU milliseconds per session.
    """

    def one(index: int) -> None:
        client.check(server, f"put {source} {RULE}/session-{index}.xml\n")

    cpu = tree_cpu(server.pid())
    began = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(count)))
    server.settle(count)
    elapsed = time.monotonic() - began
    cpu = tree_cpu(server.pid()) - cpu
    server.clear()
    return count / elapsed, cpu * 1000 / count


def close_to_rule(server: BenchServer, key: Path, count: int) -> list[float] | None:
    """
    Seconds from each CLOSE reply (seen by a paramiko client) to the start of
    the rule's first step, for C{count} sequential 1 KiB uploads.
    """
    if not isinstance(server, Quartet):
        return None
    import paramiko

    closed: dict[str, float] = {}
    transport = paramiko.Transport(("127.0.0.1", server.port))
    try:
        transport.connect(
            username=server.user,
            pkey=paramiko.Ed25519Key.from_private_key_file(str(key)),
        )
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        body = b"<x/>" * 256
        for index in range(count):
            name = f"latency-{index}.xml"
            with sftp.open(f"{RULE}/{name}", "wb") as f:
                f.write(body)
            closed[name] = time.time()
        sftp.close()
    finally:
        transport.close()
    server.settle(count)
    started = {}
    for line in server.stamps.read_text().splitlines():
        name, _, stamp = line.rpartition(" ")
        started[name] = float(stamp)
    server.clear()
    return [started[name] - closed[name] for name in closed]


def tree_pids(root: int) -> list[int]:
    """
    Process C{root} and its live descendants.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(b")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    pids = []
    todo = [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def tree_rss(root: int) -> int:
    """
    The summed resident memory, in bytes, of process C{root} and its
    descendants.
    """
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def tree_cpu(root: int) -> float:
    """
    CPU seconds (user and system) used so far by process C{root} and its
    descendants, including those that have exited and been waited for.
    """
    ticks = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / TICKS


@contextmanager
def sampling(root: int, every: float = 0.05) -> Iterator[Callable[[], int]]:
    """
    Sample L{tree_rss} of C{root} until the block ends; yields a function
    that returns the peak seen.
    """
    peak = [tree_rss(root)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            peak[0] = max(peak[0], tree_rss(root))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        thread.join()


def peak_memory(server: BenchServer, client: Client, source: Path, count: int) -> float:
    """
    MiB: the peak summed RSS of the server's processes while C{count} clients
    upload C{source} at once, until the rule runs have ended.
    """
    with sampling(server.pid()) as peak:
        processes = [
            subprocess.Popen(
                client.command(server),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        errors = [
            p.communicate(f"put {source} {RULE}/memory-{i}.bin\n")[1]
            for i, p in enumerate(processes)
        ]
        failed = [
            e for p, e in zip(processes, errors, strict=True) if p.returncode != 0
        ]
        if failed:
            raise RuntimeError(f"uploads into {server.name} failed: {failed[0]}")
        server.settle(count)
        result = peak() / MIB
    server.clear()
    return result


# -- running and reporting --


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def machine() -> list[str]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return [
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        f"{platform.node()}: nproc {os.cpu_count()}, CPU {model}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        memory.splitlines()[1] if memory else "",
        f"Python {platform.python_version()}, Twisted {twisted.__version__}, "
        f"asyncssh {asyncssh.__version__}, {ssh}",
    ]


def show(value: float | None, unit_format: str) -> str:
    return "n/a" if value is None else unit_format.format(value)


class Table:
    """
    One row per figure: each server's value and its ratio to OpenSSH.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = names
        others = [n for n in names if n != "openssh"]
        head = f"{'figure':<48}" + "".join(f"{n:>11}" for n in names)
        if "openssh" in names:
            head += "".join(f"{n + '/ossh':>15}" for n in others)
        self.others = others if "openssh" in names else []
        print(head, flush=True)

    def row(self, figure: str, values: dict[str, float | None], fmt: str) -> None:
        line = f"{figure:<48}" + "".join(
            f"{show(values.get(n), fmt):>11}" for n in self.names
        )
        base = values.get("openssh")
        for name in self.others:
            value = values.get(name)
            ratio = None if not base or value is None else value / base
            line += f"{show(ratio, '{:.2f}x'):>15}"
        print(line, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    defaults = Sizes()
    for f in fields(Sizes):
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=int, default=None,
            help=f"default {getattr(defaults, f.name)}",
        )  # fmt: skip
    parser.add_argument("--servers", default="openssh,asyncssh,quartet")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--ciphers", default=",".join(CIPHERS))
    parser.add_argument("--repeat", type=int, default=1, help="bulk runs per cipher")
    parser.add_argument("--kex", default="curve25519-sha256")
    parser.add_argument("--macs", default="hmac-sha2-256")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    sizes = SMOKE if args.smoke else Sizes()
    for f in fields(Sizes):
        if getattr(args, f.name) is not None:
            setattr(sizes, f.name, getattr(args, f.name))
    names = args.servers.split(",")
    workloads = args.workloads.split(",")
    home = Path(tempfile.mkdtemp(prefix="quartet-bench-"))
    note(f"working in {home}")
    key = make_key(home, "client_key")
    client = Client(key, args.kex, args.macs)
    servers: list[BenchServer] = []
    try:
        for name in names:
            folder = home / name
            folder.mkdir()
            server = SERVERS[name](folder, key)
            server.start()
            servers.append(server)
            note(f"{name} listens on port {server.port}, pid {server.pid()}")
        data = home / "data"
        data.mkdir()
        # One small upload each first, so that no figure pays for a server's
        # first session (imports, first archive folder, caches).
        warm_up = make_file(data / "warm-up.xml", 10 * 1024)
        for server in servers:
            client.check(server, f"put {warm_up} {RULE}/\n")
            server.settle(1)
            server.clear()

        for line in machine():
            print(line)
        print(f"sizes: {sizes}")
        print()
        table = Table(names)

        if "bulk" in workloads:
            source = make_file(data / "bulk.bin", sizes.bulk_mib * MIB)
            for cipher in args.ciphers.split(","):
                results = {}
                for s in servers:
                    results[s.name] = bulk(s, client, source, cipher, args.repeat)
                    note(f"bulk {cipher} {s.name}: {results[s.name]}")
                label = f"bulk {sizes.bulk_mib} MiB {cipher} (MB/s)"
                table.row(label, {n: r and r[0] for n, r in results.items()}, "{:.1f}")
                label = "  server CPU during it (s/GB)"
                table.row(label, {n: r and r[1] for n, r in results.items()}, "{:.2f}")
            source.unlink()

        if "files" in workloads:
            folder = data / "files"
            folder.mkdir()
            sources = [
                make_file(folder / f"file-{i:05}.xml", 10 * 1024)
                for i in range(sizes.files)
            ]
            results = {s.name: many_files(s, client, sources) for s in servers}
            label = f"many files {sizes.files} x 10 KiB (files/s)"
            table.row(label, {n: r[0] for n, r in results.items()}, "{:.0f}")
            label = "  server CPU per file (ms)"
            table.row(label, {n: r[1] for n, r in results.items()}, "{:.2f}")

        if "sessions" in workloads:
            source = make_file(data / "session.xml", 10 * 1024)
            results = {
                s.name: many_sessions(s, client, source, sizes.sessions, sizes.parallel)
                for s in servers
            }
            label = f"many sessions {sizes.sessions}, {sizes.parallel} at once (/s)"
            table.row(label, {n: r[0] for n, r in results.items()}, "{:.1f}")
            label = "  server CPU per session (ms)"
            table.row(label, {n: r[1] for n, r in results.items()}, "{:.1f}")

        if "latency" in workloads:
            delays = {
                s.name: close_to_rule(s, key, sizes.latency_uploads) for s in servers
            }
            for label, fraction in (("p50", 0.5), ("p99", 0.99)):
                values = {
                    n: None if d is None else percentile(d, fraction) * 1000
                    for n, d in delays.items()
                }
                figure = f"latency CLOSE to rule start {label} (ms)"
                table.row(figure, values, "{:.1f}")

        if "memory" in workloads:
            source = make_file(data / "memory.bin", sizes.memory_mib * MIB)
            values = {
                s.name: peak_memory(s, client, source, sizes.memory_clients)
                for s in servers
            }
            label = f"peak memory {sizes.memory_clients} x {sizes.memory_mib} MiB (MiB)"
            table.row(label, values, "{:.0f}")

        failed = [s for s in servers if isinstance(s, Quartet) and s.failed_tasks()]
        for s in failed:
            print(f"warning: {s.failed_tasks()} quartet-sftpd tasks FAILED")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        return 1 if failed else 0
    finally:
        for server in servers:
            server.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(home)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
