"""Starting TensorBoard on localhost for a run, or alone for past runs; never touching one we did not start."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("train")


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.3)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def logdir_spec(workdir: Path) -> str:
    """logs/training plus lora/logs (the guide's location) when present."""
    dirs = [workdir / "logs" / "training", workdir / "lora" / "logs"]
    return ",".join(f"{d.parent.name}_{d.name}:{d}" for d in dirs if d.is_dir()) or str(dirs[0])


def _command(workdir: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "tensorboard.main", "--logdir_spec", logdir_spec(workdir), "--host", "127.0.0.1",
            "--port", str(port)]


def start(workdir: Path, port: int) -> subprocess.Popen | None:
    """TensorBoard on 127.0.0.1:port in the background; None when the port is taken (left alone)."""
    if port_in_use(port):
        log.info("TensorBoard: port %d is already in use (another TensorBoard?); leaving it alone.", port)
        return None
    command = _command(workdir, port)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log.info("TensorBoard: http://127.0.0.1:%d (--no-tensorboard to disable)", port)
    return process


def serve_only(workdir: Path, port: int) -> int:
    """`--tensorboard-only [PORT]`: serve past runs until Ctrl+C; returns an exit status."""
    if not (workdir / "logs" / "training").is_dir() and not (workdir / "lora" / "logs").is_dir():
        log.error("No training logs in %s/logs/training or %s/lora/logs: train first.", workdir, workdir)
        return 1
    if port_in_use(port):
        log.error("Port %d is in use; choose another: ./train.sh --tensorboard-only PORT", port)
        return 1
    print(f"TensorBoard for past runs: http://127.0.0.1:{port} (Ctrl+C to stop)", flush=True)
    command = _command(workdir, port)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0
