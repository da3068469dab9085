"""nodes: the registry of `streamplat serve` processes sharing the database; streams.node_id

Revision ID: 0006_nodes
Revises: 0005_bigint_ids
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_nodes"
down_revision = "0005_bigint_ids"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("public_host", sa.String(255), nullable=False),
        sa.Column("stream_url", sa.String(255), nullable=False),
        # host name and data directory of the process that holds the row: a restart on the same
        # data directory (whose lock proves the previous holder is gone) takes the row back at once.
        sa.Column("instance", sa.Text(), nullable=False),
        # Random per process: a heartbeat only counts for the process that joined last, so two
        # processes with one node_id (a cloned data directory) cannot both pass for the node.
        sa.Column("incarnation", sa.String(32), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("schema_revision", sa.String(64), nullable=False),
        # HMAC of a constant under the JWT secret: tells two secrets apart, never reveals one.
        sa.Column("secret_fingerprint", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("left_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
    )
    with op.batch_alter_table("streams") as batch:
        batch.add_column(sa.Column("node_id", sa.String(64), nullable=True))
        batch.create_index("ix_streams_node_id", ["node_id"])


def downgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        batch.drop_index("ix_streams_node_id")
        batch.drop_column("node_id")
    op.drop_table("nodes")
