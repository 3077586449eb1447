"""Warm pools (`AvatarPool`): idle workers kept prepared on GPUs, claimed by sessions.

`controller` keeps each pool's workers and claims one for a session; `manifests` builds a
worker's Secret and Pod and the claim patch; `relay` serves a worker's assignment long-poll.
The resource itself is `avatar_sdk.pools`; the worker's side is `avatar_worker.poolclient`.
"""
