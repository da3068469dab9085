"""Cut FFmpeg's fMP4 fragments into LL-HLS parts, segments and runs. Pure (design §3.4).

One `Cutter` per live stream. A *run* is one FFmpeg listener session (one publisher
connection) with its own init; a *part* is exactly one `moof` + `mdat` fragment; a *segment* is
consecutive parts of one run, starting at a keyframe part once the previous segment reached
`segment_seconds`. Every duration is summed from the media timestamps of the leading track
(first video track, else first audio track), never taken from a target.

Rules (numbers refer to design §3.4):
1. a run's leading fragments that do not start on a sync sample are dropped;
3. a segment closes before an independent fragment once it lasted `segment_seconds` (or at once
   when it did not start on a keyframe: the rest of a GOP that was cut early), or before any
   fragment that would make its EXTINF round above TARGETDURATION (a forced cut, logged); and
   when the run ends;
5. TARGETDURATION is fixed when the stream's first segment closes (or given, after a restart),
   and never below round(segment_seconds);
6. PART-TARGET is the longest part so far, rounded up to the millisecond (grows only);
8. with `first_segment_seconds`, a run's first segment closes as soon as it lasted that long
   (with its first part, at 0.2), so the first playable playlist comes with the first fragment
   instead of one GOP later (design §3.4 item 8a); the closed segment then holds the part the
   same `Cut` returns. Its PART-TARGET is then
   at least `part_seconds`, which FFmpeg's `-frag_duration` makes every part but a segment's
   last one reach, so it need not grow when the second part comes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from streamplat.hls.boxes import BoxError, Track, parse_moof, parse_moov

__all__ = ["Cutter", "CutterError", "Init", "Part", "Segment", "ceil_ms"]

log = logging.getLogger(__name__)

# EXTINF rounds to the nearest integer, which must stay <= TARGETDURATION: a segment may last
# at most TD + this before it would round above (half a second minus a margin).
_ROUND_MARGIN = 0.49
# A part of 0.19999 s (timescale rounding) still counts as the 0.2 s first segment (rule 8).
_TICK_SLACK = 0.001


class CutterError(ValueError):
    """A fragment or init the packager cannot use (no moov yet, broken boxes)."""


def ceil_ms(seconds: float) -> float:
    """Seconds rounded up to the millisecond (PART-TARGET), tolerant of float noise."""
    return math.ceil(round(seconds * 1000, 6)) / 1000


@dataclass(frozen=True, slots=True)
class Init:
    """The init segment (ftyp + moov) of one run."""

    run: int
    data: bytes
    tracks: tuple[Track, ...]
    leading: Track
    codecs: str  # "avc1.42c01e,mp4a.40.2"
    content_type: str  # "video/mp4", or "audio/mp4" without a video track


@dataclass(slots=True)
class Part:
    """One fragment: the smallest thing an LL-HLS client loads."""

    run: int
    number: int  # counts the run's parts from 0 (part_{run}_{number}.m4s)
    msn: int
    index: int  # position in its segment
    duration: float  # seconds, from the leading track's sample durations
    independent: bool  # starts with a sync sample of the leading track
    data: bytes
    created: float  # wall clock (epoch seconds) when it was cut
    samples: int = 0  # leading-track samples (video frames)


@dataclass(slots=True)
class Segment:
    """Consecutive parts of one run; closed once its last part is known."""

    msn: int
    run: int
    dsn: int  # discontinuity sequence number: how many run changes came before it
    media_start: float  # seconds since the run's first sample (tfdt of the first part)
    pdt: float  # epoch seconds of its first sample (run anchor + media_start)
    duration_ticks: int = 0
    timescale: int = 1
    parts: list[Part] = field(default_factory=list)
    data: bytes = b""  # the joined parts, once closed
    closed: bool = False
    forced: bool = False  # cut at a non-keyframe to keep EXTINF <= TARGETDURATION

    @property
    def duration(self) -> float:
        return self.duration_ticks / self.timescale

    @property
    def independent(self) -> bool:
        return bool(self.parts) and self.parts[0].independent


@dataclass(slots=True)
class Cut:
    """What one fragment did: the segment it closed (if any) and the part it became (if any)."""

    closed: Segment | None = None
    part: Part | None = None


class Cutter:
    """The per-stream state machine from inits and fragments to parts and segments."""

    def __init__(
        self,
        *,
        segment_seconds: float = 1.0,
        next_run: int = 1,
        next_msn: int = 0,
        next_dsn: int = 0,
        target_duration: int | None = None,
        had_segments: bool = False,
        first_segment_seconds: float = 0.0,
        part_seconds: float = 0.0,
    ) -> None:
        """`next_*`, `target_duration` and `had_segments` continue a stream after a restart.

        `first_segment_seconds` > 0 closes each run's first segment once it lasted that long
        (rule 8; 0 = a full GOP). `part_seconds` is FFmpeg's `-frag_duration`: the floor of
        PART-TARGET when the first segment is that short.
        """
        if segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
        if not 0 <= first_segment_seconds <= segment_seconds:
            raise ValueError(
                f"first_segment_seconds must be 0..{segment_seconds}, got {first_segment_seconds}"
            )
        self.segment_seconds = segment_seconds
        self.first_segment_seconds = first_segment_seconds
        self.part_seconds = part_seconds
        self.next_run = next_run
        self.next_msn = next_msn
        self.target_duration = target_duration
        self.part_target = 0.0
        self.init: Init | None = None
        self.open: Segment | None = None
        self.next_part = 0  # number of the run's next part (the PRELOAD-HINT)
        self._dsn = next_dsn
        # A discontinuity comes before the first segment of every run but the stream's first.
        self._had_segments = had_segments
        self._run_has_segments = False
        self._lead_in = False  # the open segment is its run's first (rule 8)
        self._anchor: float | None = None

    @property
    def run(self) -> int | None:
        return self.init.run if self.init is not None else None

    def start_run(self, ftyp: bytes, moov: bytes) -> Init:
        """A new init: the previous run (if any) must have been ended with `end_run`."""
        if self.open is not None:
            raise CutterError("start_run while a segment is open: call end_run first")
        try:
            tracks = parse_moov(moov)
        except BoxError as exc:
            raise CutterError(f"unusable moov: {exc}") from exc
        media = [t for t in tracks if t.kind in ("video", "audio")]
        if not media:
            raise CutterError("the init has neither a video nor an audio track")
        leading = next((t for t in media if t.kind == "video"), media[0])
        codecs = ",".join(t.codec for t in media if t.codec)
        content_type = "video/mp4" if leading.kind == "video" else "audio/mp4"
        self.init = Init(self.next_run, ftyp + moov, tracks, leading, codecs, content_type)
        self.next_run += 1
        self.next_part = 0
        self._anchor = None
        self._run_has_segments = False
        return self.init

    def add_fragment(self, moof: bytes, mdat: bytes, now: float) -> Cut:
        """Cut one `moof` + `mdat` pair that arrived at wall time `now` (epoch seconds)."""
        init = self.init
        if init is None:
            raise CutterError("a fragment before any init")
        try:
            timings = parse_moof(moof, init.tracks)
        except BoxError as exc:
            raise CutterError(f"unusable moof: {exc}") from exc
        lead = next((t for t in timings if t.track_id == init.leading.track_id), None)
        if lead is None or lead.sample_count == 0:
            # No leading-track samples (an audio-only burst before the video starts): FFmpeg
            # puts both tracks in every fragment, so this only happens at a run's very start.
            log.debug("dropping a fragment without leading-track samples (run %d)", init.run)
            return Cut()
        scale = init.leading.timescale
        duration = lead.duration / scale
        start = lead.base_decode_time / scale
        if self._anchor is None:
            if not lead.first_sync:
                log.debug("dropping a leading fragment without a keyframe (run %d)", init.run)
                return Cut()
            self._anchor = now - (start + duration)
        cut = Cut()
        segment = self.open
        if segment is not None:
            if lead.first_sync and (segment.duration >= self.segment_seconds or not segment.independent):
                cut.closed = self._close()
            elif self.target_duration is not None and (
                segment.duration + duration > self.target_duration + _ROUND_MARGIN
            ):
                log.warning(
                    "keyframe interval longer than TARGETDURATION (%d s): cutting segment %d at a "
                    "non-keyframe; set the encoder's keyframe interval to %g s",
                    self.target_duration,
                    segment.msn,
                    self.segment_seconds,
                )
                segment.forced = True
                cut.closed = self._close()
        if self.open is None:
            if not self._run_has_segments and self._had_segments:
                self._dsn += 1
            self._lead_in = not self._run_has_segments
            self._run_has_segments = True
            self._had_segments = True
            self.open = Segment(
                msn=self.next_msn,
                run=init.run,
                dsn=self._dsn,
                media_start=start,
                pdt=self._anchor + start,
                timescale=scale,
            )
            self.next_msn += 1
        segment = self.open
        part = Part(
            run=init.run,
            number=self.next_part,
            msn=segment.msn,
            index=len(segment.parts),
            duration=duration,
            independent=lead.first_sync,
            data=moof + mdat,
            created=now,
            samples=lead.sample_count,
        )
        self.next_part += 1
        segment.parts.append(part)
        segment.duration_ticks += lead.duration
        target = ceil_ms(duration)
        if target > self.part_target:
            if self.part_target and self.target_duration is not None:
                log.warning(
                    "part of %.3f s is longer than PART-TARGET %.3f s: raising it", duration, self.part_target
                )
            self.part_target = target
        cut.part = part
        if self._lead_in and 0 < self.first_segment_seconds <= segment.duration + _TICK_SLACK:
            # Rule 8: close the run's first segment with this part, without waiting for the next
            # fragment (it need not start on a keyframe: the next segment takes the rest of the GOP).
            cut.closed = self._close()
        return cut

    def end_run(self) -> Segment | None:
        """The run's FFmpeg ended: close its open segment (returned) and forget the init."""
        closed = self._close() if self.open is not None else None
        self.init = None
        return closed

    def _close(self) -> Segment:
        segment = self.open
        assert segment is not None
        segment.data = b"".join(p.data for p in segment.parts)
        segment.closed = True
        self.open = None
        if self._lead_in and self.first_segment_seconds and self.part_seconds:
            # Rule 8: one part is too few to measure PART-TARGET on; FFmpeg makes every part
            # but a segment's last at least part_seconds long.
            self.part_target = max(self.part_target, ceil_ms(self.part_seconds))
        self._lead_in = False
        if self.target_duration is None:
            self.target_duration = max(1, round(self.segment_seconds), round(segment.duration))
        return segment
