"""TensorBoard on localhost for a run, or alone for past runs; it never outlives the process that started it.

The TensorBoard process starts in this module (`_child_main`, given the parent's PID), which ties its
life to the training process before running TensorBoard in-process: on Linux a parent-death signal
(prctl PR_SET_PDEATHSIG), everywhere a watchdog thread that ends it once the parent is gone. So a run
killed with kill -9 frees its port within a second.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("train")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
TENSORBOARD_MODULE = "tensorboard.main"
PORTS_TRIED = 20  # a busy port: the next free one among the following PORTS_TRIED is used
WATCH_INTERVAL = 0.5  # seconds between the watchdog's looks at the parent
EXIT_GRACE = 5.0  # seconds TensorBoard gets to exit on SIGTERM before the watchdog ends it hard
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def port_in_use(port: int) -> bool:
    """Whether something listens on, or holds, 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.3)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if os.name != "nt":  # as TensorBoard's server does; on Windows the option would steal a busy port
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port_after(port: int) -> int | None:
    """The first free port among the PORTS_TRIED after `port`, None when all are taken."""
    return next((p for p in range(port + 1, min(port + 1 + PORTS_TRIED, 65536)) if not port_in_use(p)), None)


def logdir_spec(workdir: Path) -> str:
    """logs/training plus lora/logs (the guide's location) when present."""
    dirs = [workdir / "logs" / "training", workdir / "lora" / "logs"]
    return ",".join(f"{d.parent.name}_{d.name}:{d}" for d in dirs if d.is_dir()) or str(dirs[0])


def _spawn(workdir: Path, port: int, **streams) -> subprocess.Popen:
    # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so it is only asked for from the
    # main thread, whose end is the process's end; the watchdog covers every other case.
    main_thread = threading.current_thread() is threading.main_thread()
    # sys.path[0] is the package root, not the working directory, whose files could shadow any module.
    bootstrap = f"import sys; sys.path[0] = {str(PACKAGE_ROOT)!r}; from {__name__} import _child_main; _child_main()"
    command = [sys.executable, "-c", bootstrap, "--parent", str(os.getpid()), "--module", TENSORBOARD_MODULE,
               *(["--death-signal"] if main_thread else []), "--",
               "--logdir_spec", logdir_spec(workdir), "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, **streams)


def start(workdir: Path, port: int) -> subprocess.Popen | None:
    """TensorBoard on 127.0.0.1:port (the next free port when it is busy) in the background, for as long as this
    process lives; None when TensorBoard is not installed or no port is free. Its output goes to logs/tensorboard.log."""
    if importlib.util.find_spec(TENSORBOARD_MODULE.partition(".")[0]) is None:
        log.warning("TensorBoard is not installed; training without it (pip install tensorboard).")
        return None
    chosen = port
    if port_in_use(port):
        chosen = free_port_after(port)
        if chosen is None:
            log.warning("TensorBoard: port %d and the %d after it are in use; training without TensorBoard "
                        "(--tensorboard-port PORT to choose one).", port, PORTS_TRIED)
            return None
        log.warning("TensorBoard: port %d is in use (another TensorBoard or program); using port %d instead.",
                    port, chosen)
    output = workdir / "logs" / "tensorboard.log"
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("wb") as sink:
        process = _spawn(workdir, chosen, stdout=sink, stderr=subprocess.STDOUT)
    log.info("TensorBoard: http://127.0.0.1:%d (--no-tensorboard to disable; its output: %s)", chosen, output)
    return process


def serve_only(workdir: Path, port: int) -> int:
    """`--tensorboard-only [PORT]`: serve past runs until Ctrl+C; returns an exit status. A busy port is refused
    (the user asked for that one), naming a free one to use instead."""
    if not (workdir / "logs" / "training").is_dir() and not (workdir / "lora" / "logs").is_dir():
        log.error("No training logs in %s/logs/training or %s/lora/logs: train first.", workdir, workdir)
        return 1
    if port_in_use(port):
        other = free_port_after(port)
        log.error("Port %d is in use (another TensorBoard or program); choose another: ./train.sh --tensorboard-only "
                  "%s", port, other if other is not None else "PORT")
        return 1
    print(f"TensorBoard for past runs: http://127.0.0.1:{port} (Ctrl+C to stop)", flush=True)
    process = _spawn(workdir, port)
    try:
        return process.wait()
    except KeyboardInterrupt:  # a Ctrl+C reached TensorBoard too, a SIGINT sent to this process alone did not
        process.terminate()
        try:
            process.wait(timeout=EXIT_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
        return 0


def _end_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # TensorBoard exits cleanly on SIGTERM (and stops its data server)
    time.sleep(EXIT_GRACE)
    os._exit(1)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL)
    _end_self()


def _tie_to_parent(parent: int, death_signal: bool) -> None:
    """End this process when `parent` ends: a parent-death signal on Linux, a watchdog thread everywhere."""
    if death_signal and sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(0)
    threading.Thread(target=_watch, args=(parent,), name="parent-watchdog", daemon=True).start()


def _child_main(argv: list[str] | None = None) -> None:
    """The TensorBoard process: tie it to its parent, then run TensorBoard in it."""
    parser = argparse.ArgumentParser(prog="tensorboard_server", description="TensorBoard tied to a parent process.")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--module", default=TENSORBOARD_MODULE)
    parser.add_argument("--death-signal", action="store_true")
    parser.add_argument("tensorboard_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    _tie_to_parent(args.parent, args.death_signal)
    import runpy

    rest = args.tensorboard_args
    sys.argv = [args.module, *(rest[1:] if rest[:1] == ["--"] else rest)]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)

