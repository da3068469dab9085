"""The streams table."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from streamplat.db import Base, BigInt, UTCDateTime, utcnow

# The spec's status values, in lifecycle order.
CREATED, WAITING, ACTIVE, STOPPED = "created", "waiting", "active", "stopped"
STATUSES = (CREATED, WAITING, ACTIVE, STOPPED)
LIVE_STATUSES = (WAITING, ACTIVE)


class Stream(Base):
    __tablename__ = "streams"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInt, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=CREATED, index=True)
    stream_key: Mapped[str] = mapped_column(String(64))
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The node whose port and FFmpeg ingest the stream (streamplat.nodes); set at start and kept
    # after the stop for the record. NULL for streams started before nodes existed.
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
