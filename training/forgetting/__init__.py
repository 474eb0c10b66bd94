"""Keeping what the model knew: a general-knowledge reference built offline for any model (the base model's own
greedy answers to shipped general prompts), watched during training as a second signal beside the validation
loss, a stop rule when it degrades past --max-forgetting, and replay of general examples (--replay).

- `reference`: the prompts, building the reference and its cache in the model directory, its base loss;
- `watch`: the reference's loss on the model being trained, evaluated like validation (every process a share);
- `setup`: what a run does with it (built or read once, shared between processes, replay mixed in);
- `report`: the kept adapter in one line, adapter_info.json's `forgetting` section and the report's lines.

The stop rule itself is auto-stop's (training/autostop.py), beside the other rules.
"""
