"""Log lines keep their fields: `k=v` in text, keys in JSON (the chart's
AVATAR_OPERATOR_LOG_FORMAT=json), for the operator's own entry point too."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from avatar_sdk import logs


def _record(**extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "avatar_operator.launch", "msg": "launched"})
    record.levelname = "INFO"
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_text_lines_carry_the_extra_fields() -> None:
    line = logs.KeyValueFormatter("%(levelname)s %(message)s").format(
        _record(session="agents/avatar-room", room_id="room", gpu=0)
    )
    assert line == "INFO launched gpu=0 room_id='room' session='agents/avatar-room'"


def test_json_lines_are_objects_with_the_fields() -> None:
    line = json.loads(logs.JSONFormatter().format(_record(session="agents/a", node="h100-0")))
    assert line["message"] == "launched" and line["level"] == "info"
    assert (line["session"], line["node"]) == ("agents/a", "h100-0")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_operator_configures_the_format_it_is_given(fmt: str) -> None:
    code = (
        "import logging, sys\n"
        "from avatar_operator import __main__ as m\n"
        "from avatar_sdk import logs\n"
        "m.runner.run = None  # stop after logging is set up\n"
        "try:\n"
        "    m.main(['--no-leader-election'])\n"
        "except TypeError:\n"
        "    pass\n"
        "logging.getLogger('avatar_operator.launch').info('launched', extra={'session': 's/x'})\n"
    )
    env = {"AVATAR_OPERATOR_LOG_FORMAT": fmt, "AVATAR_OPERATOR_STATUS_RELAY_KEY": "k" * 32}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, "PATH": ""}
    )
    last = done.stderr.strip().splitlines()[-1]
    if fmt == "json":
        assert json.loads(last)["session"] == "s/x", done.stderr
    else:
        assert last.endswith("launched session='s/x'"), done.stderr
