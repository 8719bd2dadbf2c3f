"""The reference's native submodule (``datago.datago``), kept importable for
code written against it: the same public names as the package."""

from . import DatagoClient, ImagePayload, initialize_logging, live_cleanup_threads

__all__ = ["DatagoClient", "ImagePayload", "initialize_logging", "live_cleanup_threads"]
