"""The VideoSDK room: the worker joins as the avatar participant with the SDK (videosdk 0.4.1).

* Join: `VideoSDK.init_meeting(meeting_id=, token=, participant_id=, name=,
  custom_microphone_audio_track=, custom_camera_video_track=)`, then `async_join()`. The SDK
  reports a failed join through `on_error` / a FAILED meeting state instead of raising, so
  `join()` waits for `on_meeting_joined` or one of those, within `join_timeout`. (`async_join`
  makes one blocking HTTP call before its websocket; it happens before any media flows.)
* Tracks: the SDK pulls `recv()` from subclasses of its own `CustomAudioTrack` /
  `CustomVideoTrack` (which derive from `vsaiortc`'s MediaStreamTrack, not aiortc's); ours
  delegate to the pipeline's tracks and turn their end into the SDK's `MediaStreamError`.
* Data: a `MeetingEventHandler` passes each `on_data` dict to the listeners untouched (the
  receiver copes with str-for-bytes, foreign senders and garbage itself).
* End: the agent participant left (`on_participant_left` / `on_agent_left` with its id) →
  `AgentLeft`; the meeting was left or closed (`on_meeting_left`, state CLOSED) → `RoomEnded`.

The token comes from the file the operator mounts from the session's Secret; it is passed to
the SDK and never logged. `meeting_factory` is the seam tests use: with no network, a fake
Meeting with the SDK's methods is the only way to exercise this adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from videosdk import CustomAudioTrack, CustomVideoTrack, MeetingEventHandler, VideoSDK
from vsaiortc.mediastreams import MediaStreamError

from avatar_sdk import api
from avatar_worker.transports.base import (
    AgentIdFn,
    DataListener,
    JoinError,
    MediaTrack,
    Transport,
    TransportError,
)

logger = logging.getLogger(__name__)

MeetingFactory = Callable[..., Any]


class _PullsFromThePipeline:
    """Mixed into the SDK's custom tracks: `recv()` hands out the pipeline track's next frame;
    a failure there stops the track the way aiortc expects (MediaStreamError)."""

    def __init__(self, source: MediaTrack) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> Any:
        if self.readyState != "live":  # type: ignore[attr-defined]  # the SDK track's
            raise MediaStreamError
        try:
            return await self._source.recv()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stop()  # type: ignore[attr-defined]  # the SDK track's
            raise MediaStreamError(str(exc)) from exc


class SdkAudioTrack(_PullsFromThePipeline, CustomAudioTrack):  # type: ignore[misc]
    """The SDK's custom audio track, pulling 20 ms frames from the pipeline."""

    kind = "audio"


class SdkVideoTrack(_PullsFromThePipeline, CustomVideoTrack):  # type: ignore[misc]
    """The SDK's custom video track, pulling frames from the pipeline."""

    kind = "video"


class _Handler(MeetingEventHandler):  # type: ignore[misc]
    """Meeting events → the transport (runs on the loop, called by the SDK's emitter)."""

    def __init__(self, transport: VideoSDKTransport) -> None:
        super().__init__()
        self._transport = transport

    def on_meeting_joined(self, data: Any) -> None:
        self._transport._on_joined()

    def on_meeting_left(self, data: Any) -> None:
        self._transport._on_ended(api.EndReason.ROOM_ENDED, "meeting left")

    def on_meeting_state_change(self, data: Any) -> None:
        state = data.get("state") if isinstance(data, dict) else None
        if state == "FAILED":
            self._transport._on_error("meeting state FAILED")
        elif state == "CLOSED":
            self._transport._on_ended(api.EndReason.ROOM_ENDED, "meeting closed")

    def on_error(self, data: Any) -> None:
        self._transport._on_error(data)

    def on_participant_left(self, participant: Any) -> None:
        self._transport._on_participant_left(getattr(participant, "id", None))

    def on_agent_left(self, agent: Any) -> None:
        self._transport._on_participant_left(getattr(agent, "id", None))

    def on_data(self, data: Any) -> None:
        self._transport._on_data(data)


class VideoSDKTransport(Transport):
    """The avatar participant in a VideoSDK room."""

    def __init__(
        self,
        *,
        room_id: str,
        participant_id: str,
        token: str,
        agent_id: AgentIdFn,
        name: str = "Avatar",
        join_timeout: float = 30.0,
        signaling_base_url: str | None = None,
        meeting_factory: MeetingFactory | None = None,
    ) -> None:
        if not token:
            raise JoinError("the join token is empty")
        self._room_id = room_id
        self._participant_id = participant_id
        self._token = token
        self._agent_id = agent_id
        self._name = name
        self._join_timeout = join_timeout
        self._signaling_base_url = signaling_base_url
        self._factory = meeting_factory or VideoSDK.init_meeting
        self._listeners: list[DataListener] = []
        self._meeting: Any = None
        self._handler = _Handler(self)
        self._audio: SdkAudioTrack | None = None
        self._video: SdkVideoTrack | None = None
        self._joined_fut: asyncio.Future[None] | None = None
        self._ended_fut: asyncio.Future[api.EndReason] | None = None
        self._left = False

    def __repr__(self) -> str:  # never show the token
        return f"VideoSDKTransport(room_id={self._room_id!r}, participant={self._participant_id!r})"

    def add_data_listener(self, listener: DataListener) -> None:
        self._listeners.append(listener)

    async def join(self, *, audio_track: MediaTrack, video_track: MediaTrack) -> None:
        loop = asyncio.get_running_loop()
        self._joined_fut = loop.create_future()
        self._ended_fut = loop.create_future()
        self._audio = SdkAudioTrack(audio_track)
        self._video = SdkVideoTrack(video_track)
        options: dict[str, Any] = {}
        if self._signaling_base_url:  # else the SDK's own default host
            options["signaling_base_url"] = self._signaling_base_url
        try:
            self._meeting = self._factory(
                meeting_id=self._room_id,
                token=self._token,
                participant_id=self._participant_id,
                name=self._name,
                mic_enabled=True,
                webcam_enabled=True,
                custom_microphone_audio_track=self._audio,
                custom_camera_video_track=self._video,
                **options,
            )
        except Exception as exc:
            raise JoinError(f"cannot set up the meeting: {type(exc).__name__}: {exc}") from None
        self._meeting.add_event_listener(self._handler)
        logger.info("joining room", extra={"room_id": self._room_id})
        try:
            await self._meeting.async_join()
            await asyncio.wait_for(asyncio.shield(self._joined_fut), self._join_timeout)
        except TimeoutError:
            raise JoinError(f"no meeting-joined event within {self._join_timeout:g} s") from None
        except JoinError:
            raise
        except Exception as exc:
            raise JoinError(f"join failed: {type(exc).__name__}") from None
        logger.info(
            "joined room", extra={"room_id": self._room_id, "participant": self._participant_id}
        )

    async def send(self, payload: str | bytes, reliability: str) -> None:
        if self._meeting is None or self._left:
            raise ConnectionError("not in the meeting")
        await self._meeting.send(payload, {"reliability": reliability})

    async def wait_ended(self) -> api.EndReason:
        if self._ended_fut is None:
            raise TransportError("not joined")
        return await asyncio.shield(self._ended_fut)

    async def aclose(self) -> None:
        for track in (self._audio, self._video):
            if track is not None:
                track.stop()
        if self._meeting is not None and not self._left:
            self._left = True
            try:
                self._meeting.leave()
            except Exception as exc:
                logger.warning("leaving the meeting failed", extra={"error": type(exc).__name__})
            if self._ended_fut is not None and not self._ended_fut.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._ended_fut), 2.0)

    # -----------------------------------------------------------------------------------------
    # SDK callbacks

    def _on_joined(self) -> None:
        if self._joined_fut is not None and not self._joined_fut.done():
            self._joined_fut.set_result(None)

    def _on_error(self, data: Any) -> None:
        message = data if isinstance(data, str) else type(data).__name__
        logger.warning("meeting error", extra={"error": str(message)[:200]})
        if self._joined_fut is not None and not self._joined_fut.done():
            self._joined_fut.set_exception(JoinError(f"VideoSDK error: {message}"))
        elif (
            self._ended_fut is not None
            and not self._ended_fut.done()
            and not self._left
            and str(message).startswith("meeting state FAILED")
        ):
            self._ended_fut.set_result(api.EndReason.ERROR)

    def _on_ended(self, reason: api.EndReason, why: str) -> None:
        if self._ended_fut is not None and not self._ended_fut.done():
            logger.info("room ended", extra={"reason": reason.value, "why": why})
            self._ended_fut.set_result(reason)
        if self._joined_fut is not None and not self._joined_fut.done():
            self._joined_fut.set_exception(JoinError(f"the meeting ended while joining ({why})"))

    def _on_participant_left(self, participant_id: str | None) -> None:
        agent = self._agent_id()
        if participant_id is not None and participant_id == agent:
            self._on_ended(api.EndReason.AGENT_LEFT, "agent participant left")

    def _on_data(self, data: Any) -> None:
        for listener in self._listeners:
            listener(data)
