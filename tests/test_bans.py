"""
Bans of addresses that keep failing to log in, on an injected clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from quartet_sftpd.bans import AddressBans


def make(**limits: float) -> tuple[Clock, AddressBans]:
    clock = Clock()
    clock.advance(1_000_000)
    options = {"threshold": 3, "window": 60.0, "ban_time": 100.0, "max_ban_time": 350.0}
    options.update(limits)
    return clock, AddressBans(clock, **options)  # type: ignore[arg-type]


def test_threshold_failures_within_the_window_ban_the_address() -> None:
    """
    Two failures leave the address free; the third within the window bans
    it for ban_time seconds, and only that address.
    """
    clock, bans = make()
    assert not bans.failed("192.0.2.1", "alice")
    clock.advance(10)
    assert not bans.failed("192.0.2.1", "alice")
    assert bans.remaining("192.0.2.1") == 0
    assert bans.failed("192.0.2.1", "alice")
    assert bans.remaining("192.0.2.1") == 100
    assert bans.remaining("192.0.2.2") == 0
    assert bans.banned() == {"192.0.2.1": 100}


def test_failures_outside_the_window_do_not_add_up() -> None:
    """
    Failures spread wider than the window never reach the threshold.
    """
    clock, bans = make()
    for _ in range(10):
        assert not bans.failed("192.0.2.1")
        clock.advance(31)


def test_ban_ends_after_its_time() -> None:
    """
    A ban ends after ban_time seconds; the address may connect again.
    """
    clock, bans = make()
    for _ in range(3):
        bans.failed("192.0.2.1")
    clock.advance(99.5)
    assert bans.remaining("192.0.2.1") == 0.5
    clock.advance(0.5)
    assert bans.remaining("192.0.2.1") == 0
    assert bans.banned() == {}


def test_repeat_offenders_get_longer_bans_up_to_the_maximum() -> None:
    """
    Each further ban doubles: 100, 200, then the 350 maximum.
    """
    clock, bans = make()
    lengths = []
    for _ in range(4):
        for _ in range(3):
            bans.failed("198.51.100.7")
        lengths.append(bans.remaining("198.51.100.7"))
        clock.advance(lengths[-1])
    assert lengths == [100, 200, 350, 350]


def test_a_quiet_address_is_forgiven() -> None:
    """
    An address with no ban for max_ban_time starts again from ban_time.
    """
    clock, bans = make()
    for _ in range(3):
        bans.failed("198.51.100.7")
    clock.advance(100 + 350)
    for _ in range(3):
        bans.failed("198.51.100.7")
    assert bans.remaining("198.51.100.7") == 100


def test_each_ban_is_logged_once() -> None:
    """
    One warning per ban, with the address, the count and the length; more
    failures while banned log nothing.
    """
    _, bans = make()
    with capturedLogs() as events:
        for _ in range(6):
            bans.failed("192.0.2.1", "mallory")
    [event] = [e for e in events if e["log_level"].name == "warn"]
    assert event["peer"] == "192.0.2.1"
    assert event["failures"] == 3
    assert event["seconds"] == 100
    assert event["user"] == "mallory"


def test_banning_off_and_unknown_addresses() -> None:
    """
    A threshold of 0 bans nobody; an unknown address is never counted.
    """
    _, bans = make(threshold=0)
    for _ in range(20):
        assert not bans.failed("192.0.2.1")
    _, bans = make()
    for _ in range(20):
        assert not bans.failed(None)
    assert bans.remaining(None) == 0
