"""
The real server in a subprocess, for end-to-end tests: C{twistd -n
quartet-sftpd} with its own config, keys, archive and task store in a
temporary folder, listening on a free loopback port, and helpers to drive it
with real clients (OpenSSH C{sftp}, C{ssh}, the admin command).

A client that is missing makes the test fail, never skip: CI installs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EPCIS_DIR = REPO / "tests" / "data" / "epcis"

_LISTENING = re.compile(r"listening on [\w.:]+:(\d+);")


def require(program: str) -> str:
    """
    The path of a client program.

    @raise AssertionError: it is not installed (so the test fails).
    """
    path = shutil.which(program)
    assert path, f"{program} is not installed; .ci/run installs it"
    return path


def make_key(folder: Path, name: str = "id_ed25519", kind: str = "ed25519") -> Path:
    """
    A fresh client key pair made with ssh-keygen; returns the private key.
    """
    key = folder / name
    subprocess.run(
        [require("ssh-keygen"), "-q", "-t", kind, "-N", "", "-f", str(key), "-C", name],
        check=True,
    )
    return key


def twistd_command() -> list[str]:
    twistd = Path(sys.executable).with_name("twistd")
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Server:
    """
    One quartet-sftpd process and its folder.

    @ivar home: the folder holding config, keys, archive and database.
    @ivar port: the TCP port it listens on, once started.
    """

    def __init__(self, home: Path, settings: dict[str, Any] | None = None) -> None:
        self.home = home
        self.config = home / "quartet-sftpd.toml"
        self.log_path = home / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        values = {
            "listen": "tcp:0:interface=127.0.0.1",
            "keys": "keys",
            "archive": "archive",
            "db": "tasks.sqlite3",
            "reload_interval": 0.5,
        }
        values.update(settings or {})
        self.settings = values
        self.write_config()

    def write_config(self) -> None:
        lines = []
        for key, value in self.settings.items():
            if isinstance(value, str):
                lines.append(f"{key} = {json.dumps(value)}")
            elif isinstance(value, (list, tuple)):
                lines.append(f"{key} = {json.dumps(list(value))}")
            else:
                lines.append(f"{key} = {value}")
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def archive(self) -> Path:
        return self.home / str(self.settings["archive"])

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        return env

    def start(self, timeout: float = 30.0) -> None:
        """
        Start the server and wait until it listens.
        """
        self.log_path.write_bytes(b"")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            twistd_command()
            + ["-n", "--pidfile=", "quartet-sftpd", "--config", str(self.config)],
            cwd=self.home,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                self.port = int(match.group(1))
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"the server did not start:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """
        Stop the server with a signal and wait for it to exit.
        """
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"the server did not stop:\n{self.log()}"
                ) from None
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(
        self, *args: str, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """
        Run the admin command C{quartet-sftpd --config ... ARGS}.
        """
        return subprocess.run(
            [sys.executable, "-m", "quartet_sftpd.cli", "--config", str(self.config)]
            + list(args),
            cwd=self.home,
            env=self.env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def add_user(self, name: str, key: Path) -> None:
        result = self.cli("user", "add", name, "--key", str(key) + ".pub")
        assert result.returncode == 0, result.stderr

    def tasks(self, *args: str) -> list[dict[str, Any]]:
        result = self.cli("tasks", "list", "--json", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def task(self, name: str) -> dict[str, Any]:
        result = self.cli("tasks", "show", name, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def wait_for_tasks(
        self, count: int, done: bool = True, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """
        Wait until there are C{count} tasks, all ended if C{done}.
        """
        deadline = time.monotonic() + timeout
        tasks: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            tasks = self.tasks()
            ended = [
                t for t in tasks if t["status"] in ("FINISHED", "FAILED", "DUPLICATE")
            ]
            if len(tasks) >= count and (not done or len(ended) == len(tasks)):
                return tasks
            time.sleep(0.1)
        raise AssertionError(f"expected {count} tasks, have {tasks}\n{self.log()}")

    def archived(self, folder: str = "EPCIS") -> list[Path]:
        path = self.archive / folder
        return sorted(p for p in path.iterdir()) if path.exists() else []

    def quarantined(self) -> list[Path]:
        path = self.archive / ".partial"
        return sorted(p for p in path.iterdir() if p.suffix != ".json")

    def ssh_options(self, key: Path) -> list[str]:
        return [
            "-i",
            str(key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={self.home / 'known_hosts'}",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
        ]

    def sftp(
        self, user: str, key: Path, commands: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """
        Run OpenSSH sftp in batch mode; commands prefixed with C{-} may fail
        without ending the batch, as in sftp itself.
        """
        return subprocess.run(
            [require("sftp"), "-b", "-", "-P", str(self.port)]
            + self.ssh_options(key)
            + [f"{user}@127.0.0.1"],
            input=commands,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
