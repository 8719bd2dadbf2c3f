"""datago: a high-throughput image data loader.

A drop-in replacement for Photoroom's Rust ``datago``: ``DatagoClient(json)``
with ``start()``, ``get_sample()``, ``get_sample_auto_convert()`` and
``stop()``; ``initialize_logging``; ``ImagePayload``. Decoding and image
processing run on native threads outside the GIL; samples reach Python as
zero-copy NumPy views.
"""

from __future__ import annotations

from . import _native as _native_module
from . import logs as logs
from ._native import ffi as _ffi
from ._native import lib as _lib
from .client import DatagoClient, collect_states, live_cleanup_threads, live_samples
from .errors import AuthError, ConfigError, DatagoError, SampleTimeoutError, SourceError
from .imaging import Bucket, Fit, buckets, fit, transform
from .logs import initialize_logging
from .types import Batch, ImagePayload, LatentPayload, RawImagePayload, Sample

__version__: str = _ffi.string(_lib.datago_version()).decode()


def build_info() -> dict[str, object]:
    """How this libdatago was built: version, ABI, optimize mode, CPU target,
    decoders, and whether JPEG decoding uses SIMD ("jpeg_simd": "avx2",
    "sse2", "neon" or "none"), plus where the library was loaded from."""
    import json

    info = json.loads(_ffi.string(_lib.datago_build_info()).decode())
    info["library"] = str(_native_module.library_path)
    return info

__all__ = [
    "DatagoClient",
    "ImagePayload",
    "initialize_logging",
    "live_cleanup_threads",
    "live_samples",
    "collect_states",
    "Sample",
    "Batch",
    "DatagoIterDataset",
    "RawImagePayload",
    "LatentPayload",
    "build_info",
    "buckets",
    "fit",
    "transform",
    "Bucket",
    "Fit",
    "DatagoError",
    "ConfigError",
    "SourceError",
    "AuthError",
    "SampleTimeoutError",
]


def __getattr__(name: str) -> object:
    # torch stays optional: the dataset module (which imports it) loads on
    # first use of DatagoIterDataset.
    if name == "DatagoIterDataset":
        try:
            from .dataset import DatagoIterDataset
        except ImportError as error:
            raise ImportError(f"datago.DatagoIterDataset needs PyTorch ({error}); pip install torch") from error
        return DatagoIterDataset
    raise AttributeError(f"module 'datago' has no attribute {name!r}")
