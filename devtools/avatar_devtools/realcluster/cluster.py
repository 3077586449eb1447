"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler (and, given a fleet, the node agent), started and stopped as one.

Layout of a cluster directory (`<repo>/.cluster/` for `make cluster-up`, a temporary one in
tests):

- `kubeconfig`: the admin kubeconfig (O=system:masters, data embedded); `bin/`: links to the
  built `kubectl` and `helm` (and the other binaries);
- `run/`: this cluster's state, made fresh on every start: `pki/`, `etcd/` (data),
  `logs/<component>.log`, the components' kubeconfigs, and `state.json` (ports, and each
  process's pid and start time, so `stop` — also from another process — kills exactly what was
  started: each component is its own process group, SIGTERM, then SIGKILL after a grace).

Addresses: everything listens on 127.0.0.1 at ports found free at start. The Service range
(198.18.128.0/20) and Pod range (198.18.0.0/17) lie in 198.18.0.0/15, the range reserved for
network tests; they are recorded in objects only (and later used inside network namespaces the
project creates); nothing is sent to them. Nodes report 127.0.1.x addresses (loopback).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from avatar_devtools.ports import free_port
from avatar_devtools.realcluster import binaries
from avatar_devtools.realcluster.pki import PKI
from avatar_devtools.realcluster.rest import RestClient

SERVICE_CIDR = "198.18.128.0/20"
SERVICE_IP = "198.18.128.1"  # the `kubernetes` Service: the range's first address
CLUSTER_CIDR = "198.18.0.0/17"  # node podCIDRs (/24 each) are allocated from it
ADVERTISE_ADDRESS = "198.18.255.1"  # the `kubernetes` Endpoints may not be loopback
HOST_ADDRESS = "198.18.255.2"  # this machine as Pods see it (an EndpointSlice may point here)
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "nodeagent")
STOP_GRACE_S = 10.0
PORT_RACE_ATTEMPTS = 3
log = logging.getLogger(__name__)
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}
NODE_MONITOR_GRACE_S = 10
NODE_LEASE_RENEW_S = 2.0
_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """The cluster did not come up (the message names the component and quotes its log)."""


class KubectlError(RuntimeError):
    """kubectl failed; the message has the command and kubectl's stderr."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/<pid>/stat), or None when
    it is gone or a zombie: with the pid, it names one process even after pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "kubeconfig")
    }
    env.update(extra or {})
    return env


def kubeconfig(
    server: str, ca: Path, cert: Path, key: Path, *, user: str, embed: bool = False
) -> dict[str, Any]:
    import base64

    def data(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    cluster: dict[str, Any] = {"server": server}
    credentials: dict[str, Any]
    if embed:
        cluster["certificate-authority-data"] = data(ca)
        credentials = {"client-certificate-data": data(cert), "client-key-data": data(key)}
    else:
        cluster["certificate-authority"] = str(ca)
        credentials = {"client-certificate": str(cert), "client-key": str(key)}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "realcluster", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "realcluster", "context": {"cluster": "realcluster", "user": user}}],
        "current-context": "realcluster",
    }


class Cluster:
    """A real control plane in `directory`; `start()` returns when it is ready (/readyz of the
    API server, the controller-manager and the scheduler healthy, the `default`
    ServiceAccount created, and every fleet node Ready), `stop()` leaves no process behind.

    `die_with_parent=True` (tests) also has the kernel kill every component when the process
    that started them dies, so a crashed test run leaks nothing either."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        bin_dir: str | os.PathLike[str] | None = None,
        fleet: str | os.PathLike[str] | None = None,
        die_with_parent: bool = False,
        ready_timeout_s: float = 120.0,
        audit: bool = False,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.run_dir = self.directory / "run"
        self.state_file = self.run_dir / "state.json"
        self.kubeconfig = self.directory / "kubeconfig"
        self.link_dir = self.directory / "bin"
        self._bin_dir = Path(bin_dir) if bin_dir else None
        self.fleet = Path(fleet).resolve() if fleet else None
        self.die_with_parent = die_with_parent
        self.ready_timeout_s = ready_timeout_s
        self.audit = audit  # every write, with who made it, in `audit_log` (JSON lines)
        self.pki = PKI(self.run_dir / "pki")
        self.ports: dict[str, int] = {}
        self.processes: dict[str, dict[str, Any]] = {}
        self._popen: dict[str, subprocess.Popen[bytes]] = {}
        self._started_at: float | None = None
        self.startup_seconds: float | None = None
        self.timings: dict[str, float] = {}  # seconds from start() to each component ready

    # --- paths ----------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = binaries.bin_dir()
        return self._bin_dir

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    @property
    def kubectl_path(self) -> Path:
        return self.link_dir / "kubectl"

    @property
    def helm_path(self) -> Path:
        return self.link_dir / "helm"

    def env(self) -> dict[str, str]:
        """An environment for kubectl/helm (and Kubernetes clients) talking to this cluster."""
        return _clean_env(
            {
                "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{self.link_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                "KUBECACHEDIR": str(self.run_dir / "kubectl-cache"),  # not ~/.kube/cache
                "HELM_CACHE_HOME": str(self.run_dir / "helm" / "cache"),
                "HELM_CONFIG_HOME": str(self.run_dir / "helm" / "config"),
                "HELM_DATA_HOME": str(self.run_dir / "helm" / "data"),
            }
        )

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Runs the built kubectl against this cluster as its admin; with `check`, a failure
        raises `KubectlError` quoting kubectl's stderr."""
        return self._tool(self.kubectl_path, args, check=check, input=input, timeout=timeout)

    def helm(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """Runs the built helm against this cluster as its admin (as `kubectl`)."""
        return self._tool(self.helm_path, args, check=check, input=None, timeout=timeout)

    def _tool(
        self,
        path: Path,
        args: tuple[str, ...],
        *,
        check: bool,
        input: str | None,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(path), *args],
            env=self.env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise KubectlError(
                f"{path.name} {' '.join(args)}: exit {result.returncode}\n{result.stderr.strip()}"
            )
        return result

    def rest(self, token: str | None = None) -> RestClient:
        """A REST client of this cluster: its admin, or the holder of a bearer `token`."""
        ca = self.pki.path("ca.crt")
        if token is not None:
            return RestClient(self.server, ca, token=token)
        return RestClient(
            self.server, ca, cert=(self.pki.path("admin.crt"), self.pki.path("admin.key"))
        )

    def control(self, verb: str, **body: Any) -> None:
        """One of the node agent's test controls (`fail-pod`, `complete-pod`, `remove-node`,
        `restore-node`: see `avatar_devtools.realcluster.nodeagent`); ClusterError when it
        refuses, with its reason."""
        if "nodeagent-control" not in self.ports:
            self._load_state()
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.ports["nodeagent-control"], timeout=30
        )
        try:
            connection.request(
                "POST",
                f"/localcluster/v1/{verb}",
                body=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            answer = json.loads(response.read() or b"{}")
        finally:
            connection.close()
        if response.status != 200:
            raise ClusterError(f"node agent refused {verb}: {answer.get('message', answer)}")

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def running(self) -> bool:
        """Whether a cluster recorded in this directory still has a live process."""
        self._load_state()
        return any(self._alive(name) for name in self.processes)

    def start(self) -> Cluster:
        """Starts etcd, the control plane and (with a fleet) the node agent; on free ports.

        A port is free when chosen and bound by its component a moment later; another process
        can take it in between ("bind: address already in use"). Then the cluster is stopped
        and started again on new ports, up to `PORT_RACE_ATTEMPTS` times."""
        if self.running():
            raise ClusterError(f"a cluster is already running in {self.directory} (stop it first)")
        for attempt in range(1, PORT_RACE_ATTEMPTS + 1):
            try:
                return self._start_once()
            except ClusterError as error:
                if "address already in use" not in str(error) or attempt == PORT_RACE_ATTEMPTS:
                    raise
                log.warning(
                    "a port was taken during start-up (%d/%d); starting again on other ports",
                    attempt,
                    PORT_RACE_ATTEMPTS,
                )
        raise AssertionError("unreachable")

    def _start_once(self) -> Cluster:
        bin_dir = self.bin_dir
        started = self._started_at = time.monotonic()
        self.timings = {}
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        (self.run_dir / "logs").mkdir(parents=True)
        self.processes = {}
        self.ports = {
            name: free_port()
            for name in (
                "etcd",
                "etcd-peer",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "nodeagent-control",
            )
        }
        self._save_state()
        try:
            self.pki.ensure(SERVICE_IP)
            self._write_kubeconfigs()
            self._link_binaries(bin_dir)
            self._spawn("etcd", self._etcd_args(bin_dir))
            self._wait(
                "etcd", lambda: self._http_ok("127.0.0.1", self.ports["etcd"], "/health", tls=False)
            )
            self._spawn("kube-apiserver", self._apiserver_args(bin_dir))
            self._wait("kube-apiserver", lambda: self._api_ok("/readyz"))
            self._spawn("kube-controller-manager", self._controller_manager_args(bin_dir))
            self._spawn("kube-scheduler", self._scheduler_args(bin_dir))
            nodes = self._start_nodeagent() if self.fleet is not None else []
            for name in ("kube-controller-manager", "kube-scheduler"):
                port = self.ports[name]
                self._wait(name, lambda port=port: self._http_ok("127.0.0.1", port, "/healthz"))
            self._wait(
                "default-serviceaccount",
                lambda: self._api_ok("/api/v1/namespaces/default/serviceaccounts/default"),
                component="kube-controller-manager",
            )
            if nodes:
                self._wait("nodes", lambda: self._nodes_ready(nodes), component="nodeagent")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self._save_state()
        return self

    def stop(self) -> None:
        """Stops every process this cluster started (in reverse order): SIGTERM to its process
        group, SIGKILL after `STOP_GRACE_S`. Safe to call twice, and from another process."""
        self._load_state()
        for name in reversed(ORDER):
            if name in self.processes:
                self._terminate(name)
        self.processes = {}
        self._release_pod_leftovers()
        if self.run_dir.exists():
            self._save_state()

    def _release_pod_leftovers(self) -> None:
        """What a process-mode node agent killed mid-run leaves on the host: the tmpfs of its
        Pods' memory emptyDirs (under `run/`) and the network namespaces of its Pods (owner
        gone). Removed here, so a stopped cluster leaves nothing behind."""
        try:
            mounts = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return
        root = str(self.run_dir) + "/"
        targets = [line.split()[1] for line in mounts if len(line.split()) > 1]
        for target in sorted((t for t in targets if t.startswith(root)), reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        from avatar_devtools.realcluster import podnet

        if podnet.available().ok:
            podnet.cleanup_all()

    # --- components -----------------------------------------------------------------------

    def _etcd_args(self, bin_dir: Path) -> list[str]:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        return [
            str(bin_dir / "etcd"),
            "--name=realcluster",
            f"--data-dir={self.run_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=realcluster={peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",  # a throw-away test cluster: durability buys nothing
            "--log-level=warn",
        ]

    def _apiserver_args(self, bin_dir: Path) -> list[str]:
        pki = self.pki.path
        return [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1",
            f"--advertise-address={ADVERTISE_ADDRESS}",
            f"--secure-port={self.ports['kube-apiserver']}",
            f"--tls-cert-file={pki('apiserver.crt')}",
            f"--tls-private-key-file={pki('apiserver.key')}",
            f"--client-ca-file={pki('ca.crt')}",
            f"--service-account-key-file={pki('sa.pub')}",
            f"--service-account-signing-key-file={pki('sa.key')}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            "--authorization-mode=Node,RBAC",
            # The defaults, plus NodeRestriction (as kubeadm sets it), so nodes touch only
            # their own Node, Lease and Pods.
            "--enable-admission-plugins=NodeRestriction",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            # The front proxy (aggregated APIs, and the components' delegated authentication).
            f"--requestheader-client-ca-file={pki('front-proxy-ca.crt')}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki('front-proxy-client.crt')}",
            f"--proxy-client-key-file={pki('front-proxy-client.key')}",
            "--profiling=false",
            *self._audit_args(),
        ]

    @property
    def audit_log(self) -> Path:
        return self.run_dir / "logs" / "audit.log"

    def _audit_args(self) -> list[str]:
        """With `audit`: kube-apiserver's own audit log of every write (metadata only: who,
        verb, object), which is how a bench counts the writes a client made."""
        if not self.audit:
            return []
        policy = self.run_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]

    def _controller_manager_args(self, bin_dir: Path) -> list[str]:
        pki = self.pki.path
        config = self.run_dir / "controller-manager.kubeconfig"
        return [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={config}",
            f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['kube-controller-manager']}",
            "--leader-elect=false",
            "--controllers=*",  # every default controller: GC, namespace, SA, token, endpoints…
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki('sa.key')}",
            f"--root-ca-file={pki('ca.crt')}",
            f"--cluster-signing-cert-file={pki('ca.crt')}",
            f"--cluster-signing-key-file={pki('ca.key')}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cluster-cidr={CLUSTER_CIDR}",
            "--allocate-node-cidrs=true",
            "--node-cidr-mask-size=24",
            # a node that stops heartbeating is NotReady in 10 s (default 50 s): tests of a lost
            # node wait for it; the node agent renews its Leases every NODE_LEASE_RENEW_S
            f"--node-monitor-grace-period={NODE_MONITOR_GRACE_S}s",
            "--node-monitor-period=1s",
            f"--flex-volume-plugin-dir={self.run_dir / 'flexvolume'}",  # not under /usr
            "--profiling=false",
        ]

    def _scheduler_args(self, bin_dir: Path) -> list[str]:
        config = self.run_dir / "scheduler.kubeconfig"
        return [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={config}",
            f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['kube-scheduler']}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _start_nodeagent(self) -> list[str]:
        """Starts the node agent with the fleet's nodes (each with its own kubelet
        certificate); returns their names."""
        from avatar_devtools.localcluster import fleet as fleet_module

        assert self.fleet is not None
        the_fleet = fleet_module.load(self.fleet)
        for node in the_fleet.nodes:
            self.pki.node_credentials(node.name)
        extra: list[str] = []
        image_path: dict[str, str] = {}
        if the_fleet.kubelet.mode == "process":  # containers run as processes ([realnodes])
            # this environment is the Pods' image: its scripts (avatar-worker, …) on their PATH
            scripts = str(Path(sys.executable).parent)
            image_path["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])
            from avatar_devtools.realcluster import nodeagent

            extra = nodeagent.process_mode_args(self, the_fleet)
        devtools_root = Path(__file__).resolve().parents[2]
        pythonpath = os.pathsep.join(
            p for p in (str(devtools_root), os.environ.get("PYTHONPATH", "")) if p
        )
        self._spawn(
            "nodeagent",
            [
                sys.executable,
                "-m",
                "avatar_devtools.realcluster.nodeagent",
                f"--server={self.server}",
                f"--ca={self.pki.path('ca.crt')}",
                f"--credentials={self.pki.path('nodes')}",
                f"--fleet={self.fleet}",
                f"--control-port={self.ports['nodeagent-control']}",
                f"--lease-renew-seconds={NODE_LEASE_RENEW_S}",
                *extra,
            ],
            env={"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", **image_path},
        )
        return [n.name for n in the_fleet.nodes]

    # --- processes ------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log: IO[bytes]
        with open(self.run_dir / "logs" / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.run_dir,
                env=_clean_env(env),
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self._popen[name] = process
        self.processes[name] = {
            "pid": process.pid,
            "start": _start_time(process.pid),
            "args": args,
        }
        self._save_state()

    def _alive(self, name: str) -> bool:
        record = self.processes.get(name)
        if not record:
            return False
        process = self._popen.get(name)
        if process is not None and process.poll() is not None:
            return False
        started = _start_time(int(record["pid"]))
        return started is not None and started == record.get("start")

    def _terminate(self, name: str) -> None:
        record = self.processes[name]
        pid = int(record["pid"])
        if not self._alive(name):
            self._reap(name)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and self._alive(name):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the group: whatever the component spawned, too
        self._reap(name)
        while self._alive(name):
            time.sleep(0.02)

    def _reap(self, name: str) -> None:
        process = self._popen.pop(name, None)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_GRACE_S)

    def _wait(self, name: str, ready: Any, component: str | None = None) -> None:
        """Waits for `ready()`; a timeout quotes the log of `component` (default: `name`)."""
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            self._poll(name, ready, deadline, component or name)
        finally:
            if self._started_at is not None:
                self.timings[name] = round(time.monotonic() - self._started_at, 3)

    def _poll(self, name: str, ready: Any, deadline: float, component: str) -> None:
        while True:
            for process in self.processes:
                if not self._alive(process):
                    raise ClusterError(
                        f"{process} exited during start-up:\n{self.log_tail(process)}"
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{name} not ready after {self.ready_timeout_s:.0f} s:\n"
                    + self.log_tail(component)
                )
            time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return f"(no log at {path})"
        return "\n".join(text.splitlines()[-lines:])

    # --- probes ---------------------------------------------------------------------------

    def _admin_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.path("ca.crt")))
        context.load_cert_chain(str(self.pki.path("admin.crt")), str(self.pki.path("admin.key")))
        return context

    def api_get(self, path: str) -> tuple[int, Any]:
        """GET `path` on the API server as admin: (status, decoded JSON or text)."""
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.ports["kube-apiserver"], context=self._admin_context(), timeout=5
        )
        try:
            connection.request("GET", path, headers={"Accept": "application/json"})
            response = connection.getresponse()
            body = response.read().decode(errors="replace")
        finally:
            connection.close()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body

    def _api_ok(self, path: str) -> bool:
        try:
            return self.api_get(path)[0] == 200
        except OSError:
            return False

    @staticmethod
    def _http_ok(host: str, port: int, path: str, *, tls: bool = True) -> bool:
        connection: http.client.HTTPConnection
        if tls:  # the components' self-signed serving certificates: a liveness probe only
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            connection = http.client.HTTPSConnection(host, port, context=context, timeout=2)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=2)
        try:
            connection.request("GET", path)
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _nodes_ready(self, names: list[str]) -> bool:
        try:
            status, body = self.api_get("/api/v1/nodes")
        except OSError:
            return False
        if status != 200:
            return False
        ready = set()
        for node in body.get("items", []):
            taints = node.get("spec", {}).get("taints") or []
            not_ready = any(t.get("key") == "node.kubernetes.io/not-ready" for t in taints)
            for condition in node.get("status", {}).get("conditions") or []:
                is_ready = condition.get("type") == "Ready" and condition.get("status") == "True"
                if is_ready and not not_ready:
                    ready.add(node["metadata"]["name"])
        return set(names) <= ready

    # --- files ----------------------------------------------------------------------------

    def _write_kubeconfigs(self) -> None:
        pki = self.pki.path
        for stem, user in (
            ("controller-manager", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
        ):
            config = kubeconfig(
                self.server, pki("ca.crt"), pki(f"{stem}.crt"), pki(f"{stem}.key"), user=user
            )
            (self.run_dir / f"{stem}.kubeconfig").write_text(yaml.safe_dump(config))
        admin = kubeconfig(
            self.server,
            pki("ca.crt"),
            pki("admin.crt"),
            pki("admin.key"),
            user="kubernetes-admin",
            embed=True,
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(yaml.safe_dump(admin))

    def _link_binaries(self, bin_dir: Path) -> None:
        self.link_dir.mkdir(parents=True, exist_ok=True)
        for name in binaries.BINARIES:
            link = self.link_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(bin_dir / name)

    def _save_state(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "server": self.server if "kube-apiserver" in self.ports else None,
            "ports": self.ports,
            "processes": self.processes,
            "startupSeconds": self.startup_seconds,
            "timings": self.timings,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def _load_state(self) -> None:
        if self._popen or not self.state_file.exists():
            return
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        self.ports = {str(k): int(v) for k, v in (state.get("ports") or {}).items()}
        self.processes = dict(state.get("processes") or {})
        self.startup_seconds = state.get("startupSeconds")
        self.timings = dict(state.get("timings") or {})

    def status(self) -> dict[str, Any]:
        """What runs: each component alive or not, the API server's /readyz, the nodes."""
        self._load_state()
        report: dict[str, Any] = {
            "directory": str(self.directory),
            "kubeconfig": str(self.kubeconfig),
            "components": {name: self._alive(name) for name in self.processes},
            "startupSeconds": self.startup_seconds,
            "timings": self.timings,
        }
        if "kube-apiserver" in self.ports:
            report["server"] = self.server
            has_admin = self.pki.path("admin.crt").exists()
            report["ready"] = has_admin and self._api_ok("/readyz")
        return report
