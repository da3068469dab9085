"""Feeding FFmpeg-made fMP4 bytes to the cutter and the live store."""

from __future__ import annotations

from streamplat.hls.boxes import BoxSplitter


def split(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """(ftyp, moov, [(moof, mdat), ...]) of a whole fMP4 file (which must split with nothing left)."""
    splitter = BoxSplitter()
    boxes = splitter.feed(data)
    assert splitter.pending == 0
    ftyp = next(box for kind, box in boxes if kind == b"ftyp")
    moov = next(box for kind, box in boxes if kind == b"moov")
    pairs = []
    moof = b""
    for kind, box in boxes:
        if kind == b"moof":
            moof = box
        elif kind == b"mdat" and moof:
            pairs.append((moof, box))
            moof = b""
    return ftyp, moov, pairs
