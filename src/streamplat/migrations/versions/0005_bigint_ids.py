"""64-bit ids, foreign keys and file sizes on PostgreSQL

SQLite's INTEGER already holds 64 bits; PostgreSQL's INTEGER holds 32. The API accepts ids up
to 2**63 - 1 (params.py), and a recording may pass 2 GiB: on PostgreSQL these columns become
BIGINT (and the id sequences count as far). Nothing changes on SQLite.

Revision ID: 0005_bigint_ids
Revises: 0004_recording_storage
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_bigint_ids"
down_revision = "0004_recording_storage"
branch_labels = None
depends_on = None

# (table, column) pairs that become BIGINT; the id sequences of the tables in SEQUENCES too.
COLUMNS = (
    ("users", "id"),
    ("refresh_tokens", "id"),
    ("refresh_tokens", "user_id"),
    ("streams", "user_id"),
    ("recordings", "id"),
    ("recordings", "user_id"),
    ("recordings", "file_size_bytes"),
)
SEQUENCES = ("users_id_seq", "refresh_tokens_id_seq", "recordings_id_seq")


def _retype(new: sa.types.TypeEngine[int], old: sa.types.TypeEngine[int], seq_type: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=new, existing_type=old)
    for sequence in SEQUENCES:
        op.execute(f"ALTER SEQUENCE {sequence} AS {seq_type}")


def upgrade() -> None:
    _retype(sa.BigInteger(), sa.Integer(), "bigint")


def downgrade() -> None:
    _retype(sa.Integer(), sa.BigInteger(), "integer")
