"""Rows for node registry tests and bench/nodes.py: streams as a node would have left them."""

from __future__ import annotations

import uuid

from streamplat.db import utcnow
from streamplat.streams.models import Stream


def stream_row(user_id: int, node_id: str | None, status: str, title: str = "live show") -> Stream:
    """A stream started on `node_id` (port 10001 of its pool) and now in `status`."""
    return Stream(
        id=str(uuid.uuid4()),
        user_id=user_id,
        name="s",
        title=title,
        status=status,
        stream_key="k" * 32,
        port=10001,
        node_id=node_id,
        started_at=utcnow(),
    )
