"""The status relay's TLS: its serving certificate, kept current, and the CA workers trust.

The relay carries the workers' status credentials (and, with warm pools, their join tokens), so
it serves TLS on a port of its own (`status_relay_port`); /healthz, /readyz and /metrics stay
plain HTTP on `http_port`, for the probes and Prometheus. The CA certificate
(`status_relay_ca_file`, public) goes into every session's Secret: a worker trusts that CA, and
nothing else, for the relay.

Certificates are rotated in place (cert-manager renews them before they expire; the kubelet
updates the mounted Secret's files): `watch()` reloads them when they change, for the
handshakes that follow; open connections keep theirs. A file missing, unreadable or not a
certificate is a `TLSConfigError` naming it at start-up; later, a broken rotation keeps the
certificate that works, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl

logger = logging.getLogger(__name__)

RELOAD_SECONDS = 60.0  # how often the files are checked for a rotated certificate
HINT = (
    "mount the relay's TLS Secret there (the chart's statusRelay.tls), or unset "
    "AVATAR_OPERATOR_STATUS_RELAY_CERT_FILE and _KEY_FILE to serve plain HTTP"
)

Stamp = tuple[tuple[int, int], ...]  # (mtime, size) of each file


class TLSConfigError(RuntimeError):
    """The relay cannot serve TLS as configured; the message names the file and what to do."""


def _why(exc: Exception) -> str:
    """What went wrong, without the traceback's noise (`ssl.SSLError` is an `OSError`)."""
    if isinstance(exc, UnicodeDecodeError):
        return "not PEM text"
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


class ServingTLS:
    """The relay's `ssl.SSLContext` and the CA certificate (PEM) for the workers."""

    def __init__(self, cert_file: str, key_file: str, ca_file: str | None = None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.ca_file = ca_file
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca_pem: str | None = None
        self._stamp: Stamp | None = None
        self.reload()  # refuse to start without a certificate that loads

    def _files(self) -> list[str]:
        return [self.cert_file, self.key_file, *([self.ca_file] if self.ca_file else [])]

    def _stamps(self) -> Stamp:
        stamps = []
        for path in self._files():
            try:
                stat = os.stat(path)
            except OSError as exc:
                raise TLSConfigError(
                    f"the status relay's TLS file {path} cannot be read: {_why(exc)}; {HINT}"
                ) from None
            stamps.append((stat.st_mtime_ns, stat.st_size))
        return tuple(stamps)

    def reload(self) -> bool:
        """Load the files if they changed since the last load; True when they were."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return False
        ca_pem = self._read_ca()
        # into a scratch context first: a certificate that does not match its key must not
        # replace the one that is served
        for context in (ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), self.context):
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except OSError as exc:  # ssl.SSLError among them
                raise TLSConfigError(
                    f"the status relay's certificate {self.cert_file} with key {self.key_file} "
                    f"does not load: {_why(exc)}; {HINT}"
                ) from None
        self.ca_pem, self._stamp = ca_pem, stamp
        return True

    def _read_ca(self) -> str | None:
        if not self.ca_file:
            return None
        try:
            with open(self.ca_file, encoding="ascii") as handle:
                pem = handle.read()
            ssl.create_default_context(cadata=pem)  # a certificate at all?
        except (OSError, ValueError) as exc:
            raise TLSConfigError(
                f"the status relay's CA certificate {self.ca_file} does not load: {_why(exc)}; "
                "put the CA that signed the relay's certificate there (ca.crt of its Secret)"
            ) from None
        return pem

    async def watch(self, interval: float = RELOAD_SECONDS) -> None:
        """Reload rotated certificates until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                if self.reload():
                    logger.info("status relay certificate reloaded", extra={"file": self.cert_file})
            except TLSConfigError as exc:
                logger.warning(
                    "status relay certificate not reloaded, the previous one is served",
                    extra={"error": str(exc)},
                )
