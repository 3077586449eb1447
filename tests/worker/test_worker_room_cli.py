"""`avatar-worker room`: the local room server the chart runs when no VideoSDK account is given.

One server serves every session's room on one port (`ws://HOST:PORT/rooms/{roomId}`, the
template the operator fills in per session), creates a room at its first join, closes a meeting
on `POST /rooms/ROOM/end`, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from worker_support import AGENT

from avatar_devtools.ports import free_port
from avatar_sdk import api, protocol
from avatar_worker import cli
from avatar_worker.transports.base import JoinError
from avatar_worker.transports.roomclient import LocalRoomClient
from avatar_worker.transports.roomserver import LocalRoomServer


@pytest.fixture
async def open_server() -> AsyncIterator[LocalRoomServer]:
    server = LocalRoomServer(open_rooms=True)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


def test_the_room_subcommand_parses_host_and_port() -> None:
    args = cli.build_parser().parse_args(["room", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.func, args.host, args.port) == (cli.cmd_room, "0.0.0.0", 9000)
    defaults = cli.build_parser().parse_args(["room"])
    assert (defaults.host, defaults.port, defaults.loss) == ("127.0.0.1", 8765, 0.0)


async def test_open_server_creates_each_room_at_its_first_join(
    open_server: LocalRoomServer,
) -> None:
    assert open_server.url == open_server.url_template
    assert open_server.url_template.endswith("/rooms/{roomId}")
    avatar_a = LocalRoomClient(open_server.url_for("room-a"), "avatar-a", lambda: AGENT)
    avatar_b = LocalRoomClient(open_server.url_for("room-b"), "avatar-b", lambda: AGENT)
    agent_a = LocalRoomClient(open_server.url_for("room-a"), AGENT, lambda: None)
    received: list[object] = []
    avatar_a.add_data_listener(lambda m: received.append(m["payload"]))
    try:
        for client in (avatar_a, avatar_b, agent_a):
            await client.connect()
        assert sorted(open_server.rooms) == ["room-a", "room-b"]
        assert sorted(open_server.rooms["room-a"].participants) == sorted([AGENT, "avatar-a"])
        await agent_a.send(protocol.encode_segment_end(), protocol.RELIABLE)
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.01)
        assert received == [protocol.encode_segment_end()]
    finally:
        for client in (avatar_a, avatar_b, agent_a):
            await client.aclose()


async def test_ending_a_room_ends_it_for_its_participants_only(
    open_server: LocalRoomServer,
) -> None:
    in_a = LocalRoomClient(open_server.url_for("room-a"), "avatar-a", lambda: AGENT)
    in_b = LocalRoomClient(open_server.url_for("room-b"), "avatar-b", lambda: AGENT)
    base = open_server.url_template.split("/rooms/")[0].replace("ws://", "http://")
    try:
        await in_a.connect()
        await in_b.connect()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/rooms/room-a/end") as response:
                assert response.status == 200
                assert (await response.json())["ended"] == ["avatar-a"]
            assert await asyncio.wait_for(in_a.wait_ended(), 5) == api.EndReason.ROOM_ENDED
            async with http.get(f"{base}/rooms") as response:
                rooms = (await response.json())["rooms"]
            assert rooms == [{"roomId": "room-b", "participants": ["avatar-b"], "ended": False}]
            async with http.post(f"{base}/rooms/no-such-room/end") as response:
                assert response.status == 404
        # a later session of the same room id gets a fresh room
        again = LocalRoomClient(open_server.url_for("room-a"), "avatar-a", lambda: AGENT)
        await again.connect()
        assert open_server.rooms["room-a"].participants == ["avatar-a"]
        await again.aclose()
    finally:
        await in_a.aclose()
        await in_b.aclose()


async def test_an_emptied_room_is_forgotten(open_server: LocalRoomServer) -> None:
    client = LocalRoomClient(open_server.url_for("short-lived"), "avatar", lambda: AGENT)
    await client.connect()
    assert "short-lived" in open_server.rooms
    await client.aclose()
    for _ in range(100):
        if "short-lived" not in open_server.rooms:
            break
        await asyncio.sleep(0.01)
    assert "short-lived" not in open_server.rooms


async def test_an_invalid_room_id_is_refused(open_server: LocalRoomServer) -> None:
    client = LocalRoomClient(open_server.url_for("-bad"), "avatar", lambda: AGENT, join_timeout=2)
    with pytest.raises(JoinError, match="-bad"):
        await client.connect()
    assert open_server.rooms == {}


async def test_a_closed_server_serves_only_its_rooms() -> None:
    server = LocalRoomServer()  # not open: nothing but add_room's rooms
    await server.start()
    try:
        client = LocalRoomClient(server.url_for("room-a"), "avatar", lambda: AGENT, join_timeout=2)
        with pytest.raises(JoinError):
            await client.connect()
        assert server.rooms == {}
    finally:
        await server.aclose()


async def test_the_room_command_serves_on_the_given_host_and_port_until_sigterm() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "avatar_worker",
        "room",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stderr.readline(), 60)
        assert b"local room server listening" in line
        assert f"ws://127.0.0.1:{port}/rooms/{{roomId}}".encode() in line
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            assert response.status == 200
        client = LocalRoomClient(f"ws://127.0.0.1:{port}/rooms/kind-demo", "avatar", lambda: AGENT)
        await client.connect()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(client.wait_ended(), 10) == api.EndReason.ROOM_ENDED
        await client.aclose()
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_the_room_command_reports_a_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["room", "--port", str(port), "--log-level", "error"]) == 1
