"""Image processing without a loader: the bucket table of an
``image_config``, where an image of a given size goes, and one sample's
images transformed exactly as a loader would."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from . import _native
from ._native import ffi, lib
from .types import Sample


class Bucket(NamedTuple):
    """An aspect-ratio bucket: output size and its key (w/h to 3 decimals)."""

    width: int
    height: int
    aspect_ratio: float


class Fit(NamedTuple):
    """Where an image goes: the output ``size`` (width, height), the
    ``crop_box`` of the source (left, top, right, bottom, Pillow's box
    convention) resampled into it, the cover-resize ``scale`` and the
    bucket's ``aspect_ratio`` (0 without crop_and_resize)."""

    size: tuple[int, int]
    crop_box: tuple[float, float, float, float]
    scale: float
    aspect_ratio: float


def _config_bytes(image_config: Mapping[str, Any] | str | None) -> bytes:
    text = image_config if isinstance(image_config, str) else json.dumps(image_config)
    return text.encode("utf-8")


def buckets(image_config: Mapping[str, Any] | str) -> list[Bucket]:
    """The bucket table of an ``image_config`` with ``crop_and_resize``,
    sorted by aspect ratio: the shapes a loader can produce, e.g. to
    pre-allocate batches. A bad config raises ``ConfigError``."""
    config = _config_bytes(image_config)
    count = ffi.new("size_t *")
    _native.check(lib.datago_buckets(config, len(config), ffi.NULL, 0, count))
    table = ffi.new("datago_bucket[]", count[0])
    _native.check(lib.datago_buckets(config, len(config), table, count[0], count))
    return [Bucket(b.width, b.height, b.aspect_ratio) for b in table]


def fit(image_config: Mapping[str, Any] | str, width: int, height: int) -> Fit:
    """The bucket and crop box an image of ``width`` x ``height`` gets."""
    config = _config_bytes(image_config)
    out = ffi.new("datago_fit *")
    _native.check(lib.datago_fit_image(config, len(config), width, height, out))
    return Fit((out.width, out.height), (out.crop_left, out.crop_top, out.crop_right, out.crop_bottom), out.scale, out.aspect_ratio)


def _encoded_array(images: Mapping[str, bytes]) -> tuple[Any, list[Any]]:
    keep: list[Any] = []
    array = ffi.new("datago_encoded[]", len(images))
    for entry, (name, data) in zip(array, images.items(), strict=True):
        name_bytes = name.encode("utf-8")
        keep += [name_bytes, data]
        entry.name.ptr = ffi.from_buffer(name_bytes) if name_bytes else ffi.NULL
        entry.name.len = len(name_bytes)
        entry.data = ffi.from_buffer(data)
        entry.len = len(data)
    return array, keep


def transform(
    image_config: Mapping[str, Any] | str | None,
    image: bytes | None,
    masks: Mapping[str, bytes] | None = None,
    additional_images: Mapping[str, bytes] | None = None,
) -> Sample:
    """Decodes and transforms one sample's encoded images as a loader with
    this ``image_config`` would: the main ``image`` picks its bucket; masks
    and additional images are resized into the same bucket (aligned pixels).
    Raises ``DatagoError`` naming the image that failed to decode."""
    config = _config_bytes(image_config)
    mask_array, keep_masks = _encoded_array(masks or {})
    extra_array, keep_extra = _encoded_array(additional_images or {})
    out = ffi.new("datago_sample **")
    main = ffi.NULL if image is None else ffi.from_buffer(image)
    status = lib.datago_transform(
        config, len(config), main, 0 if image is None else len(image),
        mask_array, len(masks or {}), extra_array, len(additional_images or {}), out,
    )
    del keep_masks, keep_extra
    _native.check(status)
    return Sample(ffi.gc(out[0], lib.datago_sample_free))
