"""--batching on is refused for the engines that batch by themselves (or not at all)."""

import pytest

from serving.config import ServeConfigError, parse_config


def test_batching_on_is_refused_for_engines_that_do_not_use_it(tmp_path):
    with pytest.raises(ServeConfigError, match="applies to --engine transformers; vllm batches by itself"):
        parse_config(["--model-dir", str(tmp_path), "--engine", "vllm", "--batching", "on"])
