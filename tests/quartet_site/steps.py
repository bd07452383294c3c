"""
A quartet_capture step for the test site's rules other than EPCIS.
"""

from __future__ import annotations

import os
from typing import Any

from quartet_capture.rules import RuleContext, Step


class CountBytes(Step):
    """
    Notes the size of the data, and the process that ran the step, as task
    messages, and passes the data on.
    """

    @property
    def declared_parameters(self) -> dict[str, str]:
        return {}

    def execute(self, data: Any, rule_context: RuleContext) -> Any:
        self.info("Received %s bytes.", len(data))
        self.info("Run by process %s.", os.getpid())
        return data

    def on_failure(self) -> None:
        pass


def create_rule(name: str) -> Any:
    """
    Create a rule of one L{CountBytes} step, as an admin would.

    @return: the quartet_capture C{Rule}.
    """
    from quartet_capture.models import Rule
    from quartet_capture.models import Step as StepRow

    rule = Rule.objects.create(name=name, description="Counts bytes.")
    StepRow.objects.create(
        name="Count bytes",
        step_class=f"{__name__}.CountBytes",
        order=1,
        rule=rule,
    )
    return rule
