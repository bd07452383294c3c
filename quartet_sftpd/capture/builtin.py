"""
The built-in capture backend: rules from a TOML file, tasks in SQLite, rules
run on a bounded pool of threads.

Two thread pools keep the reactor free.  A one-thread I{store} pool records
tasks and reloads the rules file, so that a CLOSE is answered as soon as its
task is on disk.  A I{rule} pool of C{settings.rule_workers} threads runs the
rules; a slow rule delays other rules, never an upload.

A task runs its rule as loaded when the run starts, not when the file was
uploaded.  Runs are at least once: a task left QUEUED or RUNNING by a crash
or a stop runs again, from its first step, when the backend next starts.
The rule gets the whole file in memory, as quartet_capture rules do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from quartet_sftpd.capture import ArchivedUpload, UploadRejected
from quartet_sftpd.capture.pending import PendingWork
from quartet_sftpd.config import Settings
from quartet_sftpd.rules import Rule, RuleContext, RuleFailed, RulesError, load_rules
from quartet_sftpd.tasks import Task, TaskLog, TaskStatus, TaskStore

if TYPE_CHECKING:
    from quartet_sftpd.metrics import Metrics

_T = TypeVar("_T")


class IThreadPool(Protocol):
    """
    The part of L{ThreadPool} the backend uses; tests pass a synchronous one.
    """

    def start(self) -> None:
        """
        Start the threads.
        """

    def stop(self) -> None:
        """
        Stop the threads, waiting for them to end.
        """

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, Any], object],
        func: Callable[..., Any],
        *args: Any,
        **kw: Any,
    ) -> None:
        """
        Run C{func} in a thread and pass the outcome to C{onResult}.
        """


class CaptureStoppedError(Exception):
    """
    The backend is not running, so it cannot record the upload.
    """


@dataclass(frozen=True)
class _Outcome:
    task: str
    rule: str
    user: str
    status: TaskStatus
    ms: int
    reason: str = ""
    #: When a quick check failed: what the client is told.
    rejected: str | None = None


# The rules file's identity: (mtime, size, inode) or (None, errno, None) if
# it cannot be read.  A change in any part means the file has to be read again.
_Signature = tuple[Any, ...]


def _signature_of(path: Path) -> _Signature:
    try:
        stat = os.stat(path)
    except OSError as error:
        return (None, error.errno, None)
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _utc(moment: float) -> str:
    """
    A time as partners read it: C{2026-12-03 19:33:28 UTC}.
    """
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


def _rule_gone(rule: str, upload_name: str, archive_path: str) -> str:
    return (
        f"The rule {rule!r} no longer exists, so nothing was run on {upload_name}; "
        f"the file is kept at {archive_path}. Upload it again into an existing "
        "rule folder, or restore the rule."
    )


class BuiltinBackend:
    """
    The L{ICaptureBackend} that runs this package's rules engine.
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        reactor: IReactorFromThreads | None = None,
        *,
        store_pool: IThreadPool | None = None,
        rule_pool: IThreadPool | None = None,
    ) -> None:
        """
        @param settings: C{rules}, C{db} and C{rule_workers} are used.
        @param reactor: the reactor; the global one when L{None}.
        @param store_pool: the pool that records tasks and reads the rules
            file; a new one-thread pool when L{None}.
        @param rule_pool: the pool that runs rules; a new pool of
            C{settings.rule_workers} threads when L{None}.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor  # type: ignore[assignment]
        self._settings = settings
        self._reactor = reactor
        self._store_pool = store_pool or ThreadPool(1, 1, "quartet-sftpd-tasks")
        self._rule_pool = rule_pool or ThreadPool(
            0, settings.rule_workers, "quartet-sftpd-rules"
        )
        self._store: TaskStore | None = None
        self._rules: dict[str, Rule] = {}
        self._signature: _Signature | None = None
        self._state = "new"
        self._refreshing = False
        self._work = PendingWork()
        self._scheduled: set[str] = set()
        self._check_waiters: dict[str, Deferred[str]] = {}
        #: Where task outcomes are counted for the metrics endpoint, if anywhere.
        self.metrics: Metrics | None = None

    # -- the ICaptureBackend interface, called on the reactor thread --

    def rule_names(self) -> Sequence[str]:
        """
        The names of the rules last loaded, in file order.  No I/O.
        """
        return tuple(self._rules)

    def start(self) -> Deferred[None]:
        """
        Load the rules, open the task store, start the pools, and run again
        every task a crash or a stop left QUEUED or RUNNING.

        The rules file and the store are read before this returns (the
        server is not serving yet), so L{rule_names} is right at once and a
        broken rules file or database stops the server from starting.

        @return: a Deferred that fires with L{None} once the interrupted
            tasks are queued again.
        @raise RulesError: the rules file cannot be read or is invalid.
        @raise TaskStoreError: the task database cannot be opened.
        """
        if self._state != "new":
            return succeed(None)
        signature = _signature_of(self._settings.rules)
        rules = load_rules(self._settings.rules)
        self._store = TaskStore(self._settings.db)
        self._rules, self._signature = rules, signature
        self._store_pool.start()
        self._rule_pool.start()
        self._state = "running"
        self.log.info(
            "capture engine started with rules from {path}: {rules}",
            count=len(rules),
            path=str(self._settings.rules),
            rules=", ".join(rules) or "(none)",
        )
        d = self._in_store(self._recover)
        d.addCallbacks(
            self._recovered,
            lambda failure: self.log.failure(
                "cannot look for tasks a restart interrupted in {path}",
                failure,
                path=str(self._settings.db),
            ),
        )
        return d

    def refresh(self) -> Deferred[bool]:
        """
        Read the rules file again if its time, size or inode changed, and
        run the QUEUED tasks nobody runs yet (an operator's C{tasks retry}
        puts a task back in the queue from another process).

        A file that cannot be read or has an error keeps the rules loaded
        before in place; one warning is logged for each change to the file.

        @return: a Deferred firing with whether the rule names changed.
        """
        if self._state != "running" or self._refreshing:
            return succeed(False)
        self._refreshing = True
        d = self._in_store(self._read_rules, self._signature)
        d.addCallback(self._rules_read)
        d.addCallback(self._run_requeued)

        def done(result: object) -> object:
            self._refreshing = False
            return result

        d.addBoth(done)
        return d

    def submit(self, upload: ArchivedUpload) -> Deferred[str]:
        """
        Record a task for an archived upload, then queue its rule.

        If the upload's rule no longer exists, the task is still recorded,
        as FAILED with a message saying so, and the Deferred still fires with
        its name: the upload is safe and accounted for.

        @return: a Deferred firing with the task's name once the task is on
            disk, before the rule runs; it fails with L{CaptureStoppedError}
            if the backend is not running, or with the store's error if the
            task could not be recorded.
        """
        if self._state not in ("running", "stopping"):
            return fail(CaptureStoppedError("the capture engine is not running."))
        rule = self._rules.get(upload.rule)
        d = self._in_store(self._record, upload, rule is not None)
        if rule is None:
            d.addCallback(self._rule_gone_logged, upload)
            return d
        d.addCallback(lambda recorded: self._apply_policy(rule, upload, *recorded))
        return d

    def _rule_gone_logged(
        self, recorded: tuple[str, Task | None], upload: ArchivedUpload
    ) -> str:
        name, _ = recorded
        self.log.warn(
            "task {task} for rule {rule} failed: the rule no longer exists",
            task=name,
            rule=upload.rule,
            user=upload.user,
            path=str(upload.archive_path),
        )
        return name

    def _apply_policy(
        self, rule: Rule, upload: ArchivedUpload, name: str, earlier: Task | None
    ) -> Deferred[str] | str:
        """
        Act on the rule's duplicate policy, then run the rule; the result
        fires once the task is settled enough to answer the client's CLOSE.
        """
        if earlier is not None:
            seen = (
                f"The same bytes were uploaded to {rule.name} before, as "
                f"{earlier.file} at {_utc(earlier.received)} (task {earlier.name})"
            )
            if rule.duplicates == "accept":
                d = self._in_store(
                    self._store_call,
                    "add_message",
                    name,
                    "INFO",
                    f"{seen}; the rule runs again, as it accepts duplicates.",
                )
                d.addCallback(lambda _: self._run_with_checks(rule, upload, name))
                return d
            note = f"{seen}; the rule was not run, as it {rule.duplicates}s duplicates."
            d = self._in_store(self._store_call, "mark_duplicate", name, note)
            self.log.info(
                "task {task}: {user}'s {file} for rule {rule} is a duplicate of "
                "task {earlier} ({policy})",
                task=name,
                user=upload.user,
                file=upload.name,
                rule=rule.name,
                earlier=earlier.name,
                policy=rule.duplicates,
            )
            if self.metrics is not None:
                self.metrics.task_ended(rule.name, TaskStatus.DUPLICATE.value, None)
            if rule.duplicates == "skip":
                return d.addCallback(lambda _: name)
            message = (
                f"{rule.name} rejected {upload.name}: the same file was uploaded "
                f"before, as {earlier.file} at {_utc(earlier.received)}."
            )
            return d.addCallback(lambda _: fail(UploadRejected(message, name)))
        return self._run_with_checks(rule, upload, name)

    def _run_with_checks(
        self, rule: Rule, upload: ArchivedUpload, name: str
    ) -> Deferred[str] | str:
        """
        Schedule the rule.  When it starts with quick checks, the result
        waits for them (at most C{check_timeout} seconds, then the checks go
        on like the other steps and their outcome shows only in the task).
        """
        if not rule.has_checks:
            self._schedule(name)
            return name
        waiter: Deferred[str] = Deferred()
        self._check_waiters[name] = waiter
        self._schedule(name)
        if not waiter.called:
            timer = self._reactor.callLater(  # type: ignore[attr-defined]
                self._settings.check_timeout, self._checks_done, name, None
            )

            def stop_timer(result: object) -> object:
                if timer.active():
                    timer.cancel()
                return result

            waiter.addBoth(stop_timer)
        return waiter

    def _checks_done(self, name: str, rejected: str | None) -> None:
        """
        Answer the CLOSE that waits for a task's checks, if one still does.
        """
        waiter = self._check_waiters.pop(name, None)
        if waiter is None or waiter.called:
            return
        if rejected is None:
            waiter.callback(name)
        else:
            waiter.errback(UploadRejected(rejected, name))

    def results(self, user: str, rule: str, since: float) -> Deferred[list[Task]]:
        """
        One user's tasks in one rule received since C{since}, with their
        messages, for the partner's C{@results} view.

        @return: a Deferred firing with the tasks, newest first.
        """
        if self._store is None:
            return succeed([])
        return self._in_store(self._store_call, "of_user", user, rule, since)

    def stop(self) -> Deferred[None]:
        """
        Stop taking work: wait for running rules and task records to end,
        then close the store and stop the pools.  Tasks still queued stay
        QUEUED in the store and run at the next start.

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

        def stop_pools(result: object) -> object:
            # Idle by now, so joining their threads is quick.
            self._store_pool.stop()
            self._rule_pool.stop()
            self.log.info("capture engine stopped")
            return result

        d.addCallback(close)
        d.addBoth(stop_pools)
        return d

    # -- work done in the store pool --

    def _recover(self) -> list[str]:
        assert self._store is not None
        interrupted = self._store.interrupted()
        for task in interrupted:
            self._store.add_message(
                task.name,
                "INFO",
                f"Recovered after a restart: the task was {task.status.value} "
                "when the server stopped, so its rule runs again.",
            )
        return [task.name for task in interrupted]

    def _read_rules(
        self, previous: _Signature | None
    ) -> tuple[_Signature, dict[str, Rule] | None, RulesError | None] | None:
        path = self._settings.rules
        signature = _signature_of(path)
        if signature == previous:
            return None
        try:
            return signature, load_rules(path), None
        except RulesError as error:
            return signature, None, error

    def _store_call(self, method: str, *args: Any) -> Any:
        assert self._store is not None
        return getattr(self._store, method)(*args)

    def _record(
        self, upload: ArchivedUpload, rule_known: bool
    ) -> tuple[str, Task | None]:
        """
        Record the upload's task and, in the same trip to the store thread,
        look for an earlier upload of the same bytes to the same rule.

        @return: the task's name and the earlier task, if there is one.
        """
        assert self._store is not None
        task = self._store.create(upload)
        if not rule_known:
            self._store.fail(
                task.name,
                _rule_gone(upload.rule, upload.name, str(upload.archive_path)),
            )
            return task.name, None
        since = upload.received - self._settings.duplicate_window
        return task.name, self._store.find_duplicate(task.name, since)

    # -- back on the reactor thread --

    def _recovered(self, names: list[str]) -> None:
        if names:
            self.log.info(
                "running {count} tasks again that a restart interrupted",
                count=len(names),
            )
        for name in names:
            self._schedule(name)

    def _run_requeued(self, changed: bool) -> Deferred[bool]:
        assert self._store is not None
        d = self._in_store(self._store.queued)

        def schedule(names: list[str]) -> bool:
            # A task recorded by submit() is scheduled before this answer
            # arrives (the store pool is one thread, its answers come back in
            # order), so only tasks queued from outside are new here.
            for name in names:
                if name not in self._scheduled:
                    self.log.info("task {task} was queued again; running it", task=name)
                    self._schedule(name)
            return changed

        d.addCallback(schedule)
        return d

    def _rules_read(
        self,
        result: tuple[_Signature, dict[str, Rule] | None, RulesError | None] | None,
    ) -> bool:
        if result is None:
            return False
        signature, rules, error = result
        self._signature = signature
        if rules is None:
            self.log.warn(
                "{error} Keeping the {count} rules loaded before: {rules}",
                error=str(error),
                count=len(self._rules),
                rules=", ".join(self._rules),
                path=str(self._settings.rules),
            )
            return False
        changed = list(rules) != list(self._rules)
        self._rules = rules
        self.log.info(
            "rules reloaded from {path}: {rules}",
            path=str(self._settings.rules),
            rules=", ".join(rules) or "(none)",
        )
        return changed

    def _schedule(self, name: str) -> None:
        if self._state != "running" or name in self._scheduled:
            # Stays QUEUED in the store; the next start runs it.
            return
        self._scheduled.add(name)
        d = deferToThreadPool(self._reactor, self._rule_pool, self._run, name)
        d.addBoth(self._unschedule, name)
        d.addCallbacks(
            self._log_outcome,
            lambda failure: self.log.failure(
                "task {task} could not be run; it runs again at the next start",
                failure,
                task=name,
            ),
        )
        self._work.track(d)

    def _unschedule(self, result: _T, name: str) -> _T:
        self._scheduled.discard(name)
        rejected = result.rejected if isinstance(result, _Outcome) else None
        self._checks_done(name, rejected)
        return result

    def _log_outcome(self, outcome: _Outcome | None) -> None:
        if outcome is None:
            return
        if self.metrics is not None:
            status = outcome.status.value
            self.metrics.task_ended(outcome.rule, status, outcome.ms / 1000)
        if outcome.status is TaskStatus.FINISHED:
            self.log.info(
                "task {task} for rule {rule} finished in {ms} ms",
                task=outcome.task,
                rule=outcome.rule,
                user=outcome.user,
                ms=outcome.ms,
            )
        else:
            self.log.info(
                "task {task} for rule {rule} failed after {ms} ms: {reason}",
                task=outcome.task,
                rule=outcome.rule,
                user=outcome.user,
                ms=outcome.ms,
                reason=outcome.reason,
            )

    # -- work done in the rule pool --

    def _run(self, name: str) -> _Outcome | None:
        if self._state != "running" or self._store is None:
            return None
        store = self._store
        task = store.get(name)
        if task is None or task.status not in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            return None
        began = time.monotonic()

        def ended(status: TaskStatus, reason: str = "") -> _Outcome:
            ms = round((time.monotonic() - began) * 1000)
            return _Outcome(task.name, task.rule, task.user, status, ms, reason)

        rule = self._rules.get(task.rule)
        if rule is None:
            reason = _rule_gone(task.rule, task.file, task.archive_path)
            store.fail(name, reason, durable=False)
            return ended(TaskStatus.FAILED, reason)
        store.mark_running(name, durable=False)
        try:
            data = Path(task.archive_path).read_bytes()
        except OSError as error:
            reason = (
                f"The archived file {task.archive_path} cannot be read: "
                f"{error.strerror or error}."
            )
            store.fail(name, reason, durable=False)
            return ended(TaskStatus.FAILED, reason)
        if hashlib.sha256(data).hexdigest() != task.sha256:
            reason = (
                f"The archived file {task.archive_path} no longer holds the bytes "
                "that were uploaded (its SHA-256 differs), so the rule was not run."
            )
            store.fail(name, reason, durable=False)
            return ended(TaskStatus.FAILED, reason)

        context = RuleContext(
            rule.name,
            name,
            {
                RuleContext.USER: task.user,
                RuleContext.ORIGINAL_NAME: task.file,
                RuleContext.ARCHIVE_PATH: Path(task.archive_path),
                RuleContext.SIZE: task.size,
                RuleContext.SHA256: task.sha256,
            },
        )

        def checks_passed() -> None:
            self._reactor.callFromThread(self._checks_done, name, None)

        try:
            rule.run(TaskLog(store, name), data, context, checks_passed)
        except RuleFailed as failure:
            store.fail(name, durable=False)
            outcome = ended(TaskStatus.FAILED, str(failure))
            if failure.in_checks:
                rejected = f"{rule.name} rejected {task.file}: {failure.detail}"
                outcome = dataclasses.replace(outcome, rejected=rejected)
            return outcome
        store.finish(name, durable=False)
        return ended(TaskStatus.FINISHED)

    # -- helpers --

    def _in_store(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        d = deferToThreadPool(self._reactor, self._store_pool, function, *args)
        return self._work.track(d)


__all__ = ["BuiltinBackend", "CaptureStoppedError", "IThreadPool"]
