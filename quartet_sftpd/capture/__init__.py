"""
What the SFTP side hands to a capture backend, and what it expects back.

The SFTP side knows nothing of how rules run.  It asks a backend for the
current rule names (to show one folder per rule) and, once an upload is
safely archived, submits it.  A backend records a task for it and runs the
rule later, off the reactor thread; the client's CLOSE is answered only when
L{ICaptureBackend.submit} has fired, so a successful CLOSE means the task is
durably recorded.

Three backends implement this: C{builtin} (the engine in this package),
C{quartet} (quartet_capture in-process) and C{http} (QU4RTET's capture API).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from twisted.internet.defer import Deferred


@dataclass(frozen=True)
class ArchivedUpload:
    """
    A complete upload, already fsynced and moved into the archive.

    @ivar user: the SFTP user who uploaded it.
    @ivar rule: the name of the rule (not its folder name).
    @ivar name: the file name the client gave it (after any rename).
    @ivar archive_path: where the bytes are, absolute.
    @ivar size: number of bytes.
    @ivar sha256: hex digest of exactly the archived bytes.
    @ivar received: POSIX time of the client's CLOSE (or completing RENAME).
    """

    user: str
    rule: str
    name: str
    archive_path: Path
    size: int
    sha256: str
    received: float


class RuleGoneError(Exception):
    """
    The upload's rule no longer exists.  The backend still records the task,
    as FAILED with a message that says so, so that nothing is lost.
    """


class UploadRejected(Exception):
    """
    The backend recorded the upload but refuses it, for a reason the client
    should read in its CLOSE reply: a quick check failed, or the same bytes
    came before and the rule rejects duplicates.  The bytes stay archived
    and the task records why.

    @ivar task: the name of the task that records the refusal.
    """

    def __init__(self, message: str, task: str) -> None:
        super().__init__(message)
        self.message = message
        self.task = task


class CaptureUnavailableError(Exception):
    """
    QU4RTET could not take an upload now.  The upload is archived and its
    task recorded; the backend hands it over again later by itself.  The
    message is meant for the client.
    """


class ICaptureBackend(Protocol):
    """
    A place where archived uploads become capture tasks.
    """

    def rule_names(self) -> Sequence[str]:
        """
        The names of the rules uploads can go to right now.

        Called on the reactor thread for every path lookup, so it must be
        cheap: return what was last loaded, never do I/O here.
        """

    def refresh(self) -> Deferred[bool] | bool:
        """
        Reload the rules if their source changed.

        @return: (or a Deferred firing with) whether the rule names changed.
        """

    def submit(self, upload: ArchivedUpload) -> Deferred[str]:
        """
        Record a task for an archived upload and arrange for its rule to run.

        @return: a Deferred that fires with the task name once the task is
            durably recorded (the rule runs later, not before this fires,
            except for its quick checks), or fails with L{UploadRejected}
            when a check or the duplicate policy refuses the upload, or with
            the reason it could not be recorded.
        """

    def start(self) -> Deferred[None] | None:
        """
        Open stores and thread pools, re-queue tasks interrupted by a crash.
        """

    def stop(self) -> Deferred[None] | None:
        """
        Stop taking work and wait for running rules to finish.
        """
