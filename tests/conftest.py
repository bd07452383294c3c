"""
Fixtures shared by the end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import Server, make_key


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    """
    A fresh ed25519 key pair for a partner; the private key's path.
    """
    folder = tmp_path / "client"
    folder.mkdir()
    return make_key(folder)


@pytest.fixture
def server(tmp_path: Path, client_key: Path) -> Iterator[Server]:
    """
    A running server with one user, C{partner}, who holds C{client_key}.
    """
    home = tmp_path / "server"
    home.mkdir()
    instance = Server(home)
    instance.add_user("partner", client_key)
    instance.start()
    try:
        yield instance
    finally:
        if instance.process is not None:
            instance.stop()
