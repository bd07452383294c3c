"""
Small stand-ins for tests that run without sockets or threads.

They replace only what a unit test must control (threads, the clock, the
capture backend), never the code under test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from quartet_sftpd.capture import ArchivedUpload


class ImmediateThreadPool:
    """
    A thread pool that runs each call at once, in the calling thread.
    """

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None],
        f: Callable[..., Any],
        *a: Any,
        **kw: Any,
    ) -> None:
        try:
            result = f(*a, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def callInThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class HeldThreadPool:
    """
    A thread pool that keeps each call until the test runs it, in the
    calling thread, with L{run_all}: the test decides what happens while
    work is in progress.
    """

    def __init__(self) -> None:
        self.waiting: list[
            tuple[Callable[[bool, Any], None], Callable[..., Any], tuple]
        ]
        self.waiting = []

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None],
        f: Callable[..., Any],
        *a: Any,
        **kw: Any,
    ) -> None:
        self.waiting.append((on_result, lambda: f(*a, **kw), ()))

    def run_all(self) -> int:
        """
        Run the calls waiting, and those they lead to, until none is left.

        @return: how many ran.
        """
        ran = 0
        while self.waiting:
            on_result, call, _ = self.waiting.pop(0)
            ran += 1
            ImmediateThreadPool().callInThreadWithCallback(on_result, call)
        return ran


class ImmediateReactor:
    """
    A reactor whose callFromThread runs the call at once.
    """

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)


class RecordingBackend:
    """
    A capture backend that records what it is given.

    @ivar submitted: the uploads submitted, in order.
    @ivar refuse: when set, submit fails with this exception.
    """

    def __init__(self, rules: Sequence[str] = ("EPCIS",)) -> None:
        self.rules = list(rules)
        self.submitted: list[ArchivedUpload] = []
        self.refuse: Exception | None = None

    def rule_names(self) -> Sequence[str]:
        return self.rules

    def refresh(self) -> bool:
        return False

    def submit(self, upload: ArchivedUpload) -> Deferred[str]:
        if self.refuse is not None:
            return fail(self.refuse)
        self.submitted.append(upload)
        return succeed(f"task-{len(self.submitted)}")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ClockReactor:
    """
    A reactor with a controllable clock (L{twisted.internet.task.Clock})
    whose callFromThread runs the call at once.
    """

    def __init__(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.callLater = self.clock.callLater
        self.advance = self.clock.advance

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)
