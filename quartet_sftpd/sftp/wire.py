"""
Reading and writing SFTP version 3 packets (draft-ietf-secsh-filexfer-02)
and the attribute and C{ls -l} formats that go with them.
"""

from __future__ import annotations

import stat
import struct
import time

from twisted.conch.ssh.filetransfer import (
    FILEXFER_ATTR_ACMODTIME,
    FILEXFER_ATTR_EXTENDED,
    FILEXFER_ATTR_PERMISSIONS,
    FILEXFER_ATTR_SIZE,
    FILEXFER_ATTR_UIDGID,
)

_U32 = struct.Struct("!L")
_U64 = struct.Struct("!Q")


class BadMessage(Exception):
    """
    A request that does not parse: it ends before its last field.
    """


class Reader:
    """
    Reads the fields of one request in order.
    """

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self._data = data
        self._offset = offset
        #: Bytes left after the last field, once L{end} was called.
        self.trailing = 0

    def _take(self, n: int) -> bytes:
        end = self._offset + n
        if end > len(self._data):
            raise BadMessage("the request ends too early")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def u32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def string(self) -> bytes:
        return self._take(self.u32())

    def attrs(self) -> dict[str, object]:
        """
        An ATTRS structure, as a dict with Conch's keys (C{size}, C{uid},
        C{gid}, C{permissions}, C{atime}, C{mtime}, C{ext_NAME}).
        """
        flags = self.u32()
        attrs: dict[str, object] = {}
        if flags & FILEXFER_ATTR_SIZE:
            attrs["size"] = self.u64()
        if flags & FILEXFER_ATTR_UIDGID:
            attrs["uid"] = self.u32()
            attrs["gid"] = self.u32()
        if flags & FILEXFER_ATTR_PERMISSIONS:
            attrs["permissions"] = self.u32()
        if flags & FILEXFER_ATTR_ACMODTIME:
            attrs["atime"] = self.u32()
            attrs["mtime"] = self.u32()
        if flags & FILEXFER_ATTR_EXTENDED:
            for _ in range(self.u32()):
                kind = self.string()
                attrs["ext_" + kind.decode("utf-8", "replace")] = self.string()
        return attrs

    def end(self) -> None:
        """
        The request's fields are all read.  Bytes left over are ignored, as
        OpenSSH's sftp-server ignores them: rclone 1.60 (Go's pkg/sftp) pads
        some WRITE requests beyond their data, and clients are tested
        against that server.  L{trailing} counts them.
        """
        self.trailing = len(self._data) - self._offset


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def string(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def pack_attrs(attrs: dict[str, int]) -> bytes:
    """
    Encode attributes; sizes are 64-bit, times are clamped to 32 bits as
    version 3 of the protocol requires.
    """
    flags = 0
    out = []
    if "size" in attrs:
        flags |= FILEXFER_ATTR_SIZE
        out.append(_U64.pack(attrs["size"]))
    if "uid" in attrs and "gid" in attrs:
        flags |= FILEXFER_ATTR_UIDGID
        out.append(_U32.pack(attrs["uid"]) + _U32.pack(attrs["gid"]))
    if "permissions" in attrs:
        flags |= FILEXFER_ATTR_PERMISSIONS
        out.append(_U32.pack(attrs["permissions"]))
    if "atime" in attrs and "mtime" in attrs:
        flags |= FILEXFER_ATTR_ACMODTIME
        out.append(
            _U32.pack(_clamp(attrs["atime"])) + _U32.pack(_clamp(attrs["mtime"]))
        )
    return _U32.pack(flags) + b"".join(out)


def _clamp(t: int) -> int:
    return max(0, min(int(t), 0xFFFFFFFF))


def longname(
    name: str, attrs: dict[str, int], owner: str, now: float | None = None
) -> str:
    """
    An C{ls -l} line for a listing, as OpenSSH's server writes it; some
    clients (FileZilla among them) read the file type from its first letter.
    """
    mode = stat.filemode(attrs.get("permissions", 0o100640))
    size = attrs.get("size", 0)
    mtime = attrs.get("mtime", 0)
    now = time.time() if now is None else now
    when = time.localtime(mtime)
    if abs(now - mtime) < 180 * 24 * 3600:
        stamp = time.strftime("%b %d %H:%M", when)
    else:
        stamp = time.strftime("%b %d  %Y", when)
    owner = owner[:8]
    return f"{mode}    1 {owner:<8} {owner:<8} {size:>8} {stamp} {name}"
