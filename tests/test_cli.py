"""`python -m datago bench`: results, progress, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from support import noise_image


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "datago", "bench", *args], capture_output=True, text=True,
                          timeout=300, cwd=tempfile.gettempdir())


def test_bench_on_a_generated_corpus_prints_the_table() -> None:
    result = bench("--count", "24", "--no-progress")
    assert result.returncode == 0, result.stderr
    for row in ("samples per pass", "images / s", "CPU ms / image", "time to first sample", "stage decode"):
        assert row in result.stdout
    assert "24" in result.stdout.splitlines()[0]


def test_bench_json_on_a_folder_with_buckets(tmp_path: Path) -> None:
    for i in range(6):
        noise_image(80, 60, "RGB", i).save(tmp_path / f"{i}.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"x")
    result = bench(str(tmp_path), "--json", "--crop-and-resize", "--image-size", "64", "--passes", "1")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["samples_per_pass"] == 6 and data["failed"] == 1 and data["errors"] == {"not_image": 1}
    assert data["img_per_s"] > 0 and data["cpu_ms_per_img"] > 0


def test_bench_reads_webdataset_shards(tmp_path: Path) -> None:
    from shard_server import make_shards

    make_shards(tmp_path, 2, 3)
    result = bench("--source", "webdataset", str(tmp_path / "shard-{000..001}.tar"), "--json", "--passes", "1")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["samples_per_pass"] == 6 and data["failed"] == 0
    assert bench("--source", "webdataset").returncode == 2


def test_bench_exit_codes() -> None:
    missing = bench("/nonexistent/datago/folder")
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
    bad = bench("--count", "2", "--crop-and-resize", "--image-size", "8", "--downsampling-ratio", "16")
    assert bad.returncode == 2 and "bad configuration: image_config.downsampling_ratio" in bad.stderr


def test_bench_help_explains_every_flag() -> None:
    result = subprocess.run([sys.executable, "-m", "datago", "bench", "--help"], capture_output=True, text=True, timeout=60,
                            cwd=tempfile.gettempdir())
    assert result.returncode == 0
    for flag in ("--limit", "--threads", "--crop-and-resize", "--image-size", "--downsampling-ratio", "--rgb8",
                 "--pre-encode", "--seed", "--no-progress", "--json", "--passes", "--count"):
        assert flag in result.stdout
