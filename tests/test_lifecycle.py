"""Lifecycle, threading and memory (spec §2): passes, stop from other threads,
zero-copy views freed exactly when the last reference goes, no leaks after a
close mid-stream, fork safety and Ctrl-C."""

from __future__ import annotations

import errno
import gc
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import datago
from support import drain, file_config, run_python, wait_until


def fifo_root(tmp_path: Path) -> Path:
    """A FIFO named like an image as root_path: the worker blocks in open()
    until someone writes, as on a hung network filesystem."""
    path = tmp_path / "stuck.jpg"
    os.mkfifo(path)
    return path


def worker_stuck_in_open() -> bool:
    """Whether one of our worker threads sleeps in open() on a FIFO."""
    for task in os.listdir("/proc/self/task"):
        try:
            comm = Path(f"/proc/self/task/{task}/comm").read_text().strip()
            wchan = Path(f"/proc/self/task/{task}/wchan").read_text().strip()
        except OSError:
            continue
        if comm.startswith("datago-w") and wchan == "wait_for_partner":
            return True
    return False


def unblock(fifo: Path) -> None:
    """Opens the FIFO for writing, which lets a worker blocked in open()
    return (it then reads nothing: a FIFO has size 0). Without a reader there
    is nothing to unblock: the non-blocking open fails with ENXIO."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENXIO:
            return
        raise
    os.close(fd)


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


def test_stop_from_another_thread_wakes_a_blocked_reader(tmp_path: Path) -> None:
    fifo = fifo_root(tmp_path)
    client = datago.DatagoClient(file_config(fifo))
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(client.get_sample()))
    started = time.monotonic()
    reader.start()
    wait_until(worker_stuck_in_open, what="the worker to block in open()")
    client.stop()
    reader.join(timeout=5)
    assert not reader.is_alive() and result == [None]
    assert time.monotonic() - started < 3
    assert client.last_stop_reason == "stopped"
    # The worker is still stuck in open(): counted, not joined, not leaked.
    assert datago.live_cleanup_threads() == 1
    unblock(fifo)
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


def test_the_gil_is_released_while_waiting(tmp_path: Path) -> None:
    fifo = fifo_root(tmp_path)
    client = datago.DatagoClient(file_config(fifo))
    counter = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    reader = threading.Thread(target=client.get_sample)
    reader.start()
    wait_until(worker_stuck_in_open, what="the worker to block in open()")
    wait_until(lambda: counter[0] > 100_000, what="the other thread to run while a reader waits")
    stop.set()
    client.stop()
    reader.join(timeout=5)
    spinner.join(timeout=5)
    unblock(fifo)
    client.close()


def test_timeout_s_returns_none_and_says_why(tmp_path: Path, caplog) -> None:
    fifo = fifo_root(tmp_path)
    client = datago.DatagoClient(file_config(fifo, timeout_s=0.3))
    started = time.monotonic()
    assert client.get_sample() is None
    assert 0.25 < time.monotonic() - started < 3
    assert client.last_stop_reason == "timeout"
    assert any("no sample arrived within" in r.message for r in caplog.records)
    unblock(fifo)
    client.close()


def test_ctrl_c_interrupts_a_blocked_get_sample(tmp_path: Path) -> None:
    fifo = fifo_root(tmp_path)
    code = f"""
        import datago, json, os, signal, threading, time
        client = datago.DatagoClient(json.dumps({{"source_type": "file", "source_config": {{"root_path": {str(fifo)!r}}}}}))
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        try:
            client.get_sample()
        except KeyboardInterrupt:
            print("interrupted after", round(time.monotonic() - started, 2))
        client.stop()
        try:
            os.close(os.open({str(fifo)!r}, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
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
