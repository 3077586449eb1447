"""What only developers and tests run, never shipped in an image.

- `localcluster`: an emulated Kubernetes API server and a simulated kubelet (tests, `make demo`).
- `demo`: `make demo`, the whole system on one machine.
- `realcluster`: a real control plane (kube-apiserver, controller-manager, scheduler, etcd) built
  from Kubernetes' Go modules, and a node agent for it.

The product packages (`avatar_sdk`, `avatar_operator`, `avatar_worker`) never import this one
(`tests/test_import_direction.py`).
"""
