"""The demo's meetings: one `LocalRoomServer` on loopback serving every session's room (and,
with `viewer=True`, the viewer page, `WebViewer`, on its port). Both the emulated and the real
control plane's demo systems hold one; only how their workers reach it differs.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from avatar_worker.transports.localroom import LocalRoom
    from avatar_worker.transports.roomserver import LocalRoomServer
    from avatar_worker.transports.webviewer import WebViewer

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"  # WAVs the viewer page can speak


class DemoRooms:
    """`start()` serves the rooms (port 0: any free one); `open_room(id)` opens a meeting."""

    def __init__(self, *, port: int = 0, viewer: bool = False, agent_id: str = "agent") -> None:
        self._port = port
        self._serve_viewer = viewer
        self._agent_id = agent_id
        self.server: LocalRoomServer | None = None
        self.viewer: WebViewer | None = None

    async def start(self) -> LocalRoomServer:
        from avatar_worker.transports.roomserver import LocalRoomServer
        from avatar_worker.transports.webviewer import WebViewer

        self.server = LocalRoomServer(port=self._port)
        if self._serve_viewer:
            self.viewer = WebViewer(self.server, agent_id=self._agent_id, wav_dir=EXAMPLES)
        await self.server.start()
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def open_room(self, room_id: str) -> LocalRoom:
        """A room on the room server (the meeting the agent and users are in)."""
        from avatar_worker.transports.localroom import LocalRoom

        assert self.server is not None
        room = LocalRoom(room_id)
        self.server.add_room(room)
        return room

    async def aclose(self) -> None:
        if self.viewer is not None:
            await self.viewer.aclose()
        if self.server is not None:
            await self.server.aclose()


class SystemLifetime:
    """`async with` for a demo system: `start()` (closed again if it fails half-way), then
    `aclose()` on the way out."""

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
