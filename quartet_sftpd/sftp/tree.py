"""
The virtual tree a client sees: C{/} holds one folder per rule, and a rule
folder holds the client's own recent uploads.  Nothing else exists.

Every path a client sends goes through L{VirtualTree.resolve}; no request
touches the real filesystem by a client-supplied name, so C{..}, absolute
paths and symlinks can never leave the tree.

Folder names follow the old QU4RTET folder monitor: a rule's spaces are shown
as dashes (C{"Shipping Notices"} -> C{/Shipping-Notices}).  The monitor mapped
folders back to rules by replacing dashes with spaces, so a rule whose own
name had dashes was unreachable; here the mapping is a lookup table, so any
rule is reachable.  When two rules would get the same folder (C{"A B"} and
C{"A-B"}), the rule whose name is exactly the folder name keeps it and the
other is shown under its literal name, spaces and all.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from twisted.conch.ssh.filetransfer import FX_FAILURE, SFTPError

from quartet_sftpd.sftp.results import RESULTS

#: Longest file name accepted, in bytes, before any archive suffix.
MAX_NAME_BYTES = 255
#: Extra bytes a temporary name may have: WinSCP uploads a 255-byte name as
#: C{NAME.filepart} (264 bytes) and renames it when done.  No name reaches
#: the disk as is (the archive shortens it), so only the final name needs to
#: fit in 255 bytes, as it would on the partner's own filesystem.
TEMP_SUFFIX_BYTES = 32


def folder_names(rule_names: Iterable[str]) -> dict[str, str]:
    """
    Map folder names to rule names, unambiguously.

    @param rule_names: the rules' names; names that cannot be a folder (empty,
        starting with C{.}, containing C{/} or NUL) are left out.
    @return: folder name -> rule name.
    """
    rules = [r for r in rule_names if r and not r.startswith(".") and _safe(r)]
    exact = set(rules)
    dashed: dict[str, list[str]] = {}
    for rule in rules:
        dashed.setdefault(rule.replace(" ", "-"), []).append(rule)

    folders: dict[str, str] = {}
    for folder, claimants in dashed.items():
        if len(claimants) == 1 and (claimants[0] == folder or folder not in exact):
            folders[folder] = claimants[0]
            continue
        for rule in claimants:
            folders[rule] = rule
    return folders


def _safe(name: str) -> bool:
    return "/" not in name and "\0" not in name


@dataclass(frozen=True)
class Root:
    """
    The top of the tree.
    """

    path: str = "/"


@dataclass(frozen=True)
class RuleFolder:
    """
    One rule's folder.
    """

    folder: str
    rule: str

    @property
    def path(self) -> str:
        return "/" + self.folder


@dataclass(frozen=True)
class Entry:
    """
    A name inside a rule folder, which may or may not exist yet.
    """

    folder: str
    rule: str
    name: str

    @property
    def path(self) -> str:
        return f"/{self.folder}/{self.name}"


@dataclass(frozen=True)
class ResultsFolder:
    """
    The read-only C{@results} folder inside a rule folder.
    """

    folder: str
    rule: str

    @property
    def path(self) -> str:
        return f"/{self.folder}/{RESULTS}"


@dataclass(frozen=True)
class ResultEntry:
    """
    A name inside a C{@results} folder.
    """

    folder: str
    rule: str
    name: str

    @property
    def path(self) -> str:
        return f"/{self.folder}/{RESULTS}/{self.name}"


Node = Root | RuleFolder | Entry | ResultsFolder | ResultEntry


def decode_path(raw: bytes) -> str:
    """
    Decode a client path.

    @raise SFTPError: the path is not UTF-8 or holds a NUL byte.
    """
    if b"\0" in raw:
        raise SFTPError(FX_FAILURE, "File names may not contain a NUL byte.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SFTPError(
            FX_FAILURE,
            "File names must be UTF-8; rename the file to plain UTF-8 and try again.",
        ) from None


def components(path: str) -> list[str]:
    """
    Split a path into its components relative to C{/}, folding C{.} and
    C{..} the way a shell would, never above C{/}.  The client's working
    folder is always C{/}, so relative and absolute paths mean the same.
    """
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return parts


def check_name(name: str, temporary: bool = False) -> None:
    """
    Check a name a client wants to create.

    @param temporary: the name is a client's temporary name (such as
        C{*.filepart}), which may exceed L{MAX_NAME_BYTES} by
        L{TEMP_SUFFIX_BYTES}.
    @raise SFTPError: with a sentence saying what is wrong.
    """
    limit = MAX_NAME_BYTES + (TEMP_SUFFIX_BYTES if temporary else 0)
    if len(name.encode("utf-8")) > limit:
        raise SFTPError(
            FX_FAILURE,
            f"The file name is longer than {limit} bytes; use a shorter name.",
        )
    if "\\" in name:
        raise SFTPError(
            FX_FAILURE, "File names may not contain a backslash; use a plain name."
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise SFTPError(FX_FAILURE, "File names may not contain control characters.")
    if name == RESULTS:
        raise SFTPError(
            FX_FAILURE,
            f"{RESULTS} is the folder of your upload results; choose another name.",
        )


class VirtualTree:
    """
    One user's view of the rule folders.
    """

    def __init__(
        self,
        rule_names: Callable[[], Sequence[str]],
        allowed: Callable[[], set[str] | None] = lambda: None,
    ) -> None:
        """
        @param rule_names: returns the current rule names (cheap, no I/O).
        @param allowed: returns the rules this user may see, or None for all.
        """
        self._rule_names = rule_names
        self._allowed = allowed
        self._cache_key: tuple[tuple[str, ...], frozenset[str] | None] | None = None
        self._folders: dict[str, str] = {}

    def folders(self) -> Mapping[str, str]:
        """
        The folders this user sees right now: folder name -> rule name.
        """
        allowed = self._allowed()
        key = (
            tuple(self._rule_names()),
            None if allowed is None else frozenset(allowed),
        )
        if key != self._cache_key:
            names = key[0] if allowed is None else [r for r in key[0] if r in allowed]
            self._folders = folder_names(names)
            self._cache_key = key
        return self._folders

    def where_files_go(self) -> str:
        """
        A sentence naming the folders uploads can go to.
        """
        folders = sorted(self.folders())
        if not folders:
            return "No rule folders are open to you; ask the server's operator."
        shown = ", ".join("/" + f for f in folders[:10])
        more = f" and {len(folders) - 10} more" if len(folders) > 10 else ""
        return f"Upload files into one of the rule folders: {shown}{more}."

    def resolve(self, raw: bytes) -> Node:
        """
        Map a client path to a node of the tree.

        @raise SFTPError: the path is not valid UTF-8 or has a NUL.
        @raise OSError: (ENOENT) no such rule folder, or a path deeper than a
            rule folder, with a message naming the rule folders.
        """
        parts = components(decode_path(raw))
        if not parts:
            return Root()
        folders = self.folders()
        rule = folders.get(parts[0])
        if rule is None:
            raise OSError(
                errno.ENOENT,
                f"There is no folder /{parts[0]}. {self.where_files_go()}",
            )
        if len(parts) == 1:
            return RuleFolder(parts[0], rule)
        if parts[1] == RESULTS and len(parts) <= 3:
            if len(parts) == 2:
                return ResultsFolder(parts[0], rule)
            return ResultEntry(parts[0], rule, parts[2])
        if len(parts) > 2:
            raise OSError(
                errno.ENOENT,
                f"Rule folders have no sub-folders; upload directly into /{parts[0]}.",
            )
        return Entry(parts[0], rule, parts[1])
