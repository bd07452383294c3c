"""
The built-in capture engine: rules read from a TOML file, the steps they run
and the context the steps share.

A rules file holds one C{[[rule]]} table per rule, each with its steps in the
order they run::

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

A rule's name is the name of its folder on the SFTP side.  A step's name is
optional and defaults to its class's name.  Parameter values are text, as in
QU4RTET; numbers and booleans are turned into their text.  A rule without
steps only archives what is uploaded into it.

L{Step} keeps the shape of quartet_capture's C{Step}, so a QU4RTET step ports
by changing its import: it is built with its task and its parameters
(C{Step(task, **parameters)}), declares the parameters it takes in
C{declared_parameters}, gets the rule's data in C{execute(data,
rule_context)}, writes task messages with C{self.info(...)},
C{self.warning(...)} and C{self.error(...)}, and cleans up in
C{on_failure()}.  Unlike QU4RTET, C{declared_parameters} is read when the
rules file loads, so it must not depend on the parameters given.
"""

from __future__ import annotations

import importlib
import inspect
import os
import tomllib
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class RulesError(Exception):
    """
    The rules file cannot be read or describes an impossible rule; the
    message names the file, the rule and the step at fault.
    """


class StepError(Exception):
    """
    A step could not do its work for a reason a user can act on.

    The engine writes its message, without a traceback, as the task's error.
    """


class ITaskLog(Protocol):
    """
    Where a step's messages go: one task's message list.
    """

    name: str

    def add_message(self, level: str, text: str) -> None:
        """
        Add a message at C{level} (DEBUG, INFO, WARNING or ERROR).
        """


class RuleContext:
    """
    What the steps of one rule run share.

    C{context} is a dict that steps may read and add to.  The engine fills it
    in before the first step with the keys named by this class's constants.
    """

    #: The rule's parameters, a dict of name to text.
    RULE_PARAMETERS = "RULE_PARAMETERS"
    #: The rule's name.
    RULE_NAME = "RULE_NAME"
    #: The task's name.
    TASK_NAME = "TASK_NAME"
    #: The SFTP user who uploaded the file.
    USER = "USER"
    #: The file name the client gave the upload.
    ORIGINAL_NAME = "ORIGINAL_NAME"
    #: The absolute path of the archived file, as a L{Path}.
    ARCHIVE_PATH = "ARCHIVE_PATH"
    #: The archived file's size in bytes.
    SIZE = "SIZE"
    #: The hex SHA-256 digest of the archived file.
    SHA256 = "SHA256"

    def __init__(
        self, rule_name: str, task_name: str, context: dict[str, Any] | None = None
    ) -> None:
        self.context: dict[str, Any] = context if context is not None else {}
        self.context.setdefault(self.RULE_NAME, rule_name)
        self.context.setdefault(self.TASK_NAME, task_name)

    @property
    def rule_name(self) -> str:
        """
        The name of the rule running.
        """
        return self.context[self.RULE_NAME]

    @property
    def task_name(self) -> str:
        """
        The name of the task it runs for.
        """
        return self.context[self.TASK_NAME]

    def get_required_context_variable(self, key: str) -> Any:
        """
        A value an earlier step must have put in the context.

        @raise StepError: the key is missing or its value is empty.
        """
        value = self.context.get(key)
        if not value:
            raise StepError(
                f"the rule context has no {key!r}: a step that should have set "
                "it did not run or did not succeed; check the order of the "
                "rule's steps."
            )
        return value


class Step(ABC):
    """
    One stage of a rule.  Subclasses implement L{execute} and may override
    L{declared_parameters} and L{on_failure}.

    @ivar task: the task this step runs for.
    @ivar parameters: the step's parameters from the rules file.
    """

    class ParameterNotFoundError(StepError):
        """
        A parameter the step needs was not configured.
        """

    def __init__(self, task: ITaskLog, **parameters: str) -> None:
        """
        @param task: the task the step runs for; messages go there.
        @param parameters: the step's parameters, names as declared.
        @raise StepError: a parameter is not declared.
        """
        self.task = task
        self.parameters: dict[str, str] = dict(parameters)
        unknown = sorted(set(self.parameters) - set(self.declared_parameters))
        if unknown:
            raise StepError(
                f"{type(self).__name__} does not take the parameters "
                f"{', '.join(unknown)}; it takes: "
                f"{', '.join(sorted(self.declared_parameters)) or 'none'}."
            )

    @property
    def declared_parameters(self) -> dict[str, str]:
        """
        The parameters this step takes: name to a description a user reads.
        """
        return {}

    @abstractmethod
    def execute(self, data: Any, rule_context: RuleContext) -> Any:
        """
        Do this step's work.

        @param data: what the previous step returned; the archived bytes for
            the first step.
        @param rule_context: the context shared by the rule's steps.
        @return: the data for the next step, or L{None} to pass C{data} on
            unchanged.
        @raise StepError: the data cannot be handled; the message tells the
            user why.  Any other exception fails the task as well.
        """

    def on_failure(self) -> None:  # noqa: B027 (optional; most steps have no undo)
        """
        Undo or clean up after the rule failed, in this step or a later one.
        """

    def get_parameter(
        self, name: str, default: str | None = None, raise_exception: bool = False
    ) -> str | None:
        """
        A parameter's value, or C{default} when it is not set.

        @raise Step.ParameterNotFoundError: it is not set and
            C{raise_exception} is true.
        """
        value = self.parameters.get(name, default)
        if not value and raise_exception:
            raise self.ParameterNotFoundError(
                f"the step needs the parameter {name!r}: add it to the step's "
                "parameters in the rules file."
            )
        return value

    def get_boolean_parameter(self, name: str, default: bool = False) -> bool:
        """
        A parameter read as a boolean: C{true} (any case) or C{1} is true.
        """
        value = self.parameters.get(name)
        if value is None:
            return default
        return str(value).strip().lower() in ("true", "1")

    def get_integer_parameter(self, name: str, default: int) -> int:
        """
        A parameter read as an integer.

        @raise StepError: it is set but is not an integer.
        """
        value = self.parameters.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise StepError(
                f"the parameter {name!r} must be a whole number, not {value!r}."
            ) from None

    def debug(self, message: str, *args: object) -> None:
        """
        Add a DEBUG message to the task; C{args} fill C{%} placeholders.
        """
        self._message("DEBUG", message, args)

    def info(self, message: str, *args: object) -> None:
        """
        Add an INFO message to the task; C{args} fill C{%} placeholders.
        """
        self._message("INFO", message, args)

    def warning(self, message: str, *args: object) -> None:
        """
        Add a WARNING message to the task; C{args} fill C{%} placeholders.
        """
        self._message("WARNING", message, args)

    def error(self, message: str, *args: object) -> None:
        """
        Add an ERROR message to the task; C{args} fill C{%} placeholders.
        """
        self._message("ERROR", message, args)

    def _message(self, level: str, message: str, args: tuple[object, ...]) -> None:
        self.task.add_message(level, message % args if args else str(message))


@dataclass(frozen=True)
class StepSpec:
    """
    One step as the rules file describes it.

    @ivar name: the step's name, for messages.
    @ivar step_class: the L{Step} subclass.
    @ivar parameters: keyword arguments for the class.
    """

    name: str
    step_class: type[Step]
    parameters: Mapping[str, str] = field(default_factory=dict)
    #: A quick check, run before the client's CLOSE is answered.
    check: bool = False

    def build(self, task: ITaskLog) -> Step:
        """
        A fresh step instance for one task.
        """
        return self.step_class(task, **self.parameters)


@dataclass(frozen=True)
class Rule:
    """
    A named list of steps, run in order on each upload into the rule's
    folder.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)
    steps: tuple[StepSpec, ...] = ()
    #: What to do with the same bytes uploaded again: one of L{DUPLICATES}.
    duplicates: str = "accept"

    @property
    def has_checks(self) -> bool:
        """
        Whether the rule starts with quick checks.
        """
        return bool(self.steps) and self.steps[0].check

    def run(
        self,
        task: ITaskLog,
        data: Any,
        context: RuleContext,
        after_checks: Callable[[], None] | None = None,
    ) -> Any:
        """
        Run the steps in order, each on what the one before returned.

        Blocks: call it from a rule thread.  On failure the error is written
        to the task at ERROR level (with a DEBUG traceback when the exception
        was not a L{StepError}), and C{on_failure} is called on each step
        that ran, the latest first.

        @param task: where messages go.
        @param data: the archived bytes.
        @param context: the rule context; C{RULE_PARAMETERS} is set here.
        @param after_checks: called once the leading check steps passed
            (at once when there are none), before the other steps run.
        @return: what the last step returned.
        @raise RuleFailed: a step could not be built or raised; its
            C{in_checks} says whether a check step failed.
        """
        context.context[RuleContext.RULE_PARAMETERS] = dict(self.parameters)
        steps: list[tuple[StepSpec, Step]] = []
        for spec in self.steps:
            try:
                steps.append((spec, spec.build(task)))
            except Exception as error:
                reason = f"step {spec.name!r} could not be set up: {_describe(error)}"
                _report(task, reason, error)
                raise RuleFailed(reason) from error

        ran: list[tuple[StepSpec, Step]] = []
        checking = True
        for spec, step in steps:
            if checking and not spec.check:
                checking = False
                if after_checks is not None:
                    after_checks()
            ran.append((spec, step))
            try:
                result = step.execute(data, context)
            except Exception as error:
                reason = f"step {spec.name!r} failed: {_describe(error)}"
                _report(task, reason, error)
                _undo(task, ran)
                raise RuleFailed(reason, _describe(error), checking) from error
            if result is not None:
                data = result
        if checking and after_checks is not None:
            after_checks()
        return data


class RuleFailed(Exception):
    """
    A rule's step failed; the message is the reason written to the task.

    @ivar detail: the step's own explanation, without the step's name.
    @ivar in_checks: whether the failing step was one of the leading checks.
    """

    def __init__(self, reason: str, detail: str = "", in_checks: bool = False) -> None:
        super().__init__(reason)
        self.detail = detail or reason
        self.in_checks = in_checks


def _describe(error: Exception) -> str:
    text = str(error).strip() or "no details were given"
    if isinstance(error, StepError):
        return text
    return f"{type(error).__name__}: {text}"


def _report(task: ITaskLog, reason: str, error: Exception) -> None:
    task.add_message("ERROR", _sentence(reason))
    if not isinstance(error, StepError):
        trace = "".join(traceback.format_exception(error)).rstrip()
        task.add_message("DEBUG", trace)


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _undo(task: ITaskLog, ran: list[tuple[StepSpec, Step]]) -> None:
    for spec, step in reversed(ran):
        try:
            step.on_failure()
        except Exception as error:
            task.add_message(
                "ERROR",
                _sentence(
                    f"step {spec.name!r} could not clean up after the failure: "
                    f"{_describe(error)}"
                ),
            )


_RULE_KEYS = {"name", "description", "parameters", "step", "duplicates"}
_STEP_KEYS = {"name", "class", "parameters", "description", "check"}

#: Duplicate policies: run anyway (and say so), archive without running, or
#: refuse the upload in its CLOSE.
DUPLICATES = ("accept", "skip", "reject")


def load_rules(path: str | os.PathLike[str]) -> dict[str, Rule]:
    """
    Read a rules file.

    Blocks on file I/O and on importing step modules.

    @param path: the TOML rules file.
    @return: the rules by name, in file order.
    @raise RulesError: the file cannot be read, is not valid TOML, or
        describes an invalid rule or step.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except OSError as error:
        raise RulesError(
            f"rules file {path} cannot be read: {error.strerror or error}."
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise RulesError(f"rules file {path} is not valid TOML: {error}.") from None
    return parse_rules(raw, path)


def parse_rules(raw: Mapping[str, Any], path: Path | str) -> dict[str, Rule]:
    """
    Build rules from an already-parsed rules document.

    @param raw: the TOML document as a dict.
    @param path: the file it came from, for messages.
    @return: the rules by name, in file order.
    @raise RulesError: an invalid rule or step.
    """
    where = f"rules file {path}"
    unknown = sorted(set(raw) - {"rule"})
    if unknown:
        raise RulesError(
            f"{where} has unknown top-level keys: {', '.join(unknown)}; "
            "describe each rule in a [[rule]] table."
        )
    tables = raw.get("rule", [])
    if not isinstance(tables, list):
        raise RulesError(f"{where}: write rules as [[rule]] tables.")
    rules: dict[str, Rule] = {}
    for number, table in enumerate(tables, start=1):
        rule = _parse_rule(table, where, number)
        if rule.name in rules:
            raise RulesError(
                f"{where}: rule {rule.name!r} is defined twice; rule names "
                "must be unique, as each is a folder."
            )
        rules[rule.name] = rule
    return rules


def _parse_rule(table: Any, where_file: str, number: int) -> Rule:
    where = f"{where_file}, rule #{number}"
    if not isinstance(table, dict):
        raise RulesError(f"{where} must be a [[rule]] table.")
    name = table.get("name")
    if not isinstance(name, str):
        raise RulesError(f"{where} needs a name (a string).")
    problem = _rule_name_problem(name)
    if problem:
        raise RulesError(f"{where}: the rule name {name!r} {problem}.")
    where = f"{where_file}, rule {name!r}"
    _no_unknown_keys(table, _RULE_KEYS, where)
    description = table.get("description", "")
    if not isinstance(description, str):
        raise RulesError(f"{where}: description must be a string.")
    parameters = _parameters(table.get("parameters", {}), where)
    steps = table.get("step", [])
    if not isinstance(steps, list):
        raise RulesError(f"{where}: write its steps as [[rule.step]] tables.")
    specs = tuple(
        _parse_step(step, where, number) for number, step in enumerate(steps, start=1)
    )
    for before, after in zip(specs, specs[1:], strict=False):
        if after.check and not before.check:
            raise RulesError(
                f"{where}: step {after.name!r} is a check but follows step "
                f"{before.name!r}, which is not; checks must come first."
            )
    duplicates = table.get("duplicates", "accept")
    if duplicates not in DUPLICATES:
        raise RulesError(
            f"{where}: duplicates = {duplicates!r} is not a policy; use "
            f"{', '.join(repr(d) for d in DUPLICATES)}."
        )
    return Rule(name, description, parameters, specs, duplicates)


def _rule_name_problem(name: str) -> str | None:
    """
    Why C{name} cannot be a rule (and so a folder) name, or L{None}.
    """
    if not name.strip():
        return "is empty"
    if "/" in name or "\0" in name:
        return "contains '/' or a NUL character"
    if name.startswith("."):
        return "starts with '.', which would make a hidden folder"
    return None


def _parse_step(table: Any, where_rule: str, number: int) -> StepSpec:
    where = f"{where_rule}, step #{number}"
    if not isinstance(table, dict):
        raise RulesError(f"{where} must be a [[rule.step]] table.")
    class_path = table.get("class")
    name = table.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise RulesError(f"{where}: the step name must be a non-empty string.")
    if name:
        where = f"{where_rule}, step {name!r}"
    _no_unknown_keys(table, _STEP_KEYS, where)
    if not isinstance(class_path, str) or not class_path.strip():
        raise RulesError(
            f"{where} needs a class: the dotted path of a Step subclass, such "
            "as 'quartet_sftpd.steps.WellFormedXML'."
        )
    step_class = _import_step(class_path, where)
    parameters = _parameters(table.get("parameters", {}), where)
    declared = declared_parameters(step_class, where)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise RulesError(
            f"{where}: {class_path} does not take the parameters "
            f"{', '.join(unknown)}; it takes: {', '.join(sorted(declared)) or 'none'}."
        )
    check = table.get("check", False)
    if not isinstance(check, bool):
        raise RulesError(f"{where}: check must be true or false.")
    return StepSpec(name or step_class.__name__, step_class, parameters, check)


def _import_step(class_path: str, where: str) -> type[Step]:
    module_name, _, attribute = class_path.strip().rpartition(".")
    if not module_name:
        raise RulesError(
            f"{where}: class {class_path!r} is not a dotted path such as "
            "'package.module.Class'."
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise RulesError(
            f"{where}: class {class_path} cannot be imported: module "
            f"{module_name} failed to import ({type(error).__name__}: {error}); "
            "check the spelling and that it is installed for this Python."
        ) from None
    step_class = getattr(module, attribute, None)
    if step_class is None:
        raise RulesError(
            f"{where}: class {class_path} cannot be imported: module "
            f"{module_name} has no {attribute!r}."
        )
    if not (isinstance(step_class, type) and issubclass(step_class, Step)):
        raise RulesError(
            f"{where}: {class_path} is not a subclass of quartet_sftpd.rules.Step."
        )
    if inspect.isabstract(step_class):
        missing = ", ".join(sorted(step_class.__abstractmethods__))
        raise RulesError(f"{where}: {class_path} does not implement {missing}.")
    return step_class


def declared_parameters(step_class: type[Step], where: str = "") -> dict[str, str]:
    """
    The parameters a step class declares, read without building a step.

    @param where: names the step in the error message.
    @raise RulesError: reading them failed.
    """
    # declared_parameters is a property, as in quartet_capture; read it on a
    # bare instance since a real one needs a task.
    probe = step_class.__new__(step_class)
    try:
        declared = probe.declared_parameters
        return {str(k): str(v) for k, v in dict(declared).items()}
    except Exception as error:
        raise RulesError(
            f"{where}: the declared_parameters of {step_class.__name__} cannot "
            f"be read ({type(error).__name__}: {error}); it must not depend on "
            "the step's parameters."
        ) from None


def _parameters(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise RulesError(f"{where}: parameters must be a table of names to values.")
    parameters: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            parameters[key] = "true" if item else "false"
        elif isinstance(item, (str, int, float)):
            parameters[key] = str(item)
        else:
            raise RulesError(
                f"{where}: parameter {key!r} must be a string, number or boolean."
            )
    return parameters


def _no_unknown_keys(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise RulesError(
            f"{where} has unknown keys: {', '.join(unknown)}; allowed keys are "
            f"{', '.join(sorted(known))}."
        )


__all__ = [
    "ITaskLog",
    "Rule",
    "RuleContext",
    "RuleFailed",
    "RulesError",
    "Step",
    "StepError",
    "StepSpec",
    "declared_parameters",
    "load_rules",
    "parse_rules",
]
