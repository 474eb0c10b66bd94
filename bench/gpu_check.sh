#!/usr/bin/env bash
# One-shot GPU check (bench/GPU_CHECK.md): our LoRA engine vs transformers.Trainer + PEFT (tokens/s, peak memory,
# MFU) on Llama-3-8B and SmolLM2-135M shapes with random weights, Liger's fused loss, QLoRA nf4, and the server's
# continuous batching (8 clients vs 1), as ONE markdown table in $OUT/gpu_check.md (else ./gpu_check.md).
# The logic is bench/gpu_check.py; this wrapper only picks the python.
#
# 1. Here, on a machine with network (once; .whl/ is ignored by git, ~45 MiB):
#        bash bench/gpu_check.sh --fetch-wheels      # .whl/gpu_check/{bnb,liger,serve}/*.whl
#        bash bench/gpu_check.sh --dry-run           # the plan, and the size of what travels (limit 64 MiB)
# 2. The device tool, one call (the check keeps itself under 9 minutes; the call's limit leaves a minute):
#        run  command:   PYTHONUNBUFFERED=1 bash bench/gpu_check.sh
#             carry:     [".whl/gpu_check"]
#             timeout_s: 600
#    The table, gpu_check.json (every measurement) and gpu_check.log (each part's output) come back from $OUT.
#    If what travels exceeds 64 MiB, two calls instead:
#        command "PYTHONUNBUFFERED=1 bash bench/gpu_check.sh --parts smol,serve,lora8b,liger8b"
#            carry [".whl/gpu_check/serve", ".whl/gpu_check/liger"], timeout_s 600
#        command "PYTHONUNBUFFERED=1 bash bench/gpu_check.sh --parts qlora8b"
#            carry [".whl/gpu_check/bnb"], timeout_s 420
#
# Without an NVIDIA GPU it refuses in one sentence (exit status 2); --dry-run and --fetch-wheels work anywhere.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -x "$root/.venv/bin/python" ]; then
    python="$root/.venv/bin/python"
elif command -v python3 >/dev/null 2>&1; then
    python="python3"
else
    echo "gpu_check: needs python3 with PyTorch (none found; set PYTHON=/path/to/python)." >&2
    exit 2
fi
exec "$python" "$here/gpu_check.py" "$@"
