"""Nothing disappears without a trace: listing entries that are not readable
files are counted and logged, a file that turns into a FIFO fails instead of
stalling, a pass never ends silently on a timeout, ids stay unique for names
that are not UTF-8, and log lines survive a prompt exit without crashing it."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import socket
from pathlib import Path

import pytest
from PIL import Image

import datago
from support import drain, file_config, noise_image, run_python


def good_images(root: Path, count: int) -> list[str]:
    names = [f"good{i:02d}.png" for i in range(count)]
    for i, name in enumerate(names):
        noise_image(8, 8, "RGB", seed=i).save(root / name)
    return names


def odd_entries(root: Path) -> socket.socket:
    """Six entries named like images that are not readable files; returns
    the listening socket (close it when done)."""
    (root / "broken.jpg").symlink_to(root / "missing.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    (root / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(root / "fifo.png")
    (root / "y.png").mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(root / "sock.jpg"))
    return server


ODD_NAMES = ("broken.jpg", "loop.jpg", "zero.jpg", "fifo.png", "y.png", "sock.jpg")


def test_entries_that_are_not_files_are_counted_and_logged(tmp_path: Path, caplog) -> None:
    root = tmp_path / "odd"
    root.mkdir()
    names = good_images(root, 3)
    server = odd_entries(root)
    try:
        with caplog.at_level(logging.DEBUG, logger="datago"), datago.DatagoClient(file_config(root)) as client:
            samples = drain(client)
            stats = client.stats()
            datago.logs.flush()
    finally:
        server.close()
    assert sorted(os.path.basename(s.path) for s in samples) == names
    assert stats["skipped"] == {
        "directory": 1, "broken_link": 1, "link_loop": 1, "special_file": 3,
        "unreadable": 0, "too_long": 0, "unreadable_folder": 0,
    }
    assert stats["failed"] == 0 and stats["listed"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "datago.files" and r.levelno == logging.WARNING]
    assert any("skipped 6 entries" in w and "3 special_file" in w and "1 link_loop" in w for w in warnings), warnings


def test_initialize_logging_debug_shows_each_skipped_entry(tmp_path: Path) -> None:
    root = tmp_path / "dbg"
    root.mkdir()
    good_images(root, 2)
    server = odd_entries(root)
    code = f"""
        import json, datago
        datago.initialize_logging("debug")
        with datago.DatagoClient(json.dumps({{"source_type": "file", "source_config": {{"root_path": {str(root)!r}}}}})) as c:
            list(c)
    """
    try:
        result = run_python(code)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert "INFO datago.files] listed 2 files" in result.stderr, result.stderr
    for name in ODD_NAMES:
        assert f"DEBUG datago.files] listing: skipped '{root}/{name}'" in result.stderr, (name, result.stderr)


def test_a_file_replaced_by_a_fifo_after_listing_fails_instead_of_blocking(tmp_path: Path) -> None:
    root = tmp_path / "fifo"
    root.mkdir()
    names = good_images(root, 10)
    # One item in flight at a time: the last file is read long after the
    # listing, when it has become a FIFO with no writer.
    with datago.DatagoClient(file_config(root, samples_buffer_size=1, num_threads=1, timeout_s=30)) as client:
        first = client.get_sample()
        assert first is not None
        last = root / names[-1]
        last.unlink()
        os.mkfifo(last)
        rest = drain(client)
        stats = client.stats()
    assert len(rest) == 8
    assert stats["errors"]["io"] == 1 and stats["failed"] == 1
    assert datago.live_cleanup_threads() == 0


def test_a_timeout_raises_naming_what_it_waited_for(tmp_path: Path) -> None:
    root = tmp_path / "slow"
    root.mkdir()
    # Decoding 64 megapixels takes far longer than the 1 ms allowed.
    Image.new("RGB", (8000, 8000), (10, 200, 30)).save(root / "big.jpg", quality=50)
    with datago.DatagoClient(file_config(root, timeout_s=0.001)) as client:
        with pytest.raises(datago.SampleTimeoutError, match=r"no sample within timeout_s=0\.001 s while waiting for") as caught:
            client.get_sample()
        assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, datago.SourceError)
        message = str(caught.value)
        assert "the preparation (listing) of" in message or f"'{root}/big.jpg'" in message, message
        assert client.last_stop_reason == "timeout"


def test_ids_stay_unique_and_lossless_for_names_that_are_not_utf8(tmp_path: Path) -> None:
    root = tmp_path / "bytes"
    root.mkdir()
    raw_names = [b"\xff.jpg", b"\xfe.jpg", b"\xc3.jpg", "é.jpg".encode(), b"plain.jpg"]
    for i, raw in enumerate(raw_names):
        noise_image(8, 8, "RGB", seed=i).save(os.path.join(os.fsencode(root), raw), format="JPEG")
    with datago.DatagoClient(file_config(root)) as client:
        samples = drain(client)
    ids = [s.id for s in samples]
    assert len(set(ids)) == len(raw_names)
    for sample in samples:
        # The id is JSON text that names the file exactly, and reopens it.
        assert os.fsencode(json.loads(sample.id)) == os.fsencode(sample.path)
        assert Path(json.loads(sample.id)).is_file()
        sample.id.encode("utf-8")  # printable and storable as UTF-8
    assert json.dumps(str(root / "é.jpg"), ensure_ascii=False) in ids  # UTF-8 names keep the reference's id


EXIT_CODE = """
    import json, logging, sys
    import datago
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("datago")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    datago.initialize_logging(log_level="info")
    config = {"source_type": "file", "source_config": {"root_path": ROOT}, "num_threads": 2}
    client = datago.DatagoClient(json.dumps(config))
    delivered = sum(1 for _ in client)
    print(f"delivered {delivered}", flush=True)
"""


def test_prompt_exits_with_the_logging_bridge_are_clean_and_lose_no_line(tmp_path: Path) -> None:
    root = tmp_path / "exit"
    root.mkdir()
    good_images(root, 4)
    for i in range(36):
        (root / f"bad{i:02d}.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    code = EXIT_CODE.replace("ROOT", repr(str(root)))
    runs = 24
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: run_python(code, timeout=120), range(runs)))
    for result in results:
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        assert "delivered 4" in result.stdout
        failures = [line for line in result.stdout.splitlines() if "Failed to load image from path" in line]
        assert len(failures) == 36, result.stdout[-3000:]
