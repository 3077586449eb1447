"""`POST /launch`: the VideoSDK avatar dispatcher's API, served by the operator.

(The chart's values keep the name `dispatcher.*`, and the URL `/launch`.)

videosdk-agents' `AvatarAudioOut(credentials=…, avatar_dispatcher_url=URL)` POSTs an
`AvatarJoinInfo` — `{"room_name", "token", "participant_id", "signaling_base_url"}` — to a
dispatcher and expects a 2xx once an Avatar Server is on its way into the room. Pointing that
URL here makes the avatar an AvatarSession like any other: placed by VRAM, watched, collected.

A launch:

1. is rate-limited per caller address, then authenticated: `Authorization: Bearer <token>`, or
   HTTP Basic with the token as the password — which is what a stock agent sends for a URL of
   the form `http://avatar:<token>@host:port/launch` (its HTTP client turns the URL's user info
   into Basic auth), so migrating really is a change of URL; or, where turned on, by the join
   token itself when it is signed with the operator's own VideoSDK key (its sender holds that
   account's secret: no secret in the URL at all);
2. reads at most `dispatcher_max_body_bytes` of JSON and checks every field: the room id as the
   CRD would, the token as a JWT with an expiry that leaves time to join, a `participantId`
   that is the request's, and no other room (its signature is not checked: the operator may
   not hold the agent's key — VideoSDK checks it when the worker joins);
3. creates the session for that room and participant — its name is derived from both, so a
   repeated POST finds the same session instead of starting a second avatar — with the
   caller's token in a Secret the session owns (`credentials.tokenSecretRef`), never in the
   spec or status; the session's status says `tokenSource: Caller`;
4. waits (briefly) for the GPU decision: 201 once placed, or 503 with the Unschedulable message
   when no GPU fits (the session is deleted: the caller was told no); with `?wait=joined`, it
   answers only once the worker has joined the room (504 if it does not in time).

Errors are JSON: `{"error": "<code>", "message": "<what to do>"}` with a 4xx/5xx status.

| module | what |
|---|---|
| `request` | the AvatarJoinInfo body checked field by field; `LaunchError`, the JSON error answer |
| `auth` | the bearer token, the operator's own key (`OwnKey`), the per-caller rate limit |
| `server` | `LaunchServer`: the HTTP endpoint; find-or-create and waits through the SDK client |
"""

from __future__ import annotations

from avatar_operator.launch.auth import BearerToken, ConfigError, RateLimiter
from avatar_operator.launch.request import LaunchError, LaunchRequest, parse_launch
from avatar_operator.launch.server import LABEL_LAUNCHED_BY, LAUNCHED_BY, LaunchServer

__all__ = [
    "LABEL_LAUNCHED_BY",
    "LAUNCHED_BY",
    "BearerToken",
    "ConfigError",
    "LaunchError",
    "LaunchRequest",
    "LaunchServer",
    "RateLimiter",
    "parse_launch",
]
