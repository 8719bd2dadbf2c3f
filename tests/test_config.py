"""Bad configurations fail at construction with ConfigError naming the key
(docs/compatibility.md §11.1, §11.2, §13); good reference configs keep working."""

from __future__ import annotations

import json

import pytest

import datago
from support import file_config

GOOD_SOURCE = {"root_path": "/tmp"}


def cfg(**top):
    base = {"source_type": "file", "source_config": dict(GOOD_SOURCE), "limit": 10, "samples_buffer_size": 8}
    base.update(top)
    return json.dumps(base)


BAD = [
    ("{not json", "config: not valid JSON"),
    ("", "config: not valid JSON"),
    ("[]", "config: expected a JSON object"),
    ("null", "config: expected a JSON object"),
    (cfg(source_type="s3"), "source_type: unknown source type 's3'"),
    (cfg(source_type="File"), "source_type: unknown source type 'File'"),
    (json.dumps({"source_type": "file", "limit": 3}), "source_config: missing"),
    (cfg(source_config=None), "source_config: expected an object"),
    (cfg(source_config={}), "source_config.root_path: missing"),
    (cfg(source_config={"root_path": 5}), "source_config.root_path: expected a string"),
    (cfg(limit=0), "limit: must be greater than 0"),
    (cfg(limit=-1), "limit: -1 is out of range"),
    (cfg(limit=2.5), "limit: expected a non-negative integer"),
    (cfg(limit="5"), "limit: expected a non-negative integer, got a string"),
    (cfg(samples_buffer_size=0), "samples_buffer_size: must be greater than 0"),
    (cfg(samples_buffer_size=-4), "samples_buffer_size: -4 is out of range"),
    (cfg(prefetch_buffer_size=0), "prefetch_buffer_size: must be greater than 0"),
    (cfg(num_threads=0), "num_threads: must be greater than 0"),
    (cfg(timeout_s=0), "timeout_s: must be a positive number"),
    (cfg(max_error_fraction=1.5), "max_error_fraction: must be between 0 and 1"),
    (cfg(source_config={**GOOD_SOURCE, "rank": 2, "world_size": 2}), "source_config.rank: 2 must be less than world_size (2)"),
    (cfg(source_config={**GOOD_SOURCE, "rank": 1}), "source_config.rank: 1 must be less than world_size (1)"),
    (cfg(source_config={**GOOD_SOURCE, "world_size": 0}), "source_config.world_size: must be greater than 0"),
    (cfg(source_config={**GOOD_SOURCE, "rank": -1}), "source_config.rank: -1 is out of range"),
    (cfg(source_config={**GOOD_SOURCE, "rank": "1"}), "source_config.rank: expected a non-negative integer"),
    (cfg(source_config={**GOOD_SOURCE, "world_size": "2"}), "source_config.world_size: expected a non-negative integer"),
    (cfg(source_config={**GOOD_SOURCE, "random_sampling": "yes"}), "source_config.random_sampling: expected true or false"),
    (cfg(source_config={**GOOD_SOURCE, "random_sampling": 1}), "source_config.random_sampling: expected true or false"),
    (cfg(source_config={**GOOD_SOURCE, "seed": -3}), "source_config.seed: -3 is out of range"),
    (cfg(image_config={}), "image_config.crop_and_resize: missing"),
    (cfg(image_config={"crop_and_resize": "true"}), "image_config.crop_and_resize: expected true or false"),
    (
        cfg(image_config={"crop_and_resize": True}),
        "image_config.default_image_size: missing, and crop_and_resize needs it (Default image size must be greater than 0)",
    ),
    (
        cfg(image_config={"crop_and_resize": True, "default_image_size": 64}),
        "image_config.downsampling_ratio: missing, and crop_and_resize needs it (Downsampling ratio must be greater than 0)",
    ),
    (
        cfg(image_config={"crop_and_resize": True, "default_image_size": 64, "downsampling_ratio": 16}),
        "image_config.min_aspect_ratio: missing, and crop_and_resize needs it (Aspect ratio constraints are invalid)",
    ),
    (
        cfg(image_config={"crop_and_resize": True, "default_image_size": 0, "downsampling_ratio": 16,
                          "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0}),
        "image_config.default_image_size: Default image size must be greater than 0",
    ),
    (
        cfg(source_config={**GOOD_SOURCE, "world_size": 3}),
        "source_config.rank: missing while world_size is 3",
    ),
    (
        cfg(image_config={"crop_and_resize": True, "default_image_size": 64, "downsampling_ratio": 16,
                          "min_aspect_ratio": 2.0, "max_aspect_ratio": 1.0}),
        "image_config.min_aspect_ratio: Aspect ratio constraints are invalid",
    ),
    (
        cfg(image_config={"crop_and_resize": True, "default_image_size": 64, "downsampling_ratio": 128,
                          "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0}),
        "image_config.downsampling_ratio: 128 is larger than default_image_size (64)",
    ),
    (
        cfg(image_config={"crop_and_resize": True, "default_image_size": 16, "downsampling_ratio": 16,
                          "min_aspect_ratio": 0.5, "max_aspect_ratio": 0.6}),
        "image_config.default_image_size: no bucket fits",
    ),
    (cfg(image_config={"crop_and_resize": False, "default_image_size": "64"}), "image_config.default_image_size: expected"),
    (cfg(image_config={"crop_and_resize": False, "default_image_size": 64.0}), "image_config.default_image_size: expected"),
    (cfg(image_config={"crop_and_resize": False, "encode_format": "JPEG"}), "image_config.encode_format: unknown format 'JPEG'"),
    (cfg(image_config={"crop_and_resize": False, "encode_format": "webp"}), "image_config.encode_format: unknown format 'webp'"),
    (cfg(image_config={"crop_and_resize": False, "jpeg_quality": 256}), "image_config.jpeg_quality: 256 is out of range"),
    (cfg(image_config={"crop_and_resize": False, "mask_resample": "cubic"}), "image_config.mask_resample: unknown filter"),
    (cfg(image_config=[]), "image_config: expected an object or null"),
]


@pytest.mark.parametrize(("config", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_config_raises_config_error_naming_the_key(config: str, message: str) -> None:
    with pytest.raises(datago.ConfigError) as info:
        datago.DatagoClient(config)
    assert str(info.value).startswith(message), str(info.value)
    # Callers that catch ValueError (or DatagoError, or Exception) keep working.
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, datago.DatagoError)


@pytest.mark.parametrize("value", [5, b"{}", None, ["source_type"]])
def test_non_string_config_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="argument 'str_config'"):
        datago.DatagoClient(value)  # type: ignore[arg-type]


def test_a_mapping_config_is_accepted(tmp_path) -> None:
    with datago.DatagoClient({"source_type": "file", "source_config": {"root_path": str(tmp_path)}}) as client:
        assert client.get_sample() is None
    with pytest.raises(datago.ConfigError, match="source_config: missing"):
        datago.DatagoClient({"source_type": "file"})


def test_keyword_str_config_works(tmp_path) -> None:
    with datago.DatagoClient(str_config=file_config(tmp_path)) as client:
        assert client.get_sample() is None


def test_reference_configs_keep_working(tmp_path) -> None:
    # limit and samples_buffer_size were required by the reference; both are
    # optional now; world_size absent means 1; integers as floats for ratios.
    for config in [
        cfg(source_config={"root_path": str(tmp_path)}),
        json.dumps({"source_type": "file", "source_config": {"root_path": str(tmp_path)}}),
        cfg(source_config={"root_path": str(tmp_path), "rank": 0, "world_size": 1, "random_sampling": True}),
        cfg(source_config={"root_path": str(tmp_path)}, image_config=None),
        cfg(source_config={"root_path": str(tmp_path)},
            image_config={"crop_and_resize": True, "default_image_size": 64, "downsampling_ratio": 16,
                          "min_aspect_ratio": 1, "max_aspect_ratio": 2}),
        cfg(source_config={"root_path": str(tmp_path), "seed": 2**64 - 1}),
        cfg(source_config={"root_path": str(tmp_path)}, image_config={"crop_and_resize": False, "jpeg_quality": 0}),
    ]:
        with datago.DatagoClient(config) as client:
            assert client.get_sample() is None


def test_unknown_keys_log_one_warning(tmp_path, caplog) -> None:
    config = cfg(source_config={"root_path": str(tmp_path), "max_concurrency": 4}, prefetch_buffer_size=16, shiny=True)
    datago.DatagoClient(config).close()
    datago.logs.flush()
    warnings = [r for r in caplog.records if "unknown configuration keys" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert warnings[0].name == "datago.loader" and warnings[0].levelname == "WARNING"
    warnings = [warnings[0].getMessage()]
    assert "shiny" in warnings[0] and "source_config.max_concurrency" in warnings[0]
    assert "prefetch_buffer_size" not in warnings[0]


def test_a_mistyped_key_names_the_key_it_resembles(tmp_path, caplog) -> None:
    config = cfg(source_config={"root_path": str(tmp_path), "random_sampeling": True}, samples_bufer_size=4)
    datago.DatagoClient(config).close()
    datago.logs.flush()
    warning = next(r.getMessage() for r in caplog.records if "unknown configuration keys" in r.getMessage())
    assert "source_config.random_sampeling (did you mean `random_sampling`?)" in warning, warning
    assert "samples_bufer_size (did you mean `samples_buffer_size`?)" in warning, warning


def test_batches_without_crop_and_resize_say_why_they_hold_one_sample(tmp_path, caplog) -> None:
    datago.DatagoClient(cfg(source_config={"root_path": str(tmp_path)}, batch_size=8)).close()
    datago.logs.flush()
    assert any(
        "batch_size: image_config.crop_and_resize is not true" in r.getMessage() and "a single sample" in r.getMessage()
        for r in caplog.records
    ), caplog.text


def test_db_config_is_validated_at_construction(monkeypatch) -> None:
    with pytest.raises(datago.ConfigError, match="source_config.page_size: missing"):
        datago.DatagoClient(cfg(source_type="db", source_config={"url": "x", "sources": ""}))
    with pytest.raises(datago.ConfigError, match="source_config.page_size: 0 is outside 1 .. 2000"):
        datago.DatagoClient(json.dumps({"source_config": {"sources": "", "page_size": 0}}))
    with pytest.raises(datago.ConfigError, match="source_config.sources: missing"):
        datago.DatagoClient(json.dumps({"source_config": {"page_size": 10}}))
    with pytest.raises(datago.ConfigError, match="source_config.world_size: 49 is above 48"):
        datago.DatagoClient(json.dumps({"source_config": {"sources": "", "page_size": 10, "rank": 0, "world_size": 49}}))
    # The constructor does no I/O: the environment is read when a pass starts.
    monkeypatch.delenv("DATAROOM_API_URL", raising=False)
    monkeypatch.setenv("DATAROOM_API_KEY", "k" * 40)
    client = datago.DatagoClient(json.dumps({"source_config": {"sources": "", "page_size": 10}}))
    with pytest.raises(datago.SourceError, match="DATAROOM_API_URL is not set"):
        client.get_sample()
    monkeypatch.setenv("DATAROOM_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.delenv("DATAROOM_API_KEY")
    client = datago.DatagoClient(json.dumps({"source_config": {"sources": "", "page_size": 10}}))
    with pytest.raises(datago.SourceError, match="DATAROOM_API_KEY is not set"):
        client.get_sample()


def test_constructor_does_no_io(tmp_path) -> None:
    # A missing root is not a config error: it surfaces on the first read.
    client = datago.DatagoClient(file_config(tmp_path / "missing"))
    with pytest.raises(datago.SourceError, match="does not exist"):
        client.get_sample()
    assert client.get_sample() is None
    client.close()
