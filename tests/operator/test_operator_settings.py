"""Operator settings from the environment and flags: bad values stop it with the name."""

from __future__ import annotations

import pytest

from avatar_operator import __main__ as main_module
from avatar_operator.settings import OperatorSettings


def test_defaults_are_usable() -> None:
    settings = OperatorSettings()
    assert settings.clusterwide
    assert settings.watch_client_timeout_seconds > settings.watch_server_timeout_seconds
    assert settings.worker_command == ["avatar-worker", "run"]


def test_lists_from_env_as_words_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATAR_OPERATOR_NAMESPACES", "agents, demo")
    assert OperatorSettings().namespaces == ["agents", "demo"]
    monkeypatch.setenv("AVATAR_OPERATOR_NAMESPACES", '["a"]')
    assert OperatorSettings().namespaces == ["a"]
    monkeypatch.setenv(
        "AVATAR_OPERATOR_PLACEMENT",
        '{"inventory": {"headroomMiB": 512, "pools": [{"matchLabels": {"pool": "h100"}, '
        '"vramMiB": 81920}]}}',
    )
    placement = OperatorSettings().placement
    assert placement.inventory.pools[0].vram_mib == 81920
    assert placement.inventory.headroom_mib == 512


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("AVATAR_OPERATOR_WORKER_CPU", "lots", "AVATAR_OPERATOR_WORKER_CPU"),
        ("AVATAR_OPERATOR_GPU_PINNING", "magic", "AVATAR_OPERATOR_GPU_PINNING"),
        ("AVATAR_OPERATOR_WATCH_CLIENT_TIMEOUT_SECONDS", "20", "watch_client_timeout_seconds"),
        ("AVATAR_OPERATOR_STATUS_RELAY_KEY", "short", "AVATAR_OPERATOR_STATUS_RELAY_KEY"),
    ],
)
def test_bad_settings_stop_the_operator_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: str,
    value: str,
    named: str,
) -> None:
    monkeypatch.setenv(env, value)
    assert main_module.main([]) == 2
    assert named in capsys.readouterr().err


def test_the_relay_key_never_shows_in_a_repr() -> None:
    settings = OperatorSettings(status_relay_key="x" * 40)
    assert "x" * 40 not in repr(settings)


def test_to_env_gives_the_same_settings_to_another_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = OperatorSettings(
        namespaces=["agents", "support"],
        worker_command=["python", "-m", "avatar_worker", "run"],
        status_relay_key="k" * 32,
        leader_election=False,
        placement={"strategy": "spread", "inventory": {"headroomMiB": 512}},
        dispatcher_session_template={"avatar": {"renderer": "waveform"}},
        worker_cpu_limit=None,
    )
    env = settings.to_env()
    assert "AVATAR_OPERATOR_WORKER_CPU_LIMIT" not in env  # unset stays unset
    assert env["AVATAR_OPERATOR_LEADER_ELECTION"] == "false"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert OperatorSettings() == settings
