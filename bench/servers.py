"""
The three servers the benchmark compares, each started in its own temporary
folder on a free loopback port, each accepting one client key and putting
uploads under a folder the clients call C{EPCIS}:

  - L{OpenSSH}: Debian's C{sshd} with its own config, C{internal-sftp};
  - L{AsyncSSH}: asyncssh's stock SFTP server in its own process;
  - L{Quartet}: the real C{twistd -n quartet-sftpd}, through the tests'
    L{tests.server.Server}, with a rules file whose C{EPCIS} rule runs one
    trivial step (L{bench.stamp.Stamp}).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests.server import Server, make_key

HERE = Path(__file__).resolve().parent
RULE = "EPCIS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def offered_ciphers(port: int) -> list[str]:
    """
    The client-to-server ciphers a server lists in its first KEXINIT.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"SSH-2.0-bench\r\n")
        stream = s.makefile("rb")
        while not stream.readline().startswith(b"SSH-"):
            pass
        length = struct.unpack(">I", stream.read(4))[0]
        packet = stream.read(length)
    payload = packet[1 + 1 + 16 :]  # padding length, message number, cookie
    for _ in range(2):  # key exchanges, host key types
        (size,) = struct.unpack(">I", payload[:4])
        payload = payload[4 + size :]
    (size,) = struct.unpack(">I", payload[:4])
    return payload[4 : 4 + size].decode().split(",")


def sshd_path() -> str:
    """
    Where C{sshd} is (it is often outside a user's C{PATH}).

    @raise AssertionError: openssh-server is not installed.
    """
    path = shutil.which("sshd") or "/usr/sbin/sshd"
    assert os.path.exists(path), "sshd is not installed: apt-get install openssh-server"
    return path


def clear_folder(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            path.unlink()


class BenchServer:
    """
    What the workloads need of a server.

    @ivar name: the name printed in the results.
    @ivar port: its loopback port, once started.
    @ivar user: the user name clients log in as.
    @ivar uploads: the local folder where files put into C{EPCIS/} land.
    """

    name = ""
    user = "bench"

    def __init__(self, home: Path, client_key: Path) -> None:
        self.home = home
        self.client_key = client_key
        self.port = 0
        self.uploads = home / "uploads" / RULE

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def pid(self) -> int:
        """
        The process whose tree of processes is the server.
        """
        raise NotImplementedError

    def settle(self, uploads: int, timeout: float = 600.0) -> None:
        """
        Wait until the work that follows C{uploads} completed uploads is done
        (nothing for a plain SFTP server).
        """

    def clear(self) -> None:
        """
        Remove the uploaded files, once settled.
        """
        clear_folder(self.uploads)


class OpenSSH(BenchServer):
    """
    C{/usr/sbin/sshd -D} with its own config: ed25519 host key, the current
    user by key only, C{ForceCommand internal-sftp} starting in a temporary
    folder (no chroot).
    """

    name = "openssh"

    def __init__(self, home: Path, client_key: Path) -> None:
        super().__init__(home, client_key)
        self.user = getpass.getuser()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.uploads.mkdir(parents=True)
        host_key = make_key(self.home, "ssh_host_ed25519_key")
        authorized = self.home / "authorized_keys"
        shutil.copy(str(self.client_key) + ".pub", authorized)
        self.port = free_port()
        config = self.home / "sshd_config"
        config.write_text(
            f"""\
ListenAddress 127.0.0.1:{self.port}
HostKey {host_key}
PidFile none
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
MaxStartups 1000
MaxSessions 100
LogLevel ERROR
Subsystem sftp internal-sftp
ForceCommand internal-sftp -d {self.uploads.parent}
"""
        )
        # Debian's sshd refuses to start without its privilege separation folder.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.process = subprocess.Popen(
            [sshd_path(), "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(self.home / "sshd.log").open("ab"),
        )
        wait_listening(self.port, self.process, 30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class AsyncSSH(BenchServer):
    """
    asyncssh's SFTP server (L{bench.asyncssh_server}) in its own process,
    rooted in a temporary folder.
    """

    name = "asyncssh"

    def __init__(self, home: Path, client_key: Path) -> None:
        super().__init__(home, client_key)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.uploads.mkdir(parents=True)
        host_key = make_key(self.home, "ssh_host_ed25519_key")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "asyncssh_server.py"),
                str(host_key),
                str(self.client_key) + ".pub",
                str(self.uploads.parent),
            ],
            stdout=subprocess.PIPE,
            stderr=(self.home / "asyncssh.log").open("ab"),
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline() or 0)
        wait_listening(self.port, self.process, 30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class Quartet(BenchServer):
    """
    quartet-sftpd through L{tests.server.Server}, with one rule, C{EPCIS},
    whose only step is L{bench.stamp.Stamp} writing to C{stamps}.

    @ivar stamps: the file where the step notes when each rule run started.
    """

    name = "quartet"
    user = "partner"

    def __init__(self, home: Path, client_key: Path) -> None:
        super().__init__(home, client_key)
        self.stamps = home / "stamps.txt"
        rules = home / "rules.toml"
        rules.write_text(
            f"""\
[[rule]]
name = "{RULE}"
description = "Benchmark: note when the rule starts."

[[rule.step]]
name = "Stamp"
class = "bench.stamp.Stamp"
parameters = {{ File = "{self.stamps}" }}
"""
        )
        # The workloads open up to 50 sessions at once as one user.
        limits = {"max_sessions": 1000, "max_user_sessions": 0}
        self.server = Server(
            home, {"rules": str(rules), "reload_interval": 2, **limits}
        )
        self.uploads = self.server.archive / RULE
        self._settled = 0

    def start(self) -> None:
        self.server.add_user(self.user, self.client_key)
        self.server.start()
        self.port = self.server.port

    def stop(self) -> None:
        if self.server.process is not None:
            self.server.stop()

    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def ended_tasks(self) -> int:
        """
        How many tasks have ended (FINISHED or FAILED), read from the store.
        """
        db = self.server.home / str(self.server.settings["db"])
        if not db.exists():
            return 0
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            row = conn.execute(
                "SELECT count(*) FROM task WHERE status IN ('FINISHED', 'FAILED')"
            ).fetchone()
        return int(row[0])

    def failed_tasks(self) -> int:
        db = self.server.home / str(self.server.settings["db"])
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            row = conn.execute("SELECT count(*) FROM task WHERE status = 'FAILED'")
            return int(row.fetchone()[0])

    def settle(self, uploads: int, timeout: float = 600.0) -> None:
        target = self._settled + uploads
        deadline = time.monotonic() + timeout
        while self.ended_tasks() < target:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {self.ended_tasks()} of {target} tasks ended in time"
                )
            time.sleep(0.02)
        self._settled = target

    def clear(self) -> None:
        if self.uploads.exists():
            clear_folder(self.uploads)


SERVERS = {cls.name: cls for cls in (OpenSSH, AsyncSSH, Quartet)}
