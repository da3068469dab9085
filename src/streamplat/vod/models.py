"""The recordings table."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from streamplat.db import Base, BigInt, UTCDateTime, utcnow

PROCESSING, READY, FAILED = "processing", "ready", "failed"
RECORDING_STATUSES = (PROCESSING, READY, FAILED)
# Where a ready recording's files are: the local disk, or the configured object store.
LOCAL, OBJECT_STORAGE = "local", "object_storage"


class Recording(Base):
    """One recording per stream; `media_dir` is the HLS source kept until the recording is ready."""

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    # Not a foreign key: a recording outlives its stream (deleting a stream keeps the recording).
    stream_id: Mapped[str] = mapped_column(String(36), unique=True)
    user_id: Mapped[int] = mapped_column(BigInt, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=PROCESSING, index=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    file_size_bytes: Mapped[int | None] = mapped_column(BigInt, nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Why a "processing" recording waits (e.g. the object store is unreachable); None otherwise.
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    storage: Mapped[str] = mapped_column(String(16), default=LOCAL, server_default=LOCAL)
    media_dir: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
