"""
Hashing an upload while it arrives, so that the CLOSE of a large file does not
wait for the whole file to be read again.

The CLOSE reply of an upload waits for its SHA-256 and its fsync.  Read back
and hashed only then, a 512 MiB upload kept its client waiting a third of a
second after the last byte, most of it hashing.  A L{RunningDigest} follows
the upload instead: whenever the bytes received without a hole from the start
have grown by L{FOLLOW_STEP}, a thread of the archive's pool reads the new
part from the page cache and adds it to the hash, and every L{FLUSH_STEP} it
also flushes the file, so that the final fsync has little left to write.  At
the CLOSE only the tail is left to hash.

Whatever the client does, the digest is of exactly the bytes on disk: a
WRITE or a truncation below what was hashed (or is being hashed) makes the
running hash useless, and the commit then hashes the whole file again.  A
failed flush is kept and fails the commit, since a later fsync may no longer
report it (Linux clears a file's write error once it is reported).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

#: New contiguous bytes that make it worth a trip to the pool to hash them.
FOLLOW_STEP = 4 << 20
#: Bytes hashed since the last flush that make the next step flush too.
FLUSH_STEP = 64 << 20
_CHUNK = 1 << 20

#: Runs a blocking call in the archive's thread pool: C{run(f, *args)}
#: returns a Deferred firing with C{f(*args)}.
RunInPool = Callable[..., Deferred[Any]]


class RunningDigest:
    """
    The SHA-256 of a staging file's first bytes, kept up as they arrive.

    Everything but the work it hands to the pool runs on the reactor thread,
    and at most one piece of that work runs at a time.

    @ivar valid: whether the running hash can still be finished; once false
        it stays false and L{finish} hashes the whole file.
    """

    _log = Logger()

    def __init__(
        self,
        run_in_pool: RunInPool,
        follow_step: int = FOLLOW_STEP,
        flush_step: int = FLUSH_STEP,
    ) -> None:
        """
        @param run_in_pool: runs the hashing and flushing off the reactor.
        @param follow_step: new contiguous bytes that start a step.
        @param flush_step: bytes since the last flush that make a step flush.
        """
        self._run = run_in_pool
        self._follow_step = follow_step
        self._flush_step = flush_step
        self._hash = hashlib.sha256()
        #: Bytes from the start that are in the hash.
        self._done = 0
        #: End of the bytes hashed or being hashed.
        self._target = 0
        self._flushed = 0
        self._busy: Deferred[None] | None = None
        self._flush_error: OSError | None = None
        self.valid = True

    def wrote(self, fd: int, offset: int, contiguous: int) -> None:
        """
        Bytes were written at C{offset}; the file now holds C{contiguous}
        bytes from the start without a hole.  Starts hashing the new part
        when it is large enough and nothing else is being hashed.
        """
        if offset < self._target:
            self.valid = False
        if not self.valid or self._busy is not None:
            return
        if contiguous - self._done < self._follow_step:
            return
        start, self._target = self._done, contiguous
        flush = contiguous - self._flushed >= self._flush_step
        busy = self._run(self._advance, fd, start, contiguous, flush)
        self._busy = busy
        busy.addCallbacks(
            self._advanced,
            self._not_advanced,
            callbackArgs=(contiguous, flush),
            errbackArgs=(flush,),
        )

    def truncated(self, size: int) -> None:
        """
        The file was cut to C{size} bytes.
        """
        if size < self._target:
            self.valid = False

    def settled(self) -> Deferred[None]:
        """
        @return: a Deferred firing with None once no hashing is in progress,
            so that the descriptor may be handed to a commit or closed.
        """
        if self._busy is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()

        def over(result: object) -> object:
            waiter.callback(None)
            return result

        self._busy.addBoth(over)
        return waiter

    def finish(self, fd: int) -> tuple[int, str]:
        """
        Hash what is left of the file and return its size and hex SHA-256.
        Blocking: call it in a thread, after L{settled} fired.

        @raise OSError: reading failed, or an earlier flush failed.
        """
        if self._flush_error is not None:
            raise self._flush_error
        if not self.valid:
            self._hash, self._done = hashlib.sha256(), 0
        size = _hash_from(fd, self._hash, self._done)
        return size, self._hash.hexdigest()

    def _advance(self, fd: int, start: int, end: int, flush: bool) -> int:
        # In a pool thread; the reactor thread leaves the hash alone while
        # this runs (at most one runs, and finish waits for it).
        reached = _hash_from(fd, self._hash, start, end)
        if flush:
            self._flush(fd)
        return reached

    def _flush(self, fd: int) -> None:
        """
        Write the file's bytes so far to the disk, without waiting for its
        metadata (the commit's fsync does that).
        """
        os.fdatasync(fd)

    def _advanced(self, reached: int, end: int, flush: bool) -> None:
        self._busy = None
        self._done = reached
        if reached != end:
            # The file was shorter than its bytes received said: cut since.
            self.valid = False
        if flush:
            self._flushed = end

    def _not_advanced(self, failure: Failure, flush: bool) -> None:
        self._busy = None
        self.valid = False
        error = failure.value
        if flush and isinstance(error, OSError):
            # Reading can simply be retried at the commit; a flush error
            # may never be reported again.
            self._flush_error = error
        self._log.warn(
            "hashing an upload as it arrived failed: {error}; it is hashed "
            "again at its CLOSE",
            error=str(error),
        )


def hash_file(fd: int) -> tuple[int, str]:
    """
    Read a whole file from its descriptor and return its size and SHA-256.
    """
    digest = hashlib.sha256()
    size = _hash_from(fd, digest, 0)
    return size, digest.hexdigest()


def _hash_from(fd: int, digest: Any, start: int, end: int | None = None) -> int:
    """
    Add the bytes of C{[start, end)} (to the end of the file when C{end} is
    None) to C{digest}.

    @return: the offset reached.
    """
    offset = start
    while end is None or offset < end:
        want = _CHUNK if end is None else min(_CHUNK, end - offset)
        chunk = os.pread(fd, want, offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return offset
