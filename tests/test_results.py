"""
The text and names of the partner's result files.
"""

from __future__ import annotations

from quartet_sftpd.sftp.results import result_files
from quartet_sftpd.tasks import Task, TaskMessage, TaskStatus


def task(name: str, file: str, status: TaskStatus, received: float) -> Task:
    return Task(
        name=name,
        rule="EPCIS",
        user="acme",
        file=file,
        archive_path="/srv/archive/EPCIS/x",
        size=42,
        sha256="ab" * 32,
        status=status,
        received=received,
        created=received,
        started=received + 1,
        ended=received + 2,
        execution_time=1.0,
        messages=(
            TaskMessage("INFO", "ObjectEvent count: 1", received + 1),
            TaskMessage(
                "DEBUG", "Traceback (most recent call last): ...", received + 2
            ),
            TaskMessage("ERROR", "Step 'Summary' failed: boom.", received + 2),
        ),
    )


def test_names_say_when_how_and_what() -> None:
    moment = 1_796_326_408.0  # 2026-12-03 19:33:28 UTC
    files = result_files(
        [
            task("t2", "b.xml", TaskStatus.FAILED, moment + 60),
            task("t1", "a.xml", TaskStatus.FINISHED, moment),
            task("t3", "a.xml", TaskStatus.FINISHED, moment),
        ]
    )
    assert sorted(files) == [
        "20261203T193328Z FINISHED a.xml (2).txt",
        "20261203T193328Z FINISHED a.xml.txt",
        "20261203T193428Z FAILED b.xml.txt",
    ]


def test_text_has_facts_and_messages_but_no_tracebacks() -> None:
    [result] = result_files(
        [task("t1", "a.xml", TaskStatus.FAILED, 1_796_326_408.0)]
    ).values()
    text = result.text().decode()
    assert "File:      a.xml\n" in text
    assert "Status:    FAILED\n" in text
    assert "Task:      t1\n" in text
    assert "Received:  2026-12-03 19:33:28 UTC" in text
    assert "ERROR    Step 'Summary' failed: boom." in text
    assert "ObjectEvent count: 1" in text
    assert "Traceback" not in text
