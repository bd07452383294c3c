"""
Replace a small file atomically, with its final mode from the first byte.

Host keys, user key files and user settings are rewritten whole.  A reader
(the server at the next login, an admin's editor) must see either the old
file or the new one, never half of one, and a secret must never be readable
by others, not even between creating the file and setting its mode.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(
    path: Path,
    data: bytes,
    mode: int,
    *,
    replace: bool = True,
    owner: tuple[int, int] | None = None,
) -> None:
    """
    Write C{data} to C{path} in one step: a reader sees the old file or the
    whole new one.

    The bytes go to a temporary file in the same folder, created with mode
    0600 by L{tempfile.mkstemp}, then set to C{mode}, flushed to disk and
    renamed (or linked) to C{path}; the folder is fsynced so the new name
    survives a crash.  The umask does not change the final mode.

    @param path: the file to write; its folder must exist.
    @param data: the whole new content.
    @param mode: the permission bits of the new file, e.g. C{0o600}.
    @param replace: whether an existing C{path} is replaced; when C{False}
        the file is only created, so two processes racing to create it
        cannot both win.
    @param owner: user and group ids to give the file before it appears,
        or L{None} to leave it to the process that writes it.
    @raise FileExistsError: C{replace} is C{False} and C{path} exists.
    @raise OSError: the folder is not writable or the disk is full; no
        temporary file is left behind.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
            os.unlink(temporary)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    fsync_folder(path.parent)


def fsync_folder(path: Path) -> None:
    """
    Flush a folder's entries to disk so that a rename into it is durable.

    Some filesystems refuse to fsync a folder; the rename is then as durable
    as that filesystem makes it, and nothing is raised.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_private_folder(path: Path, mode: int) -> None:
    """
    Create a folder with exactly C{mode}, whatever the umask; leave an
    existing folder as it is.

    Missing parents are created with mode 0700: they hold the key home, so
    they start closed and an admin opens them on purpose.

    @raise OSError: the folder cannot be created.
    """
    if path.is_dir():
        return
    if not path.parent.is_dir():
        make_private_folder(path.parent, 0o700)
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    os.chmod(path, mode)
