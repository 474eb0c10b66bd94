"""--engine vllm: hand the installed model (and its adapter) to `vllm serve`, which replaces this process; no engine
is loaded here (serving/engines/registry.py lists it as a hand-off)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from serving.engines.base import ServeConfigError, ServeSettings
from serving.router import Router

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the only --max-lora-rank values vLLM accepts


def max_lora_rank(ranks: list[int]) -> int:
    """The smallest rank vLLM accepts that holds every adapter's rank."""
    needed = max(ranks)
    for allowed in VLLM_LORA_RANKS:
        if allowed >= needed:
            return allowed
    raise ServeConfigError(f"An adapter has LoRA rank {needed}; vLLM serves ranks up to {VLLM_LORA_RANKS[-1]}. "
                           "Use --engine transformers.")


def vllm_origins(cfg: ServeSettings) -> str:
    """vLLM's --allowed-origins (a JSON list of exact origins; vLLM's own default is every origin): the origins
    --allowed-origins gives, or this server's own loopback origins; ServeConfigError for a wildcard pattern,
    which vLLM cannot match."""
    given = [item.strip().rstrip("/") for item in (cfg.allowed_origins or "").split(",") if item.strip()]
    patterns = [item for item in given if "*" in item and item != "*"]
    if patterns:
        raise ServeConfigError(f"--allowed-origins {patterns[0]}: vLLM matches exact origins only (or *); list each "
                               "origin with --engine vllm.")
    if not given:
        given = [f"http://{host}:{cfg.port}" for host in ("localhost", "127.0.0.1")]
    return json.dumps(given)


def vllm_command(cfg: ServeSettings, router: Router, executable: str = "vllm") -> list[str]:
    """The `vllm serve` command line for this configuration: every adapter under its model id (--lora-modules)."""
    model_id = Path(cfg.model_dir).name
    command = [executable, "serve", str(Path(cfg.model_dir) / "model"), "--served-model-name", model_id,
               "--host", cfg.host, "--port", str(cfg.port), "--allowed-origins", vllm_origins(cfg)]
    if cfg.max_concurrency:  # else vLLM's own default (it batches hundreds of sequences)
        command += ["--max-num-seqs", str(cfg.max_concurrency)]
    if cfg.dtype and cfg.dtype != "auto":
        command += ["--dtype", cfg.dtype]
    if cfg.quantization in ("4bit", "8bit"):
        command += ["--quantization", "bitsandbytes"]
    if cfg.cpu_offload:
        command += ["--cpu-offload-gb", "8"]
    if cfg.model_info.get("trust_remote_code"):
        command.append("--trust-remote-code")
    adapters = router.adapters
    if adapters:
        command += ["--enable-lora", "--max-loras", str(len(adapters)),
                    "--max-lora-rank", str(max_lora_rank([route.adapter.rank for route in adapters])),
                    "--lora-modules", *(f"{route.model_id}={route.adapter.path}" for route in adapters)]
    return command


def exec_vllm(cfg: ServeSettings, router: Router) -> int:
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
    command = vllm_command(cfg, router, executable)
    if cfg.api_key:
        os.environ["VLLM_API_KEY"] = cfg.api_key  # not on the command line, where `ps` would show it
    print("Starting vLLM: " + " ".join(command), flush=True)
    os.execv(command[0], command)
    return 0
