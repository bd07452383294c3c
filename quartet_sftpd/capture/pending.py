"""
Work in flight, so that a backend can stop only once it is all done.

A capture backend hands work to thread pools and to the network; stopping it
must wait for each of those Deferreds, including ones started while it waits
(a task record whose rule run is then scheduled, say).
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed

_T = TypeVar("_T")


class PendingWork:
    """
    The Deferreds a backend has started and that have not fired yet.
    """

    def __init__(self) -> None:
        self._pending: set[Deferred[Any]] = set()
        self._idle_waiters: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def track(self, d: Deferred[_T]) -> Deferred[_T]:
        """
        Count C{d} as in flight until it fires, with a result or a failure.

        @return: C{d} itself, its result untouched.
        """
        self._pending.add(d)

        def done(result: object) -> object:
            self._pending.discard(d)
            if not self._pending:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    waiter.callback(None)
            return result

        d.addBoth(done)
        return d

    def when_idle(self) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None} once nothing tracked is in
            flight: at once if nothing is, otherwise when the last one fires.
        """
        if not self._pending:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter


__all__ = ["PendingWork"]
