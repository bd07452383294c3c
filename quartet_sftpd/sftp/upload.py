"""
One open upload: a staging file, the byte ranges received so far, and the
size the client gave it.

SFTP clients pipeline WRITE requests and may send them out of order, so
every WRITE lands at its own offset and the received ranges are tracked.  At
CLOSE an upload is complete only if the ranges cover every byte from 0 to its
size; anything else is a hole, and a rule never sees a file with a hole.
"""

from __future__ import annotations

import bisect
import errno
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.conch.ssh.filetransfer import FX_FAILURE, SFTPError

if TYPE_CHECKING:
    from quartet_sftpd.digest import RunningDigest


class Ranges:
    """
    A set of byte ranges, kept as sorted, merged, half-open C{[start, end)}
    pairs.  Appending right after the last range (the usual case) is O(1).
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        """
        Mark C{[start, end)} as received.
        """
        if end <= start:
            return
        if self._ends and self._ends[-1] == start:
            self._ends[-1] = end
            return
        # Find every range that touches [start, end) and merge them.
        i = bisect.bisect_left(self._ends, start)
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def truncate(self, size: int) -> None:
        """
        Forget everything at or beyond C{size}.
        """
        i = bisect.bisect_left(self._starts, size)
        del self._starts[i:], self._ends[i:]
        if self._ends and self._ends[-1] > size:
            self._ends[-1] = size

    @property
    def end(self) -> int:
        """
        One past the last byte received, or 0.
        """
        return self._ends[-1] if self._ends else 0

    @property
    def prefix(self) -> int:
        """
        How many bytes from 0 were received without a hole.
        """
        return self._ends[0] if self._starts and self._starts[0] == 0 else 0

    def first_gap(self, size: int) -> tuple[int, int] | None:
        """
        The first range below C{size} that was never received, or None when
        C{[0, size)} is complete.
        """
        position = 0
        for start, end in zip(self._starts, self._ends, strict=True):
            if start > position:
                return position, min(start, size)
            position = max(position, end)
            if position >= size:
                return None
        return (position, size) if position < size else None

    def __repr__(self) -> str:
        return f"Ranges({list(zip(self._starts, self._ends, strict=True))})"


class Upload:
    """
    An upload open for writing.

    @ivar staging: the staging file's path.
    @ivar fd: its open descriptor, or None once handed over.
    @ivar size: the file's size as the client sees it.
    @ivar received: bytes written so far (what was sent, not the size).
    @ivar error: the first write error, which fails the CLOSE.
    @ivar digest: the hash kept up as the bytes arrive, if the intake gave
        the upload one; told of every write and truncation.
    """

    def __init__(
        self,
        staging: Path,
        fd: int,
        *,
        user: str,
        folder: str,
        rule: str,
        name: str,
        append: bool = False,
        max_size: int | None = None,
        resumed_size: int = 0,
        opened: float | None = None,
    ) -> None:
        self.staging = staging
        self.fd: int | None = fd
        self.user = user
        self.folder = folder
        self.rule = rule
        self.name = name
        self.append = append
        self.max_size = max_size
        self.opened = time.time() if opened is None else opened
        self.ranges = Ranges()
        self.ranges.add(0, resumed_size)
        self.size = resumed_size
        self.received = 0
        self.mtime: int | None = None
        self.error: SFTPError | None = None
        #: Whether the error was logged, so a failing disk is logged once.
        self.error_logged = False
        #: Whether the error was a full disk (or quota), whose partial
        #: bytes are not worth the space they hold.
        self.disk_full = False
        self.digest: RunningDigest | None = None

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """
        Write bytes at an offset (or at the end, for an upload opened with
        APPEND, as the SFTP draft says).

        @raise SFTPError: a limit is exceeded, or the disk refused the bytes;
            the upload is then failed for good.
        """
        if self.error is not None:
            raise self.error
        if self.append:
            offset = self.size
        end = offset + len(data)
        if self.max_size is not None and end > self.max_size:
            self.error = SFTPError(
                FX_FAILURE,
                f"{self.name} is larger than the {self.max_size} bytes this server "
                "accepts in one upload; the upload is cancelled.",
            )
            raise self.error

        assert self.fd is not None
        view = memoryview(data)
        written = 0
        try:
            # A filesystem that is nearly full writes what fits and says so
            # with a short count; the next call then gives the real reason.
            while written < len(view):
                count = os.pwrite(self.fd, view[written:], offset + written)
                if count == 0:
                    raise OSError(errno.EIO, "the disk accepted no bytes")
                written += count
        except OSError as error:
            self.disk_full = error.errno in (errno.ENOSPC, errno.EDQUOT)
            self.error = disk_error(error, self.name)
            raise self.error from None

        self.ranges.add(offset, end)
        self.received += written
        if end > self.size:
            self.size = end
        if self.digest is not None:
            self.digest.wrote(self.fd, offset, self.ranges.prefix)

    def truncate(self, size: int) -> None:
        """
        Set the file's size, as FSETSTAT with a size does.  Growing the file
        counts the new bytes as received (zeros, as POSIX gives them);
        shrinking forgets what lies beyond.
        """
        assert self.fd is not None
        try:
            os.ftruncate(self.fd, size)
        except OSError as error:
            self.disk_full = error.errno in (errno.ENOSPC, errno.EDQUOT)
            self.error = disk_error(error, self.name)
            raise self.error from None
        if size < self.size:
            self.ranges.truncate(size)
        else:
            self.ranges.add(self.size, size)
        self.size = size
        if self.digest is not None:
            self.digest.truncated(size)

    def check_complete(self) -> None:
        """
        @raise SFTPError: a write failed earlier, or some bytes below the
            file's size never arrived.
        """
        if self.error is not None:
            raise self.error
        gap = self.ranges.first_gap(self.size)
        if gap is not None:
            start, end = gap
            raise SFTPError(
                FX_FAILURE,
                f"{self.name} is incomplete: bytes {start} to {end - 1} never "
                "arrived, so it was not processed; upload it again.",
            )

    def contiguous_size(self) -> int:
        """
        How many bytes from the start arrived without a hole: what a client
        continuing this upload (OpenSSH's C{reput}) may build on.
        """
        gap = self.ranges.first_gap(self.size)
        return self.size if gap is None else gap[0]

    def attrs(self, permissions: int = 0o100640) -> dict[str, int]:
        """
        Attributes for FSTAT: the size so far and the times.
        """
        mtime = self.mtime if self.mtime is not None else int(self.opened)
        return {
            "size": self.size,
            "permissions": permissions,
            "atime": mtime,
            "mtime": mtime,
        }

    def take_fd(self) -> int | None:
        """
        Hand the descriptor over (to a commit or quarantine, which close it).
        """
        fd, self.fd = self.fd, None
        return fd


_DISK_ERRORS = {
    errno.ENOSPC: "the server's disk is full",
    errno.EDQUOT: "the server's disk quota is exhausted",
    errno.EIO: "the server's disk reported an input/output error",
    errno.EACCES: "the server may not write its archive (permission denied)",
    errno.EPERM: "the server may not write its archive (permission denied)",
    errno.EROFS: "the server's archive is on a read-only filesystem",
}


def disk_error(error: OSError, name: str) -> SFTPError:
    """
    An SFTP error a client can read, for a disk error while storing C{name}.
    """
    what = _DISK_ERRORS.get(
        error.errno or 0, f"the server could not store it ({error.strerror})"
    )
    return SFTPError(
        FX_FAILURE,
        f"{name} was not accepted: {what}. Nothing was processed; try again later.",
    )
