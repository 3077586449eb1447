"""A kopf handler whose result kopf stores in the status (where no schema declares it)."""

from __future__ import annotations

from typing import Any

import kopf
from localcluster_helpers import WIDGET_GROUP


@kopf.on.create(WIDGET_GROUP, "v1", "widgets")
def remember(name: str, **_: Any) -> dict[str, str]:
    return {"message": f"hello {name}"}
