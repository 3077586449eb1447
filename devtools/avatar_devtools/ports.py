"""Free TCP ports on loopback for tests, benches and the demo.

The kernel can hand the same ephemeral port to two binds in a row once the first socket is
closed, and a caller that asks for three ports before listening on any would then configure
two servers on one port. `free_port` never returns a port twice in one process."""

from __future__ import annotations

import socket
import threading

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port nothing listens on now, and not returned before in this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        with _lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
