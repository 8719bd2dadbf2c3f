"""client.stats() against known corpora, and native logs in Python's logging
(docs/compatibility.md §8: levels, RUST_LOG, initialize_logging's return values)."""

from __future__ import annotations

import logging
from pathlib import Path

import datago
from support import drain, file_config, noise_image, run_python


def corpus(root: Path) -> Path:
    root.mkdir()
    for i in range(10):
        noise_image(32, 24, "RGB", i).save(root / f"good{i}.jpg", quality=90)
    for i in range(3):
        (root / f"undecodable{i}.png").write_bytes(b"this is text, not an image")
    (root / "empty.jpg").write_bytes(b"")
    good = (root / "good0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) * 2 // 3])
    noise_image(300, 300, "RGB", 0).save(root / "huge.png")
    return root


def test_stats_count_each_cause_exactly(tmp_path: Path) -> None:
    root = corpus(tmp_path / "c")
    with datago.DatagoClient(file_config(root, max_pixels=50_000, num_threads=2)) as client:
        assert client.stats() == {"seed": None}
        samples = drain(client)
        stats = client.stats()
    assert len(samples) == 10
    assert stats["delivered"] == 10 and stats["attempted"] == 16 and stats["failed"] == 6
    assert stats["errors"]["not_image"] == 3
    assert stats["errors"]["empty"] == 1
    assert stats["errors"]["truncated"] == 1
    assert stats["errors"]["too_large"] == 1
    assert sum(stats["errors"].values()) == 6
    assert stats["listed"] == 16 and stats["planned"] == 16 and stats["threads"] == 2
    assert stats["bytes_delivered"] == 10 * 32 * 24 * 3
    assert stats["stages"]["decode"]["count"] == 16  # failed decodes count too
    assert stats["stages"]["read"]["count"] == 16
    assert 0 < stats["stages"]["decode"]["p50_ms"] <= stats["stages"]["decode"]["p99_ms"]
    assert stats["consumer_wait"]["count"] == 10
    assert stats["queues"]["ready_capacity"] == 64 and stats["running"] is False


def test_thread_count_comes_from_config_then_env(tmp_path: Path) -> None:
    root = corpus(tmp_path / "c")
    code = f"""
        import datago, json, os
        def threads(extra):
            with datago.DatagoClient(json.dumps({{"source_type": "file", "source_config": {{"root_path": {str(root)!r}}}, **extra}})) as c:
                c.get_sample()
                return c.stats()["threads"]
        os.environ["DATAGO_MAX_TASKS"] = "3"
        a = threads({{}})
        b = threads({{"num_threads": 5}})
        os.environ["DATAGO_MAX_TASKS"] = "0"
        c = threads({{}})
        d = threads({{"limit": 1, "num_threads": 4}})
        del os.environ["DATAGO_MAX_TASKS"]
        e = threads({{}})
        print(a, b, c, d, e == len(os.sched_getaffinity(0)))
    """
    result = run_python(code)
    assert result.stdout.split() == ["3", "5", "1", "1", "True"], result.stderr


def test_native_errors_reach_python_logging(tmp_path: Path, caplog) -> None:
    root = corpus(tmp_path / "c")
    with caplog.at_level(logging.DEBUG, logger="datago"), datago.DatagoClient(file_config(root)) as client:
        drain(client)
        datago.logs.flush()
    failures = [r for r in caplog.records if r.name == "datago.files" and r.levelno == logging.ERROR]
    assert len(failures) == 5  # too_large is not over max_pixels here: 5 broken files
    assert all(r.getMessage().startswith(f"Failed to load image from path {root}/") for r in failures)
    summary = [r for r in caplog.records if r.name == "datago.pipeline" and r.levelno == logging.WARNING]
    assert any("5 of 16 files failed" in r.getMessage() for r in summary)


def test_initialize_logging_rules() -> None:
    code = """
        import datago
        try:
            datago.initialize_logging("nonsense")
        except ValueError as e:
            print("ValueError", "expected error, warn" in str(e))
        try:
            datago.initialize_logging(5)
        except TypeError as e:
            print("TypeError", "argument 'log_level'" in str(e))
        print(datago.initialize_logging("info"), datago.initialize_logging("debug"), datago.initialize_logging())
    """
    result = run_python(code)
    assert result.stdout.split() == ["ValueError", "True", "TypeError", "True", "True", "False", "False"], result.stderr


def test_rust_log_wins_over_the_level_argument(tmp_path: Path) -> None:
    root = corpus(tmp_path / "c")
    code = f"""
        import datago, json, logging, os
        logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
        os.environ["RUST_LOG"] = "error"
        datago.initialize_logging("debug")
        with datago.DatagoClient(json.dumps({{"source_type": "file", "source_config": {{"root_path": {str(root)!r}}}}})) as c:
            list(c)
        datago.logs.flush()
    """
    result = run_python(code)
    lines = [line for line in result.stderr.splitlines() if line.startswith("datago.")]
    assert lines and all(" ERROR " in line for line in lines), result.stderr


def test_periodic_progress_lines(tmp_path: Path) -> None:
    root = corpus(tmp_path / "c")
    code = f"""
        import datago, json, logging
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
        datago.initialize_logging("info")
        cfg = {{"source_type": "file", "source_config": {{"root_path": {str(root)!r}}}, "log_interval_s": 0.000001}}
        with datago.DatagoClient(json.dumps(cfg)) as c:
            list(c)
        datago.logs.flush()
    """
    result = run_python(code)
    progress = [line for line in result.stderr.splitlines() if "samples delivered (" in line]
    assert progress and "datago.pipeline INFO pass 0:" in progress[-1], result.stderr
    assert "img/s" in progress[-1] and "failed (most frequent: not_image)" in progress[-1]


def test_collect_stats_false_keeps_counters_but_no_timings(tmp_path: Path) -> None:
    root = corpus(tmp_path / "c")
    with datago.DatagoClient(file_config(root, collect_stats=False)) as client:
        drain(client)
        stats = client.stats()
    assert stats["delivered"] == 11 and stats["errors"]["not_image"] == 3  # huge.png fits max_pixels here
    assert all(stage["count"] == 0 for stage in stats["stages"].values())
    assert stats["consumer_wait"]["count"] == 0
