"""Placement: which GPU each AvatarSession gets, and what happens while none is free.

Pure and synchronous, no Kubernetes client: the operator feeds it Node objects and session
statuses and writes back what it decides. One module per concept —

- `inventory`: GPUs and scheduling facts from Node objects (GFD labels, per-pool overrides), and
  the rules that exclude a node for a session;
- `ledger`: reservations per session, rebuilt from statuses, released exactly once;
- `fleet`: the per-node index the policy reads (free VRAM per GPU, rank order, eligibility);
- `policy`: the algorithm (ranked fill with a best-fit window) and its baselines;
- `queue`: first come, first served waiting, with an anti-starvation hold;
- `engine`: the façade the operator calls (`Engine`), one lock, no I/O;
- `pinning`: node affinity and `NVIDIA_VISIBLE_DEVICES` for the worker Pod;
- `capacity`: free VRAM per GPU and how many more sessions of a size fit.
"""
