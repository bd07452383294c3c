"""
Tests for the shipped steps, on the sample EPCIS documents and on broken
and hostile XML.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from quartet_sftpd.rules import RuleContext, StepError
from quartet_sftpd.steps import CopyToFolder, EPCISSummary, WellFormedXML

# The sample documents, copied from the shared data set (see their README).
SAMPLES = Path(__file__).parent / "data" / "epcis"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>
"""


class TaskLog:
    """
    A task's message list, kept in memory.
    """

    def __init__(self) -> None:
        self.name = "t1"
        self.messages: list[tuple[str, str]] = []

    def add_message(self, level: str, text: str) -> None:
        self.messages.append((level, text))

    def texts(self, level: str = "INFO") -> list[str]:
        return [text for lvl, text in self.messages if lvl == level]


def context(**values: object) -> RuleContext:
    return RuleContext("EPCIS", "t1", dict(values))


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def test_well_formed_xml_passes_the_bytes_on() -> None:
    """
    A well-formed document passes, unchanged, with a message saying so.
    """
    task = TaskLog()
    data = sample("epcis.xml")
    assert WellFormedXML(task).execute(data, context()) is data
    assert task.texts() == ["The file is well-formed XML."]


def test_well_formed_but_invalid_epcis_passes() -> None:
    """
    epcis-bad.xml breaks business rules but is well-formed XML.
    """
    data = sample("epcis-bad.xml")
    assert WellFormedXML(TaskLog()).execute(data, context()) is data


def test_broken_xml_is_reported_with_line_and_column() -> None:
    """
    A tag left open is reported at the line and column (counted from 1)
    where the parser noticed.
    """
    data = b"<a>\n  <b>\n  </a>\n"
    with pytest.raises(StepError) as raised:
        WellFormedXML(TaskLog()).execute(data, context())
    assert str(raised.value) == (
        "not well-formed XML at line 3, column 5: mismatched tag."
    )


def test_non_xml_is_reported() -> None:
    """
    A CSV file in an XML rule fails at its first line.
    """
    with pytest.raises(StepError, match="not well-formed XML at line 1, column 1"):
        WellFormedXML(TaskLog()).execute(b"gtin,serial\n1,2\n", context())


def test_an_empty_file_is_reported() -> None:
    """
    A zero-byte file says the file is empty.
    """
    with pytest.raises(StepError, match="the file is empty"):
        WellFormedXML(TaskLog()).execute(b"", context())


def test_entity_expansion_is_refused_quickly() -> None:
    """
    The billion laughs document is refused without expanding its entities.
    """
    started = time.monotonic()
    with pytest.raises(StepError, match="declares the entity"):
        WellFormedXML(TaskLog()).execute(BILLION_LAUGHS, context())
    assert time.monotonic() - started < 1


def test_external_entities_are_not_read(tmp_path: Path) -> None:
    """
    A document that tries to pull in a local file is refused, and the
    file's content is not in the error.
    """
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    data = (f'<!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]><a>&x;</a>').encode()
    with pytest.raises(StepError) as raised:
        WellFormedXML(TaskLog()).execute(data, context())
    assert "top secret" not in str(raised.value)


# The event counts each sample's README gives, and the <epc> elements listed.
EXPECTED = {
    "epcis.xml": ((1, 1, 1, 1, 0), 36),
    "namespaced.xml": ((1, 1, 1, 1, 0), 36),
    "epcis-bad.xml": ((1, 1, 1, 1, 0), 35),
    "commission.xml": ((1, 0, 0, 0, 0), 13),
    "decommission.xml": ((1, 0, 0, 0, 0), 5),
    "observe.xml": ((3, 0, 0, 0, 0), 4),
    "transformation.xml": ((0, 0, 0, 1, 0), 20),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_epcis_summary_counts_events(name: str) -> None:
    """
    The summary reports each event type's count, the total and the EPCs,
    in fixed wording, and leaves the counts in the rule context.
    """
    (objects, aggregations, transactions, transformations, quantities), epcs = EXPECTED[
        name
    ]
    task = TaskLog()
    rule_context = context()
    result = EPCISSummary(task).execute(sample(name), rule_context)
    assert result is None
    assert task.texts() == [
        f"ObjectEvent count: {objects}",
        f"AggregationEvent count: {aggregations}",
        f"TransactionEvent count: {transactions}",
        f"TransformationEvent count: {transformations}",
        f"QuantityEvent count: {quantities}",
        f"Event count: {objects + aggregations + transactions + transformations}",
        f"EPC count: {epcs}",
    ]
    assert rule_context.context[EPCISSummary.CONTEXT_KEY]["EPC"] == epcs


def test_epcis_summary_counts_quantity_events_and_default_namespaces() -> None:
    """
    QuantityEvents are counted, and a default namespace (as EPCIS 2.0 uses)
    does not hide events.
    """
    data = b"""<EPCISDocument xmlns="urn:epcglobal:epcis:xsd:2">
      <EPCISBody><EventList>
        <QuantityEvent><epcClass>x</epcClass></QuantityEvent>
        <ObjectEvent><epcList><epc>a</epc><epc>b</epc></epcList></ObjectEvent>
      </EventList></EPCISBody></EPCISDocument>"""
    task = TaskLog()
    EPCISSummary(task).execute(data, context())
    assert "QuantityEvent count: 1" in task.texts()
    assert "ObjectEvent count: 1" in task.texts()
    assert "EPC count: 2" in task.texts()


def test_epcis_summary_warns_about_a_document_without_events() -> None:
    """
    An EPCIS document with no events passes with a warning.
    """
    task = TaskLog()
    EPCISSummary(task).execute(
        b"<EPCISDocument><EPCISBody/></EPCISDocument>", context()
    )
    assert "Event count: 0" in task.texts()
    assert task.texts("WARNING") == ["The document holds no events."]


def test_epcis_summary_refuses_other_documents() -> None:
    """
    XML that is not EPCIS fails with the root element named.
    """
    with pytest.raises(StepError, match="root element is <invoice>"):
        EPCISSummary(TaskLog()).execute(b"<invoice/>", context())


def test_epcis_summary_refuses_broken_xml() -> None:
    """
    The summary checks well-formedness itself when run on its own.
    """
    with pytest.raises(StepError, match="not well-formed XML at line 1"):
        EPCISSummary(TaskLog()).execute(b"<EPCISDocument>", context())


@pytest.fixture
def archived(tmp_path: Path) -> Path:
    path = tmp_path / "archive" / "EPCIS" / "20240501-order.xml"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<order/>")
    path.chmod(0o640)
    return path


def copy_context(archived: Path, name: str = "order.xml") -> RuleContext:
    return context(
        **{RuleContext.ARCHIVE_PATH: archived, RuleContext.ORIGINAL_NAME: name}
    )


def test_copy_to_folder_keeps_the_name_and_bytes(
    archived: Path, tmp_path: Path
) -> None:
    """
    The archived bytes appear in the folder under the client's file name,
    with the archive's permissions and no temporary file left behind.
    """
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    task = TaskLog()
    CopyToFolder(task, Folder=str(outbox)).execute(b"ignored", copy_context(archived))
    copy = outbox / "order.xml"
    assert copy.read_bytes() == b"<order/>"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o640
    assert os.listdir(outbox) == ["order.xml"]
    assert task.texts() == [f"Copied order.xml to {copy}."]


def test_copy_to_folder_never_overwrites(archived: Path, tmp_path: Path) -> None:
    """
    When the name is taken, the copy gets a numbered name and the existing
    file is left alone.
    """
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "order.xml").write_bytes(b"earlier")
    (outbox / "order-1.xml").write_bytes(b"earlier too")
    step = CopyToFolder(TaskLog(), Folder=str(outbox))
    step.execute(None, copy_context(archived))
    assert (outbox / "order.xml").read_bytes() == b"earlier"
    assert (outbox / "order-1.xml").read_bytes() == b"earlier too"
    assert (outbox / "order-2.xml").read_bytes() == b"<order/>"
    assert sorted(os.listdir(outbox)) == ["order-1.xml", "order-2.xml", "order.xml"]


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        (None, "needs the parameter 'Folder'"),
        ("outbox", "not an absolute path"),
        ("/nonexistent/outbox", "does not exist"),
    ],
)
def test_copy_to_folder_needs_an_existing_absolute_folder(
    archived: Path, folder: str | None, expected: str
) -> None:
    """
    A missing, relative or absent folder fails the step with the fix named.
    """
    parameters = {} if folder is None else {"Folder": folder}
    with pytest.raises(StepError, match=expected):
        CopyToFolder(TaskLog(), **parameters).execute(None, copy_context(archived))


def test_copy_to_folder_uses_only_the_last_path_part(
    archived: Path, tmp_path: Path
) -> None:
    """
    A file name with folders in it cannot place the copy outside the folder.
    """
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    step = CopyToFolder(TaskLog(), Folder=str(outbox))
    step.execute(None, copy_context(archived, name="../../escape.xml"))
    assert os.listdir(outbox) == ["escape.xml"]
