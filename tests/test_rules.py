"""
Tests for the rules file and the rule engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from quartet_sftpd.config import SHIPPED_RULES
from quartet_sftpd.rules import (
    Rule,
    RuleContext,
    RuleFailed,
    RulesError,
    Step,
    StepError,
    load_rules,
)
from quartet_sftpd.steps import EPCISSummary, WellFormedXML

HERE = __name__


class TaskLog:
    """
    A task's message list, kept in memory.
    """

    def __init__(self, name: str = "t1") -> None:
        self.name = name
        self.messages: list[tuple[str, str]] = []

    def add_message(self, level: str, text: str) -> None:
        self.messages.append((level, text))

    def texts(self, level: str) -> list[str]:
        return [text for lvl, text in self.messages if lvl == level]


#: What steps in these tests did, in order.
JOURNAL: list[str] = []


class Upper(Step):
    """
    Upper-cases the data, written the way a QU4RTET step is.
    """

    @property
    def declared_parameters(self) -> dict[str, str]:
        return {"Suffix": "Text added to the end."}

    def execute(self, data: Any, rule_context: RuleContext) -> Any:
        JOURNAL.append(f"{type(self).__name__}.execute")
        self.info("Upper-casing %d bytes.", len(data))
        return data.upper() + self.get_parameter("Suffix", "").encode()

    def on_failure(self) -> None:
        JOURNAL.append(f"{type(self).__name__}.on_failure")


class Keep(Upper):
    """
    Returns None, so the data passes on unchanged; records what it saw.
    """

    seen: ClassVar[list[Any]] = []

    def execute(self, data: Any, rule_context: RuleContext) -> None:
        JOURNAL.append("Keep.execute")
        Keep.seen.append((data, dict(rule_context.context)))


class Refuse(Upper):
    """
    Fails the way a step reports bad input.
    """

    def execute(self, data: Any, rule_context: RuleContext) -> Any:
        JOURNAL.append("Refuse.execute")
        raise StepError("the data is no good")


class Crash(Upper):
    """
    Fails with an unexpected error.
    """

    def execute(self, data: Any, rule_context: RuleContext) -> Any:
        JOURNAL.append("Crash.execute")
        raise KeyError("missing")


class NotAStep:
    """
    A class that is not a Step.
    """


class Unfinished(Step):
    """
    A Step subclass that does not implement execute.
    """


@pytest.fixture(autouse=True)
def clear_journal():
    JOURNAL.clear()
    Keep.seen.clear()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    return path


def rules_text(*steps: str, name: str = "Demo", parameters: str = "") -> str:
    lines = ["[[rule]]", f"name = {name!r}"]
    if parameters:
        lines.append(f"parameters = {parameters}")
    for number, step in enumerate(steps, start=1):
        lines += ["[[rule.step]]", f'name = "S{number}"', step]
    return "\n".join(lines) + "\n"


def test_the_shipped_rules_file() -> None:
    """
    The default rules file has an EPCIS rule that checks the XML, then
    summarises it.
    """
    rules = load_rules(SHIPPED_RULES)
    assert list(rules) == ["EPCIS"]
    steps = rules["EPCIS"].steps
    assert [s.step_class for s in steps] == [WellFormedXML, EPCISSummary]
    assert [s.name for s in steps] == ["Well-formed", "Summary"]


def test_the_documented_format(tmp_path: Path) -> None:
    """
    The format in the documentation loads: rule parameters, step names,
    classes and an empty parameter table.
    """
    path = write(
        tmp_path,
        """
[[rule]]
name = "EPCIS"
description = "Check and summarise inbound EPCIS documents"
parameters = { Sender = "urn:epc:id:sgln:0359999.00000.0" }
[[rule.step]]
name = "Well-formed"
class = "quartet_sftpd.steps.WellFormedXML"
[[rule.step]]
name = "Summary"
class = "quartet_sftpd.steps.EPCISSummary"
parameters = { }

[[rule]]
name = "Archive only"
""",
    )
    rules = load_rules(path)
    assert list(rules) == ["EPCIS", "Archive only"]
    epcis = rules["EPCIS"]
    assert epcis.description == "Check and summarise inbound EPCIS documents"
    assert epcis.parameters == {"Sender": "urn:epc:id:sgln:0359999.00000.0"}
    assert [s.name for s in epcis.steps] == ["Well-formed", "Summary"]
    assert rules["Archive only"].steps == ()


def test_parameter_values_become_text(tmp_path: Path) -> None:
    """
    Numbers and booleans in the file reach the step as text, as in QU4RTET.
    """
    path = write(
        tmp_path,
        rules_text(
            f'class = "{HERE}.Upper"\nparameters = {{ Suffix = 7 }}',
            parameters="{ Flag = true, Count = 3 }",
        ),
    )
    rule = load_rules(path)["Demo"]
    assert rule.parameters == {"Flag": "true", "Count": "3"}
    assert rule.steps[0].parameters == {"Suffix": "7"}


def test_step_name_defaults_to_class_name(tmp_path: Path) -> None:
    """
    A step without a name is called after its class.
    """
    path = write(
        tmp_path,
        f'[[rule]]\nname = "R"\n[[rule.step]]\nclass = "{HERE}.Upper"\n',
    )
    assert load_rules(path)["R"].steps[0].name == "Upper"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            rules_text('class = "quartet_sftpd.steps.WellFormedXML"')
            + rules_text('class = "quartet_sftpd.steps.WellFormedXML"'),
            "rule 'Demo' is defined twice",
        ),
        (
            rules_text('description = "no class"'),
            "rule 'Demo', step 'S1' needs a class",
        ),
        (
            rules_text('class = "no_such_module.Step"'),
            "rule 'Demo', step 'S1': class no_such_module.Step cannot be imported",
        ),
        (
            rules_text('class = "quartet_sftpd.steps.NoSuchStep"'),
            "has no 'NoSuchStep'",
        ),
        (
            rules_text(f'class = "{HERE}.NotAStep"'),
            (
                "step 'S1': tests.test_rules.NotAStep is not a subclass of "
                "quartet_sftpd.rules.Step"
            ),
        ),
        (rules_text(f'class = "{HERE}.Unfinished"'), "does not implement execute"),
        (
            rules_text(f'class = "{HERE}.Upper"\nparameters = {{ Colour = "red" }}'),
            (
                "step 'S1': tests.test_rules.Upper does not take the parameters "
                "Colour; it takes: Suffix"
            ),
        ),
        (
            rules_text(
                'class = "quartet_sftpd.steps.WellFormedXML"\n'
                'parameters = { Folder = "/tmp" }'
            ),
            "does not take the parameters Folder; it takes: none",
        ),
        (rules_text(name=""), "rule #1: the rule name '' is empty"),
        (rules_text(name="a/b"), "the rule name 'a/b' contains '/'"),
        ('[[rule]]\nname = "a\\u0000b"\n', "contains '/' or a NUL"),
        (rules_text(name=".hidden"), "the rule name '.hidden' starts with '.'"),
        ("[[rule]]\n", "rule #1 needs a name"),
        (rules_text(name="R") + "stpe = 1\n", "rule 'R' has unknown keys: stpe"),
        ("rules = 1\n", "unknown top-level keys: rules"),
        ("[[rule]\n", "is not valid TOML"),
    ],
)
def test_invalid_rules_files(tmp_path: Path, text: str, expected: str) -> None:
    """
    Each mistake in a rules file is refused with a message that names the
    file, the rule and the step.
    """
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as raised:
        load_rules(path)
    assert str(path) in str(raised.value)
    assert expected in str(raised.value)


def test_missing_rules_file(tmp_path: Path) -> None:
    """
    A missing rules file is named in the error.
    """
    with pytest.raises(RulesError, match="cannot be read"):
        load_rules(tmp_path / "missing.toml")


def load_demo(tmp_path: Path, *classes: str) -> Rule:
    steps = [f'class = "{HERE}.{cls}"' for cls in classes]
    return load_rules(write(tmp_path, rules_text(*steps)))["Demo"]


def test_each_step_gets_what_the_one_before_returned(tmp_path: Path) -> None:
    """
    A step's return value is the next step's data; None passes the data on.
    The context carries the rule parameters and what the engine put there.
    """
    rule = load_demo(tmp_path, "Upper", "Keep")
    task = TaskLog()
    context = RuleContext("Demo", "t1", {RuleContext.USER: "acme"})
    result = rule.run(task, b"abc", context)
    assert result == b"ABC"
    data, seen = Keep.seen[0]
    assert data == b"ABC"
    assert seen[RuleContext.RULE_PARAMETERS] == {}
    assert seen[RuleContext.RULE_NAME] == "Demo"
    assert seen[RuleContext.TASK_NAME] == "t1"
    assert seen[RuleContext.USER] == "acme"
    assert task.texts("INFO") == ["Upper-casing 3 bytes."]


def test_a_failing_step_fails_the_rule(tmp_path: Path) -> None:
    """
    When a step reports bad data, later steps do not run, every step that
    ran is asked to clean up (latest first), and the reason is the task's
    error without a traceback.
    """
    rule = load_demo(tmp_path, "Upper", "Refuse", "Keep")
    task = TaskLog()
    with pytest.raises(RuleFailed, match="step 'S2' failed: the data is no good"):
        rule.run(task, b"abc", RuleContext("Demo", "t1"))
    assert JOURNAL == [
        "Upper.execute",
        "Refuse.execute",
        "Refuse.on_failure",
        "Upper.on_failure",
    ]
    assert task.texts("ERROR") == ["Step 'S2' failed: the data is no good."]
    assert task.texts("DEBUG") == []


def test_an_unexpected_error_fails_the_rule_with_a_traceback(tmp_path: Path) -> None:
    """
    An unexpected exception also fails the rule; its type is in the error
    and the traceback is kept at DEBUG level.
    """
    rule = load_demo(tmp_path, "Crash")
    task = TaskLog()
    with pytest.raises(RuleFailed):
        rule.run(task, b"abc", RuleContext("Demo", "t1"))
    assert task.texts("ERROR") == ["Step 'S1' failed: KeyError: 'missing'."]
    assert "Traceback" in task.texts("DEBUG")[0]
    assert JOURNAL == ["Crash.execute", "Crash.on_failure"]


def test_a_step_that_cannot_be_built_fails_before_any_runs() -> None:
    """
    A step whose parameters are wrong fails the rule before any step runs.
    """
    from quartet_sftpd.rules import StepSpec

    rule = Rule(
        "Demo",
        steps=(StepSpec("S1", Upper), StepSpec("S2", Upper, {"Colour": "red"})),
    )
    task = TaskLog()
    with pytest.raises(RuleFailed, match="could not be set up"):
        rule.run(task, b"abc", RuleContext("Demo", "t1"))
    assert JOURNAL == []
    assert "does not take the parameters Colour" in task.texts("ERROR")[0]


def test_step_parameter_helpers() -> None:
    """
    Steps read text, boolean and integer parameters as QU4RTET steps do.
    """
    step = Upper(TaskLog(), Suffix="5")
    assert step.get_parameter("Suffix") == "5"
    assert step.get_parameter("Other", "x") == "x"
    assert step.get_integer_parameter("Suffix", 0) == 5
    assert step.get_boolean_parameter("Suffix") is False
    with pytest.raises(Step.ParameterNotFoundError, match="Other"):
        step.get_parameter("Other", raise_exception=True)


def test_step_messages_reach_the_task() -> None:
    """
    info, warning, error and debug write task messages at their level.
    """
    task = TaskLog()
    step = Upper(task)
    step.info("one %s", "a")
    step.warning("two")
    step.error("three %d%%", 5)
    step.debug("four")
    assert task.messages == [
        ("INFO", "one a"),
        ("WARNING", "two"),
        ("ERROR", "three 5%"),
        ("DEBUG", "four"),
    ]


def test_required_context_variable() -> None:
    """
    A step that needs what an earlier step should have set fails with a
    message that says so.
    """
    context = RuleContext("Demo", "t1", {"Here": 1})
    assert context.get_required_context_variable("Here") == 1
    with pytest.raises(StepError, match="'Missing'"):
        context.get_required_context_variable("Missing")
