"""The one interface every room offers the worker.

A transport joins a room as the avatar participant, publishes the avatar's two tracks (it
pulls them with `recv()` as a WebRTC sender does), hands every data-channel message to its
listeners as VideoSDK's `on_data` dict (`{"payload", "from", "timestamp", "reliability"}`),
sends the worker's acks, and says when and why the room ended for the avatar: the agent
participant left (`AgentLeft`) or the meeting left/ended (`RoomEnded`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Protocol

from avatar_sdk import api

DataListener = Callable[[dict[str, Any]], None]
AgentIdFn = Callable[[], str | None]


class MediaTrack(Protocol):
    """What a transport publishes: pulled with `recv()` until it raises."""

    kind: str

    async def recv(self) -> Any: ...

    def stop(self) -> None: ...


class TransportError(Exception):
    """A room could not be joined or used."""


class JoinError(TransportError):
    """Joining the room failed (bad token, unreachable server, refused)."""


class Transport(abc.ABC):
    """A room as the worker sees it."""

    @abc.abstractmethod
    def add_data_listener(self, listener: DataListener) -> None:
        """Receive every data-channel message (the VideoSDK `on_data` dict)."""

    @abc.abstractmethod
    async def join(self, *, audio_track: MediaTrack, video_track: MediaTrack) -> None:
        """Join and publish both tracks; raises `JoinError`."""

    @abc.abstractmethod
    async def send(self, payload: str | bytes, reliability: str) -> None:
        """Send a data-channel message to the room."""

    @abc.abstractmethod
    async def wait_ended(self) -> api.EndReason:
        """Return when the room has ended for the avatar, with the reason."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Leave the room and stop publishing."""
