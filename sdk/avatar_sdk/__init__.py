"""avatar-operator: the AvatarSession contract and the agent-side client."""

__version__ = "0.1.0"
