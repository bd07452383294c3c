"""
A stock asyncssh SFTP server for the benchmark, run as its own process:

    python bench/asyncssh_server.py HOST_KEY AUTHORIZED_KEYS ROOT

It listens on a free loopback port, prints the port on one line, accepts any
user name with a key from AUTHORIZED_KEYS and serves ROOT as C{/} with
asyncssh's own SFTP server (default window and packet sizes).
"""

from __future__ import annotations

import asyncio
import sys

import asyncssh


async def serve(host_key: str, authorized_keys: str, root: str) -> None:
    def rooted(channel: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        return asyncssh.SFTPServer(channel, chroot=root)

    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=authorized_keys,
        sftp_factory=rooted,
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(serve(*sys.argv[1:4]))
