"""
Result views: what became of a partner's uploads, where the partner looks.

Each rule folder holds a read-only folder, C{@results}, that lists one small
text file per upload its user made into that rule in the last
C{results_days} days.  A file's name says when the upload arrived, how it
ended and what it was called::

    /EPCIS/@results/20261203T193328Z FINISHED epcis.xml.txt
    /EPCIS/@results/20261203T194102Z FAILED broken.xml.txt
    /EPCIS/@results/20261203T194530Z DUPLICATE epcis.xml.txt

and its text gives the task's name, times, status and messages.  The name
C{@results} cannot collide with a rule (it lives inside a rule folder) nor
with an upload (uploads under that name are refused), and clients that hide
dot-names still show it.  Other users never see a user's results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from quartet_sftpd.tasks import Task

#: The name of the results folder inside each rule folder.
RESULTS = "@results"


def _stamp(moment: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(moment))


def _utc(moment: float | None) -> str:
    if moment is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


@dataclass(frozen=True)
class ResultFile:
    """
    One upload's result, as a file in C{@results}.
    """

    name: str
    task: Task

    @property
    def mtime(self) -> float:
        return self.task.ended or self.task.started or self.task.created

    def text(self) -> bytes:
        """
        The file's contents: the task's facts and messages, as plain text.
        """
        task = self.task
        lines = [
            f"File:      {task.file}",
            f"Rule:      {task.rule}",
            f"Status:    {task.status.value}",
            f"Task:      {task.name}",
            f"Received:  {_utc(task.received)}",
            f"Started:   {_utc(task.started)}",
            f"Ended:     {_utc(task.ended)}",
            f"Size:      {task.size} bytes",
            f"SHA-256:   {task.sha256}",
            "",
            "Messages:",
        ]
        shown = [m for m in task.messages if m.level != "DEBUG"]
        for message in shown:
            lines.append(f"{_utc(message.time)}  {message.level:<7}  {message.text}")
        if not shown:
            lines.append("(none yet)")
        return ("\n".join(lines) + "\n").encode("utf-8")


def result_files(tasks: list[Task]) -> dict[str, ResultFile]:
    """
    Name each task's result file; names are unique within one listing.

    @param tasks: one user's tasks in one rule, any order.
    @return: file name -> result.
    """
    files: dict[str, ResultFile] = {}
    for task in sorted(tasks, key=lambda t: (t.received, t.name)):
        base = f"{_stamp(task.received)} {task.status.value} {task.file}"
        name = base + ".txt"
        number = 1
        while name in files:
            number += 1
            name = f"{base} ({number}).txt"
        files[name] = ResultFile(name, task)
    return files
