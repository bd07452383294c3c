"""
The steps shipped with quartet-sftpd.

  - L{WellFormedXML}: refuse anything that is not well-formed XML.
  - L{EPCISSummary}: count an EPCIS document's events and EPCs.
  - L{CopyToFolder}: put a copy of the archived file in a folder.

The XML steps parse with defusedxml: a document that declares entities (the
"billion laughs" expansion) or refers to external entities fails the step
instead of being expanded or fetched.  They read the document as a stream
and drop each element once it is closed, so memory does not grow with the
number of events.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError
from xml.parsers.expat import ErrorString

from defusedxml import (
    DefusedXmlException,
    EntitiesForbidden,
    ExternalReferenceForbidden,
)
from defusedxml.ElementTree import iterparse

from quartet_sftpd.rules import RuleContext, Step, StepError


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    raise StepError(
        f"this step reads XML bytes but the step before it passed on a "
        f"{type(data).__name__}."
    )


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_xml(data: Any) -> Iterator[tuple[str, Element]]:
    """
    Stream the start and end of each element of an XML document, safely.

    @param data: the document's bytes (text is encoded as UTF-8).
    @return: an iterator of C{("start" | "end", element)}; an element's
        children are dropped once its end has been seen.
    @raise StepError: (while iterating) the data is empty, not well-formed
        (the message gives the line and column, counted from 1 as editors
        do), or declares or refers to entities.
    """
    raw = _as_bytes(data)
    if not raw:
        raise StepError("the file is empty; an XML document was expected.")
    try:
        for event, element in iterparse(io.BytesIO(raw), events=("start", "end")):
            yield event, element
            if event == "end":
                element.clear()
    except ParseError as error:
        line, column = error.position
        raise StepError(
            f"not well-formed XML at line {line}, column {column + 1}: "
            f"{ErrorString(error.code)}."
        ) from None
    except EntitiesForbidden as error:
        raise StepError(
            f"the XML declares the entity {error.name!r}; documents with entity "
            "declarations are refused, as they can expand without limit or read "
            "other files."
        ) from None
    except ExternalReferenceForbidden as error:
        raise StepError(
            f"the XML refers to the external resource {error.system_id!r}; "
            "external references are refused."
        ) from None
    except DefusedXmlException as error:
        raise StepError(f"the XML uses a construct that is refused: {error}.") from None


class WellFormedXML(Step):
    """
    Fail unless the data is a well-formed XML document without entity
    declarations; pass the bytes on unchanged.
    """

    def execute(self, data: Any, rule_context: RuleContext) -> Any:
        """
        Parse the whole document.

        @return: C{data}, unchanged.
        @raise StepError: the file is empty, not well-formed, or unsafe.
        """
        for _ in parse_xml(data):
            pass
        self.info("The file is well-formed XML.")
        return data


class EPCISSummary(Step):
    """
    Count the events in an EPCIS 1.x or 2.0 XML document, and the EPCs they
    list.

    Events are counted wherever they sit in the C{EventList}: directly, or
    inside an C{<extension>} wrapper as EPCIS 1.1 and 1.2 place
    TransformationEvents; element names are matched without regard to
    namespace prefixes.  The EPC count is the number of C{<epc>} elements in
    the events (in C{epcList}, C{childEPCs}, C{inputEPCList} and
    C{outputEPCList}), so an EPC listed by two events counts twice.

    Writes one INFO message per event type, always in this order and wording
    (for example C{"ObjectEvent count: 1"}), then C{"Event count: N"} and
    C{"EPC count: N"}, and stores the counts in the rule context under
    L{CONTEXT_KEY} as a dict of event type (and C{"EPC"}) to count.
    """

    #: The rule-context key of the counts.
    CONTEXT_KEY = "EPCIS_SUMMARY"
    #: The event types counted, in the order they are reported.
    EVENT_TYPES = (
        "ObjectEvent",
        "AggregationEvent",
        "TransactionEvent",
        "TransformationEvent",
        "QuantityEvent",
    )
    _DOCUMENTS = ("EPCISDocument", "EPCISQueryDocument", "EPCISMasterDataDocument")

    def execute(self, data: Any, rule_context: RuleContext) -> None:
        """
        Count and report.

        @return: L{None}: the data passes on unchanged.
        @raise StepError: not XML, or not an EPCIS document.
        """
        counts = self.count(data)
        for event_type in self.EVENT_TYPES:
            self.info("%s count: %d", event_type, counts[event_type])
        events = sum(counts[event_type] for event_type in self.EVENT_TYPES)
        self.info("Event count: %d", events)
        self.info("EPC count: %d", counts["EPC"])
        if not events:
            self.warning("The document holds no events.")
        rule_context.context[self.CONTEXT_KEY] = counts

    def count(self, data: Any) -> dict[str, int]:
        """
        The number of events of each type, and of EPCs (key C{"EPC"}).

        @raise StepError: not XML, or not an EPCIS document.
        """
        counts = dict.fromkeys((*self.EVENT_TYPES, "EPC"), 0)
        depth = 0
        event_list_depth: int | None = None
        event_depth: int | None = None
        for action, element in parse_xml(data):
            name = _local_name(element.tag)
            if action == "end":
                if depth == event_depth:
                    event_depth = None
                elif depth == event_list_depth:
                    event_list_depth = None
                depth -= 1
                continue
            depth += 1
            if depth == 1 and name not in self._DOCUMENTS:
                raise StepError(
                    f"the document's root element is <{name}>, not "
                    "<EPCISDocument>: this is not an EPCIS document."
                )
            if event_depth is not None:
                if name == "epc":
                    counts["EPC"] += 1
            elif event_list_depth is not None:
                if name in self.EVENT_TYPES:
                    counts[name] += 1
                    event_depth = depth
            elif name == "EventList":
                event_list_depth = depth
        return counts


class CopyToFolder(Step):
    """
    Copy the archived file into a folder, under the name the client gave it.

    The copy appears at once and whole: it is written to a hidden temporary
    file in the folder, flushed to disk and then linked to its final name.
    An existing file is never replaced; the copy gets a numbered name
    instead (C{order-1.xml}, C{order-2.xml}, ...).  The copy keeps the
    archived file's permission bits.

    A later step's failure does not remove the copy; put this step last to
    copy only files that passed the steps before it.
    """

    #: How many numbered names to try before giving up.
    MAX_SUFFIX = 9999

    @property
    def declared_parameters(self) -> dict[str, str]:
        return {"Folder": "The absolute path of the folder to copy the file into."}

    def execute(self, data: Any, rule_context: RuleContext) -> None:
        """
        Copy the archived file.

        @return: L{None}: the data passes on unchanged.
        @raise StepError: the C{Folder} parameter is missing or not absolute,
            the folder does not exist, or the copy failed.
        """
        folder = self._folder()
        source = Path(
            rule_context.get_required_context_variable(RuleContext.ARCHIVE_PATH)
        )
        original = rule_context.context.get(RuleContext.ORIGINAL_NAME) or source.name
        name = Path(str(original)).name
        if name in ("", ".", ".."):
            name = source.name
        try:
            target = self.copy(source, folder, name)
        except OSError as error:
            raise StepError(
                f"could not copy {name} into {folder}: {error.strerror or error}."
            ) from None
        self.info("Copied %s to %s.", name, target)
        rule_context.context["COPIED_TO"] = target

    def _folder(self) -> Path:
        value = self.get_parameter("Folder", raise_exception=True)
        folder = Path(os.path.expanduser(str(value)))
        if not folder.is_absolute():
            raise StepError(
                f"the Folder parameter {value!r} is not an absolute path; give the "
                "full path of the folder."
            )
        if not folder.is_dir():
            raise StepError(
                f"the folder {folder} does not exist; create it or correct the "
                "Folder parameter."
            )
        return folder

    def copy(self, source: Path, folder: Path, name: str) -> Path:
        """
        Copy C{source} into C{folder} as C{name}, or a numbered variant of it
        if that is taken.

        @return: the path of the copy.
        @raise OSError: reading, writing or linking failed, or every numbered
            name is taken.
        """
        handle, temporary = tempfile.mkstemp(
            prefix=f".{name}.", suffix=".tmp", dir=folder
        )
        try:
            with open(handle, "wb") as out, source.open("rb") as src:
                os.fchmod(out.fileno(), os.stat(src.fileno()).st_mode & 0o777)
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            target = self._link_free_name(Path(temporary), folder, name)
        finally:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
        _fsync_folder(folder)
        return target

    def _link_free_name(self, temporary: Path, folder: Path, name: str) -> Path:
        stem, suffix = os.path.splitext(name)
        if not stem:
            stem, suffix = name, ""
        for number in range(self.MAX_SUFFIX + 1):
            candidate = folder / (name if number == 0 else f"{stem}-{number}{suffix}")
            try:
                # link() fails if the name exists, so nothing is ever replaced,
                # and the file appears under its name complete.
                os.link(temporary, candidate)
                return candidate
            except FileExistsError:
                continue
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                if _claim(candidate):
                    # No hard links on this filesystem: claim the name with an
                    # empty file, then move the copy over it.
                    os.replace(temporary, candidate)
                    return candidate
        raise OSError(
            errno.EEXIST,
            f"{name} and its numbered names up to -{self.MAX_SUFFIX} are all taken",
        )


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    return True


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


__all__ = ["CopyToFolder", "EPCISSummary", "WellFormedXML", "parse_xml"]
