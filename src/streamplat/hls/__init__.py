"""LL-HLS: fMP4 from FFmpeg cut into parts and segments, served from memory, recorded to disk."""
