"""VOD: recordings made from ended streams, and the VOD service that serves them."""

from streamplat.vod.services import RecordingService

__all__ = ["RecordingService"]
