"""`kopf run -m avatar_operator.kopf_app --standalone`: the handlers in kopf's default registry.

For development with kopf's own runner. It has no Lease-based leader election and serves no
status relay, metrics or health endpoints: production runs `python -m avatar_operator`.
"""

from __future__ import annotations

import kopf

from avatar_operator import handlers

handlers.register(kopf.get_default_registry())
