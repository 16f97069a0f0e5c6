"""histoseek: content-based retrieval of histopathology image patches."""

__version__ = "0.1.0"
