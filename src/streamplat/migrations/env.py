"""Alembic environment: runs on the connection `streamplat.db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from streamplat.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through streamplat.db.migrate() (or `streamplat migrate`)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite can only ALTER via table copies; batch mode does that
)
with context.begin_transaction():
    context.run_migrations()
