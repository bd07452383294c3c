"""
The benchmark's rule step: it notes when a rule started, so the benchmark
can measure the time from a client's CLOSE reply to the rule's first step.
"""

from __future__ import annotations

import os
import time
from typing import Any

from quartet_sftpd.rules import RuleContext, Step


class Stamp(Step):
    """
    Appends C{"<file name> <time.time()>"} to the file named by its C{File}
    parameter as soon as it starts, then passes the data on unchanged.
    """

    @property
    def declared_parameters(self) -> dict[str, str]:
        return {"File": "absolute path of the file the start times go to"}

    def execute(self, data: Any, rule_context: RuleContext) -> None:
        started = time.time()
        name = rule_context.context[RuleContext.ORIGINAL_NAME]
        path = self.get_parameter("File", raise_exception=True)
        line = f"{name} {started:.6f}\n".encode()
        # One small O_APPEND write per line: rule threads never interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return None
