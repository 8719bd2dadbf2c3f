"""Aspect-ratio buckets and cover-crop geometry of docs/compatibility.md §5.1 and §5.3, in plain Python.

The baseline engines of the benchmark use this to do the same work as datago's
`crop_and_resize`: pick the same bucket, cover-resize, centre-crop.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Buckets:
    """The sorted bucket table: `keys[i]` is the 3-decimal ratio of `sizes[i]` (w, h)."""

    keys: tuple[float, ...]
    sizes: tuple[tuple[int, int], ...]

    @classmethod
    def from_image_config(cls, image_config: dict) -> Buckets:
        return cls.generate(
            image_config["default_image_size"],
            image_config["downsampling_ratio"],
            image_config["min_aspect_ratio"],
            image_config["max_aspect_ratio"],
        )

    @classmethod
    def generate(
        cls, default_image_size: int, downsampling_ratio: int, min_ar: float, max_ar: float
    ) -> Buckets:
        """docs/compatibility.md §5.1 generation: a later size with the same 3-decimal key replaces the earlier."""
        patches = default_image_size // downsampling_ratio
        area = float(patches * patches)
        by_key: dict[str, tuple[int, int]] = {}

        def add(patches_w: int, patches_h: int) -> None:
            width, height = patches_w * downsampling_ratio, patches_h * downsampling_ratio
            by_key[f"{width / height:.3f}"] = (width, height)

        for patches_w in _int_range(math.sqrt(area * min_ar), math.sqrt(area * max_ar)):
            add(patches_w, math.floor(area / patches_w))
        for patches_h in _int_range(math.sqrt(area / max_ar), math.sqrt(area / min_ar)):
            add(math.floor(area / patches_h), patches_h)
        ordered = sorted((float(key), size) for key, size in by_key.items())
        return cls(tuple(key for key, _ in ordered), tuple(size for _, size in ordered))

    def choose(self, width: int, height: int) -> tuple[int, int]:
        """docs/compatibility.md §5.1 choice: nearest 3-decimal key, an exact tie goes to the higher bucket."""
        ratio = width / height
        index = bisect.bisect_left(self.keys, ratio)
        if index < len(self.keys) and self.keys[index] == ratio:
            return self.sizes[index]
        if index == 0:
            return self.sizes[0]
        if index == len(self.keys):
            return self.sizes[-1]
        below, above = ratio - self.keys[index - 1], self.keys[index] - ratio
        return self.sizes[index - 1] if below < above else self.sizes[index]


@dataclass(frozen=True)
class CoverCrop:
    """docs/compatibility.md §5.3: resize to `resized`, then take the `crop` (w, h) box at (`left`, `top`)."""

    resized: tuple[int, int]
    left: float
    top: float
    crop: tuple[float, float]

    @classmethod
    def plan(cls, width: int, height: int, bucket: tuple[int, int]) -> CoverCrop:
        bucket_w, bucket_h = bucket
        scale = max(bucket_w / width, bucket_h / height)
        resized_w, resized_h = _round_half_away(width * scale), _round_half_away(height * scale)
        if resized_w / resized_h > bucket_w / bucket_h:
            crop_w, crop_h = resized_h * bucket_w / bucket_h, float(resized_h)
        else:
            crop_w, crop_h = float(resized_w), resized_w * bucket_h / bucket_w
        left, top = (resized_w - crop_w) / 2, (resized_h - crop_h) / 2
        return cls((resized_w, resized_h), left, top, (crop_w, crop_h))

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.left, self.top, self.left + self.crop[0], self.top + self.crop[1])

    def is_pixel_aligned(self, bucket: tuple[int, int]) -> bool:
        """True when the crop is a plain copy: integer offsets and exactly the bucket's size."""
        return self.left.is_integer() and self.top.is_integer() and self.crop == bucket


def _int_range(low: float, high: float) -> range:
    """The integers in [low, high]."""
    return range(math.ceil(low), math.floor(high) + 1)


def _round_half_away(value: float) -> int:
    return math.floor(value + 0.5)
