"""Per-cluster PKI for the real control plane, made with `cryptography` (ECDSA P-256).

Layout under the PKI directory:

- `ca.crt`/`ca.key`: the cluster CA; it signs every certificate below, is the API server's
  `--client-ca-file` and the controller-manager's CSR signer and `--root-ca-file`.
- `apiserver.crt`/`.key`: the API server's serving certificate for 127.0.0.1, localhost, the
  first address of the Service range and `kubernetes.default.svc[.cluster.local]`.
- `admin.crt`/`.key` (O=system:masters), `controller-manager.crt`/`.key`
  (CN=system:kube-controller-manager), `scheduler.crt`/`.key` (CN=system:kube-scheduler).
- `sa.key`/`sa.pub`: the ServiceAccount token signing key pair.
- `front-proxy-ca.crt`/`.key` and `front-proxy-client.crt`/`.key`: the request-header CA and
  the API server's client certificate for aggregated API servers.
- `nodes/<name>.crt`/`.key`: a node's kubelet client certificate (CN=system:node:<name>,
  O=system:nodes), issued on demand, so the Node authorizer and NodeRestriction admit it;
  `nodes/<name>-serving.crt`/`.key`: its serving certificate for its address (the node agent's
  log endpoint, where the API server proxies `kubectl logs`), issued on demand.
- `apiserver-kubelet-client.crt`/`.key` (O=system:masters), on demand: what the API server
  would present to kubelets with `kubelet_client_args()`; the cluster does not pass those flags
  today, so the API server reaches the node agent's log endpoint without a client certificate
  and without checking the agent's (kube-apiserver's behaviour without a kubelet CA).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
_SKEW = datetime.timedelta(minutes=5)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


class PKI:
    """Creates (once) and reads the cluster's keys and certificates in `directory`."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        return self.directory / name

    # --- the CA ---------------------------------------------------------------------------

    def _ca(self, stem: str = "ca") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.path(f"{stem}.crt").read_bytes())
        key = serialization.load_pem_private_key(self.path(f"{stem}.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def make_ca(
        self, stem: str = "ca", common_name: str = "avatar-operator-realcluster-ca"
    ) -> None:
        """Writes a new self-signed CA, `<stem>.crt`/`<stem>.key`, for `issue(ca=stem)`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = _name(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + VALIDITY * 10)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_key(self.path(f"{stem}.key"), key)
        _write_cert(self.path(f"{stem}.crt"), cert)

    # --- leaf certificates ----------------------------------------------------------------

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        organization: str | None = None,
        server: bool = False,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        ca: str = "ca",
    ) -> tuple[Path, Path]:
        """Writes `<stem>.crt`/`<stem>.key` signed by the CA (a client certificate, or a
        serving one with `server=True`) and returns their paths."""
        ca_cert, ca_key = self._ca(ca)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organization))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        crt, key_path = self.path(f"{stem}.crt"), self.path(f"{stem}.key")
        crt.parent.mkdir(parents=True, exist_ok=True)
        _write_key(key_path, key)
        _write_cert(crt, cert)
        return crt, key_path

    def node_credentials(self, node: str) -> tuple[Path, Path]:
        """The kubelet client certificate of `node` (issued on first use)."""
        crt, key = self.path(f"nodes/{node}.crt"), self.path(f"nodes/{node}.key")
        if crt.exists() and key.exists():
            return crt, key
        return self.issue(f"nodes/{node}", f"system:node:{node}", organization="system:nodes")

    def node_serving(self, node: str, address: str) -> tuple[Path, Path]:
        """The serving certificate of `node`'s kubelet endpoint at `address` (on first use)."""
        crt, key = self.path(f"nodes/{node}-serving.crt"), self.path(f"nodes/{node}-serving.key")
        if crt.exists() and key.exists():
            return crt, key
        return self.issue(
            f"nodes/{node}-serving",
            f"system:node:{node}",
            organization="system:nodes",
            server=True,
            dns_names=(node,),
            ip_addresses=(address,),
        )

    def kubelet_client_args(self) -> list[str]:
        """kube-apiserver's flags to authenticate itself to kubelets and check their serving
        certificates against the cluster CA (issuing its client certificate on first use)."""
        if not self.path("apiserver-kubelet-client.crt").exists():
            self.issue(
                "apiserver-kubelet-client",
                "kube-apiserver-kubelet-client",
                organization="system:masters",
            )
        return [
            f"--kubelet-client-certificate={self.path('apiserver-kubelet-client.crt')}",
            f"--kubelet-client-key={self.path('apiserver-kubelet-client.key')}",
            f"--kubelet-certificate-authority={self.path('ca.crt')}",
        ]

    # --- all of it ------------------------------------------------------------------------

    def ensure(self, service_ip: str) -> None:
        """Creates whatever of the cluster's PKI is missing."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.path("ca.crt").exists() and self.path("ca.key").exists()):
            self.make_ca()
        if not self.path("apiserver.crt").exists():
            self.issue(
                "apiserver",
                "kube-apiserver",
                server=True,
                dns_names=(
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ),
                ip_addresses=("127.0.0.1", service_ip),
            )
        clients = {
            "admin": ("kubernetes-admin", "system:masters"),
            "controller-manager": ("system:kube-controller-manager", None),
            "scheduler": ("system:kube-scheduler", None),
        }
        for stem, (common_name, organization) in clients.items():
            if not self.path(f"{stem}.crt").exists():
                self.issue(stem, common_name, organization=organization)
        if not self.path("front-proxy-ca.crt").exists():
            self.make_ca("front-proxy-ca", "avatar-operator-realcluster-front-proxy-ca")
        if not self.path("front-proxy-client.crt").exists():
            self.issue("front-proxy-client", "front-proxy-client", ca="front-proxy-ca")
        if not self.path("sa.key").exists():
            key = ec.generate_private_key(ec.SECP256R1())
            _write_key(self.path("sa.key"), key)
            self.path("sa.pub").write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM,
                    serialization.PublicFormat.SubjectPublicKeyInfo,
                )
            )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Signatures (the ECDSA handshake); a CA's also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )
