"""LL-HLS media playlists and the blocking-reload rules (RFC 8216bis; design §3.6, §3.8). Pure.

`render_live` turns a window of segments into the playlist every client gets (LL-HLS clients
use the parts, the others ignore those tags), `render_index` the VOD-style index written to
disk. `parse_directives` / `check_directives` / `have` implement `_HLS_msn` / `_HLS_part`.
`check_playlist` is the invariant checker the tests run on every playlist they fetch.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from streamplat.hls.cutter import Segment

__all__ = [
    "DirectiveError",
    "Directives",
    "check_directives",
    "check_playlist",
    "have",
    "init_name",
    "parse_directives",
    "part_name",
    "render_index",
    "render_live",
    "segment_name",
]

VERSION = 6  # EXT-X-MAP needs 6; nothing here needs more


def init_name(run: int) -> str:
    return f"init_{run}.mp4"


def segment_name(run: int, msn: int) -> str:
    return f"seg_{run}_{msn}.m4s"


def part_name(run: int, number: int) -> str:
    return f"part_{run}_{number}.m4s"


def _pdt(epoch: float) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extinf(seconds: float) -> str:
    return f"#EXTINF:{seconds:.5f},"


def _head(out: list[str], segment: Segment, previous_run: int | None, pdt: bool) -> None:
    """DISCONTINUITY, MAP and PDT: all before the segment's first EXT-X-PART (4.4.4.9)."""
    if segment.run != previous_run:
        if previous_run is not None:
            out.append("#EXT-X-DISCONTINUITY")
        out.append(f'#EXT-X-MAP:URI="{init_name(segment.run)}"')
    if pdt:
        out.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(segment.pdt)}")


def _parts(out: list[str], segment: Segment) -> None:
    for part in segment.parts:
        line = f'#EXT-X-PART:DURATION={part.duration:.5f},URI="{part_name(part.run, part.number)}"'
        out.append(line + (",INDEPENDENT=YES" if part.independent else ""))


def parts_from(segments: Sequence[Segment], target_duration: int) -> int:
    """Index of the first closed segment whose parts are listed (design §3.8).

    The closed segments that end within 3 x TD of the playlist end, or the last 2, whichever
    covers more: at least PART-HOLD-BACK plus a segment, so hls.js stays in part mode.
    """
    start = max(0, len(segments) - 2)
    span = 0.0
    for i in range(len(segments) - 1, -1, -1):
        if span >= 3 * target_duration:
            break
        start = min(start, i)
        span += segments[i].duration
    return start


def render_live(
    segments: Sequence[Segment],
    open_segment: Segment | None,
    *,
    target_duration: int,
    part_target: float,
    hint: str | None,
    ended: bool,
    low_latency: bool = True,
) -> bytes:
    """The live playlist of the window `segments` (closed, oldest first) plus the open segment.

    `hint` is the URI of the next part (PRELOAD-HINT) while the run is live. After the stream
    ended (`ended`), parts, hint and server control are dropped and ENDLIST is added.
    """
    if not segments:
        raise ValueError("a playlist needs at least one complete segment")
    ll = low_latency and not ended and part_target > 0
    out = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}", f"#EXT-X-TARGETDURATION:{target_duration}"]
    if ll:
        out.append(f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * part_target:.3f}")
        out.append(f"#EXT-X-PART-INF:PART-TARGET={part_target:.3f}")
    out.append(f"#EXT-X-MEDIA-SEQUENCE:{segments[0].msn}")
    out.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{segments[0].dsn}")
    first_parts = parts_from(segments, target_duration) if ll else len(segments)
    previous: int | None = None
    for i, segment in enumerate(segments):
        _head(out, segment, previous, pdt=True)
        previous = segment.run
        if i >= first_parts:
            _parts(out, segment)
        out.append(_extinf(segment.duration))
        out.append(segment_name(segment.run, segment.msn))
    if ll and open_segment is not None and open_segment.parts:
        _head(out, open_segment, previous, pdt=True)
        _parts(out, open_segment)
    if ll and hint is not None:
        out.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{hint}"')
    if ended:
        out.append("#EXT-X-ENDLIST")
    return ("\n".join(out) + "\n").encode()


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One segment of the on-disk index."""

    run: int
    msn: int
    duration: float


def render_index(entries: Sequence[IndexEntry], target_duration: int, *, ended: bool) -> str:
    """The VOD-style `stream.m3u8` kept on disk: MAP, DISCONTINUITY, EXTINF; no parts."""
    out = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}", f"#EXT-X-TARGETDURATION:{target_duration}"]
    out.append(f"#EXT-X-MEDIA-SEQUENCE:{entries[0].msn if entries else 0}")
    out.append("#EXT-X-PLAYLIST-TYPE:EVENT" if not ended else "#EXT-X-PLAYLIST-TYPE:VOD")
    previous: int | None = None
    for entry in entries:
        if entry.run != previous:
            if previous is not None:
                out.append("#EXT-X-DISCONTINUITY")
            out.append(f'#EXT-X-MAP:URI="{init_name(entry.run)}"')
            previous = entry.run
        out.append(_extinf(entry.duration))
        out.append(segment_name(entry.run, entry.msn))
    if ended:
        out.append("#EXT-X-ENDLIST")
    return "\n".join(out) + "\n"


# --- blocking playlist reload -------------------------------------------------------------

_UINT = re.compile(r"\d{1,10}")


class DirectiveError(ValueError):
    """A bad `_HLS_msn` / `_HLS_part`: answered 400 (RFC 8216bis 6.2.5.2)."""


@dataclass(frozen=True, slots=True)
class Directives:
    msn: int | None
    part: int | None


def parse_directives(query: str) -> Directives:
    """`_HLS_msn` and `_HLS_part` from a raw query string (other parameters are ignored)."""
    values: dict[str, str] = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key in ("_HLS_msn", "_HLS_part"):
            if key in values:
                raise DirectiveError(f"{key} given more than once")
            values[key] = value
    parsed: dict[str, int] = {}
    for key, value in values.items():
        if not _UINT.fullmatch(value):
            raise DirectiveError(f"{key} must be a non-negative integer, got {value[:20]!r}")
        parsed[key] = int(value)
    if "_HLS_part" in parsed and "_HLS_msn" not in parsed:
        raise DirectiveError("_HLS_part requires _HLS_msn")
    return Directives(parsed.get("_HLS_msn"), parsed.get("_HLS_part"))


def have(segments: Sequence[Segment], open_segment: Segment | None, msn: int, part: int | None) -> bool:
    """True once the playlist can answer `_HLS_msn=msn[&_HLS_part=part]` (6.2.5.2).

    Without a part: a closed segment with MSN >= msn exists. With one: that part of that
    segment exists, where a part past the last part of a closed segment means part 0 of the
    next segment.
    """
    if not segments:
        return False
    last_closed = segments[-1].msn
    if part is None:
        return msn <= last_closed
    first = segments[0].msn
    while True:
        if msn < first:
            return True  # older than the window: answer at once
        if msn <= last_closed:
            segment = segments[msn - first]
            if part < len(segment.parts):
                return True
            msn, part = msn + 1, 0
            continue
        if open_segment is not None and msn == open_segment.msn:
            return part < len(open_segment.parts)
        return False


def check_directives(
    segments: Sequence[Segment],
    open_segment: Segment | None,
    directives: Directives,
    *,
    target_duration: int,
    part_target: float,
) -> None:
    """Raise DirectiveError when the request is too far ahead to wait for (6.2.5.2)."""
    msn, part = directives.msn, directives.part
    if msn is None:
        return
    last_closed = segments[-1].msn if segments else -1
    if msn > last_closed + 2:
        raise DirectiveError(f"_HLS_msn={msn} is more than 2 segments after the last one ({last_closed})")
    if part is None or part_target <= 0:
        return
    # The Advance Part Limit: 3 / PART-TARGET parts when PART-TARGET < 1 s, else 3.
    limit = math.ceil(3 / part_target) if part_target < 1 else 3
    per_segment = max(1, math.ceil(target_duration / part_target))
    if open_segment is not None:
        base_msn, have_parts = open_segment.msn, len(open_segment.parts)
    else:
        base_msn, have_parts = last_closed + 1, 0
    ahead = (msn - base_msn) * per_segment + part - have_parts
    if ahead > limit:
        raise DirectiveError(f"_HLS_part={part} of _HLS_msn={msn} is more than {limit} parts ahead")


# --- invariant checker (tests) --------------------------------------------------------------


@dataclass(slots=True)
class PlaylistFacts:
    """What check_playlist learned from one playlist, to compare with the next one."""

    target_duration: int
    media_sequence: int
    discontinuity_sequence: int
    part_target: float | None
    segments: int
    ended: bool


def check_playlist(text: str, previous: PlaylistFacts | None = None) -> PlaylistFacts:
    """Assert the RFC 8216bis rules of design §5 on a rendered playlist; raise AssertionError."""
    lines = text.splitlines()
    assert lines and lines[0] == "#EXTM3U", "missing #EXTM3U"
    tags: dict[str, str] = {}
    for line in lines:
        if line.startswith("#EXT-X-") and ":" in line:
            name, _, value = line.partition(":")
            tags.setdefault(name, value)
    td = int(tags["#EXT-X-TARGETDURATION"])
    media_sequence = int(tags.get("#EXT-X-MEDIA-SEQUENCE", "0"))
    dsn = int(tags.get("#EXT-X-DISCONTINUITY-SEQUENCE", "0"))
    ended = "#EXT-X-ENDLIST" in lines
    part_target: float | None = None
    if "#EXT-X-PART-INF" in tags:
        part_target = float(tags["#EXT-X-PART-INF"].split("PART-TARGET=")[1].split(",")[0])
        control = tags.get("#EXT-X-SERVER-CONTROL", "")
        match = re.search(r"PART-HOLD-BACK=([\d.]+)", control)
        assert match, "PART-INF without PART-HOLD-BACK"
        assert float(match.group(1)) >= 3 * part_target - 1e-9, "PART-HOLD-BACK < 3 x PART-TARGET"
    if ended:
        assert not any(line.startswith("#EXT-X-PRELOAD-HINT") for line in lines), "hint after ENDLIST"
    segments = 0
    in_parts = False  # a PART was seen for the current segment
    parts: list[tuple[float, bool]] = []
    for line in lines:
        if line.startswith("#EXT-X-PART:"):
            in_parts = True
            duration = float(re.search(r"DURATION=([\d.]+)", line).group(1))  # type: ignore[union-attr]
            parts.append((duration, "INDEPENDENT=YES" in line))
            assert part_target is not None, "EXT-X-PART without PART-INF"
            assert duration <= part_target + 1e-9, f"part {duration} > PART-TARGET {part_target}"
        elif line.startswith(("#EXT-X-DISCONTINUITY", "#EXT-X-MAP", "#EXT-X-PROGRAM-DATE-TIME")):
            if not line.startswith("#EXT-X-DISCONTINUITY-SEQUENCE"):
                assert not in_parts, f"{line} after a PART of its segment"
        elif line.startswith("#EXTINF:"):
            extinf = float(line[8:].split(",")[0])
            assert round(extinf) <= td, f"EXTINF {extinf} rounds above TARGETDURATION {td}"
            # The 85 % floor, except for independent parts and the segment's last part.
            for duration, independent in parts[:-1]:
                if part_target and not independent:
                    assert duration >= 0.85 * part_target - 1e-9, f"part {duration} < 85 % of {part_target}"
            parts = []
        elif line and not line.startswith("#"):
            segments += 1
            in_parts = False
    if previous is not None:
        assert td == previous.target_duration, "TARGETDURATION changed"
        assert media_sequence >= previous.media_sequence, "MEDIA-SEQUENCE went back"
        assert dsn >= previous.discontinuity_sequence, "DISCONTINUITY-SEQUENCE went back"
    return PlaylistFacts(td, media_sequence, dsn, part_target, segments, ended)
