"""Streams: the Main App stream API, the Stream App (status, HLS), lifecycle and viewers."""

from streamplat.streams.portpool import PortPool, PortPoolExhausted
from streamplat.streams.services import StreamService, is_stream_id
from streamplat.streams.viewers import ViewerTracker, viewer_key

__all__ = ["PortPool", "PortPoolExhausted", "StreamService", "ViewerTracker", "is_stream_id", "viewer_key"]
