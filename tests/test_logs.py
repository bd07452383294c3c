"""
Tests for L{quartet_sftpd.logs}: the level filter, and Twisted's
per-connection chatter kept out of an info log.
"""

from __future__ import annotations

from pathlib import Path

from twisted.logger import Logger

from quartet_sftpd.logs import make_observer


def _log_through(path: Path, level: str) -> str:
    observer = make_observer(level, str(path))
    log = Logger(namespace="quartet_sftpd.test", observer=observer)
    log.info("login: {user} from {peer}", user="acme", peer="127.0.0.1")
    log.info("remote close")
    log.info("sending close {id}", id=0)
    log.info("Starting factory {factory!r}", factory="F")
    log.debug("handled request {kind}", kind=3)
    log.warn("refused exec request of {user}", user="acme")
    return path.read_text()


def test_info_keeps_the_servers_events_and_drops_twisted_chatter(
    tmp_path: Path,
) -> None:
    """
    At info, the server's own events and warnings are written; Twisted's
    per-connection events and debug events are not.
    """
    text = _log_through(tmp_path / "info.log", "info")

    assert "login: acme from 127.0.0.1" in text
    assert "refused exec request of acme" in text
    assert "remote close" not in text
    assert "sending close" not in text
    assert "Starting factory" not in text
    assert "handled request" not in text


def test_debug_writes_everything(tmp_path: Path) -> None:
    """
    At debug, Twisted's per-connection events are written too.
    """
    text = _log_through(tmp_path / "debug.log", "debug")

    assert "remote close" in text and "sending close 0" in text
    assert "Starting factory 'F'" in text and "handled request 3" in text
