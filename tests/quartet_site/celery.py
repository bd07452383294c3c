"""
The Celery app of the test site, configured from the Django settings'
C{CELERY_} names, with the tasks of the installed apps (quartet_capture's
C{execute_queued_task}) registered.  The in-process tests run it eagerly: a
queued task runs in the thread that queued it, with no broker; the
scale-out test runs a worker on a Redis broker.
"""

from __future__ import annotations

from celery import Celery

app = Celery("quartet_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
