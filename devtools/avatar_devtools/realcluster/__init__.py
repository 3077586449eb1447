"""A real Kubernetes control plane for tests and developers: `realcluster`.

The binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, helm) are
built from their Go modules at pinned releases by `hack/kube/build.sh` into a cache outside the
repository. Modules:

- `binaries`: where the built binaries are (building them when needed).
- `pki`: the cluster's CA, serving and client certificates, ServiceAccount signing key.
- `cluster`: `Cluster`, the control plane on loopback as one object (`start()`/`stop()`, a
  context manager); `__main__`: `python -m avatar_devtools.realcluster up|down|status`.
- `nodeagent`: simulated GPU nodes (the emulator's fleet files) on any API server.
- `rest`: a small synchronous REST client; `chartidentity`: the chart's RBAC and a kubeconfig
  holding only a ServiceAccount's token; `fixtures`: the pytest fixtures (one cluster a session).
- Pods as processes (`kubelet.mode: process`): `podrunner` (a Pod's containers, volumes, probes,
  logs) and `podlaunch` (its mount namespace); `podnet` (Pod network namespaces on node
  bridges), `serviceproxy` (ClusterIP → endpoints), `podnames` (hosts files), `nodenetwork`
  (the wiring the node agent calls).
"""

from avatar_devtools.realcluster.binaries import BinariesUnavailable
from avatar_devtools.realcluster.cluster import Cluster, ClusterError

__all__ = ["BinariesUnavailable", "Cluster", "ClusterError"]
