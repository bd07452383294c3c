"""
Tests for the C{http} capture backend without sockets or threads: a small
stand-in for QU4RTET's capture API answers the backend's requests, and the
store pool runs each call at once.  The end-to-end test against QU4RTET's
real views is in C{test_e2e_quartet.py}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import Logger, LogLevel, formatEvent

from quartet_sftpd.capture import ArchivedUpload
from quartet_sftpd.capture.handover import QUEUED_AS, CaptureSetupError
from quartet_sftpd.capture.http import TOKEN_VARIABLE, HTTPBackend
from quartet_sftpd.config import Settings
from quartet_sftpd.tasks import Task, TaskStatus, TaskStore

from .fakes import ImmediateReactor, ImmediateThreadPool
from .test_builtin_backend import fired
from .test_quartet_backend import Clock

BASE = "https://qu4rtet.example/"
SECRET = "s3cret-pass"


@dataclasses.dataclass(frozen=True)
class HTTPSettings(Settings):
    capture_url: str = BASE
    capture_user: str = "sftp-node"
    capture_password: str = SECRET
    capture_token: str = ""


@dataclasses.dataclass
class Response:
    code: int
    body: bytes
    phrase: bytes = b"Answer"

    def content(self) -> Deferred[bytes]:
        return succeed(self.body)


class FakeQuartet:
    """
    QU4RTET's capture API as the backend sees it: rules in pages of two,
    and a capture view that answers with a new task's name.

    @ivar down: when true, every connection is refused.
    @ivar refusal: when set, the capture view answers 400 with this text.
    @ivar posted: (rule, file name, bytes) of each accepted upload.
    """

    def __init__(self, rules: list[str]) -> None:
        self.rules = rules
        self.down = False
        self.refusal: str | None = None
        self.posted: list[tuple[str, str, bytes]] = []
        self.requests: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Response]:
        self.requests.append({"method": method, "url": url, **kwargs})
        if self.down:
            return fail(ConnectionRefusedError())
        if method == "GET" and url.startswith(BASE + "capture/rules/"):
            offset = int(url.partition("offset=")[2] or 0)
            rows = [{"name": name, "id": 1} for name in self.rules]
            following = offset + 2 < len(rows)
            page = {
                "count": len(rows),
                "next": f"{BASE}capture/rules/?limit=2&offset={offset + 2}"
                if following
                else None,
                "results": rows[offset : offset + 2],
            }
            return succeed(Response(200, json.dumps(page).encode()))
        if method == "POST" and url == BASE + "capture/quartet-capture/":
            rule = kwargs["params"]["rule"]
            if self.refusal is not None:
                body = json.dumps({"detail": self.refusal}).encode()
                return succeed(Response(400, body, b"Bad Request"))
            name, _, archived = kwargs["files"]["file"]
            self.posted.append((rule, name, archived.read()))
            task = f"quick-task-{len(self.posted)}"
            return succeed(Response(201, json.dumps(task).encode(), b"Created"))
        return succeed(Response(404, b'{"detail": "Not found."}', b"Not Found"))


class Harness:
    def __init__(self, tmp_path: Path, settings: Settings | None = None) -> None:
        self.tmp_path = tmp_path
        self.settings = settings or HTTPSettings(
            archive=tmp_path / "archive", db=tmp_path / "tasks.sqlite3"
        )
        self.quartet = FakeQuartet(["Shipping Notices", "EPCIS", "Invoices"])
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.backend = HTTPBackend(
            self.settings,
            ImmediateReactor(),  # type: ignore[arg-type]
            store_pool=ImmediateThreadPool(),
            clock=self.clock,
            http_client=self.quartet,
        )
        self.backend.log = Logger(observer=self.events.append)

    def upload(self, data: bytes, name: str = "order.xml", rule: str = "EPCIS"):
        path = self.settings.archive / rule / f"{name}-{time.time_ns()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return ArchivedUpload(
            user="acme",
            rule=rule,
            name=name,
            archive_path=path,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            received=time.time(),
        )

    def task(self, name: str) -> Task:
        store = TaskStore(self.settings.db, create=False)
        try:
            task = store.get(name)
        finally:
            store.close()
        assert task is not None
        return task

    def log_text(self) -> str:
        return "\n".join(formatEvent(e) or "" for e in self.events)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    fired(harness.backend.start())
    yield harness
    fired(harness.backend.stop())


def test_rules_come_from_every_page(harness: Harness) -> None:
    """
    The folders are QU4RTET's rules, read across pages, with the
    credentials given, asking for JSON.
    """
    assert harness.backend.rule_names() == ("EPCIS", "Invoices", "Shipping Notices")
    assert [r["url"] for r in harness.quartet.requests] == [
        BASE + "capture/rules/",
        BASE + "capture/rules/?limit=2&offset=2",
    ]
    first = harness.quartet.requests[0]
    assert first["auth"] == ("sftp-node", SECRET)
    assert first["headers"]["Accept"] == "application/json"


def test_upload_is_posted_and_its_quartet_task_recorded(harness: Harness) -> None:
    """
    An upload is answered as soon as its task is recorded; the file is
    POSTed as C{file} with its rule, and our task ends FINISHED naming the
    task QU4RTET answered with.
    """
    name = fired(harness.backend.submit(harness.upload(b"<epcis/>")))
    assert harness.quartet.posted == [("EPCIS", "order.xml", b"<epcis/>")]
    task = harness.task(name)
    assert task.status is TaskStatus.FINISHED
    assert [m.text for m in task.messages] == [
        f"{QUEUED_AS}quick-task-1 for rule EPCIS."
    ]


def test_delivery_waits_while_quartet_is_down(harness: Harness) -> None:
    """
    While QU4RTET cannot be reached the upload is still accepted; its task
    stays QUEUED, and is delivered once QU4RTET answers again.
    """
    harness.quartet.down = True
    name = fired(harness.backend.submit(harness.upload(b"<late/>")))
    assert harness.task(name).status is TaskStatus.QUEUED
    warnings = [e for e in harness.events if e["log_level"] == LogLevel.warn]
    assert (
        "no answer from https://qu4rtet.example/capture/quartet-capture/"
        in (warnings[0]["error"])
    )
    harness.clock.now += 2
    assert fired(harness.backend.refresh()) is False
    assert harness.task(name).status is TaskStatus.QUEUED

    harness.quartet.down = False
    fired(harness.backend.refresh())
    assert harness.task(name).status is TaskStatus.FINISHED
    assert harness.quartet.posted == [("EPCIS", "order.xml", b"<late/>")]


def test_rule_gone_fails_the_task(harness: Harness) -> None:
    """
    QU4RTET's 400 for a rule it no longer has fails the task, for good.
    """
    harness.quartet.refusal = (
        "The rule with name Retired, does not exist in the system."
    )
    name = fired(harness.backend.submit(harness.upload(b"<a/>", rule="Retired")))
    task = harness.task(name)
    assert task.status is TaskStatus.FAILED
    assert "QU4RTET has no rule named 'Retired' any more" in task.messages[0].text


def test_other_refusals_fail_with_quartet_words(harness: Harness) -> None:
    """
    Any other 400 fails the task with what QU4RTET said.
    """
    harness.quartet.refusal = "No data was posted."
    name = fired(harness.backend.submit(harness.upload(b"")))
    task = harness.task(name)
    assert task.status is TaskStatus.FAILED
    assert task.messages[0].text == (
        "QU4RTET refused order.xml for rule EPCIS: QU4RTET answered 400 Bad "
        "Request: No data was posted."
    )


def test_token_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A token in the environment is sent as DRF's C{Authorization: Token}
    header, and appears in no log line.
    """
    monkeypatch.setenv(TOKEN_VARIABLE, "tok-123")
    settings = HTTPSettings(
        archive=tmp_path / "a",
        db=tmp_path / "t.sqlite3",
        capture_user="",
        capture_password="",
    )
    harness = Harness(tmp_path, settings)
    fired(harness.backend.start())
    fired(harness.backend.submit(harness.upload(b"<a/>")))
    fired(harness.backend.stop())
    for request in harness.quartet.requests:
        assert request["headers"]["Authorization"] == "Token tok-123"
        assert request["auth"] is None
    assert "tok-123" not in harness.log_text()


def test_credentials_in_the_url_are_kept_out_of_logs(tmp_path: Path) -> None:
    """
    A user and password written into C{capture_url} are used, and the URL
    is logged without them.
    """
    settings = HTTPSettings(
        archive=tmp_path / "a",
        db=tmp_path / "t.sqlite3",
        capture_url=f"https://node:{SECRET}@qu4rtet.example",
        capture_user="",
        capture_password="",
    )
    harness = Harness(tmp_path, settings)
    fired(harness.backend.start())
    fired(harness.backend.stop())
    assert harness.quartet.requests[0]["auth"] == ("node", SECRET)
    assert "(https://qu4rtet.example/)" in harness.log_text()
    assert SECRET not in harness.log_text()


def test_a_url_that_is_not_http_stops_the_start(tmp_path: Path) -> None:
    """
    The backend does not start without an http or https capture_url.
    """
    settings = HTTPSettings(
        archive=tmp_path / "a", db=tmp_path / "t.sqlite3", capture_url="qu4rtet"
    )
    harness = Harness(tmp_path, settings)
    with pytest.raises(CaptureSetupError, match="needs capture_url"):
        fired(harness.backend.start())
