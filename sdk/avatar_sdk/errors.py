"""What the SDK raises: one hierarchy under `AvatarError`, whose messages say what to do.

The client translates every API failure once into one of these (`raise … from e`); an agent
catches `AvatarError` for all of them, or one subclass: the configuration or the API server
is unusable (`ApiUnavailable`, `CRDNotInstalled`, `NamespaceNotFound`, `PermissionDenied`),
the request is (`InvalidSession`, `SessionNotFound`, `SessionConflict`), or a wait ended
without the avatar (`SessionWaitError` and its kinds, `JoinTimeout` also a `TimeoutError`).
`avatar_sdk.client` re-exports every name.
"""

from __future__ import annotations

from avatar_sdk import api


class AvatarError(Exception):
    """Anything the client cannot do; the message says why and, where it can, what to do."""


class ApiError(AvatarError):
    """An API call failed in a way none of the other errors describes."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"the Kubernetes API answered {status} {reason}: {message}")
        self.status = status
        self.reason = reason


class ApiUnavailable(AvatarError):
    """The API server could not be reached, or no configuration says where it is."""


class CRDNotInstalled(AvatarError):
    """The cluster does not serve AvatarSessions: the operator's chart is not installed."""


class NamespaceNotFound(AvatarError):
    """The namespace the client works in does not exist."""


class PermissionDenied(AvatarError):
    """RBAC refused a call; the message carries the Role rule that allows it."""

    def __init__(self, message: str, *, verb: str, resource: str, namespace: str | None) -> None:
        super().__init__(message)
        self.verb = verb
        self.resource = resource
        self.namespace = namespace


class InvalidSession(AvatarError):
    """The spec was refused (by the models here, or by the CRD's schema on the server)."""


class SessionNotFound(AvatarError):
    """No session of that name."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f'avatar session "{name}" not found in namespace "{namespace}"')
        self.namespace = namespace
        self.name = name


class SessionConflict(AvatarError):
    """The session name is taken by a session for another room."""


class SessionWaitError(AvatarError):
    """A wait ended without the session joining; `session` is the last state seen."""

    def __init__(self, message: str, session: api.AvatarSession | None) -> None:
        super().__init__(message)
        self.session = session


class SessionFailed(SessionWaitError):
    """The session ended (phase Failed or Ended) before its worker joined."""

    @property
    def end_reason(self) -> api.EndReason | None:
        return None if self.session is None else self.session.status.end_reason


class SessionDeleted(SessionWaitError):
    """The session was deleted while it was being waited for."""


class JoinTimeout(SessionWaitError, TimeoutError):
    """The worker did not join in time; the message lists the session's last conditions."""


class Unschedulable(JoinTimeout):
    """No GPU had room for the session in time; the message is the operator's capacity view."""
