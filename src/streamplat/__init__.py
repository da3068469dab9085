"""streamplat: SRT in, HLS out, every stream recorded as a VOD."""

__version__ = "0.1.0"
