#!/usr/bin/env python3
"""Entry of the shared training engine: `train.sh` runs this with the installed model's directory.

    python train_lora.py --model-dir ~/LLM/models/NAME --data data.json [--mode fast] [--circular]
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, train, and turn user mistakes into one clear line and a non-zero status."""
    from installer.errors import UserError
    from training.config import ConfigError, parse_config

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("httpx", "transformers", "peft", "datasets", "urllib3", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # peft still calls a transformers property renamed in v5; the warning is not the user's business.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    from training.run import run

    try:
        return run(config)
    except UserError as exc:
        if os.environ.get("LLM_INSTALLER_DEBUG"):
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Aborted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
