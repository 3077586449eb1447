"""The relay's serving certificate: a missing or broken file stops the operator with the file
named and what to do; a rotated one is served from the next handshake; a broken rotation
leaves the working one in place."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from avatar_devtools import relaytls as dev_tls
from avatar_devtools.localcluster import kubeconfig
from avatar_operator import __main__ as main_module
from avatar_operator import relaytls
from avatar_operator.settings import OperatorSettings


@pytest.fixture
def files(tmp_path: Path) -> dev_tls.RelayTLS:
    return dev_tls.make(tmp_path / "served")


def _serving(tls: dev_tls.RelayTLS) -> relaytls.ServingTLS:
    return relaytls.ServingTLS(str(tls.cert_file), str(tls.key_file), str(tls.ca_file))


@pytest.fixture
async def server(files: dev_tls.RelayTLS) -> AsyncIterator[tuple[relaytls.ServingTLS, int]]:
    """A TLS server on the ServingTLS's context that answers every connection with `ok`."""
    serving = _serving(files)

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    listening = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=serving.context)
    yield serving, listening.sockets[0].getsockname()[1]
    listening.close()
    await listening.wait_closed()


async def _handshake(port: int, trusting: Path) -> bytes:
    context = ssl.create_default_context(cafile=trusting)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    data = await reader.read()
    writer.close()
    return data


def _copy(source: dev_tls.RelayTLS, target: dev_tls.RelayTLS, *, key: bool = True) -> None:
    shutil.copyfile(source.cert_file, target.cert_file)
    shutil.copyfile(source.ca_file, target.ca_file)
    if key:
        shutil.copyfile(source.key_file, target.key_file)


def test_the_ca_for_workers_is_read_with_the_certificate(files: dev_tls.RelayTLS) -> None:
    serving = _serving(files)
    assert serving.ca_pem == files.ca_file.read_text()
    assert relaytls.ServingTLS(str(files.cert_file), str(files.key_file)).ca_pem is None


@pytest.mark.parametrize("which", ["cert_file", "key_file", "ca_file"])
def test_a_missing_file_is_named_with_what_to_do(files: dev_tls.RelayTLS, which: str) -> None:
    getattr(files, which).unlink()
    with pytest.raises(relaytls.TLSConfigError) as caught:
        _serving(files)
    message = str(caught.value)
    assert str(getattr(files, which)) in message and "No such file" in message
    assert "statusRelay.tls" in message


def test_a_key_of_another_certificate_is_refused(files: dev_tls.RelayTLS, tmp_path: Path) -> None:
    other = dev_tls.make(tmp_path / "other")
    with pytest.raises(relaytls.TLSConfigError, match="does not load"):
        relaytls.ServingTLS(str(files.cert_file), str(other.key_file))


def test_a_ca_file_that_holds_no_certificate_is_refused(files: dev_tls.RelayTLS) -> None:
    files.ca_file.write_text("not a certificate\n")
    with pytest.raises(relaytls.TLSConfigError, match=str(files.ca_file)):
        _serving(files)


async def test_a_rotated_certificate_is_served_from_the_next_handshake(
    server: tuple[relaytls.ServingTLS, int], files: dev_tls.RelayTLS, tmp_path: Path
) -> None:
    serving, port = server
    assert await _handshake(port, files.ca_file) == b"ok"
    assert serving.reload() is False  # unchanged files: nothing to do
    rotated = dev_tls.make(tmp_path / "rotated")
    _copy(rotated, files)
    assert serving.reload() is True
    assert serving.ca_pem == rotated.ca_file.read_text()
    assert await _handshake(port, rotated.ca_file) == b"ok"


async def test_a_broken_rotation_keeps_the_certificate_that_works(
    server: tuple[relaytls.ServingTLS, int], files: dev_tls.RelayTLS, tmp_path: Path
) -> None:
    serving, port = server
    trusted = tmp_path / "trusted-ca.crt"
    shutil.copyfile(files.ca_file, trusted)
    _copy(dev_tls.make(tmp_path / "half"), files, key=False)  # a certificate without its key
    with pytest.raises(relaytls.TLSConfigError):
        serving.reload()
    assert await _handshake(port, trusted) == b"ok"
    assert serving.ca_pem == trusted.read_text()


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"status_relay_cert_file": "/c"}, "go together"),
        ({"status_relay_ca_file": "/ca"}, "STATUS_RELAY_CA_FILE needs"),
        (
            {"status_relay_cert_file": "/c", "status_relay_key_file": "/k", "http_port": 8443},
            "status_relay_port must differ",
        ),
        (
            {
                "status_relay_cert_file": "/c",
                "status_relay_key_file": "/k",
                "status_url": "http://relay:8443",
            },
            "must be https://",
        ),
    ],
)
def test_relay_tls_settings_that_cannot_work_are_refused(
    values: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        OperatorSettings.model_validate(values)


def test_the_operator_does_not_start_without_its_certificate(
    files: dev_tls.RelayTLS,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files.key_file.unlink()
    for name, value in files.operator_env(8443).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AVATAR_OPERATOR_STATUS_RELAY_KEY", "k" * 32)
    config = kubeconfig.write(tmp_path / "kubeconfig", "http://127.0.0.1:9")
    assert main_module.main(["--kubeconfig", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(files.key_file) in err and "unset AVATAR_OPERATOR_STATUS_RELAY_CERT_FILE" in err
