"""
Tests for L{quartet_sftpd.capture.pending}: a backend's stop waits for all
the work it started, including work started while it waits.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from quartet_sftpd.capture.pending import PendingWork


def test_idle_at_once_with_nothing_in_flight() -> None:
    """
    With nothing tracked, C{when_idle} has already fired.
    """
    fired: list[object] = []
    PendingWork().when_idle().addCallback(fired.append)
    assert fired == [None]


def test_idle_waits_for_work_started_while_waiting() -> None:
    """
    C{when_idle} fires only after the last tracked Deferred, even one tracked
    after the wait began and one that failed; results pass through untouched.
    """
    work = PendingWork()
    first: Deferred[str] = Deferred()
    second: Deferred[str] = Deferred()
    seen: list[object] = []
    idle: list[object] = []

    work.track(first).addCallback(seen.append)
    work.when_idle().addCallback(idle.append)
    work.track(second).addErrback(lambda failure: seen.append(failure.value))
    first.callback("recorded")
    assert idle == [] and len(work) == 1

    error = RuntimeError("disk gone")
    second.errback(error)
    assert seen == ["recorded", error]
    assert idle == [None] and len(work) == 0
