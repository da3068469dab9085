"""recordings: where the files are kept, and why a recording waits

Revision ID: 0004_recording_storage
Revises: 0003_recordings
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_recording_storage"
down_revision = "0003_recordings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER TABLE ... ADD COLUMN with every constraint; PostgreSQL
    # runs the same statements directly.
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("status_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("storage", sa.String(16), nullable=False, server_default="local"))


def downgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.drop_column("storage")
        batch.drop_column("status_reason")
