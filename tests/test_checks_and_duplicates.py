"""
Quick checks answered in the CLOSE, and the duplicate policies, in the
built-in backend: the rule pool holds each run until the test lets it go,
and the clock is the test's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from quartet_sftpd.capture import UploadRejected
from quartet_sftpd.capture.builtin import BuiltinBackend
from quartet_sftpd.tasks import TaskStatus

from .fakes import ClockReactor, ImmediateThreadPool
from .test_builtin_backend import Harness
from .test_steps import sample

GOOD = sample("epcis.xml")
BROKEN = b"<EPCISDocument>\n  <EPCISBody>\n    <oops>\n</EPCISDocument>\n"

RULES = """
[[rule]]
name = "EPCIS"
duplicates = "{policy}"

[[rule.step]]
name = "Well-formed"
class = "quartet_sftpd.steps.WellFormedXML"
check = {check}

[[rule.step]]
name = "Summary"
class = "quartet_sftpd.steps.EPCISSummary"
"""


class CheckHarness(Harness):
    def __init__(self, tmp_path: Path, policy: str = "accept", check: bool = True):
        self.reactor = ClockReactor()
        super().__init__(tmp_path)
        self.rules.write_text(
            RULES.format(policy=policy, check="true" if check else "false")
        )
        self.backend = self.new_backend()
        self.backend.start()

    def new_backend(self) -> BuiltinBackend:
        backend = BuiltinBackend(
            self.settings,
            self.reactor,
            store_pool=ImmediateThreadPool(),
            rule_pool=self.rule_pool,
        )
        return backend

    def submit_deferred(self, data: bytes, name: str = "order.xml") -> Deferred[str]:
        return self.backend.submit(self.upload(data, name=name))


class Watched:
    """
    What a Deferred fires with, once it fires.
    """

    def __init__(self, d: Deferred[str]) -> None:
        self.results: list[str | Failure] = []
        d.addBoth(self.results.append)

    @property
    def value(self) -> str | Failure | None:
        return self.results[0] if self.results else None


def outcome(d: Deferred[str]) -> str | Failure | None:
    return Watched(d).value


def test_failed_check_fails_the_close_with_its_reason(tmp_path: Path) -> None:
    """
    A check that fails answers the CLOSE with "EPCIS rejected NAME: reason";
    the task is FAILED and the later steps never ran.
    """
    harness = CheckHarness(tmp_path)
    d = Watched(harness.submit_deferred(BROKEN, "epcis.xml"))
    assert d.value is None, "the CLOSE must wait for the checks"
    harness.rule_pool.run_all()

    result = d.value
    assert isinstance(result, Failure)
    error = result.value
    assert isinstance(error, UploadRejected)
    assert error.message.startswith("EPCIS rejected epcis.xml: not well-formed XML")
    assert "line 4" in error.message
    task = harness.task(error.task)
    assert task.status == TaskStatus.FAILED
    assert not any("count" in m.text for m in task.messages)


def test_passing_checks_answer_before_the_other_steps_end(tmp_path: Path) -> None:
    harness = CheckHarness(tmp_path)
    d = Watched(harness.submit_deferred(GOOD))
    harness.rule_pool.run_all()
    name = d.value
    assert isinstance(name, str)
    assert harness.task(name).status == TaskStatus.FINISHED


def test_slow_checks_give_up_waiting_after_the_timeout(tmp_path: Path) -> None:
    """
    When the rule pool is busy past check_timeout, the CLOSE is answered
    anyway; the checks still run and their failure shows in the task.
    """
    harness = CheckHarness(tmp_path)
    d = Watched(harness.submit_deferred(BROKEN))
    harness.reactor.advance(harness.settings.check_timeout - 0.1)
    assert d.value is None
    harness.reactor.advance(0.2)
    name = d.value
    assert isinstance(name, str)
    harness.rule_pool.run_all()
    assert harness.task(name).status == TaskStatus.FAILED


def test_rule_without_checks_answers_at_once(tmp_path: Path) -> None:
    harness = CheckHarness(tmp_path, check=False)
    d = harness.submit_deferred(BROKEN)
    assert isinstance(outcome(d), str)


def test_duplicate_accepted_runs_and_says_so(tmp_path: Path) -> None:
    harness = CheckHarness(tmp_path, "accept", check=False)
    first = outcome(harness.submit_deferred(GOOD, "a.xml"))
    second = outcome(harness.submit_deferred(GOOD, "b.xml"))
    harness.rule_pool.run_all()
    assert isinstance(first, str) and isinstance(second, str)
    task = harness.task(second)
    assert task.status == TaskStatus.FINISHED
    assert any(
        "uploaded to EPCIS before, as a.xml" in m.text and first in m.text
        for m in task.messages
    )
    assert harness.task(first).status == TaskStatus.FINISHED


def test_duplicate_skipped_is_archived_not_run(tmp_path: Path) -> None:
    harness = CheckHarness(tmp_path, "skip", check=False)
    outcome(harness.submit_deferred(GOOD, "a.xml"))
    second = outcome(harness.submit_deferred(GOOD, "b.xml"))
    assert isinstance(second, str)
    harness.rule_pool.run_all()
    task = harness.task(second)
    assert task.status == TaskStatus.DUPLICATE
    assert "the rule was not run" in task.messages[-1].text


def test_duplicate_rejected_fails_the_close(tmp_path: Path) -> None:
    harness = CheckHarness(tmp_path, "reject", check=False)
    outcome(harness.submit_deferred(GOOD, "a.xml"))
    result = outcome(harness.submit_deferred(GOOD, "b.xml"))
    assert isinstance(result, Failure)
    error = result.value
    assert isinstance(error, UploadRejected)
    assert error.message.startswith(
        "EPCIS rejected b.xml: the same file was uploaded before, as a.xml at "
    )
    assert harness.task(error.task).status == TaskStatus.DUPLICATE


def test_other_bytes_or_old_uploads_are_no_duplicates(tmp_path: Path) -> None:
    harness = CheckHarness(tmp_path, "reject", check=False)
    outcome(harness.submit_deferred(GOOD, "a.xml"))
    assert isinstance(outcome(harness.submit_deferred(GOOD + b"\n", "b.xml")), str)

    upload = harness.upload(GOOD, "c.xml")
    late = upload.__class__(
        **{**upload.__dict__, "received": upload.received + 8 * 24 * 3600}
    )
    assert isinstance(outcome(harness.backend.submit(late)), str)


@pytest.mark.parametrize(
    "rules, words",
    [
        (RULES.format(policy="sometimes", check="false"), "not a policy"),
        (
            RULES.format(policy="accept", check="false").replace(
                'EPCISSummary"', 'EPCISSummary"\ncheck = true'
            ),
            "checks must come first",
        ),
    ],
)
def test_bad_policies_and_late_checks_are_refused(
    tmp_path: Path, rules: str, words: str
) -> None:
    from quartet_sftpd.rules import RulesError, load_rules

    path = tmp_path / "rules.toml"
    path.write_text(rules)
    with pytest.raises(RulesError, match=words):
        load_rules(path)
