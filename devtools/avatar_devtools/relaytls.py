"""TLS for the operator's status relay where tests and developers run the operator on this
machine (against the emulator or the real control plane): a CA and a serving certificate made
with the real control plane's `PKI`, the operator settings that serve the relay with them, and
a client context that trusts that CA alone, as a worker does with the CA from its Secret.

    tls = relaytls.make(tmp_path / "relay-tls")
    settings = OperatorSettings(**tls.operator_settings(port), ...)
    aiohttp.ClientSession().patch(settings.status_url + path, ssl=tls.client_context())
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path
from typing import Any, NamedTuple

from avatar_devtools.realcluster.pki import PKI
from avatar_operator import settings as settings_mod

LOOPBACK = ("127.0.0.1", "localhost")
CA = "relay-ca"  # the stem of the CA's files in a directory


class RelayTLS(NamedTuple):
    """The files of one relay's TLS: its certificate and key, and the CA that signed it."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def operator_settings(self, port: int, host: str = "127.0.0.1") -> dict[str, Any]:
        """`OperatorSettings` keywords: the relay in TLS on `port`, workers sent to `host`."""
        return {
            "status_relay_port": port,
            "status_relay_cert_file": str(self.cert_file),
            "status_relay_key_file": str(self.key_file),
            "status_relay_ca_file": str(self.ca_file),
            "status_url": f"https://{host}:{port}",
        }

    def operator_env(self, port: int, host: str = "127.0.0.1") -> dict[str, str]:
        """The same as the `AVATAR_OPERATOR_*` environment of `python -m avatar_operator`."""
        return {
            f"{settings_mod.ENV_PREFIX}{name.upper()}": str(value)
            for name, value in self.operator_settings(port, host).items()
        }

    def client_context(self) -> ssl.SSLContext:
        """Verifies the relay's certificate and host name against this CA only."""
        return ssl.create_default_context(cafile=self.ca_file)


def make(
    directory: str | os.PathLike[str], hosts: tuple[str, ...] = LOOPBACK, *, name: str = "relay"
) -> RelayTLS:
    """A serving certificate `name` for `hosts` (addresses and DNS names), signed by the CA of
    `directory` (made on first use). Each directory is a CA of its own: two of them do not
    trust each other."""
    pki = PKI(directory)
    if not pki.path(f"{CA}.crt").exists():
        pki.directory.mkdir(parents=True, exist_ok=True)
        pki.make_ca(CA, "avatar-operator-relay-ca")
    addresses = tuple(h for h in hosts if _is_address(h))
    names = tuple(h for h in hosts if not _is_address(h))
    cert, key = pki.issue(
        name,
        names[0] if names else hosts[0],
        server=True,
        dns_names=names,
        ip_addresses=addresses,
        ca=CA,
    )
    return RelayTLS(cert, key, pki.path(f"{CA}.crt"))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
