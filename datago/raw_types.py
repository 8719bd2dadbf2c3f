"""The reference's ``python/raw_types.py`` helpers (docs/compatibility.md §1.7), working for
every payload kind: raw 8/16-bit, encoded and empty."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def raw_array_to_numpy(raw_array: Any) -> np.ndarray | None:
    """An array serialised with ``np.save`` in ``raw_array.data`` (bytes or a
    file-like object); ``None`` for empty data or data that is not one."""
    data = getattr(raw_array, "data", raw_array)
    if data is None or (isinstance(data, (bytes, bytearray, memoryview)) and len(data) == 0):
        return None
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return np.load(stream, allow_pickle=False)
    except (ValueError, OSError):
        print("Could not deserialize numpy array")
        return None


def decode_image_payload(payload: Any) -> Image.Image | None:
    """A PIL image from any payload: encoded (opened lazily), raw (8 or 16
    bit) or empty (``None``)."""
    to_pil = getattr(payload, "to_pil_image", None)
    if to_pil is not None:
        return to_pil()
    return Image.open(io.BytesIO(payload.data))


def get_image_mode(x: Any) -> str | None:
    """The PIL mode of a PIL image or of a payload; ``None`` when empty."""
    if isinstance(x, Image.Image):
        return x.mode
    image = decode_image_payload(x)
    return None if image is None else image.mode


__all__ = ["raw_array_to_numpy", "decode_image_payload", "get_image_mode"]
