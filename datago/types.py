"""Samples and image payloads over native memory.

A ``Sample`` holds its native ``datago_sample`` through ``ffi.gc``: the
native block is freed exactly when the last Python object that needs it (the
sample, a payload, a NumPy view, a PIL image made by ``frombuffer``, a torch
tensor from ``torch.from_numpy``) is gone. Fields are read from native memory
on first access and cached; nothing is copied on the hot path except where a
field is a Python ``bytes``/``str`` by contract (``payload.data``, ``id``).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np

from ._native import ffi, lib

_RAW = 0
_MODES_8BIT = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _pin(owner: Any, address: Any, length: int) -> Any:
    """A cffi buffer over ``length`` bytes at ``address`` that keeps
    ``owner`` (the native sample) alive for as long as the buffer lives."""
    pinned = ffi.gc(ffi.cast("uint8_t *", address), lambda _p, _o=owner: None, size=length)
    return ffi.buffer(pinned, length)


def _str(view: Any) -> bytes:
    return ffi.unpack(view.ptr, view.len) if view.len else b""


class LatentPayload:
    """An opaque byte payload (Dataroom latents): ``data`` and ``len``."""

    __slots__ = ("data", "len")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.len = len(data)

    def __repr__(self) -> str:
        return f"<datago.LatentPayload len={self.len}>"


class RawImagePayload:
    """The raw payload of one image (docs/compatibility.md §1.4): pixels or an encoded file and
    their geometry. Every attribute is readable and writable, as in the
    reference; ``data`` copies the native bytes into ``bytes`` on access,
    while ``to_numpy_array()`` is a zero-copy view."""

    __slots__ = (
        "_owner",
        "_data_address",
        "_data_len",
        "_data",
        "_array",
        "width",
        "height",
        "original_width",
        "original_height",
        "channels",
        "bit_depth",
        "is_encoded",
        "encoding",
        "crop_box",
        "scale",
    )
    _owner: Any
    _data_address: Any
    _data_len: int
    _data: bytes | None
    _array: np.ndarray | None
    width: int
    height: int
    original_width: int
    original_height: int
    channels: int
    bit_depth: int
    is_encoded: bool
    encoding: str
    crop_box: tuple[float, float, float, float]
    scale: float

    def __init__(self, owner: Any = None, view: Any = None) -> None:
        self._owner = owner
        self._data = None
        self._array = None
        if view is None:
            self._data_address = None
            self._data_len = 0
            self._data = b""
            self.width = self.height = self.original_width = self.original_height = 0
            self.channels = self.bit_depth = 0
            self.is_encoded = False
            self.encoding = "raw"
            self.crop_box = (0.0, 0.0, 0.0, 0.0)
            self.scale = 0.0
            return
        self._data_address = view.data
        self._data_len = view.data_len
        self.width = view.width
        self.height = view.height
        self.original_width = view.original_width
        self.original_height = view.original_height
        self.channels = view.channels
        self.bit_depth = view.bit_depth
        self.is_encoded = view.encoding != _RAW
        self.encoding = ("raw", "png", "jpeg")[view.encoding]
        self.crop_box = (view.crop_left, view.crop_top, view.crop_right, view.crop_bottom)
        self.scale = view.scale

    @property
    def data(self) -> bytes:
        """The pixels (raw) or the encoded file, as a ``bytes`` copy."""
        if self._data is None:
            self._data = ffi.unpack(ffi.cast("char *", self._data_address), self._data_len) if self._data_len else b""
        return self._data

    @data.setter
    def data(self, value: bytes) -> None:
        self._data = bytes(value)
        self._array = None

    def _buffer(self) -> Any:
        if self._data is not None or self._data_address is None:
            return self.data
        return _pin(self._owner, self._data_address, self._data_len)

    def copy(self) -> RawImagePayload:
        clone = RawImagePayload.__new__(RawImagePayload)
        for name in RawImagePayload.__slots__:
            setattr(clone, name, getattr(self, name))
        return clone

    def is_empty(self) -> bool:
        return self.channels == 0 and not self.is_encoded

    def to_numpy_array(self) -> np.ndarray | None:
        """``(H, W, C)`` array: a read-only zero-copy view of native memory for
        raw payloads (``uint8``, or ``uint16`` for 16-bit); encoded payloads
        are decoded (a new array). ``None`` for an empty payload."""
        if self.is_empty():
            return None
        if self.is_encoded:
            array = np.asarray(self.to_pil_image())
            return array[:, :, None] if array.ndim == 2 else array
        if self._array is None:
            dtype = np.dtype("<u2") if self.bit_depth == 16 else np.uint8
            array = np.frombuffer(self._buffer(), dtype=dtype).reshape(self.height, self.width, self.channels)
            array.flags.writeable = False
            self._array = array
        return self._array

    def writable_array(self) -> np.ndarray | None:
        """Like ``to_numpy_array()`` but writable (the memory is this
        sample's own), for consumers such as ``torch.from_numpy`` that want
        writable buffers. Writes change the sample."""
        if self.is_empty():
            return None
        if self.is_encoded or self._data is not None or self._data_address is None:
            return np.array(self.to_numpy_array())
        dtype = np.dtype("<u2") if self.bit_depth == 16 else np.uint8
        return np.frombuffer(self._buffer(), dtype=dtype).reshape(self.height, self.width, self.channels)

    def to_pil_image(self) -> Any:
        """A PIL image: mode L, LA, RGB or RGBA for 8-bit payloads; ``I;16``
        for 16-bit gray; other 16-bit payloads become 8-bit (value / 257,
        rounded: PIL has no 16-bit colour modes). Encoded payloads are opened
        lazily with ``PIL.Image.open``. ``None`` for an empty payload."""
        from PIL import Image

        if self.is_empty():
            return None
        if self.is_encoded:
            return Image.open(io.BytesIO(self.data))
        size = (self.width, self.height)
        if self.bit_depth == 16:
            array = self.to_numpy_array()
            assert array is not None  # not empty: checked above
            if self.channels == 1:
                return Image.frombuffer("I;16", size, np.ascontiguousarray(array), "raw", "I;16", 0, 1)
            array8 = ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
            return Image.fromarray(array8.reshape(self.height, self.width, self.channels))
        mode = _MODES_8BIT[self.channels]
        return Image.frombuffer(mode, size, self._buffer(), "raw", mode, 0, 1)

    def __repr__(self) -> str:
        kind = self.encoding if self.is_encoded else f"{self.channels}ch {self.bit_depth}-bit"
        return f"<datago.RawImagePayload {self.width}x{self.height} {kind}>"


class ImagePayload:
    """One image of a sample (docs/compatibility.md §1.3). Wraps a raw payload; PIL attributes
    (``.size``, ``.mode``, ``.save``...) are delegated to a PIL image built on
    access, as the reference does."""

    __slots__ = ("_inner",)

    def __init__(self, inner: RawImagePayload) -> None:
        object.__setattr__(self, "_inner", inner)

    def get_payload(self) -> RawImagePayload:
        """A copy of the raw payload (mutating it does not change this one)."""
        return self._inner.copy()

    def to_pil_image(self) -> Any:
        """A PIL image of the payload (see ``RawImagePayload.to_pil_image``)."""
        return self._inner.to_pil_image()

    def __call__(self) -> Any:
        """Same as ``to_pil_image()``, as in the reference."""
        return self._inner.to_pil_image()

    def to_numpy_array(self) -> np.ndarray | None:
        """``(H, W, C)`` zero-copy view (see ``RawImagePayload.to_numpy_array``)."""
        return self._inner.to_numpy_array()

    @property
    def width(self) -> int:
        return self._inner.width

    @property
    def height(self) -> int:
        return self._inner.height

    @property
    def channels(self) -> int:
        return self._inner.channels

    @property
    def bit_depth(self) -> int:
        return self._inner.bit_depth

    @property
    def original_width(self) -> int:
        return self._inner.original_width

    @property
    def original_height(self) -> int:
        return self._inner.original_height

    @property
    def is_encoded(self) -> bool:
        return self._inner.is_encoded

    @property
    def data(self) -> bytes:
        return self._inner.data

    @property
    def crop_box(self) -> tuple[float, float, float, float]:
        """Box of the original image the output covers (left, top, right,
        bottom, original pixels, Pillow's ``box`` convention)."""
        return self._inner.crop_box

    @property
    def scale(self) -> float:
        """Scale factor applied to the crop box (1.0 without crop_and_resize)."""
        return self._inner.scale

    def __getattr__(self, name: str) -> Any:
        image = self._inner.to_pil_image()
        if image is None:
            raise AttributeError(f"empty ImagePayload has no attribute {name!r}")
        return getattr(image, name)

    def __repr__(self) -> str:
        inner = self._inner
        kind = inner.encoding if inner.is_encoded else f"{inner.channels}ch {inner.bit_depth}-bit"
        return f"<datago.ImagePayload {inner.width}x{inner.height} {kind}>"


def _empty_payload() -> ImagePayload:
    return ImagePayload(RawImagePayload())


def _id_of(raw: bytes, is_file: bool) -> str:
    """The reference's id: for files the JSON-quoted path. Bytes that are
    not UTF-8 (Linux names are bytes) become ``\\udcXX`` JSON escapes of
    ``os.fsdecode``'s surrogates, so distinct names keep distinct ids and
    ``os.fsencode(json.loads(id))`` gives the name back."""
    if not is_file:
        return raw.decode("utf-8", "replace")
    text = raw.decode("utf-8", "surrogateescape")
    return json.dumps(text, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


class Sample:
    """A sample (docs/compatibility.md §3.1). ``id`` is the reference's form: for files, the
    path JSON-quoted (``'"d1/b.jpg"'``); ``path`` is the plain path. Fields
    are settable, except ``attributes``, as in the reference."""

    __slots__ = (
        "_owner",
        "_c",
        "_id",
        "_path",
        "_source",
        "_attributes",
        "_duplicate_state",
        "_image",
        "_masks",
        "_additional_images",
        "_latents",
        "_coca_embedding",
        "_tags",
        "__weakref__",
    )
    _id: str | None
    _path: str | None
    _source: str | None
    _attributes: str | None
    _duplicate_state: int | None
    _image: ImagePayload | None
    _masks: dict[str, ImagePayload] | None
    _additional_images: dict[str, ImagePayload] | None
    _latents: dict[str, LatentPayload] | None
    _coca_embedding: list[float] | None
    _tags: list[str] | None

    def __init__(self, owner: Any, c: Any = None) -> None:
        # `owner` keeps the native memory alive (the sample itself, or the
        # batch it belongs to); `c` is the datago_sample to read.
        self._owner = owner
        self._c = owner if c is None else c
        self._id = self._path = self._source = self._attributes = None
        self._duplicate_state = self._image = self._masks = self._additional_images = None
        self._latents = self._coca_embedding = self._tags = None

    # -- identity -------------------------------------------------------------

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = _id_of(_str(self._c.id), self._c.source_kind == lib.DATAGO_SOURCE_FILE)
        return self._id

    @id.setter
    def id(self, value: str) -> None:
        self._id = value

    @property
    def path(self) -> str | None:
        """The file path as the OS gives it (``os.fsdecode`` of the raw bytes,
        so it reopens the file even when not valid UTF-8); None for samples
        that are not files."""
        if self._path is None and self._c.source_kind == lib.DATAGO_SOURCE_FILE:
            self._path = os.fsdecode(_str(self._c.id))
        return self._path

    @property
    def source(self) -> str:
        if self._source is None:
            self._source = _str(self._c.source).decode("utf-8", "replace")
        return self._source

    @source.setter
    def source(self, value: str) -> None:
        self._source = value

    @property
    def attributes(self) -> str:
        """JSON text of a dict (read-only, as in the reference);
        ``attributes_dict`` gives it decoded."""
        if self._attributes is None:
            self._attributes = _str(self._c.attributes_json).decode("utf-8", "replace") or "{}"
        return self._attributes

    @property
    def attributes_dict(self) -> dict[str, Any]:
        return json.loads(self.attributes)

    @property
    def duplicate_state(self) -> int:
        if self._duplicate_state is None:
            self._duplicate_state = int(self._c.duplicate_state)
        return self._duplicate_state

    @duplicate_state.setter
    def duplicate_state(self, value: int) -> None:
        self._duplicate_state = value

    @property
    def index(self) -> int:
        """Position of this sample in its (rank, worker)'s order for the pass."""
        return int(self._c.index)

    @property
    def epoch(self) -> int:
        """Pass number of the client: 0, then +1 per new pass."""
        return int(self._c.epoch)

    @property
    def padded(self) -> bool:
        """True for a repeat added by ``equal_per_rank: "pad"`` (or standing
        in for a failed item) so that every rank yields the same count:
        evaluation should ignore it."""
        return bool(self._c.padded)

    # -- images ---------------------------------------------------------------

    @property
    def image(self) -> ImagePayload:
        if self._image is None:
            view = self._c.image
            self._image = ImagePayload(RawImagePayload(self._owner, view)) if view.data_len else _empty_payload()
        return self._image

    @image.setter
    def image(self, value: ImagePayload) -> None:
        self._image = value

    def _named_images(self, array: Any, count: int) -> dict[str, ImagePayload]:
        return {
            _str(array[i].name).decode("utf-8", "replace"): ImagePayload(RawImagePayload(self._owner, array[i].image))
            for i in range(count)
        }

    @property
    def masks(self) -> dict[str, ImagePayload]:
        if self._masks is None:
            self._masks = self._named_images(self._c.masks, self._c.mask_count)
        return self._masks

    @masks.setter
    def masks(self, value: dict[str, ImagePayload]) -> None:
        self._masks = value

    @property
    def additional_images(self) -> dict[str, ImagePayload]:
        if self._additional_images is None:
            self._additional_images = self._named_images(self._c.additional_images, self._c.additional_image_count)
        return self._additional_images

    @additional_images.setter
    def additional_images(self, value: dict[str, ImagePayload]) -> None:
        self._additional_images = value

    @property
    def latents(self) -> dict[str, LatentPayload]:
        if self._latents is None:
            c = self._c
            self._latents = {
                _str(c.latents[i].name).decode("utf-8", "replace"): LatentPayload(
                    ffi.unpack(ffi.cast("char *", c.latents[i].data), c.latents[i].len)
                )
                for i in range(c.latent_count)
            }
        return self._latents

    @latents.setter
    def latents(self, value: dict[str, LatentPayload]) -> None:
        self._latents = value

    @property
    def coca_embedding(self) -> list[float]:
        if self._coca_embedding is None:
            c = self._c
            self._coca_embedding = list(ffi.unpack(c.coca_embedding, c.coca_embedding_len)) if c.coca_embedding_len else []
        return self._coca_embedding

    @coca_embedding.setter
    def coca_embedding(self, value: list[float]) -> None:
        self._coca_embedding = value

    @property
    def tags(self) -> list[str]:
        if self._tags is None:
            c = self._c
            self._tags = [_str(c.tags[i]).decode("utf-8", "replace") for i in range(c.tag_count)]
        return self._tags

    @tags.setter
    def tags(self, value: list[str]) -> None:
        self._tags = value

    # -- conversions ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The dict of ``get_sample_auto_convert()`` (docs/compatibility.md §3.4): keys in the
        reference's order, images as PIL, attribute values JSON-serialised."""
        attributes = {key: json.dumps(value, ensure_ascii=False) for key, value in self.attributes_dict.items()}
        return {
            "id": self.id,
            "source": self.source,
            "duplicate_state": self.duplicate_state,
            "attributes": attributes,
            "tags": self.tags,
            "coca_embedding": self.coca_embedding,
            "latents": {k: {"data": v.data, "len": v.len} for k, v in self.latents.items()},
            "image": self.image.to_pil_image(),
            "masks": {k: v.to_pil_image() for k, v in self.masks.items()},
            "additional_images": {k: v.to_pil_image() for k, v in self.additional_images.items()},
        }

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle 'Sample' object: it views native memory; convert with to_dict() or copy arrays")

    def __repr__(self) -> str:
        return f"<datago.Sample id={self.id} image={self.image!r}>"


class Batch:
    """Samples of one shape (``batch_size``): ``images`` is a read-only,
    zero-copy ``[B, H, W, C]`` array (``uint8``, or ``uint16`` for 16-bit)
    over one native block; ``samples`` are the batch's samples, in order.
    Freed when the batch, its samples and every view of ``images`` are gone."""

    __slots__ = ("_owner", "_images", "samples", "epoch", "__weakref__")
    _images: np.ndarray | None
    samples: list[Sample]
    epoch: int

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self._images = None
        self.epoch = int(owner.epoch)
        self.samples = [Sample(owner, owner.samples[i]) for i in range(owner.count)]

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            c = self._owner
            dtype = np.dtype("<u2") if c.bit_depth == 16 else np.uint8
            array = np.frombuffer(_pin(c, c.images, c.images_len), dtype=dtype)
            array = array.reshape(c.count, c.height, c.width, c.channels)
            array.flags.writeable = False
            self._images = array
        return self._images

    def to_torch(self) -> Any:
        """``images`` as a ``torch.Tensor`` sharing the native memory
        (writable: the block is this batch's own)."""
        import torch

        c = self._owner
        dtype = np.dtype("<u2") if c.bit_depth == 16 else np.uint8
        array = np.frombuffer(_pin(c, c.images, c.images_len), dtype=dtype)
        return torch.from_numpy(array.reshape(c.count, c.height, c.width, c.channels))

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle 'Batch' object: it views native memory; copy `images` first")

    def __repr__(self) -> str:
        c = self._owner
        return f"<datago.Batch {c.count} x {c.height}x{c.width}x{c.channels} {c.bit_depth}-bit>"
