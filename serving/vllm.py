"""--engine vllm: hand the installed model (and its adapter) to `vllm serve`."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from .adapter import AdapterInfo
from .config import ServeConfig, ServeConfigError


def vllm_command(cfg: ServeConfig, adapter: AdapterInfo | None, executable: str = "vllm") -> list[str]:
    """The `vllm serve` command line for this configuration (adapter via --enable-lora)."""
    model_id = Path(cfg.model_dir).name
    command = [executable, "serve", str(Path(cfg.model_dir) / "model"), "--served-model-name", model_id,
               "--host", cfg.host, "--port", str(cfg.port), "--max-num-seqs", str(max(cfg.max_concurrency, 1))]
    if cfg.dtype and cfg.dtype != "auto":
        command += ["--dtype", cfg.dtype]
    if cfg.quantization in ("4bit", "8bit"):
        command += ["--quantization", "bitsandbytes"]
    if cfg.cpu_offload:
        command += ["--cpu-offload-gb", "8"]
    if cfg.model_info.get("trust_remote_code"):
        command.append("--trust-remote-code")
    if adapter is not None:
        command += ["--enable-lora", "--lora-modules", f"{model_id}:lora={adapter.path}",
                    "--max-lora-rank", str(adapter.rank)]
    return command


def exec_vllm(cfg: ServeConfig, adapter: AdapterInfo | None) -> int:
    """Replace this process with vLLM's server; ServeConfigError when vLLM or a GPU is missing."""
    if importlib.util.find_spec("vllm") is None:
        raise ServeConfigError("--engine vllm needs vLLM installed in this environment (pip install vllm); "
                               "the default --engine transformers needs nothing more.")
    import torch

    if not torch.cuda.is_available():
        raise ServeConfigError("--engine vllm needs a CUDA GPU; torch sees none. Use --engine transformers.")
    if cfg.chat:
        raise ServeConfigError("--chat works with --engine transformers only.")
    executable = shutil.which("vllm") or str(Path(sys.executable).with_name("vllm"))
    command = vllm_command(cfg, adapter, executable)
    if cfg.api_key:
        os.environ["VLLM_API_KEY"] = cfg.api_key  # not on the command line, where `ps` would show it
    print("Starting vLLM: " + " ".join(command), flush=True)
    os.execv(command[0], command)
    return 0
