"""Ingest: SRT listeners (one FFmpeg per live stream) that remux publishers into fMP4 for the
LL-HLS packager (`streamplat.hls`). The MPEG-TS helpers remain for streams recorded before.

Other domains use only these names and the ingest events in `streamplat.events`.
"""

from streamplat.ingest.ffmpeg import (
    PLAYLIST_NAME,
    Progress,
    build_fmp4_argv,
    build_listener_argv,
    listener_input_list,
    parse_progress_block,
    segment_name,
    segment_number,
    validate_passphrase,
)
from streamplat.ingest.hls import finalise_playlist
from streamplat.ingest.supervisor import (
    IngestError,
    IngestSettings,
    IngestStatus,
    IngestSupervisor,
    ListenerAlreadyRunning,
    SupervisorClosed,
)

__all__ = [
    "PLAYLIST_NAME",
    "IngestError",
    "IngestSettings",
    "IngestStatus",
    "IngestSupervisor",
    "ListenerAlreadyRunning",
    "Progress",
    "SupervisorClosed",
    "build_fmp4_argv",
    "build_listener_argv",
    "finalise_playlist",
    "listener_input_list",
    "parse_progress_block",
    "segment_name",
    "segment_number",
    "validate_passphrase",
]
