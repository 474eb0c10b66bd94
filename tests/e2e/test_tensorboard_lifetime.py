"""TensorBoard lives no longer than the training process that started it (kill -9 included), and a busy port
moves training to the next free port."""

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from conftest import ROOT

from training import tensorboard_server

# A stand-in for train_lora.py: starts TensorBoard the way training/run.py does, then trains "forever".
TRAINING = textwrap.dedent("""
    import logging, sys, threading, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from training import tensorboard_server
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    started = []
    def start():
        started.append(tensorboard_server.start(Path(sys.argv[2]), int(sys.argv[3])))
    if sys.argv[4] == "thread":  # started from a thread that ends at once: the watchdog alone must hold
        worker = threading.Thread(target=start)
        worker.start()
        worker.join()
    else:
        start()
    print("TENSORBOARD", started[0].pid, flush=True)
    time.sleep(600)
""")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_until(condition, seconds: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"{what} after {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_tensorboard_dies_with_a_killed_run_and_frees_its_port(tmp_path, started_from):
    script = tmp_path / "training.py"
    script.write_text(TRAINING)
    (tmp_path / "logs" / "training").mkdir(parents=True)
    port = _free_port()
    run = subprocess.Popen([sys.executable, str(script), str(ROOT), str(tmp_path), str(port), started_from],
                           stdout=subprocess.PIPE, text=True)
    try:
        lines = [run.stdout.readline() for _ in range(2)]
        assert f"TensorBoard: http://127.0.0.1:{port}" in lines[0], lines
        board = psutil.Process(int(lines[1].split()[1]))
        _wait_until(lambda: tensorboard_server.port_in_use(port), 60, "TensorBoard never opened its port")
        family = [board, *board.children(recursive=True)]  # its data server included
        time.sleep(1.5)  # the run outlives the thread that started TensorBoard: it must still be there
        assert not _gone(board.pid)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        took = _wait_until(lambda: all(_gone(p.pid) for p in family), 8, "TensorBoard outlived the run")
        _wait_until(lambda: not tensorboard_server.port_in_use(port), 3, "the port stayed taken")
        assert took < 8
    finally:
        run.kill()
        run.wait()
    assert "caught SIGTERM" in (tmp_path / "logs" / "tensorboard.log").read_text()


def test_a_busy_port_moves_the_run_to_the_next_free_one(tmp_path, caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.INFO, logger="train"):
            board = tensorboard_server.start(tmp_path, port)
        try:
            chosen = tensorboard_server.free_port_after(port)
            assert board is not None and f"--port {chosen}" in " ".join(board.args)
            assert f"port {port} is in use (another TensorBoard or program); using port {chosen} instead" in caplog.text
        finally:
            board.terminate()
            board.wait(timeout=30)
