"""
A minimal QU4RTET site for the tests: Django settings with quartet_capture
and quartet_epcis on SQLite, and a Celery app configured from them, as a
QU4RTET deployment has.

Importing the package creates the Celery app, so that quartet_capture's
shared tasks bind to it (QU4RTET's own settings package does the same).
"""

from tests.quartet_site.celery import app as celery_app

__all__ = ["celery_app"]
