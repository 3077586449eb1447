"""The local room's names in one place, for callers written before it was split.

The room is `localroom` (with the in-process `LocalTransport`), the user's browser `viewer`,
the websocket server and client `roomserver` and `roomclient`; new code imports those.
"""

from __future__ import annotations

from avatar_worker.transports.localroom import (
    LinkConditions,
    LocalParticipant,
    LocalRoom,
    LocalTransport,
)
from avatar_worker.transports.roomclient import LocalRoomClient
from avatar_worker.transports.roomserver import LocalRoomServer
from avatar_worker.transports.viewer import LocalViewer, ViewerLog

__all__ = [
    "LinkConditions",
    "LocalParticipant",
    "LocalRoom",
    "LocalRoomClient",
    "LocalRoomServer",
    "LocalTransport",
    "LocalViewer",
    "ViewerLog",
]
