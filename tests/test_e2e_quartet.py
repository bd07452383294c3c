"""
End-to-end tests of the capture backends that hand uploads to QU4RTET,
against the real packages (quartet_capture, quartet_epcis, Django on SQLite;
the test site is C{tests/quartet_site}), the real C{twistd} server and
OpenSSH's C{sftp}:

- C{capture = "quartet"}: QU4RTET in-process, Celery eager;
- C{capture = "http"}: QU4RTET's capture views in Django's own web server
  on loopback, stopped for a while;
- scale-out: two server nodes on one archive and one QU4RTET, the rules run
  by a Celery worker fed through a Redis server (Debian's C{redis-server}).

QU4RTET's side is prepared with Django's management commands in separate
processes, and inspected by reading its database.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from .server import EPCIS_DIR, Server, require

SITE = "tests.quartet_site.settings"


class QuartetSite:
    """
    The test QU4RTET site's database and storage in a temporary folder.
    """

    def __init__(self, folder: Path) -> None:
        self.db = folder / "quartet.sqlite3"
        self.env = {
            "QUARTET_SITE_DB": str(self.db),
            "QUARTET_SITE_MEDIA": str(folder / "media"),
        }

    def manage_env(self) -> dict[str, str]:
        env = dict(os.environ, **self.env, DJANGO_SETTINGS_MODULE=SITE)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).parent.parent)]
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        return env

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """
        Start C{django-admin ARGS} on the site.
        """
        return subprocess.Popen(
            [sys.executable, "-m", "django", *args], env=self.manage_env(), **kwargs
        )

    def manage(self, *args: str) -> str:
        """
        Run C{django-admin ARGS} on the site; its standard output.
        """
        result = subprocess.run(
            [sys.executable, "-m", "django", *args],
            env=self.manage_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def query(self, code: str) -> Any:
        """
        Run Python in C{django-admin shell}; what it printed, as JSON.
        """
        return json.loads(self.manage("shell", "-c", code).strip().splitlines()[-1])

    def task(self, name: str) -> dict[str, Any]:
        """
        A QU4RTET task's rule, type, status and messages, read straight from
        the database (quicker than Django's shell, for polling).
        """
        with closing(self.connect()) as db:
            rule, kind, status = db.execute(
                "SELECT r.name, t.type, t.status FROM quartet_capture_task t "
                "JOIN quartet_capture_rule r ON r.id = t.rule_id WHERE t.name = ?",
                (name,),
            ).fetchone()
            messages = db.execute(
                "SELECT message FROM quartet_capture_taskmessage WHERE task_id = ? "
                "ORDER BY id",
                (name,),
            ).fetchall()
        return {
            "rule": rule,
            "type": kind,
            "status": status,
            "messages": [m for (m,) in messages],
        }

    def task_names(self, rule: str) -> list[str]:
        """
        The names of a rule's QU4RTET tasks, sorted.
        """
        with closing(self.connect()) as db:
            rows = db.execute(
                "SELECT t.name FROM quartet_capture_task t JOIN quartet_capture_rule "
                "r ON r.id = t.rule_id WHERE r.name = ? ORDER BY t.name",
                (rule,),
            ).fetchall()
        return [name for (name,) in rows]

    def event_types(self) -> list[str]:
        """
        The types of the EPCIS events quartet_epcis holds, sorted.
        """
        with closing(self.connect()) as db:
            rows = db.execute("SELECT type FROM quartet_epcis_event").fetchall()
        return sorted(kind for (kind,) in rows)

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)

    def down(self) -> None:
        """
        Move the database away, as if it were lost.
        """
        os.replace(self.db, self.db.with_suffix(".away"))

    def back(self) -> None:
        os.replace(self.db.with_suffix(".away"), self.db)


class QuartetServer(Server):
    """
    A server that captures into the test QU4RTET site.
    """

    def __init__(self, home: Path, site: QuartetSite) -> None:
        super().__init__(
            home, {"capture": "quartet", "django_settings": SITE, "rule_workers": 2}
        )
        self.site = site

    def env(self) -> dict[str, str]:
        return dict(super().env(), **self.site.env)


@pytest.fixture(scope="module")
def site_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A migrated QU4RTET database with quartet_epcis's default EPCIS rule,
    made once for the module (migrating takes seconds).
    """
    site = QuartetSite(tmp_path_factory.mktemp("quartet"))
    site.manage("migrate", "--verbosity", "0")
    assert "EPCIS rule created." in site.manage("create_epcis_rule")
    return site.db


@pytest.fixture
def site(tmp_path: Path, site_template: Path) -> QuartetSite:
    """
    A fresh copy of the template QU4RTET database.
    """
    site = QuartetSite(tmp_path)
    shutil.copyfile(site_template, site.db)
    return site


@pytest.fixture
def quartet_server(
    tmp_path: Path, site: QuartetSite, client_key: Path
) -> Iterator[QuartetServer]:
    home = tmp_path / "server"
    home.mkdir()
    server = QuartetServer(home, site)
    server.add_user("partner", client_key)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()


def queued_as(task: dict[str, Any]) -> str:
    """
    The QU4RTET task a task of ours was handed to.
    """
    (message,) = task["messages"]
    assert message["text"].startswith("Queued as QU4RTET task "), message
    return message["text"].split()[4]


def test_epcis_upload_is_parsed_by_quartet(
    quartet_server: QuartetServer, site: QuartetSite, client_key: Path
) -> None:
    """
    An EPCIS document put into /EPCIS/ is archived, becomes a QU4RTET task
    of the EPCIS rule that FINISHES, and quartet_epcis holds its 4 events.
    """
    document = EPCIS_DIR / "epcis.xml"
    listing = quartet_server.sftp("partner", client_key, "ls -1 /\n")
    assert listing.stdout.split()[-1:] == ["/EPCIS"], listing

    result = quartet_server.sftp("partner", client_key, f"put {document} EPCIS/\n")
    assert result.returncode == 0, result.stderr + quartet_server.log()

    (archived,) = quartet_server.archived("EPCIS")
    assert archived.read_bytes() == document.read_bytes()
    (ours,) = quartet_server.wait_for_tasks(1)
    assert (ours["status"], ours["rule"], ours["user"]) == (
        "FINISHED",
        "EPCIS",
        "partner",
    )
    name = queued_as(quartet_server.task(ours["name"]))
    task = site.task(name)
    assert (task["rule"], task["type"], task["status"]) == (
        "EPCIS",
        "Input",
        "FINISHED",
    )
    assert "Parsing complete." in task["messages"]
    assert site.event_types() == ["ag", "ob", "tf", "tx"]
    assert f"queued as QU4RTET task {name}" in quartet_server.log()

    # The partner's @results view names the QU4RTET task.
    listing = quartet_server.sftp("partner", client_key, "ls -1 EPCIS/@results\n")
    assert listing.returncode == 0, listing.stderr
    assert "FINISHED epcis.xml.txt" in listing.stdout


def test_live_rules_and_database_outage(
    quartet_server: QuartetServer, site: QuartetSite, client_key: Path
) -> None:
    """
    A rule added in QU4RTET gets a folder without a restart.  While the
    database is down an upload's CLOSE fails but the file is archived and
    its task kept; once the database is back it is queued in QU4RTET.
    """
    site.query(
        "from tests.quartet_site.steps import create_rule; "
        "create_rule('Shipping Notices'); print('{}')"
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listing = quartet_server.sftp("partner", client_key, "ls -1 /\n")
        if "Shipping-Notices" in listing.stdout:
            break
        time.sleep(0.2)
    assert "Shipping-Notices" in listing.stdout, quartet_server.log()

    site.down()
    try:
        document = EPCIS_DIR / "observe.xml"
        result = quartet_server.sftp(
            "partner", client_key, f"put {document} Shipping-Notices/notice.xml\n"
        )
        assert result.returncode != 0
        (archived,) = quartet_server.archived("Shipping-Notices")
        assert archived.read_bytes() == document.read_bytes()
        (ours,) = quartet_server.tasks()
        assert ours["status"] == "QUEUED"
        assert "QU4RTET could not take task" in quartet_server.log()
    finally:
        site.back()

    (ours,) = quartet_server.wait_for_tasks(1, timeout=30)
    assert ours["status"] == "FINISHED"
    task = site.task(queued_as(quartet_server.task(ours["name"])))
    assert (task["rule"], task["status"]) == ("Shipping Notices", "FINISHED")
    assert f"Received {document.stat().st_size} bytes." in task["messages"]


class QuartetWeb:
    """
    The test site's capture API in Django's own web server, on loopback.
    """

    def __init__(self, site: QuartetSite, log: Path) -> None:
        self.site = site
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        address = f"127.0.0.1:{self.port}"
        with self.log.open("ab") as log:
            self.process = self.site.popen(
                "runserver", "--noreload", address, stdout=log, stderr=log
            )
        wait_for_port(self.port, self.process, self.log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.fixture
def web(tmp_path: Path, site: QuartetSite) -> Iterator[QuartetWeb]:
    """
    The capture API running, with a QU4RTET user C{sftp-node} (password in
    C{PASSWORD}) and a second rule, C{Shipping Notices}.
    """
    site.query(
        "from django.contrib.auth.models import User; "
        "from tests.quartet_site.steps import create_rule; "
        f"User.objects.create_user('sftp-node', password={PASSWORD!r}); "
        "create_rule('Shipping Notices'); print('{}')"
    )
    web = QuartetWeb(site, tmp_path / "web.log")
    web.start()
    try:
        yield web
    finally:
        web.stop()


PASSWORD = "correct horse battery staple"


def test_http_delivery_survives_quartet_downtime(
    tmp_path: Path, site: QuartetSite, web: QuartetWeb, client_key: Path
) -> None:
    """
    With capture = "http", the folders are QU4RTET's rules from its API; an
    EPCIS upload is POSTed to the capture API and parsed there.  While the
    API is down an upload is still accepted and archived, and it is
    delivered once the API is back.  The password, taken from the
    environment, is never logged.
    """
    home = tmp_path / "server"
    home.mkdir()
    server = HTTPServer(home, web.url, PASSWORD)
    server.add_user("partner", client_key)
    server.start()
    try:
        listing = server.sftp("partner", client_key, "ls -1 /\n")
        assert listing.stdout.split()[-2:] == ["/EPCIS", "/Shipping-Notices"]

        document = EPCIS_DIR / "epcis.xml"
        result = server.sftp("partner", client_key, f"put {document} EPCIS/\n")
        assert result.returncode == 0, result.stderr + server.log()
        (ours,) = server.wait_for_tasks(1)
        assert ours["status"] == "FINISHED"
        task = site.task(queued_as(server.task(ours["name"])))
        assert (task["rule"], task["type"], task["status"]) == (
            "EPCIS",
            "Input",
            "FINISHED",
        )
        assert site.event_types() == ["ag", "ob", "tf", "tx"]

        web.stop()
        notice = EPCIS_DIR / "observe.xml"
        result = server.sftp(
            "partner", client_key, f"put {notice} Shipping-Notices/notice.xml\n"
        )
        assert result.returncode == 0, result.stderr + server.log()
        (archived,) = server.archived("Shipping-Notices")
        assert archived.read_bytes() == notice.read_bytes()
        waiting = [t for t in server.tasks() if t["rule"] == "Shipping Notices"]
        assert [t["status"] for t in waiting] == ["QUEUED"]
        # The CLOSE was answered before the delivery was tried.
        deadline = time.monotonic() + 20
        while "QU4RTET could not take task" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)

        web.start()
        tasks = server.wait_for_tasks(2, timeout=30)
        (delivered,) = [t for t in tasks if t["rule"] == "Shipping Notices"]
        assert delivered["status"] == "FINISHED"
        task = site.task(queued_as(server.task(delivered["name"])))
        assert (task["rule"], task["status"]) == ("Shipping Notices", "FINISHED")
        assert f"Received {notice.stat().st_size} bytes." in task["messages"]
    finally:
        server.stop()
    assert PASSWORD not in server.log()


class HTTPServer(Server):
    """
    A server that delivers to QU4RTET's capture API, with the password in
    the environment.
    """

    def __init__(self, home: Path, url: str, password: str) -> None:
        super().__init__(home, {"capture": "http", "capture_url": url})
        self.settings["capture_user"] = "sftp-node"
        self.write_config()
        self.password = password

    def env(self) -> dict[str, str]:
        return dict(super().env(), QUARTET_SFTPD_CAPTURE_PASSWORD=self.password)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Redis:
    """
    A Redis server from Debian's package on a free loopback port, keeping
    nothing on disk; it can be stopped and started again on the same port.

    @ivar url: its URL, for Celery.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = folder / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [require("redis-server"), "--port", str(self.port)]
                + ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                + ["--dir", str(self.folder)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.process, self.log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Redis]:
    redis = Redis(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}:\n{log.read_text()}")


def test_scale_out_two_nodes_one_worker(
    tmp_path: Path, site: QuartetSite, broker: Redis, client_key: Path
) -> None:
    """
    Two server nodes share one archive and one QU4RTET; uploads to either
    are queued through Redis and run by a Celery worker, not by the nodes.
    While Redis is down an upload's CLOSE fails, and once it is back the
    QU4RTET task that upload left is queued again, not a second one made.
    """
    site.env.update(QUARTET_SITE_EAGER="0", QUARTET_SITE_BROKER=broker.url)
    site.query(
        "from tests.quartet_site.steps import create_rule; "
        "create_rule('Shipping Notices'); print('{}')"
    )
    worker_log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.quartet_site", "worker"]
        + ["--pool", "threads", "--concurrency", "2", "--loglevel", "INFO"],
        env=site.manage_env(),
        stdout=worker_log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    archive = tmp_path / "archive"
    nodes = []
    try:
        for number in (1, 2):
            home = tmp_path / f"node{number}"
            home.mkdir()
            node = QuartetServer(home, site)
            node.settings["archive"] = str(archive)
            node.settings["node"] = f"node{number}"
            node.write_config()
            node.add_user("partner", client_key)
            nodes.append(node)
            node.start()
        for number, node in enumerate(nodes, 1):
            notice = EPCIS_DIR / "observe.xml"
            result = node.sftp(
                "partner",
                client_key,
                f"put {notice} Shipping-Notices/notice-{number}.xml\n",
            )
            assert result.returncode == 0, result.stderr + node.log()

        # Each node stages its uploads in a folder of its own.
        assert sorted(p.name for p in (archive / ".staging").iterdir()) == [
            "node1",
            "node2",
        ]
        ours = [node.wait_for_tasks(1)[0]["name"] for node in nodes]
        names = [queued_as(nodes[i].task(name)) for i, name in enumerate(ours)]

        broker.stop()
        result = nodes[0].sftp(
            "partner", client_key, f"put {notice} Shipping-Notices/notice-3.xml\n"
        )
        assert result.returncode != 0
        assert len(site.task_names("Shipping Notices")) == 3
        broker.start()
        tasks = nodes[0].wait_for_tasks(2, timeout=60)
        (late,) = [t["name"] for t in tasks if t["name"] != ours[0]]
        names.append(queued_as(nodes[0].task(late)))
        assert sorted(names) == site.task_names("Shipping Notices")

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tasks = [site.task(name) for name in names]
            if all(t["status"] in ("FINISHED", "FAILED") for t in tasks):
                break
            time.sleep(0.2)
        assert [t["status"] for t in tasks] == ["FINISHED"] * 3, worker_log.read_text()
        for task in tasks:
            assert f"Run by process {worker.pid}." in task["messages"]
        archived = sorted(
            p.name.split("-")[1] for p in nodes[0].archived("Shipping-Notices")
        )
        assert archived == ["1.xml", "2.xml", "3.xml"]
    finally:
        for node in nodes:
            if node.process is not None:
                node.stop()
        worker.terminate()
        worker.wait(30)
