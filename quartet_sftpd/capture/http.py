"""
The C{http} capture backend: uploads go to QU4RTET over its HTTP capture
API, for a server that runs on another host than QU4RTET.

The rule folders come from QU4RTET's rules API (C{capture/rules/}, every
page), read again at every refresh.  An archived upload is recorded as a
QUEUED task in our task store, which is the on-disk outbox, and the CLOSE is
answered then; the file is then POSTed as the multipart field C{file} to
C{capture/quartet-capture/?rule=NAME}, and the QU4RTET task name it answers
with is recorded in our task, which ends FINISHED.  A delivery that fails
(QU4RTET down, a 5xx, refused credentials) stays QUEUED and is tried again
with backoff until it succeeds, across restarts too; see
L{quartet_sftpd.capture.handover}.  A 400 answer (the rule is gone, say)
fails the task with QU4RTET's words.

Credentials: C{capture_user} with C{capture_password} (HTTP basic), or
C{capture_token} (DRF's C{Authorization: Token ...}); the password and the
token may instead come from the environment variables
C{QUARTET_SFTPD_CAPTURE_PASSWORD} and C{QUARTET_SFTPD_CAPTURE_TOKEN}, so
that the config file holds no secret.  They are never logged.  An https
address's certificate is checked against the system's trusted authorities.

QU4RTET's rules API answers with a server error unless its REST framework
settings configure pagination (C{DEFAULT_PAGINATION_CLASS}), as QU4RTET's
own settings do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from twisted.internet import error
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    inlineCallbacks,
    succeed,
)
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)

from quartet_sftpd.capture.builtin import IThreadPool
from quartet_sftpd.capture.handover import (
    CannotHandOverError,
    CaptureSetupError,
    HandOverBackend,
    check_archived,
    rule_gone,
)
from quartet_sftpd.config import Settings
from quartet_sftpd.tasks import Task

#: Environment variables that hold the secrets, when the config does not.
PASSWORD_VARIABLE = "QUARTET_SFTPD_CAPTURE_PASSWORD"
TOKEN_VARIABLE = "QUARTET_SFTPD_CAPTURE_TOKEN"

#: Seconds a request to QU4RTET may take before it counts as failed; an
#: upload gets one more second for each L{UPLOAD_RATE} bytes.
REQUEST_TIMEOUT = 120.0
UPLOAD_RATE = 1_000_000

#: Most pages of rules read; a loop of C{next} links ends there.
MAX_RULE_PAGES = 100


class QuartetUnreachableError(Exception):
    """
    No answer came from QU4RTET: the connection was refused or dropped, or
    the request timed out.
    """


class QuartetHTTPError(Exception):
    """
    QU4RTET answered with an HTTP error status.

    @ivar code: the status code.
    """

    def __init__(self, code: int, phrase: str, body: str) -> None:
        self.code = code
        super().__init__(f"QU4RTET answered {code} {phrase}: {body}".rstrip(": "))


# Errors that only say the request got no answer; the reasons inside them
# are what an operator needs to read.
_WRAPPED = (
    error.ConnectError,
    error.ConnectingCancelledError,
    error.TimeoutError,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
    CancelledError,
)


class _QuietFactory(_HTTP11ClientFactory):
    # One log line per connection to QU4RTET is noise, not news.
    noisy = False


def _answer(body: bytes) -> str:
    """
    The text of an answer's body: a JSON string or DRF's C{detail}, else the
    first 300 characters.
    """
    text = body.decode("utf-8", "replace").strip()
    try:
        value = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(value, dict) and "detail" in value:
        value = value["detail"]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) else text[:300]


class HTTPBackend(HandOverBackend):
    """
    The L{ICaptureBackend} that delivers uploads to QU4RTET's capture API.
    """

    wait_for_hand_over = False

    def __init__(
        self,
        settings: Settings,
        reactor: IReactorFromThreads | None = None,
        *,
        store_pool: IThreadPool | None = None,
        clock: Callable[[], float] | None = None,
        http_client: Any = None,
    ) -> None:
        """
        @param settings: C{db}, C{capture_url}, C{capture_user},
            C{capture_password} and C{capture_token} are used.
        @param reactor: the reactor; the global one when L{None}.
        @param store_pool: the pool that writes our task store and checks
            archived files; a new one-thread pool when L{None}.
        @param clock: the time in seconds, for retries; the reactor's when
            L{None}.
        @param http_client: a C{treq.client.HTTPClient}; one with a pool of
            persistent connections when L{None}.
        """
        super().__init__(settings, reactor, store_pool=store_pool, clock=clock)
        self._http = http_client
        self._pool: Any = None
        self._base = ""
        self._auth: tuple[str, str] | None = None
        self._headers: dict[str, str] = {"Accept": "application/json"}

    def _set_up(self) -> Deferred[str]:
        url = str(getattr(self._settings, "capture_url", "") or "")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return fail(
                CaptureSetupError(
                    f"capture = 'http' needs capture_url, QU4RTET's address such "
                    f"as 'https://qu4rtet.example/'; {url!r} is not an http or "
                    "https URL."
                )
            )
        # Credentials in the URL would end up in logs: keep them out of it.
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = host + (f":{parts.port}" if parts.port else "")
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self._base = urlunsplit((parts.scheme, netloc, path, "", ""))
        user = getattr(self._settings, "capture_user", "") or parts.username or ""
        password = (
            getattr(self._settings, "capture_password", "")
            or os.environ.get(PASSWORD_VARIABLE, "")
            or parts.password
            or ""
        )
        token = getattr(self._settings, "capture_token", "") or os.environ.get(
            TOKEN_VARIABLE, ""
        )
        if token:
            self._headers["Authorization"] = f"Token {token}"
        elif user:
            self._auth = (user, password)
        if self._http is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            self._pool = HTTPConnectionPool(self._reactor, persistent=True)
            self._pool._factory = _QuietFactory
            self._http = HTTPClient(Agent(self._reactor, pool=self._pool))
        return succeed(self._base)

    def _stopped(self) -> Deferred[None] | None:
        if self._pool is None:
            return None
        return self._pool.closeCachedConnections()

    def _fetch_rules(self) -> Deferred[tuple[str, ...]]:
        return self._read_rules()

    @inlineCallbacks
    def _read_rules(self) -> Any:
        names: list[str] = []
        rules = urljoin(self._base, "capture/rules/")
        url: str | None = rules
        for _ in range(MAX_RULE_PAGES):
            if url is None:
                break
            answer = yield self._request("GET", url)
            page = json.loads(answer)
            rows = page["results"] if isinstance(page, dict) else page
            names.extend(str(row["name"]) for row in rows)
            following = page.get("next") if isinstance(page, dict) else None
            # Behind a proxy, QU4RTET may name itself by another address in
            # its links: keep ours and take only the page's query.
            url = f"{rules}?{urlsplit(following).query}" if following else None
        return tuple(sorted(names))

    def _hand_over(self, task: Task) -> Deferred[tuple[str, str | None]]:
        d = deferToThreadPool(self._reactor, self._store_pool, check_archived, task)
        d.addCallback(lambda _: self._post(task))
        return d

    @inlineCallbacks
    def _post(self, task: Task) -> Any:
        url = urljoin(self._base, "capture/quartet-capture/")
        with Path(task.archive_path).open("rb") as archived:
            try:
                answer = yield self._request(
                    "POST",
                    url,
                    params={"rule": task.rule},
                    files={"file": (task.file, "application/octet-stream", archived)},
                    timeout=REQUEST_TIMEOUT + task.size / UPLOAD_RATE,
                )
            except QuartetHTTPError as error:
                if error.code != 400:
                    raise
                if "does not exist" in str(error):
                    raise rule_gone(task) from None
                raise CannotHandOverError(
                    f"QU4RTET refused {task.file} for rule {task.rule}: {error}"
                ) from None
        return _answer(answer), None

    @inlineCallbacks
    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        """
        Send a request with the credentials.

        @return: a Deferred firing with the body of a 2xx answer, or failing
            with L{QuartetHTTPError} for any other status, or with the
            connection's error.
        """
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        try:
            response = yield self._http.request(
                method, url, auth=self._auth, headers=self._headers, **kwargs
            )
            body = yield response.content()
        except _WRAPPED as failed:
            reasons = getattr(failed, "reasons", None) or [Failure(failed)]
            raise QuartetUnreachableError(
                f"no answer from {url}: "
                + "; ".join(reason.getErrorMessage() for reason in reasons)
            ) from None
        if not 200 <= response.code < 300:
            phrase = response.phrase.decode("ascii", "replace")
            raise QuartetHTTPError(response.code, phrase, _answer(body))
        return body


__all__ = [
    "PASSWORD_VARIABLE",
    "TOKEN_VARIABLE",
    "HTTPBackend",
    "QuartetHTTPError",
    "QuartetUnreachableError",
]
