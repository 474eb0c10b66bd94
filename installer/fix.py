"""`fix`: repair what an installed model directory needs to train and serve.

Always: re-render the wrappers and verify the install is complete. With --fix-cuda: check that
torch sees the GPU and that bitsandbytes (QLoRA, 8-bit, the *_bnb_8bit optimizers) loads its CUDA
library, and reinstall bitsandbytes into this environment when it does not.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from core.errors import UserError
from core.model_dir import ModelDir, check_info
from installer.render import render_wrappers


class FixError(UserError, RuntimeError):
    """Something `fix` cannot repair by itself; the message says what to do."""


def fix_model_dir(model: ModelDir, echo: Callable[[str], None]) -> None:
    """Re-render train.sh/start.sh; FixError when the install itself is incomplete."""
    info = model.read_info()
    if not info or not info.get("complete"):
        raise FixError(f"{model.root} is not a complete install; run `llm-installer install` again to resume it.")
    render_wrappers(model, check_info(info, model.info_path))
    echo(f"Wrappers of {model.root.name} re-rendered; install is complete.")


def _bitsandbytes_works() -> str | None:
    """None when bitsandbytes can run an 8-bit optimizer step on the GPU, else the reason it cannot."""
    probe = ("import torch, bitsandbytes as bnb\n"
             "p = torch.nn.Parameter(torch.ones(64, device='cuda'))\n"
             "p.grad = torch.ones_like(p)\n"
             "bnb.optim.AdamW8bit([p]).step()\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if result.returncode == 0:
        return None
    lines = [line for line in (result.stderr or result.stdout).strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def fix_cuda(echo: Callable[[str], None]) -> None:
    """Make bitsandbytes work with this environment's CUDA torch, or say why it cannot."""
    import torch

    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else " (a CPU-only build)")
        raise FixError(f"{build} sees no CUDA GPU, so QLoRA, --use-8bit and the 8-bit optimizers cannot run here; "
                       "on a GPU machine install a CUDA torch (LLM_INSTALLER_TORCH='torch' ./llm-installer setup).")
    echo(f"torch {torch.__version__} with CUDA {torch.version.cuda} sees {torch.cuda.get_device_name(0)}.")
    problem = _bitsandbytes_works()
    if problem is None:
        echo("bitsandbytes works with this GPU: nothing to fix.")
        return
    echo(f"bitsandbytes does not work ({problem}); reinstalling it for this environment.")
    subprocess.run([sys.executable, "-m", "pip", "install", "--upgrade", "--force-reinstall", "--no-deps",
                    "bitsandbytes"], check=False)
    problem = _bitsandbytes_works()
    if problem is not None:
        raise FixError(f"bitsandbytes still fails after reinstalling ({problem}); check that the NVIDIA driver "
                       "supports this torch's CUDA version (llm-installer doctor).")
    echo("bitsandbytes now works.")
