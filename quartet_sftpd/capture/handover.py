"""
What the backends that hand uploads to QU4RTET share: a task store that is
also the outbox, and retries with backoff.

An archived upload is first recorded as a QUEUED task in this server's own
task store.  The backend then hands it over (to quartet_capture in-process,
or over QU4RTET's HTTP API); once QU4RTET has taken it, the task ends
FINISHED with the message "Queued as QU4RTET task NAME for rule RULE.", and
the rule's own outcome is QU4RTET's task.  A task QU4RTET could not take
stays QUEUED: it is handed over again at later refreshes, waiting 2, 4,
8... seconds up to five minutes between tries, at once when QU4RTET's rules
can be read again after they could not, and after a restart.  A task
QU4RTET can never take (its rule is gone, its archived bytes changed) ends
FAILED with a message that says why.

Hand-overs are at least once: if the server stops after QU4RTET took an
upload but before the task's end was written, the next start hands it over
again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from quartet_sftpd.capture import ArchivedUpload, CaptureUnavailableError
from quartet_sftpd.capture.builtin import CaptureStoppedError, IThreadPool
from quartet_sftpd.capture.pending import PendingWork
from quartet_sftpd.config import Settings
from quartet_sftpd.tasks import Task, TaskStatus, TaskStore

_T = TypeVar("_T")

#: Seconds before the first retry of a task QU4RTET could not take; each
#: further failure doubles it, up to L{RETRY_MAX}.
RETRY_FIRST = 2.0
RETRY_MAX = 300.0

#: The start of the message a handed-over task gets; recovery looks for it.
QUEUED_AS = "Queued as QU4RTET task "


class CaptureSetupError(Exception):
    """
    The backend cannot reach or set up QU4RTET from the settings; the message
    says which setting to fix.
    """


class CannotHandOverError(Exception):
    """
    An upload QU4RTET can never take; its task fails with this message
    instead of being retried.
    """


def check_archived(task: Task) -> None:
    """
    Make sure the archived file still holds the uploaded bytes.  Blocking.

    @raise CannotHandOverError: it cannot be read or its SHA-256 differs.
    """
    path = Path(task.archive_path)
    try:
        with path.open("rb") as archived:
            digest = hashlib.file_digest(archived, "sha256").hexdigest()
    except OSError as error:
        raise CannotHandOverError(
            f"The archived file {path} cannot be read ({error.strerror or error}), "
            "so it was not given to QU4RTET."
        ) from None
    if digest != task.sha256:
        raise CannotHandOverError(
            f"The archived file {path} no longer holds the bytes that were "
            "uploaded (its SHA-256 differs), so it was not given to QU4RTET."
        )


def rule_gone(task: Task) -> CannotHandOverError:
    """
    The error for a task whose rule QU4RTET no longer has.
    """
    return CannotHandOverError(
        f"QU4RTET has no rule named {task.rule!r} any more, so {task.file} was "
        f"not queued; the file is kept at {task.archive_path}. Upload it again "
        "into an existing rule folder, or restore the rule."
    )


class HandOverBackend:
    """
    The part of an L{ICaptureBackend} that records tasks and retries their
    hand-over to QU4RTET.  Subclasses say how to reach QU4RTET by
    implementing L{_set_up}, L{_fetch_rules} and L{_hand_over}.

    @cvar wait_for_hand_over: whether L{submit} fires only once QU4RTET has
        taken the upload (and fails when it could not), or as soon as the
        task is recorded, the hand-over following in the background.
    """

    log = Logger()
    wait_for_hand_over = True

    def __init__(
        self,
        settings: Settings,
        reactor: IReactorFromThreads | None = None,
        *,
        store_pool: IThreadPool | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """
        @param settings: C{db} is used here, more by subclasses.
        @param reactor: the reactor; the global one when L{None}.
        @param store_pool: the pool that writes our task store; a new
            one-thread pool when L{None}.
        @param clock: the time in seconds, for retries; the reactor's when
            L{None}.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor  # type: ignore[assignment]
        self._settings = settings
        self._reactor = reactor
        self._clock = clock or reactor.seconds  # type: ignore[union-attr]
        self._store_pool = store_pool or ThreadPool(1, 1, "quartet-sftpd-tasks")
        self._store: TaskStore | None = None
        self._rules: tuple[str, ...] = ()
        self._state = "new"
        self._refreshing = False
        self._rules_failing = False
        # When each task waiting for a retry is due, and how many tries of
        # each failed so far (kept while a retry runs, for the backoff).
        self._retries: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._delivering: set[str] = set()
        self._work = PendingWork()

    # -- what a subclass implements --

    def _set_up(self) -> Deferred[str]:
        """
        Prepare to reach QU4RTET.

        @return: a Deferred firing with a short description of where
            uploads go, for the log, or failing with L{CaptureSetupError}.
        """
        raise NotImplementedError

    def _fetch_rules(self) -> Deferred[tuple[str, ...]]:
        """
        @return: a Deferred firing with QU4RTET's rule names, sorted.
        """
        raise NotImplementedError

    def _hand_over(self, task: Task) -> Deferred[tuple[str, str | None]]:
        """
        Give one task's archived file to QU4RTET.

        @return: a Deferred firing with the QU4RTET task's name and its
            status if known, or failing with L{CannotHandOverError} if it
            never can be, or any other error if it should be tried again.
        """
        raise NotImplementedError

    def _stopped(self) -> Deferred[None] | None:
        """
        Release what L{_set_up} took; called once at the end of L{stop}.

        @return: L{None}, or a Deferred firing when that is done.
        """
        return None

    # -- the ICaptureBackend interface, called on the reactor thread --

    def rule_names(self) -> Sequence[str]:
        """
        The names of QU4RTET's rules as last read.  No I/O.
        """
        return self._rules

    def start(self) -> Deferred[None]:
        """
        Open the task store, set up the way to QU4RTET, read the rules, and
        hand over every task left QUEUED by a stop or an outage.

        @return: a Deferred that fires with L{None} once the rules are read
            (the handing over goes on after), or fails with
            L{CaptureSetupError}, or with the store's error.
        """
        if self._state != "new":
            return succeed(None)
        self._store = TaskStore(self._settings.db)
        self._store_pool.start()
        self._state = "running"
        described: list[str] = []
        d = maybeDeferred(self._set_up)
        d.addCallback(described.append)
        d.addCallback(lambda _: self._fetch_rules())

        def started(rules: tuple[str, ...]) -> None:
            self._rules = rules
            self.log.info(
                "capture into QU4RTET ({target}) started with {count} rules: {rules}",
                target=described[0],
                count=len(rules),
                rules=", ".join(rules) or "(none)",
            )
            recovered = self._in_store(self._recover)
            recovered.addCallbacks(
                self._recovered,
                lambda failure: self.log.failure(
                    "cannot look for tasks left to hand to QU4RTET in {path}",
                    failure,
                    path=str(self._settings.db),
                ),
            )

        def not_started(failure: Failure) -> Failure:
            if failure.check(CaptureSetupError):
                return failure
            where = f" ({described[0]})" if described else ""
            return Failure(
                CaptureSetupError(
                    f"QU4RTET{where} cannot be used: {_describe(failure)}. Check "
                    "the capture settings and that QU4RTET is up."
                )
            )

        d.addCallbacks(started, not_started)
        return d

    def refresh(self) -> Deferred[bool]:
        """
        Read QU4RTET's rule names again, and hand over the tasks whose retry
        is due.

        If the rules cannot be read, those read before are kept; one warning
        is logged when that starts and one line when it ends.

        @return: a Deferred firing with whether the rule names changed.
        """
        if self._state != "running":
            return succeed(False)
        self._retry_due()
        if self._refreshing:
            return succeed(False)
        self._refreshing = True
        d = self._fetch_rules()
        self._work.track(d)
        d.addCallbacks(self._rules_read, self._rules_unread)

        def done(result: bool) -> bool:
            self._refreshing = False
            return result

        d.addBoth(done)
        return d

    def submit(self, upload: ArchivedUpload) -> Deferred[str]:
        """
        Record a task for an archived upload, then hand it to QU4RTET.

        @return: a Deferred.  When L{wait_for_hand_over} is true it fires
            with the QU4RTET task's name once QU4RTET took the upload (or
            with our task's name if it never can, the task FAILED with a
            message saying why), and fails with L{CaptureUnavailableError}
            if QU4RTET could not take it now (the task is recorded and
            handed over later).  Otherwise it fires with our task's name as
            soon as the task is recorded.  It fails with
            L{CaptureStoppedError} if the backend is not running, or with
            the store's error if nothing could be recorded.
        """
        if self._state not in ("running", "stopping"):
            return fail(CaptureStoppedError("the capture engine is not running."))
        assert self._store is not None
        d = self._in_store(self._store.create, upload)
        if self.wait_for_hand_over:
            d.addCallback(self._deliver)
            return d

        def recorded(task: Task) -> str:
            delivered = self._deliver(task)
            delivered.addErrback(lambda failure: None)  # logged already
            return task.name

        d.addCallback(recorded)
        return d

    def results(self, user: str, rule: str, since: float) -> Deferred[list[Task]]:
        """
        One user's tasks in one rule received since C{since}, for the
        partner's C{@results} view.  Here a task says whether and as which
        QU4RTET task the upload was handed over; QU4RTET's own messages stay
        in QU4RTET.

        @return: a Deferred firing with the tasks, newest first.
        """
        store = self._store
        if store is None:
            return succeed([])
        return self._in_store(store.of_user, user, rule, since)

    def stop(self) -> Deferred[None]:
        """
        Stop taking work, wait for hand-overs in progress, close the store.
        Tasks not handed over yet stay QUEUED for the next start.

        @return: a Deferred firing with L{None} once everything stopped.
        """
        if self._state in ("new", "stopped", "stopping"):
            return succeed(None)
        self._state = "stopping"
        d = self._work.when_idle()

        def close(_: object) -> Deferred[None] | None:
            self._state = "stopped"
            if self._store is None:
                return None
            return deferToThreadPool(self._reactor, self._store_pool, self._store.close)

        def stop_pools(result: object) -> Deferred[None]:
            self._store_pool.stop()
            released = maybeDeferred(self._stopped)

            def stopped(_: object) -> object:
                self.log.info("capture into QU4RTET stopped")
                return result

            released.addBoth(stopped)
            return released

        d.addCallback(close)
        d.addBoth(stop_pools)
        return d

    # -- handing a task over --

    def _deliver(self, task: Task) -> Deferred[str]:
        """
        Hand one recorded task to QU4RTET and record the outcome.

        @return: a Deferred firing with the QU4RTET task's name, or our
            task's name if it failed for good, or failing with
            L{CaptureUnavailableError} after scheduling a retry.
        """
        self._delivering.add(task.name)
        self._retries.pop(task.name, None)
        d = self._hand_over(task)

        def queued(result: tuple[str, str | None]) -> Deferred[str]:
            quartet_task, status = result
            self._attempts.pop(task.name, None)
            self.log.info(
                "task {task} for rule {rule} queued as QU4RTET task "
                "{quartet_task} ({status})",
                task=task.name,
                rule=task.rule,
                user=task.user,
                quartet_task=quartet_task,
                status=status or "status not known",
            )
            recorded = self._in_store(self._record_queued, task, quartet_task, status)
            recorded.addCallback(lambda _: quartet_task)
            return recorded

        def not_queued(failure: Failure) -> Deferred[str] | Failure:
            if failure.check(CannotHandOverError):
                reason = failure.getErrorMessage()
                self._attempts.pop(task.name, None)
                self.log.warn(
                    "task {task} for rule {rule} failed: {reason}",
                    task=task.name,
                    rule=task.rule,
                    user=task.user,
                    reason=reason,
                )
                assert self._store is not None
                failed = self._in_store(self._store.fail, task.name, reason)
                failed.addCallback(lambda _: task.name)
                return failed
            return self._schedule_retry(task, failure)

        def done(result: _T) -> _T:
            self._delivering.discard(task.name)
            return result

        d.addCallbacks(queued, not_queued)
        d.addBoth(done)
        # Tracked as a whole, so that a stop waits for the outcome's record.
        self._work.track(d)
        return d

    def _schedule_retry(self, task: Task, failure: Failure) -> Failure:
        attempts = self._attempts.get(task.name, 0) + 1
        delay = min(RETRY_FIRST * 2 ** (attempts - 1), RETRY_MAX)
        self._attempts[task.name] = attempts
        if self._state == "running":
            self._retries[task.name] = self._clock() + delay
        error = _describe(failure)
        self.log.warn(
            "QU4RTET could not take task {task} for rule {rule} (try {attempts}): "
            "{error}; trying again in {delay} s",
            task=task.name,
            rule=task.rule,
            user=task.user,
            path=task.archive_path,
            attempts=attempts,
            error=error,
            delay=delay,
        )
        return Failure(
            CaptureUnavailableError(
                f"{task.file} is archived, but QU4RTET cannot queue it right now "
                f"({error}). It is kept as task {task.name} and will be queued for "
                f"rule {task.rule} automatically; do not upload it again."
            )
        )

    def _retry_due(self) -> None:
        now = self._clock()
        due = [name for name, when in self._retries.items() if when <= now]
        for name in due:
            if name in self._delivering:
                continue
            del self._retries[name]
            d = self._in_store(self._task, name)

            def retry(task: Task | None) -> Deferred[str] | None:
                if self._state != "running":
                    return None
                if task is None or task.status is not TaskStatus.QUEUED:
                    return None
                return self._deliver(task)

            d.addCallback(retry)
            # The outcome is logged where it happens; a failure here only
            # means that the next retry is scheduled.
            d.addErrback(lambda failure: None)

    # -- work done in the store pool --

    def _task(self, name: str) -> Task | None:
        assert self._store is not None
        return self._store.get(name)

    def _record_queued(self, task: Task, quartet_task: str, status: str | None) -> None:
        assert self._store is not None
        known = f" (QU4RTET status: {status})" if status else ""
        self._store.add_message(
            task.name,
            "INFO",
            f"{QUEUED_AS}{quartet_task} for rule {task.rule}{known}.",
        )
        self._store.mark_running(task.name)
        self._store.finish(task.name)

    def _recover(self) -> list[Task]:
        """
        Finish tasks a crash left after QU4RTET took them; return the others
        left QUEUED or RUNNING, to be handed over.
        """
        assert self._store is not None
        waiting = []
        for task in self._store.interrupted():
            full = self._store.get(task.name)
            if full is not None and any(
                m.text.startswith(QUEUED_AS) for m in full.messages
            ):
                if task.status is TaskStatus.QUEUED:
                    self._store.mark_running(task.name)
                self._store.finish(task.name)
            else:
                waiting.append(task)
        return waiting

    # -- back on the reactor thread --

    def _recovered(self, tasks: list[Task]) -> None:
        if tasks:
            self.log.info(
                "handing {count} tasks to QU4RTET that were left waiting",
                count=len(tasks),
            )
        now = self._clock()
        for task in tasks:
            self._retries[task.name] = now
        self._retry_due()

    def _rules_read(self, rules: tuple[str, ...]) -> bool:
        if self._rules_failing:
            self._rules_failing = False
            self.log.info("QU4RTET's rules can be read again")
            # QU4RTET is back: the tasks waiting need not wait for their turn.
            now = self._clock()
            for name in self._retries:
                self._retries[name] = now
            self._retry_due()
        changed = rules != self._rules
        if changed:
            self.log.info(
                "QU4RTET's rules changed: {rules}", rules=", ".join(rules) or "(none)"
            )
        self._rules = rules
        return changed

    def _rules_unread(self, failure: Failure) -> bool:
        if not self._rules_failing:
            self._rules_failing = True
            self.log.warn(
                "cannot read QU4RTET's rules ({error}); keeping the {count} read "
                "before: {rules}",
                error=_describe(failure),
                count=len(self._rules),
                rules=", ".join(self._rules),
            )
        return False

    # -- helpers --

    def _in_store(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        d = deferToThreadPool(self._reactor, self._store_pool, function, *args)
        return self._work.track(d)


def _describe(failure: Failure) -> str:
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"


__all__ = [
    "QUEUED_AS",
    "RETRY_FIRST",
    "RETRY_MAX",
    "CannotHandOverError",
    "CaptureSetupError",
    "CaptureUnavailableError",
    "HandOverBackend",
    "check_archived",
    "rule_gone",
]
