"""The AvatarSession life cycle: admit, start, observe, end, collect.

Level-triggered: every entry point looks at what the API says now (the session's status is the
ledger) and does what is missing, so a handler replayed after a restart, a queue retry and a
watch event that arrives twice all converge on the same state. kopf's handlers
(`avatar_operator.handlers`) and the operator's own loops only call in here.

Order of writes when a session starts, chosen so that a crash between any two leaves something
the next attempt can finish without placing twice:

1. reserve a GPU in the in-memory ledger (synchronous: no other coroutine runs in between);
2. create the Secret (join token + status credential) — independent of the GPU chosen;
3. create the Pod, pinned to the node and GPU — it carries the placement in an annotation,
   and a restart rebuilds the ledger from Pod annotations before statuses, so from here the
   placement survives a restart (and a worker tampering with its status cannot move it);
4. write the status: phase Starting, placement, pod/secret names. A restart that finds the
   Pod but not this status writes it then.

The participant id, when the spec names none, is derived from the session's uid, so a
Secret (its token names the participant) and a Pod made by different attempts always agree.

What users wait for goes first. Admission runs in a FIFO queue served by a few workers
(`ADMISSION_WORKERS`), not in kopf's per-object handlers: in a burst of hundreds of creates,
sessions are started in the order they came and each one quickly, instead of all of them
advancing together a request at a time (which made every session wait for nearly the whole
burst). A session is in the queue at most once. While the queue is not empty, the work that can
wait yields to it for a bounded time (`yield_to_admissions`): the status Starting of a session
whose Pod exists (step 4), Events, and the workers' reports. Whatever writes a session's status
first writes its pending Starting status (`Reconciler._flush_start`), under the session's lock,
so the phases never go backwards.

Ending a session: write phase Ended/Failed with its end reason, then collect it (garbage
collection: delete the Pod and the Secret, release the reservation — exactly once, the ledger
ignores a second release), and delete the session `ttlSecondsAfterFinished` later.

Where each part lives:

| module | what |
|---|---|
| `core` | `Reconciler`, the coordinator: rebuild, watch events, admit → start → end → collect |
| `memory` | `SessionRecord`, everything the operator remembers about one session |
| `statuses` | pure builders of the status patches (phase, message, conditions) |
| `tokens` | where a join token comes from: minted from the VideoSDK key, or the caller's |
| `admission` | the first-come-first-served queue that starts sessions |
| `background` | the tasks it starts and the Events it posts |
| `pods` | worker Pods that failed, finished or went away: bounded restarts, then PodFailed |
| `sweeper` | timeouts, TTLs, retries, lost Nodes, Pods deleted while Pending |
"""

from __future__ import annotations

from avatar_operator.reconciler.core import PARTICIPANT_ENV, Reconciler, participant_id_for
from avatar_sdk.objects import key_of

__all__ = ["PARTICIPANT_ENV", "Reconciler", "key_of", "participant_id_for"]
