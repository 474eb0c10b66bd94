"""Helpers of bench/gpu_check.py, the one-shot GPU check (bench/GPU_CHECK.md).

- model.py: the two model shapes, their configs, random safetensors weights, the FLOP count behind MFU;
- data.py: the synthetic instruction dataset and its tokenizer;
- report.py: the one markdown table;
- build.py, engine_probe.py, trainer_probe.py, serve_probe.py: the scripts each part of the check runs in its own
  process (so a crash, an out-of-memory or a timeout ends that part only).
"""
