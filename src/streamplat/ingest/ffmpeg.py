"""Pure helpers for the ingest listener: FFmpeg argv, `-progress` parsing, HLS playlist edits.

Nothing here touches a process, a socket or a file: callers pass text and bytes in and get
values back, so every rule about what FFmpeg is told and how its output is read is unit-testable
without FFmpeg.

Facts about FFmpeg 9 that the choices below rest on (checked against the bundled binary):

- A publisher with a wrong (or no) passphrase is rejected inside libsrt's handshake
  ("Incorrect passphrase"); the listener logs it on stderr and keeps waiting.
- `-progress` prints nothing until media flows, so the first block means a publisher is live.
  With the HLS muxer `bitrate` and `total_size` are always `N/A` (it has no single output file).
- The HLS muxer keeps the current segment in memory and writes it whole when it is complete
  (a killed FFmpeg loses that segment; nothing half-written is left on disk).
- `-hls_flags append_list` re-reads `stream.m3u8`, continues MEDIA-SEQUENCE and the segment file
  numbers from it and puts `#EXT-X-DISCONTINUITY` before the first new segment (also when there
  was no playlist, hence only passed when continuing). It trusts the playlist only: a segment
  written just before FFmpeg was SIGKILLed, ahead of the playlist update, would be overwritten,
  hence `plan_salvage` below.
- SIGINT while the listener still waits for a publisher exits in about 1 s.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PLAYLIST_NAME = "stream.m3u8"
SEGMENT_PATTERN = "segment_%05d.ts"
ENDLIST_TAG = "#EXT-X-ENDLIST"
PASSPHRASE_MIN_LENGTH = 10
PASSPHRASE_MAX_LENGTH = 64
_MASK = "********"

_SEGMENT_RE = re.compile(r"segment_(\d+)\.ts")
_SEGMENT_TMP_RE = re.compile(r"segment_(\d+)\.ts\.tmp")
TS_PACKET_SIZE = 188


def segment_name(number: int) -> str:
    """File name of the segment with this sequence number (`segment_00042.ts`)."""
    return SEGMENT_PATTERN % number


def segment_number(name: str) -> int | None:
    """Sequence number of a finished segment file name, or None for any other name."""
    match = _SEGMENT_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def validate_passphrase(passphrase: str) -> None:
    """Raise ValueError unless SRT accepts the passphrase (10-64 characters)."""
    if not PASSPHRASE_MIN_LENGTH <= len(passphrase) <= PASSPHRASE_MAX_LENGTH:
        raise ValueError(
            f"SRT passphrase must be {PASSPHRASE_MIN_LENGTH}-{PASSPHRASE_MAX_LENGTH} characters, "
            f"got {len(passphrase)}"
        )


def srt_listener_url(
    bind_host: str,
    port: int,
    passphrase: str,
    *,
    latency_ms: int,
    publisher_timeout_seconds: float,
) -> str:
    """The `srt://` input URL of a listener that only admits publishers knowing `passphrase`."""
    host = f"[{bind_host}]" if ":" in bind_host and not bind_host.startswith("[") else bind_host
    query = {
        "mode": "listener",
        # FFmpeg URL-decodes the passphrase, so any character is safe once quoted.
        "passphrase": passphrase,
        # libsrt's FFmpeg options are in microseconds.
        "latency": str(latency_ms * 1000),
        # Read timeout: a SIGKILLed publisher sends nothing more; without this libsrt only
        # notices after its 5 s peer-idle timeout. It does not limit the wait for a publisher.
        "timeout": str(int(publisher_timeout_seconds * 1_000_000)),
    }
    return f"srt://{host}:{port}?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


def listener_input_list(
    bind_host: str,
    port: int,
    passphrase: str,
    *,
    latency_ms: int,
    publisher_timeout_seconds: float,
    analyze_seconds: float = 0.5,
) -> str:
    """The ffconcat file naming the listener's `srt://` URL, passphrase included.

    The passphrase is the stream key, and FFmpeg's argv is world-readable (/proc/PID/cmdline,
    `ps`), so the URL reaches FFmpeg in this file (written 0600) instead: the concat demuxer
    opens the one entry as if it were `-i <url>`. FFmpeg cannot read an AVOption such as
    `passphrase` or `-i` itself from a file (its `-/option file` syntax covers only its own
    options that take a value, not `-i`, not protocol options), and it reads no URL from the
    environment.
    """
    validate_passphrase(passphrase)
    url = srt_listener_url(
        bind_host,
        port,
        passphrase,
        latency_ms=latency_ms,
        publisher_timeout_seconds=publisher_timeout_seconds,
    )
    # Inside single quotes ffconcat takes everything literally; the URL is percent-encoded, so it
    # holds no quote or newline that could end the entry.
    assert "'" not in url and "\n" not in url
    return (
        "ffconcat version 1.0\n"
        f"file '{url}'\n"
        # The entry is probed like an -i input: 0.5 s, not 5 s (see build_listener_argv).
        f"option analyzeduration {int(analyze_seconds * 1_000_000)}\n"
    )


def _listener_input(ffmpeg_binary: str, input_list: str, port: int, analyze_seconds: float) -> list[str]:
    """The start of every listener's argv: quiet FFmpeg reading the SRT input named in `input_list`."""
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return [
        ffmpeg_binary,
        "-nostdin",  # never read the terminal; we stop FFmpeg with SIGINT
        "-hide_banner",
        "-nostats",  # stderr keeps only problems
        "-loglevel",
        "warning",
        # Probe 0.5 s instead of 5 s so the first segment is cut about a second after the
        # publisher connects. (-probesize 32 would silently drop the AAC track, and 0.25 s
        # made FFmpeg fail with "sample rate not set" for an OBS-like x264 with B-frames +
        # 64 kbps AAC publisher, whose first audio PES comes ~0.35 s in: measured 27 Nov 2026.)
        "-analyzeduration",
        str(int(analyze_seconds * 1_000_000)),
        # The SRT URL comes from the list file (see listener_input_list); the concat demuxer
        # may open only files and SRT, and -safe 0 lets it open a URL at all.
        "-f",
        "concat",
        "-safe",
        "0",
        "-protocol_whitelist",
        "file,srt",
        "-i",
        input_list,
    ]


def build_listener_argv(
    *,
    ffmpeg_binary: str,
    input_list: str,
    port: int,
    playlist_dir: str,
    segment_seconds: float,
    playlist_size: int,
    continue_playlist: bool = False,
    analyze_seconds: float = 0.5,
    stats_period_seconds: float = 0.5,
) -> list[str]:
    """FFmpeg argv for one SRT listener that remuxes (no transcoding) into a live HLS playlist.

    `input_list` is the path of the listener's ffconcat file (`listener_input_list`), which
    holds the SRT URL and its passphrase so that neither appears in argv. `port` is only
    checked here. `playlist_dir` is used as a path prefix as given; FFmpeg writes `stream.m3u8`
    and `segment_NNNNN.ts` there. `continue_playlist` appends to the playlist already there
    (after a publisher reconnect or a server restart) instead of starting a new one.
    """
    directory = playlist_dir.rstrip("/") or "/"
    flags = ["omit_endlist", "temp_file"]
    if continue_playlist:
        # Only when continuing: on a fresh playlist append_list would also put a
        # DISCONTINUITY before the very first segment.
        flags.insert(1, "append_list")
    return [
        *_listener_input(ffmpeg_binary, input_list, port, analyze_seconds),
        "-y",
        "-map",
        "0",
        "-c",
        "copy",
        "-f",
        "hls",
        "-hls_time",
        _number(segment_seconds),
        "-hls_list_size",
        str(playlist_size),
        # omit_endlist: the stream is live until stop() says otherwise, even when the
        #   publisher is away and the listener restarts; stop() writes the ENDLIST itself.
        # append_list: a restarted listener continues the playlist (sequence, file numbers,
        #   DISCONTINUITY) instead of starting over and overwriting segment_00000.ts.
        # temp_file: segments and playlist are written under a temporary name and renamed
        #   when complete, so viewers never fetch a half-written file.
        # No delete_segments: the recording is made from every segment ever written.
        "-hls_flags",
        "+".join(flags),
        "-hls_segment_filename",
        f"{directory}/{SEGMENT_PATTERN}",
        "-progress",
        "pipe:1",
        "-stats_period",
        _number(stats_period_seconds),
        f"{directory}/{PLAYLIST_NAME}",
    ]


FMP4_MOVFLAGS = "empty_moov+default_base_moof+frag_keyframe+delay_moov"
AAC_BSF_UNSUPPORTED = "is not supported by the bitstream filter"


def build_fmp4_argv(
    *,
    ffmpeg_binary: str,
    input_list: str,
    port: int,
    part_seconds: float = 0.2,
    aac_bsf: bool = True,
    analyze_seconds: float = 0.5,
) -> list[str]:
    """FFmpeg argv for one SRT listener that remuxes (no transcoding) into fMP4 on stdout.

    The packager (`streamplat.hls.packager`) reads the pipe and cuts LL-HLS parts and segments
    (docs/design/ll-hls.md §3.2):

    - `empty_moov+delay_moov`: the init comes with the first fragment, so the AAC esds carries
      its AudioSpecificConfig (without delay_moov hls.js derives `mp4a.40` and Chromium refuses
      the SourceBuffer);
    - `default_base_moof`: each moof + mdat pair stands on its own (a part);
    - `frag_keyframe` + `-frag_duration`: a fragment per part length, and a new one at every
      keyframe, so segments can start on keyframes;
    - `-bsf:a aac_adtstoasc` (MPEG-TS AAC is ADTS); FFmpeg refuses it for other audio codecs
      ("... is not supported by the bitstream filter"), so the supervisor retries once with
      `aac_bsf=False` (AAC_BSF_UNSUPPORTED in stderr).
    - `-map 0:v? -map 0:a?`: data streams (SCTE-35, ID3) cannot go into this MP4.
    """
    if not 0 < part_seconds <= 5:
        raise ValueError(f"part_seconds out of range: {part_seconds}")
    argv = [
        *_listener_input(ffmpeg_binary, input_list, port, analyze_seconds),
        "-map",
        "0:v?",
        "-map",
        "0:a?",
        "-c",
        "copy",
    ]
    if aac_bsf:
        argv += ["-bsf:a", "aac_adtstoasc"]
    argv += [
        "-f",
        "mp4",
        "-movflags",
        FMP4_MOVFLAGS,
        "-frag_duration",
        str(int(part_seconds * 1_000_000)),
        "pipe:1",
    ]
    return argv


def mask_secret(argv: Sequence[str], secret: str) -> list[str]:
    """A copy of argv safe to log: every occurrence of the secret (raw or URL-quoted) masked."""
    forms = {secret, urllib.parse.quote(secret, safe="")}
    masked = []
    for arg in argv:
        for form in forms:
            if form:
                arg = arg.replace(form, _MASK)
        masked.append(arg)
    return masked


def _number(value: float) -> str:
    """Format a number for argv without a trailing `.0` (FFmpeg accepts both)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --- -progress output ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """One `-progress` block. Fields FFmpeg reports as `N/A` are None."""

    frame: int | None
    fps: float | None
    bitrate_kbps: float | None
    total_size: int | None
    out_time_seconds: float | None
    speed: float | None
    ended: bool  # `progress=end`: FFmpeg's last block before it exits

    @property
    def has_media(self) -> bool:
        """True once frames or audio went through (not a block printed by a failing start)."""
        return (self.frame or 0) > 0 or (self.out_time_seconds or 0.0) > 0.0


def _float(value: str | None, suffix: str = "") -> float | None:
    if value is None:
        return None
    value = value.strip()
    if suffix and value.endswith(suffix):
        value = value[: -len(suffix)]
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _int(value: str | None) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def progress_from_fields(fields: Mapping[str, str]) -> Progress:
    """Turn the key=value pairs of one block into a Progress."""
    out_time_us = _float(fields.get("out_time_us"))
    return Progress(
        frame=_int(fields.get("frame")),
        fps=_float(fields.get("fps")),
        bitrate_kbps=_float(fields.get("bitrate"), "kbits/s"),
        total_size=_int(fields.get("total_size")),
        out_time_seconds=out_time_us / 1_000_000 if out_time_us is not None else None,
        speed=_float(fields.get("speed"), "x"),
        ended=fields.get("progress", "").strip() == "end",
    )


def parse_progress_block(text: str) -> Progress:
    """Parse one complete block of `-progress` output (the lines up to `progress=...`)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return progress_from_fields(fields)


class ProgressAccumulator:
    """Collects `-progress` lines one at a time and yields a Progress at each block's end."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}

    def feed(self, line: str) -> Progress | None:
        """Add one line; returns the finished block when the line was `progress=...`."""
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        self._fields[key.strip()] = value.strip()
        if key.strip() != "progress":
            return None
        block = progress_from_fields(self._fields)
        self._fields = {}
        return block


class RateWindow:
    """Rate of change of a cumulative counter (frames, bytes) over the last few seconds.

    FFmpeg's own `fps` is an average since the listener started (inflated by the probe burst)
    and its `bitrate` is N/A for HLS, so both are recomputed from samples. Times in seconds.
    """

    def __init__(self, window_seconds: float = 5.0, min_span_seconds: float = 0.9) -> None:
        self._window = window_seconds
        self._min_span = min_span_seconds
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, total: float) -> None:
        """Record the counter's cumulative value at time `now`."""
        self._samples.append((now, total))
        # Keep one sample older than the window so the span always covers the whole window.
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Counter units per second, or None until the samples span min_span_seconds."""
        if len(self._samples) < 2:
            return None
        (first_time, first_total), (last_time, last_total) = self._samples[0], self._samples[-1]
        elapsed = last_time - first_time
        if elapsed < self._min_span or last_total < first_total:
            return None
        return (last_total - first_total) / elapsed


# --- exit reasons -------------------------------------------------------------------------


_POINTER_RE = re.compile(r" @ 0x[0-9a-fA-F]+\]")


def clean_stderr_line(line: str, secret: str) -> str:
    """A FFmpeg stderr line fit to show users: secret masked, memory addresses dropped."""
    line = _POINTER_RE.sub("]", line.strip())
    return mask_secret([line], secret)[0] if secret else line


def describe_exit(returncode: int | None, stderr_tail: Iterable[str], max_lines: int = 5) -> str:
    """A one-paragraph reason for a FFmpeg exit: how it ended plus its last stderr lines."""
    if returncode is None:
        how = "FFmpeg did not start"
    elif returncode < 0:
        how = f"FFmpeg was killed by signal {-returncode}"
    else:
        how = f"FFmpeg exited with code {returncode}"
    lines = [line.strip() for line in stderr_tail if line.strip()][-max_lines:]
    return f"{how}: " + " | ".join(lines) if lines else how


# --- HLS playlist -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlaylistState:
    """What matters of an existing live playlist for continuing it."""

    media_sequence: int
    segments: tuple[str, ...]
    ended: bool

    @property
    def next_number(self) -> int:
        """The sequence (= file) number FFmpeg's append_list gives the next segment."""
        return self.media_sequence + len(self.segments)


def parse_playlist(text: str) -> PlaylistState:
    """Read MEDIA-SEQUENCE, the segment URIs and whether ENDLIST is present."""
    media_sequence = 0
    segments: list[str] = []
    ended = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            media_sequence = int(line.split(":", 1)[1] or 0)
        elif line == ENDLIST_TAG:
            ended = True
        elif line and not line.startswith("#"):
            segments.append(line)
    return PlaylistState(media_sequence, tuple(segments), ended)


def with_endlist(text: str) -> str:
    """The playlist text ending with `#EXT-X-ENDLIST` (unchanged if it already does)."""
    if parse_playlist(text).ended:
        return text
    return text.rstrip("\n") + "\n" + ENDLIST_TAG + "\n"


@dataclass(frozen=True, slots=True)
class SalvagePlan:
    """How to make orphaned segments part of the playlist before FFmpeg touches it again.

    `renames` are (from, to) file names: `.ts.tmp` leftovers of a killed FFmpeg become
    `.ts`. `append` are segment numbers to list (in order) at the end of the playlist.
    """

    renames: tuple[tuple[str, str], ...]
    append: tuple[int, ...]


def plan_salvage(playlist_text: str | None, file_names: Iterable[str]) -> SalvagePlan:
    """Find segments on disk that the playlist does not list yet.

    FFmpeg writes a segment (as .tmp, renamed), then the playlist. A FFmpeg killed in between
    (server SIGKILLed, stop() falling back to SIGKILL) leaves a segment the playlist does not
    know, and append_list
    would reuse their numbers and overwrite them. Listing them first keeps every segment and
    makes FFmpeg number the next one after them. Only an unbroken run of numbers starting at
    the playlist's next number is taken: that is the only shape FFmpeg leaves behind.
    """
    next_number = parse_playlist(playlist_text).next_number if playlist_text else 0
    finished: set[int] = set()
    partial: dict[int, str] = {}
    for name in file_names:
        number = segment_number(name)
        if number is not None:
            finished.add(number)
            continue
        match = _SEGMENT_TMP_RE.fullmatch(name)
        if match:
            partial[int(match.group(1))] = name
    renames: list[tuple[str, str]] = []
    append: list[int] = []
    number = next_number
    while True:
        if number in finished:
            append.append(number)
        elif number in partial:
            renames.append((partial[number], segment_name(number)))
            append.append(number)
        else:
            break
        number += 1
    return SalvagePlan(tuple(renames), tuple(append))


def playlist_with_segments(
    playlist_text: str | None,
    segments: Sequence[tuple[int, float]],
    target_duration: float,
) -> str:
    """Append (number, duration) segments to a playlist, or start one that lists them.

    An existing ENDLIST is dropped: the stream continues after the appended segments.
    """
    if playlist_text:
        lines = [line for line in playlist_text.rstrip("\n").split("\n") if line != ENDLIST_TAG]
    else:
        first = segments[0][0] if segments else 0
        longest = max([target_duration, *(duration for _, duration in segments)])
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{math.ceil(longest)}",
            f"#EXT-X-MEDIA-SEQUENCE:{first}",
        ]
    for number, duration in segments:
        lines.append(f"#EXTINF:{duration:.6f},")
        lines.append(segment_name(number))
    return "\n".join(lines) + "\n"


def ts_duration_seconds(data: bytes) -> float | None:
    """Media duration of an MPEG-TS chunk from its first and last audio/video PES timestamps.

    Used for the EXTINF of salvaged segments (there is no ffprobe). Tolerates a truncated last
    packet. None when no timestamps are found.
    """
    lowest: int | None = None
    highest: int | None = None
    for offset in range(0, len(data) - TS_PACKET_SIZE + 1, TS_PACKET_SIZE):
        packet = data[offset : offset + TS_PACKET_SIZE]
        if packet[0] != 0x47 or not packet[1] & 0x40:  # sync byte, payload_unit_start
            continue
        adaptation = (packet[3] >> 4) & 0x3
        position = 4
        if adaptation & 0x2:
            position += 1 + packet[4]
        if not adaptation & 0x1 or position + 14 > TS_PACKET_SIZE:
            continue
        if packet[position : position + 3] != b"\x00\x00\x01":
            continue
        stream_id = packet[position + 3]
        if not 0xC0 <= stream_id <= 0xEF or not packet[position + 7] & 0x80:
            continue  # not audio/video, or no PTS
        p = packet[position + 9 : position + 14]
        pts = ((p[0] >> 1) & 0x07) << 30 | p[1] << 22 | (p[2] >> 1) << 15 | p[3] << 7 | p[4] >> 1
        lowest = pts if lowest is None else min(lowest, pts)
        highest = pts if highest is None else max(highest, pts)
    if lowest is None or highest is None:
        return None
    span = (highest - lowest) / 90_000
    # A span of hours means the 33-bit clock wrapped inside the chunk; no usable answer.
    return span if 0 < span < 3600 else None
