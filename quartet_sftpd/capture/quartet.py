"""
The C{quartet} capture backend: QU4RTET's quartet_capture, in this process.

The rule folders are quartet_capture's C{Rule} rows, read again at every
refresh, so a rule added in QU4RTET's admin shows up within
C{reload_interval} seconds.  An archived upload is recorded as a task in our
task store, then handed to quartet_capture's C{create_and_queue_task} (task
type C{Input}, with our task's name, the SFTP user, file name, archive path
and SHA-256 as task parameters), which saves a copy of the bytes in
Django's storage and queues the rule to Celery.  The CLOSE is answered once
QU4RTET took it, with the QU4RTET task's name in our task and log; see
L{quartet_sftpd.capture.handover} for retries.

Django runs in a pool of C{rule_workers} threads, never on the reactor
thread.  Each call closes the thread's database connection when Django
would close it at the end of a request (C{close_old_connections}), so a
restarted database is found again at the next call.

When the database (or Celery's broker) cannot take the upload, the CLOSE
fails after the bytes are archived and the task recorded, and the task is
handed over later by itself.  A client that uploads the file again after
such a failed CLOSE makes a second task.  C{create_and_queue_task} saves
QU4RTET's task before it sends it to the broker, so a broker outage leaves
a QUEUED QU4RTET task behind: the next try finds it by its
C{quartet_sftpd_task} parameter and sends that one again, rather than
making a second.

Known limits, from quartet_capture's own design:
 - A database failure in the middle of C{create_and_queue_task} can leave a
   QU4RTET task without its parameters, which the next try cannot find; it
   stays QUEUED in QU4RTET beside the one the try makes.
 - Immediate runs are configured in QU4RTET's Celery settings
   (C{CELERY_TASK_ALWAYS_EAGER = True}), not with C{run_immediately}, whose
   errors cannot be told from a database outage; in eager mode the rule runs
   before the CLOSE is answered.
 - The settings module's package must create QU4RTET's Celery app (as
   QU4RTET's own C{config} package does), or quartet_capture's tasks go to
   Celery's default broker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from quartet_sftpd.capture.builtin import IThreadPool
from quartet_sftpd.capture.handover import (
    CaptureSetupError,
    HandOverBackend,
    check_archived,
    rule_gone,
)
from quartet_sftpd.config import Settings
from quartet_sftpd.tasks import Task

_T = TypeVar("_T")

#: The QU4RTET task parameter that names our task, so that a try after a
#: failed one finds the QU4RTET task it may have left.
SFTP_TASK = "quartet_sftpd_task"


def _settings_module(settings: Settings) -> str:
    module = getattr(settings, "django_settings", None) or os.environ.get(
        "DJANGO_SETTINGS_MODULE"
    )
    if not module:
        raise CaptureSetupError(
            "capture = 'quartet' needs QU4RTET's Django settings module: set "
            "django_settings (or DJANGO_SETTINGS_MODULE), for example "
            "django_settings = 'config.settings.production'."
        )
    return module


class QuartetBackend(HandOverBackend):
    """
    The L{ICaptureBackend} that queues uploads into quartet_capture in this
    process.
    """

    wait_for_hand_over = True

    def __init__(
        self,
        settings: Settings,
        reactor: IReactorFromThreads | None = None,
        *,
        store_pool: IThreadPool | None = None,
        django_pool: IThreadPool | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """
        @param settings: C{db}, C{rule_workers} and C{django_settings} (or
            the C{DJANGO_SETTINGS_MODULE} environment variable) are used.
        @param reactor: the reactor; the global one when L{None}.
        @param store_pool: the pool that writes our task store; a new
            one-thread pool when L{None}.
        @param django_pool: the pool Django runs in; a new pool of
            C{settings.rule_workers} threads when L{None}.
        @param clock: the time in seconds, for retries; the reactor's when
            L{None}.
        """
        super().__init__(settings, reactor, store_pool=store_pool, clock=clock)
        self._django_pool = django_pool or ThreadPool(
            0, max(1, settings.rule_workers), "quartet-sftpd-django"
        )

    def _set_up(self) -> Deferred[str]:
        module = _settings_module(self._settings)
        self._django_pool.start()
        d = self._in_django(_set_up_django, module)
        d.addCallback(lambda _: f"Django settings {module}")
        return d

    def _fetch_rules(self) -> Deferred[tuple[str, ...]]:
        return self._in_django(_read_rules)

    def _hand_over(self, task: Task) -> Deferred[tuple[str, str | None]]:
        return self._in_django(_queue_in_quartet, task)

    def _stopped(self) -> None:
        self._django_pool.stop()

    def _in_django(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        return deferToThreadPool(self._reactor, self._django_pool, function, *args)


# -- Django, called in the Django pool only --


def _set_up_django(module: str) -> None:
    """
    Point Django at QU4RTET's settings and load its apps.

    @raise CaptureSetupError: Django or the settings module cannot be loaded.
    """
    os.environ["DJANGO_SETTINGS_MODULE"] = module
    try:
        import django

        django.setup()
        import quartet_capture.tasks  # noqa: F401
    except ImportError as error:
        missing = error.name or ""
        if missing and (module == missing or module.startswith(missing + ".")):
            raise CaptureSetupError(
                f"the Django settings module {module} cannot be imported ({error}): "
                "check django_settings, and run the server from QU4RTET's folder "
                "or put that folder on PYTHONPATH."
            ) from None
        raise CaptureSetupError(
            f"capture = 'quartet' cannot import {missing or module} ({error}): "
            "install quartet-sftpd[quartet] and QU4RTET's packages in the "
            "server's Python environment."
        ) from None


def _read_rules() -> tuple[str, ...]:
    from django.db import close_old_connections
    from quartet_capture.models import Rule

    close_old_connections()
    try:
        return tuple(Rule.objects.order_by("name").values_list("name", flat=True))
    finally:
        close_old_connections()


def _queue_in_quartet(task: Task) -> tuple[str, str | None]:
    """
    Give an archived upload to C{create_and_queue_task}.

    @return: the QU4RTET task's name and its status right after queuing
        (FINISHED or FAILED already when Celery runs tasks eagerly).
    @raise CannotHandOverError: the rule no longer exists, or the archived
        file is gone or changed.
    """
    from django.contrib.auth import get_user_model
    from django.core.files import File
    from django.db import close_old_connections
    from quartet_capture.errors import RuleNotFound
    from quartet_capture.models import TaskParameter
    from quartet_capture.tasks import create_and_queue_task

    check_archived(task)
    path = Path(task.archive_path)
    close_old_connections()
    try:
        # A QU4RTET user of the same name as the SFTP user is named in the
        # task's history, as if they had posted the file to the capture API.
        user_id = (
            get_user_model()
            .objects.filter(username=task.user)
            .values_list("id", flat=True)
            .first()
        )
        earlier = _earlier_quartet_task(task)
        if earlier is not None:
            return earlier, _queue_again(earlier, user_id)
        parameters = [
            TaskParameter(name=name, value=value, description=description)
            for name, value, description in (
                (SFTP_TASK, task.name, "The quartet-sftpd task of the upload."),
                ("sftp_user", task.user, "The SFTP user who uploaded the file."),
                ("file_name", task.file, "The file name the client gave."),
                ("archive_path", task.archive_path, "The archived copy."),
                ("sha256", task.sha256, "SHA-256 of the uploaded bytes."),
            )
        ]
        with path.open("rb") as archived:
            try:
                queued = create_and_queue_task(
                    File(archived, name=task.file),
                    task.rule,
                    task_type="Input",
                    task_parameters=parameters,
                    user_id=user_id,
                )
            except RuleNotFound:
                raise rule_gone(task) from None
        return queued.name, _status(queued.name)
    finally:
        close_old_connections()


def _status(name: str) -> str | None:
    from quartet_capture.models import Task as QuartetTask

    return (
        QuartetTask.objects.filter(name=name).values_list("status", flat=True).first()
    )


def _earlier_quartet_task(task: Task) -> str | None:
    """
    The QU4RTET task an earlier try made for this upload, if any.

    C{create_and_queue_task} saves the task, its data and its parameters
    before it sends the task to Celery's broker; when the broker refused
    it, the try failed but the task exists, QUEUED, and is found here.
    """
    from quartet_capture.models import Task as QuartetTask

    return (
        QuartetTask.objects.filter(
            taskparameter__name=SFTP_TASK, taskparameter__value=task.name
        )
        .values_list("name", flat=True)
        .first()
    )


def _queue_again(name: str, user_id: int | None) -> str | None:
    """
    Send an earlier try's QU4RTET task to Celery again if it never ran.

    @return: its status afterwards.
    """
    from quartet_capture.tasks import execute_queued_task

    if _status(name) == "QUEUED":
        execute_queued_task.delay(task_name=name, user_id=user_id)
    return _status(name)


__all__ = ["SFTP_TASK", "QuartetBackend"]
