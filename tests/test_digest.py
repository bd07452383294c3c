"""
Hashing an upload as it arrives (L{RunningDigest}), without sockets: a
staging file in a temporary folder, written the way the SFTP server writes
it, and a thread pool that runs each piece of work when the test says so.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred

from quartet_sftpd.digest import RunningDigest

STEP = 1000


class HeldPool:
    """
    Runs blocking work only when the test calls L{run_all}, so that the
    test decides what happens while work is in progress.
    """

    def __init__(self) -> None:
        self.waiting: list[tuple[Deferred[Any], Callable[..., Any], tuple]] = []
        self.ran = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append((d, f, args))
        return d

    def run_all(self) -> None:
        while self.waiting:
            d, f, args = self.waiting.pop(0)
            self.ran += 1
            maybeDeferred(f, *args).chainDeferred(d)


class FailingFlush(RunningDigest):
    """
    A digest on a disk that reports an input/output error when flushed.
    """

    def _flush(self, fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")


class Staging:
    """
    A staging file written like an upload, telling its digest of each write.
    """

    def __init__(self, path: Path, digest: RunningDigest) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.digest = digest
        self.received: set[int] = set()

    def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self.fd, data, offset)
        self.received.update(range(offset, offset + len(data)))
        contiguous = 0
        while contiguous in self.received:
            contiguous += 1
        self.digest.wrote(self.fd, offset, contiguous)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.received = {i for i in self.received if i < size}
        self.digest.truncated(size)

    def finish(self) -> tuple[int, str]:
        settled = self.digest.settled()
        assert settled.called, "finish before the hashing in progress ended"
        return self.digest.finish(self.fd)

    def expected(self) -> tuple[int, str]:
        data = os.pread(self.fd, 1 << 20, 0)
        return len(data), hashlib.sha256(data).hexdigest()


@pytest.fixture
def pool() -> HeldPool:
    return HeldPool()


@pytest.fixture
def staging(tmp_path: Path, pool: HeldPool) -> Iterator[Staging]:
    file = Staging(tmp_path / "staging", RunningDigest(pool, STEP, 4 * STEP))
    yield file
    os.close(file.fd)


def test_sequential_upload_is_hashed_as_it_arrives(
    staging: Staging, pool: HeldPool
) -> None:
    """
    Each step of new bytes is hashed in the pool while the upload goes on;
    the digest at the end is that of exactly the file.
    """
    data = os.urandom(5 * STEP + 123)
    for offset in range(0, len(data), 500):
        staging.write(offset, data[offset : offset + 500])
        pool.run_all()

    assert pool.ran == 5
    assert staging.finish() == (len(data), hashlib.sha256(data).hexdigest())


def test_settled_waits_for_the_hashing_in_progress(
    staging: Staging, pool: HeldPool
) -> None:
    """
    While a step is being hashed the descriptor is in use: settled fires
    only once it is over, and no second step starts meanwhile.
    """
    staging.write(0, os.urandom(STEP))
    staging.write(STEP, os.urandom(STEP))
    assert len(pool.waiting) == 1
    settled = staging.digest.settled()
    assert not settled.called

    pool.run_all()
    assert settled.called
    assert staging.finish() == staging.expected()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: s.write(10, b"changed"), id="rewrite-hashed"),
        pytest.param(lambda s: s.truncate(STEP // 2), id="truncate-hashed"),
    ],
)
def test_changes_to_hashed_bytes_hash_the_whole_file_again(
    staging: Staging, pool: HeldPool, change: Callable[[Staging], None]
) -> None:
    """
    A client that rewrites or cuts bytes already hashed still gets the
    digest of what the file holds at the end.
    """
    staging.write(0, os.urandom(2 * STEP))
    pool.run_all()
    change(staging)
    staging.write(3 * STEP, os.urandom(10))  # beyond: no step while invalid
    staging.write(2 * STEP, os.urandom(STEP))
    pool.run_all()

    assert not staging.digest.valid
    assert staging.finish() == staging.expected()


def test_rewrite_while_a_step_is_hashed(staging: Staging, pool: HeldPool) -> None:
    """
    A write into the bytes being hashed right now (the step has not run
    yet) also makes the commit hash the whole file.
    """
    staging.write(0, os.urandom(2 * STEP))
    assert len(pool.waiting) == 1
    staging.write(5, b"later bytes")
    pool.run_all()

    assert staging.finish() == staging.expected()


def test_holes_wait_for_the_bytes_before_them(staging: Staging, pool: HeldPool) -> None:
    """
    Bytes after a hole are not hashed until the hole is filled; writes out
    of order still give the digest of the file.
    """
    data = os.urandom(3 * STEP)
    staging.write(STEP, data[STEP:])
    assert pool.waiting == []
    staging.write(0, data[:STEP])
    pool.run_all()

    assert pool.ran == 1
    assert staging.finish() == (len(data), hashlib.sha256(data).hexdigest())


def test_a_failed_flush_fails_the_finish(tmp_path: Path, pool: HeldPool) -> None:
    """
    A flush error is kept and raised at the end, since the commit's fsync
    might not report it again.
    """
    staging = Staging(tmp_path / "staging", FailingFlush(pool, STEP, STEP))
    staging.write(0, os.urandom(2 * STEP))
    pool.run_all()

    with pytest.raises(OSError) as raised:
        staging.finish()
    assert raised.value.errno == errno.EIO
    os.close(staging.fd)
