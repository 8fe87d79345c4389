"""raytranscribe: durable batch transcription on Ray GPU clusters."""

__version__ = "0.1.0"
