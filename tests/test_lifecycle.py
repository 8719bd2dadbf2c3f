"""Lifecycle, threading and memory (docs/compatibility.md §2): passes, stop from other threads,
zero-copy views freed exactly when the last reference goes, no leaks after a
close mid-stream, fork safety and Ctrl-C."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import datago
from support import drain, file_config, noise_image, run_python, wait_until


@pytest.fixture
def stalled_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-image root whose read stalls, as on a hung network filesystem:
    the library's test hook (DATAGO_TEST_STALL_PATH) holds the worker until
    `release(path)`. No real file can block a worker: FIFOs and devices
    are refused at open."""
    path = tmp_path / "stuck.jpg"
    noise_image(16, 16, "RGB", seed=0).save(path)
    monkeypatch.setenv("DATAGO_TEST_STALL_PATH", str(path))
    yield path
    release(path)


def worker_stalled(path: Path) -> bool:
    return Path(f"{path}.stalled").exists()


def release(path: Path) -> None:
    Path(f"{path}.release").touch()


def test_samples_and_views_are_freed_exactly_when_the_last_reference_goes(image_dir) -> None:
    root = image_dir(3)
    with datago.DatagoClient(file_config(root)) as client:
        samples = drain(client)
    base = datago.live_samples()
    assert base >= 3
    array = samples[0].image.to_numpy_array()
    tail = array[2:, 1:]  # a view of a view
    pil = samples[1].image.to_pil_image()
    del samples[0]
    gc.collect()
    assert datago.live_samples() == base, "the array keeps its sample alive"
    del array
    gc.collect()
    assert datago.live_samples() == base, "a slice of the array keeps the sample alive"
    expected = tail.copy()
    del tail
    gc.collect()
    assert datago.live_samples() == base - 1
    del samples[0]  # the second sample; its PIL image made its own copy (RGB)
    gc.collect()
    assert datago.live_samples() == base - 2
    assert pil.size == (24, 16) and expected.shape == (14, 23, 3)
    del samples
    gc.collect()
    assert datago.live_samples() == base - 3


def test_samples_outlive_their_client(image_dir) -> None:
    root = image_dir(4)
    client = datago.DatagoClient(file_config(root))
    first = client.get_sample()
    array = first.image.to_numpy_array()
    expected = array.copy()
    client.close()
    del client
    gc.collect()
    np.testing.assert_array_equal(array, expected)
    assert first.image.to_pil_image().size == (24, 16)


def test_passes_end_start_and_stop(image_dir) -> None:
    root = image_dir(3)
    client = datago.DatagoClient(file_config(root))
    assert len(drain(client)) == 3
    assert client.get_sample() is None and client.get_sample() is None, "no silent restart"
    client.start()
    second = drain(client)
    assert [s.epoch for s in second] == [1, 1, 1]
    client.start()
    client.start()  # a no-op while running: no duplicate pass
    assert len(drain(client)) == 3
    client.stop()
    client.stop()  # idempotent
    assert client.get_sample() is None
    client.close()
    client.close()
    with pytest.raises(datago.DatagoError, match="closed"):
        client.get_sample()


def test_stop_before_start_means_no_pass(image_dir) -> None:
    root = image_dir(2)
    client = datago.DatagoClient(file_config(root))
    client.stop()
    assert client.get_sample() is None
    client.start()
    assert client.get_sample() is not None
    client.close()


def test_stop_from_another_thread_wakes_a_blocked_reader(stalled_root: Path) -> None:
    client = datago.DatagoClient(file_config(stalled_root))
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(client.get_sample()))
    started = time.monotonic()
    reader.start()
    wait_until(lambda: worker_stalled(stalled_root), what="the worker to stall")
    client.stop()
    reader.join(timeout=5)
    assert not reader.is_alive() and result == [None]
    assert time.monotonic() - started < 3
    assert client.last_stop_reason == "stopped"
    # The worker is still stuck in its read: counted, not joined, not leaked.
    assert datago.live_cleanup_threads() == 1
    release(stalled_root)
    wait_until(lambda: datago.live_cleanup_threads() == 0, what="the stuck worker to finish")
    client.close()


def test_close_mid_stream_leaks_nothing_after_the_drain(image_dir) -> None:
    root = image_dir(60)
    before = datago.live_samples()
    client = datago.DatagoClient(file_config(root, num_threads=3, samples_buffer_size=8))
    kept = client.get_sample()
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0, "close returns promptly"
    wait_until(lambda: datago.live_cleanup_threads() == 0, what="drain")
    assert datago.live_samples() == before + 1  # only the sample we kept
    del kept
    gc.collect()
    assert datago.live_samples() == before


def test_concurrent_readers_get_each_sample_once(image_dir) -> None:
    root = image_dir(90)
    client = datago.DatagoClient(file_config(root, num_threads=2))
    seen: list[str] = []
    lock = threading.Lock()

    def read() -> None:
        while (sample := client.get_sample()) is not None:
            with lock:
                seen.append(sample.path)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=30)
    client.close()
    assert len(seen) == 90 and len(set(seen)) == 90


def test_the_gil_is_released_while_waiting(stalled_root: Path) -> None:
    client = datago.DatagoClient(file_config(stalled_root))
    counter = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    reader = threading.Thread(target=client.get_sample)
    reader.start()
    try:
        wait_until(lambda: worker_stalled(stalled_root), what="the worker to stall")
        wait_until(lambda: counter[0] > 100_000, what="the other thread to run while a reader waits")
    finally:
        stop.set()
        client.stop()
        reader.join(timeout=5)
        spinner.join(timeout=5)
    release(stalled_root)
    client.close()


def test_timeout_s_raises_and_names_the_item_it_waited_for(stalled_root: Path) -> None:
    client = datago.DatagoClient(file_config(stalled_root, timeout_s=0.3))
    started = time.monotonic()
    with pytest.raises(datago.SampleTimeoutError) as caught:
        client.get_sample()
    assert 0.25 < time.monotonic() - started < 3
    assert isinstance(caught.value, TimeoutError)
    assert f"item 0 of 1 of this pass, '{stalled_root}', being read and decoded by a worker" in str(caught.value)
    assert client.last_stop_reason == "timeout"
    release(stalled_root)
    # The next pass works once the file is readable again.
    client.start()
    assert client.get_sample() is not None
    client.close()


def test_ctrl_c_interrupts_a_blocked_get_sample(stalled_root: Path) -> None:
    code = f"""
        import datago, json, os, signal, threading, time
        client = datago.DatagoClient(json.dumps({{"source_type": "file", "source_config": {{"root_path": {str(stalled_root)!r}}}}}))
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        try:
            client.get_sample()
        except KeyboardInterrupt:
            print("interrupted after", round(time.monotonic() - started, 2))
        client.stop()
        open({str(stalled_root)!r} + ".release", "w").close()
        client.close()
    """
    result = run_python(code)
    assert "interrupted after" in result.stdout, result.stderr
    assert float(result.stdout.split()[-1]) < 1.5


def test_a_client_used_after_fork_raises_instead_of_deadlocking(image_dir) -> None:
    root = image_dir(3)
    code = f"""
        import datago, json, os
        client = datago.DatagoClient(json.dumps({{"source_type": "file", "source_config": {{"root_path": {str(root)!r}}}}}))
        assert client.get_sample() is not None
        pid = os.fork()
        if pid == 0:
            try:
                client.get_sample()
                os._exit(3)
            except datago.DatagoError as e:
                ok = str(os.getppid()) in str(e) and str(os.getpid()) in str(e)
                # A fresh client works in the child.
                fresh = datago.DatagoClient(json.dumps({{"source_type": "file", "source_config": {{"root_path": {str(root)!r}}}}}))
                n = sum(1 for _ in fresh)
                fresh.close()
                del client  # dropping the inherited handle must not abort
                os._exit(0 if ok and n == 3 else 4)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        client.close()
    """
    result = run_python(code)
    assert "child 0" in result.stdout, result.stdout + result.stderr
