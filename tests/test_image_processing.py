"""Image processing against docs/compatibility.md §5 and Pillow: bucket tables and
choice, crop geometry, pixels for every input mode, aligned masks, WebP,
EXIF, pre-encoding and payload conversions."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

import datago
from datago import raw_types
from support import drain, file_config, noise_image, run_python

CFG_1024 = {"crop_and_resize": True, "default_image_size": 1024, "downsampling_ratio": 32, "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0}
CFG_512 = {**CFG_1024, "default_image_size": 512, "downsampling_ratio": 16}
CFG_64 = {**CFG_1024, "default_image_size": 64, "downsampling_ratio": 16}

REFERENCE_1024 = [
    (0.489, 704, 1440), (0.523, 736, 1408), (0.535, 736, 1376), (0.571, 768, 1344), (0.585, 768, 1312),
    (0.625, 800, 1280), (0.667, 832, 1248), (0.684, 832, 1216), (0.730, 864, 1184), (0.778, 896, 1152),
    (0.829, 928, 1120), (0.882, 960, 1088), (0.939, 992, 1056), (1.000, 1024, 1024), (1.065, 1056, 992),
    (1.133, 1088, 960), (1.207, 1120, 928), (1.286, 1152, 896), (1.370, 1184, 864), (1.462, 1216, 832),
    (1.500, 1248, 832), (1.600, 1280, 800), (1.708, 1312, 768), (1.750, 1344, 768), (1.870, 1376, 736),
    (1.913, 1408, 736), (2.045, 1440, 704),
]


# -- buckets ----------------------------------------------------------------------


def model_buckets(size: int, ratio: int, min_ar: float, max_ar: float) -> list[tuple[float, int, int]]:
    """docs/compatibility.md §5.1 written again in Python ('%.3f' rounds the exact binary value)."""
    p = size // ratio
    area = float(p * p)
    table: dict[str, tuple[int, int]] = {}
    for pw in range(math.ceil(math.sqrt(area * min_ar)), math.floor(math.sqrt(area * max_ar)) + 1):
        ph = math.floor(area / pw)
        if ph >= 1:
            table["%.3f" % (pw * ratio / (ph * ratio))] = (pw * ratio, ph * ratio)
    for ph in range(math.ceil(math.sqrt(area / max_ar)), math.floor(math.sqrt(area / min_ar)) + 1):
        pw = math.floor(area / ph)
        if pw >= 1:
            table["%.3f" % (pw * ratio / (ph * ratio))] = (pw * ratio, ph * ratio)
    return sorted((float(k), w, h) for k, (w, h) in table.items())


def model_choice(table: list[tuple[float, int, int]], width: int, height: int) -> tuple[int, int]:
    t = width / height
    keys = [k for k, _, _ in table]
    for k, w, h in table:
        if k == t:
            return w, h
    if t < keys[0]:
        return table[0][1:]
    if t > keys[-1]:
        return table[-1][1:]
    i = next(i for i, k in enumerate(keys) if k > t)
    below, above = table[i - 1], table[i]
    return below[1:] if t - below[0] < above[0] - t else above[1:]


def test_the_reference_tables_exactly() -> None:
    got = [(b.aspect_ratio, b.width, b.height) for b in datago.buckets(CFG_1024)]
    assert [(round(k, 3), w, h) for k, w, h in got] == REFERENCE_1024
    half = [(b.aspect_ratio, b.width, b.height) for b in datago.buckets(CFG_512)]
    assert [(round(k, 3), 2 * w, 2 * h) for k, w, h in half] == REFERENCE_1024


@pytest.mark.parametrize(("size", "expected"), [((31, 20), (1280, 800)), ((181, 100), (1376, 736)), ((130, 100), (1152, 896)), ((1, 2000), (704, 1440)), ((2000, 1), (1440, 704)), ((1, 1), (1024, 1024))])
def test_verified_choices(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert datago.fit(CFG_1024, *size).size == expected


configs = st.builds(
    lambda size, ratio_exp, min_ar, span: {
        "crop_and_resize": True,
        "default_image_size": size,
        "downsampling_ratio": min(2**ratio_exp, size),
        "min_aspect_ratio": min_ar,
        "max_aspect_ratio": min_ar * span,
    },
    st.integers(16, 2048),
    st.integers(0, 7),
    st.floats(0.1, 1.0),
    st.floats(1.0, 16.0),
)


@settings(max_examples=300, deadline=None)
@given(config=configs, width=st.integers(1, 20000), height=st.integers(1, 20000))
def test_fit_properties(config: dict, width: int, height: int) -> None:
    table = model_buckets(config["default_image_size"], config["downsampling_ratio"], config["min_aspect_ratio"], config["max_aspect_ratio"])
    table = [(k, w, h) for k, w, h in table if w > 0 and h > 0]
    if not table:
        with pytest.raises(datago.ConfigError, match="no bucket fits"):
            datago.buckets(config)
        return
    assert [(round(b.aspect_ratio, 3), b.width, b.height) for b in datago.buckets(config)] == [(round(k, 3), w, h) for k, w, h in table]
    f = datago.fit(config, width, height)
    W, H = f.size
    # In the bucket list, sides multiples of the ratio, the nearest ratio.
    assert (W, H) in {(w, h) for _, w, h in table}
    assert W % config["downsampling_ratio"] == 0 and H % config["downsampling_ratio"] == 0
    assert (W, H) == model_choice(table, width, height)
    # The crop lies inside the source and is centred.
    left, top, right, bottom = f.crop_box
    eps = 1e-6 * max(width, height)
    assert -eps <= left < right <= width + eps and -eps <= top < bottom <= height + eps
    assert math.isclose((left + right) / 2, width / 2, abs_tol=eps + 1e-9)
    assert math.isclose((top + bottom) / 2, height / 2, abs_tol=eps + 1e-9)
    # The crop record maps back: the box, cover-resized, is the bucket.
    if (W, H) != (width, height):
        s = max(W / width, H / height)
        assert f.scale == pytest.approx(s)
        nw, nh = max(1, math.floor(width * s + 0.5)), max(1, math.floor(height * s + 0.5))
        assert (right - left) * nw / width == pytest.approx(W, rel=1e-9, abs=1e-6) or (bottom - top) * nh / height == pytest.approx(H, rel=1e-9, abs=1e-6)
        assert (right - left) * nw / width <= nw + 1e-6 and (bottom - top) * nh / height <= nh + 1e-6


# -- pixels against a Pillow model ---------------------------------------------------


def write_modes(folder: Path) -> dict[str, Path]:
    """One file per input mode of docs/compatibility.md §5.4 (plus JPEG colour spaces)."""
    folder.mkdir(exist_ok=True)
    paths: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **kw) -> None:
        path = folder / name
        image.save(path, **kw)
        paths[name] = path

    save("L.png", noise_image(203, 131, "L", 1))
    save("LA.png", noise_image(203, 131, "LA", 2))
    save("RGB.png", noise_image(203, 131, "RGB", 3))
    save("RGBA.png", noise_image(131, 203, "RGBA", 4))
    save("P.png", noise_image(150, 100, "RGB", 5).convert("P", palette=Image.ADAPTIVE, colors=32))
    p = noise_image(150, 100, "RGB", 6).convert("P", palette=Image.ADAPTIVE, colors=32)
    save("PA.png", p, transparency=3)
    save("1bit.png", noise_image(120, 90, "L", 7).convert("1"))
    save("rgb.jpg", noise_image(203, 131, "RGB", 8), quality=92)
    save("gray.jpg", noise_image(203, 131, "L", 9), quality=92)
    save("cmyk.jpg", noise_image(160, 120, "RGB", 10).convert("CMYK"), quality=95)
    save("lossless.webp", noise_image(140, 90, "RGB", 11), lossless=True)
    save("alpha.webp", noise_image(140, 90, "RGBA", 12), lossless=True)
    save("lossy.webp", noise_image(140, 90, "RGB", 13), quality=80)
    save("rgb.bmp", noise_image(97, 61, "RGB", 14))
    save("anim.gif", noise_image(80, 60, "RGB", 15).convert("P"))
    return paths


def pillow_decoded(path: Path) -> Image.Image:
    """What datago decodes a file to, according to docs/compatibility.md §5.4, built by Pillow."""
    image = Image.open(path)
    image.load()
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info or path.suffix == ".gif" else "RGB")
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "CMYK":
        return image.convert("RGB")
    return image


def test_decoded_pixels_match_pillow_for_every_mode(tmp_path: Path) -> None:
    paths = write_modes(tmp_path / "modes")
    with datago.DatagoClient(file_config(tmp_path / "modes")) as client:
        samples = {Path(s.path).name: s for s in drain(client)}
    assert set(samples) == set(paths)
    for name, path in paths.items():
        expected = np.asarray(pillow_decoded(path))
        expected = expected[:, :, None] if expected.ndim == 2 else expected
        got = samples[name].image.to_numpy_array()
        if name == "lossy.webp" or name == "anim.gif":
            # GIF: transparent palette entries come out (0,0,0,0) (docs/decoding.md); compare opaque pixels.
            mask = expected[..., -1] == 255 if name == "anim.gif" else np.ones(expected.shape[:2], bool)
            np.testing.assert_array_equal(got[mask], expected[mask], err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("config", [CFG_64, CFG_512], ids=["64/16", "512/16"])
def test_bucketed_pixels_match_the_pillow_model(tmp_path: Path, config: dict) -> None:
    config = {**config, "dct_scaling": False}  # the faithful path; the fast one is tested below
    paths = write_modes(tmp_path / "modes")
    with datago.DatagoClient(file_config(tmp_path / "modes", image_config=config)) as client:
        samples = {Path(s.path).name: s for s in drain(client)}
    for name, path in paths.items():
        sample = samples[name]
        source = pillow_decoded(path)
        fit = datago.fit(config, *source.size)
        assert (sample.image.width, sample.image.height) == fit.size, name
        assert sample.image.crop_box == pytest.approx(fit.crop_box)
        assert sample.image.scale == pytest.approx(fit.scale)
        assert (sample.image.original_width, sample.image.original_height) == source.size
        model = source.resize(fit.size, Image.LANCZOS, box=fit.crop_box)
        expected = np.asarray(model).astype(np.int16)
        expected = expected[:, :, None] if expected.ndim == 2 else expected
        got = sample.image.to_numpy_array().astype(np.int16)
        diff = np.abs(got - expected)
        # The bound is mean <= 1, max <= 8; the kernel reproduces
        # Pillow's fixed-point Lanczos exactly, so hold it to that.
        assert diff.max() == 0, (name, diff.mean(), diff.max())


PHOTOS = Path(__file__).resolve().parent / "data" / "photos"


def photo_crops(folder: Path, count: int) -> list[Path]:
    """JPEGs (q90, 4:2:0) cut from the real photographs shipped in
    tests/data/photos (about 1.6 MP each, see SOURCES.md there), at 1 and
    4 MP and assorted aspect ratios, as the bench corpora are."""
    photos = sorted(PHOTOS.glob("*.jpg"))[:count]
    assert len(photos) == count, f"expected {count} photographs in {PHOTOS}, found {len(photos)}"
    paths = []
    for i, photo in enumerate(photos):
        image = Image.open(photo).convert("RGB")
        ratio = [0.6, 1.0, 1.4, 1.9][i % 4]
        megapixels = 1.0 if i % 2 == 0 else 4.0
        w = int((megapixels * 1e6 * ratio) ** 0.5)
        h = int(w / ratio)
        scale = max(w / image.width, h / image.height)
        resized = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))), Image.BICUBIC)
        path = folder / f"{i:02d}.jpg"
        resized.crop((0, 0, w, h)).save(path, quality=90)
        paths.append(path)
    return paths


def test_jpeg_variants_of_real_photos_decode_exactly_like_pillow(tmp_path: Path) -> None:
    photo = Image.open(sorted(PHOTOS.glob("*.jpg"))[0]).convert("RGB").resize((1227, 827))
    variants = {
        "420.jpg": {"quality": 90, "subsampling": 2},
        "422.jpg": {"quality": 85, "subsampling": 1},
        "444.jpg": {"quality": 95, "subsampling": 0},
        "progressive.jpg": {"quality": 90, "progressive": True},
        "q40.jpg": {"quality": 40},
    }
    for name, options in variants.items():
        photo.save(tmp_path / name, **options)
    photo.convert("L").save(tmp_path / "gray.jpg", quality=90)
    with datago.DatagoClient(file_config(tmp_path)) as client:
        samples = drain(client)
    assert len(samples) == 6
    for sample in samples:
        expected = np.asarray(Image.open(sample.path))
        expected = expected[:, :, None] if expected.ndim == 2 else expected
        np.testing.assert_array_equal(sample.image.to_numpy_array(), expected, err_msg=sample.path)


@pytest.mark.parametrize("config", [CFG_512, CFG_1024], ids=["512", "1024"])
def test_dct_scaled_decode_stays_close_to_the_full_path(tmp_path: Path, config: dict) -> None:
    # The default rule (picked by bench/dct_scaling.py on the photo corpora)
    # keeps the bounds: mean <= 1, p99 <= 8 levels.
    photo_crops(tmp_path, 8)
    results = {}
    for dct in (False, True):
        with datago.DatagoClient(file_config(tmp_path, image_config={**config, "dct_scaling": dct})) as client:
            results[dct] = {s.path: s.image.to_numpy_array().astype(np.int16) for s in drain(client)}
    assert len(results[True]) == 8
    diffs = np.concatenate([np.abs(results[True][p] - results[False][p]).ravel() for p in results[False]])
    assert diffs.mean() <= 1.0 and np.percentile(diffs, 99) <= 8, (diffs.mean(), np.percentile(diffs, 99), diffs.max())
    for p, full in results[False].items():
        assert results[True][p].shape == full.shape


def test_16bit_stays_16bit_through_the_bucket(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 65535, (20, 30), dtype=np.uint16)
    values = np.asarray(Image.fromarray(small.astype(np.float32), "F").resize((300, 200), Image.BILINEAR)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with datago.DatagoClient(file_config(tmp_path, image_config=CFG_64)) as client:
        sample = client.get_sample()
    array = sample.image.to_numpy_array()
    assert array.dtype == np.dtype("<u2") and array.shape == (48, 80, 1)
    fit = datago.fit(CFG_64, 300, 200)
    model = np.asarray(Image.fromarray(values.astype(np.float32), "F").resize(fit.size, Image.LANCZOS, box=fit.crop_box))
    diff = np.abs(array[:, :, 0].astype(np.float64) - np.clip(np.round(model), 0, 65535))
    assert diff.max() <= 2 * 257 and diff.mean() <= 64, (diff.max(), diff.mean())


def test_extreme_strip_has_bounded_memory(tmp_path: Path) -> None:
    Image.fromarray(np.arange(20000, dtype=np.uint8).reshape(20000, 1) % 251).save(tmp_path / "strip.png")
    code = f"""
        import datago
        def peak_mib():  # this process's own peak (ru_maxrss also counts the parent's, via exec)
            return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        cfg = {file_config(tmp_path, image_config=CFG_512)!r}
        before = peak_mib()
        with datago.DatagoClient(cfg) as client:
            s = client.get_sample()
            print(s.image.width, s.image.height, s.image.crop_box[3] - s.image.crop_box[1])
        print(peak_mib() - before)
    """
    result = run_python(code)
    lines = result.stdout.split()
    assert lines[:2] == ["352", "720"], result.stderr
    assert float(lines[2]) == pytest.approx(720 / 352)
    assert int(lines[3]) < 100, f"RSS grew by {lines[3]} MiB"


# -- rgb8, masks, EXIF ---------------------------------------------------------------------


def composite_model(rgba: np.ndarray) -> np.ndarray:
    c = rgba[..., :-1].astype(np.float32)
    a = rgba[..., -1:].astype(np.float32) / np.float32(255)
    value = np.float32(255) * (c / np.float32(255) * a + np.float32(128) / np.float32(255) * (np.float32(1) - a))
    return np.trunc(value).astype(np.uint8)


def test_image_to_rgb8_composites_every_alpha_kind(tmp_path: Path) -> None:
    rgba = noise_image(40, 30, "RGBA", 1)
    rgba.save(tmp_path / "a_rgba.png")
    la = noise_image(40, 30, "LA", 2)
    la.save(tmp_path / "b_la.png")
    noise_image(40, 30, "L", 3).save(tmp_path / "c_l.png")
    with datago.DatagoClient(file_config(tmp_path, image_config={"crop_and_resize": False, "image_to_rgb8": True})) as client:
        a, b, c = drain(client)
    for sample in (a, b, c):
        assert sample.image.channels == 3 and sample.image.bit_depth == 8
    np.testing.assert_array_equal(a.image.to_numpy_array(), composite_model(np.asarray(rgba)))
    expected_la = composite_model(np.asarray(la))
    np.testing.assert_array_equal(b.image.to_numpy_array(), np.repeat(expected_la, 3, axis=2))
    gray = np.asarray(Image.open(tmp_path / "c_l.png"))
    np.testing.assert_array_equal(c.image.to_numpy_array(), np.stack([gray] * 3, axis=2))


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def model_fit(width: int, height: int, W: int, H: int) -> tuple[float, float, float, float]:
    """docs/compatibility.md §5.3: the centred crop of the cover-resized image, in source pixels."""
    s = max(W / width, H / height)
    nw, nh = math.floor(width * s + 0.5), math.floor(height * s + 0.5)
    cw, ch = (nh * W / H, nh) if nw / nh > W / H else (nw, nw * H / W)
    left, top = (nw - cw) / 2, (nh - ch) / 2
    return (left * width / nw, top * height / nh, (left + cw) * width / nw, (top + ch) * height / nh)


@pytest.mark.parametrize("resample", ["lanczos", "nearest"])
def test_masks_and_additional_images_share_the_main_bucket(resample: str) -> None:
    main = noise_image(400, 300, "RGB", 1)  # ratio 1.333: the 592x432 bucket of 512/16
    mask = Image.fromarray(((np.indices((240, 180)).sum(axis=0) // 20) % 2 * 255).astype(np.uint8))  # portrait
    extra = noise_image(300, 300, "RGB", 2)  # square
    sample = datago.transform(
        {**CFG_512, "mask_resample": resample},
        encode(main, "JPEG"), masks={"seg": encode(mask)}, additional_images={"masked": encode(extra)},
    )
    assert (sample.image.width, sample.image.height) == (592, 432)
    seg, masked = sample.masks["seg"], sample.additional_images["masked"]
    assert (seg.width, seg.height) == (masked.width, masked.height) == (592, 432)
    assert seg.channels == 1 and masked.channels == 3
    assert seg.crop_box == pytest.approx(model_fit(180, 240, 592, 432))
    filter_ = Image.NEAREST if resample == "nearest" else Image.LANCZOS
    model = np.asarray(mask.resize((592, 432), filter_, box=model_fit(180, 240, 592, 432)))
    got = seg.to_numpy_array()[:, :, 0]
    if resample == "nearest":
        assert set(np.unique(got).tolist()) <= {0, 255}, "label masks stay binary"
        np.testing.assert_array_equal(got, model)
    else:
        assert len(np.unique(got)) > 2, "Lanczos makes intermediate values (the reference's behaviour)"
        assert np.abs(got.astype(int) - model).max() <= 1
    extra_model = np.asarray(extra.resize((592, 432), Image.LANCZOS, box=model_fit(300, 300, 592, 432)))
    assert np.abs(masked.to_numpy_array().astype(int) - extra_model).max() <= 1


def test_a_mask_alone_picks_its_own_bucket() -> None:
    mask = Image.fromarray(np.zeros((100, 200), np.uint8))
    sample = datago.transform(CFG_512, None, masks={"m": encode(mask)})
    assert sample.image.to_numpy_array() is None and sample.image.to_pil_image() is None
    assert (sample.masks["m"].width, sample.masks["m"].height) == datago.fit(CFG_512, 200, 100).size


def test_transform_names_the_image_that_failed() -> None:
    with pytest.raises(datago.DatagoError, match="mask 'm': .*not_image"):
        datago.transform(CFG_512, encode(noise_image(10, 10, "RGB", 0)), masks={"m": b"junk"})


def test_exif_transpose(tmp_path: Path) -> None:
    image = noise_image(120, 80, "RGB", 4)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    with datago.DatagoClient(file_config(tmp_path)) as client:
        plain = client.get_sample()
    with datago.DatagoClient(file_config(tmp_path, image_config={"crop_and_resize": False, "exif_transpose": True})) as client:
        turned = client.get_sample()
    assert plain.image.to_numpy_array().shape == (80, 120, 3)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rotated.jpg")))
    np.testing.assert_array_equal(turned.image.to_numpy_array(), expected)


# -- pre-encoding and payload conversions ----------------------------------------------------


def test_encoded_payloads_decode_to_the_bucket_size(tmp_path: Path) -> None:
    paths = write_modes(tmp_path / "m")
    for fmt in ("png", "jpeg"):
        config = {**CFG_64, "pre_encode_images": True, "encode_format": fmt}
        with datago.DatagoClient(file_config(tmp_path / "m", image_config=config)) as client:
            samples = drain(client)
        assert len(samples) == len(paths), "nothing dropped, alpha and 16-bit included"
        for sample in samples:
            payload = sample.image.get_payload()
            assert payload.is_encoded and payload.channels == -1
            pil = sample.image.to_pil_image()
            assert pil.format == fmt.upper() and pil.size == (payload.width, payload.height)
            assert pil.size == datago.fit(CFG_64, payload.original_width, payload.original_height).size
            array = sample.image.to_numpy_array()
            assert array.shape[:2] == (payload.height, payload.width)
            assert raw_types.get_image_mode(sample.image) == pil.mode
            assert raw_types.decode_image_payload(sample.image.get_payload()).size == pil.size


def test_png_pre_encoding_keeps_16_bit_and_alpha(tmp_path: Path) -> None:
    values = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 53).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "a16.png")
    noise_image(40, 30, "RGBA", 1).save(tmp_path / "b_rgba.png")
    with datago.DatagoClient(file_config(tmp_path, image_config={"crop_and_resize": False, "pre_encode_images": True})) as client:
        a, b = drain(client)
    assert a.image.bit_depth == 16
    np.testing.assert_array_equal(np.asarray(a.image.to_pil_image()), values)
    np.testing.assert_array_equal(np.asarray(b.image.to_pil_image()), np.asarray(Image.open(tmp_path / "b_rgba.png")))


def test_jpeg_quality_changes_size_monotonically(tmp_path: Path) -> None:
    noise_image(256, 256, "RGB", 3).save(tmp_path / "x.png")
    sizes = []
    for quality in (10, 40, 70, 95):
        config = {"crop_and_resize": False, "pre_encode_images": True, "encode_format": "jpeg", "jpeg_quality": quality}
        with datago.DatagoClient(file_config(tmp_path, image_config=config)) as client:
            sizes.append(len(client.get_sample().image.data))
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_payload_helpers_on_every_kind(tmp_path: Path) -> None:
    noise_image(5, 4, "RGB", 0).save(tmp_path / "rgb.png")
    with datago.DatagoClient(file_config(tmp_path)) as client:
        raw = client.get_sample()
    assert raw.image.to_pil_image().mode == "RGB" and raw_types.get_image_mode(raw.image) == "RGB"
    empty = datago.transform(CFG_64, None, masks={"m": encode(Image.new("L", (4, 4)))}).image
    assert empty.to_pil_image() is None and empty.to_numpy_array() is None
    assert raw_types.get_image_mode(empty) is None and raw_types.decode_image_payload(empty) is None
    payload = raw.image.get_payload()
    payload.width = 1  # a copy: the wrapper is unchanged
    assert raw.image.width == 5
    assert raw_types.raw_array_to_numpy(type("R", (), {"data": b""})()) is None
    values = np.full((4, 5, 3), 0x1234, np.uint16)
    buffer = io.BytesIO()
    np.save(buffer, values)
    np.testing.assert_array_equal(raw_types.raw_array_to_numpy(type("R", (), {"data": buffer.getvalue()})()), values)


def test_16bit_rgb_payloads_convert(tmp_path: Path) -> None:
    # Pillow cannot write 16-bit RGB; datago's own PNG encoder can, so
    # pre-encode a 16-bit gray image and check the raw and encoded paths.
    values = (np.arange(6 * 7, dtype=np.uint32).reshape(6, 7) * 1500).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")
    with datago.DatagoClient(file_config(tmp_path, image_config={"crop_and_resize": False, "image_to_rgb8": True})) as client:
        rgb8 = client.get_sample()
    expected = ((values.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)
    np.testing.assert_array_equal(rgb8.image.to_numpy_array(), np.stack([expected] * 3, axis=2))


def png16(path: Path, values: np.ndarray) -> None:
    """Writes a 16-bit PNG (gray, gray+alpha, RGB or RGBA) by hand: Pillow
    cannot write 16-bit colour."""
    import struct
    import zlib

    height, width, channels = values.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_colour_payloads_convert_everywhere(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(channels)
    values = rng.integers(0, 65536, (9, 11, channels), dtype=np.uint16)
    png16(tmp_path / "c16.png", values)
    with datago.DatagoClient(file_config(tmp_path)) as client:
        raw = client.get_sample()
    assert (raw.image.bit_depth, raw.image.channels) == (16, channels)
    np.testing.assert_array_equal(raw.image.to_numpy_array(), values)
    pil = raw.image.to_pil_image()  # PIL has no 16-bit colour modes: 8-bit, value / 257 rounded
    expected8 = ((values.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(pil), expected8)
    with datago.DatagoClient(file_config(tmp_path, image_config={"crop_and_resize": False, "pre_encode_images": True})) as client:
        encoded = client.get_sample()
    assert encoded.image.bit_depth == 16 and encoded.image.is_encoded
    reread = datago.transform(None, encoded.image.data)
    np.testing.assert_array_equal(reread.image.to_numpy_array(), values)
    with datago.DatagoClient(file_config(tmp_path, image_config={"crop_and_resize": False, "image_to_rgb8": True})) as client:
        rgb8 = client.get_sample()
    assert rgb8.image.channels == 3 and rgb8.image.bit_depth == 8
    if channels == 3:
        np.testing.assert_array_equal(rgb8.image.to_numpy_array(), expected8)
    else:
        alpha = expected8[..., -1:]
        colour = expected8[..., :-1] if channels == 4 else np.repeat(expected8[..., :1], 3, axis=2)
        np.testing.assert_array_equal(rgb8.image.to_numpy_array(), composite_model(np.concatenate([colour, alpha], axis=2)))
