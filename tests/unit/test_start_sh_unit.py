"""What start.sh hands vLLM without starting it: a --max-lora-rank vLLM accepts, and ranks it cannot serve refused."""

import pytest


@pytest.mark.parametrize(("ranks", "expected"), [([8], 8), ([4], 8), ([9, 16], 16), ([33], 64), ([300], 320),
                                                 ([512], 512)])
def test_vllm_max_lora_rank_is_one_vllm_accepts(ranks, expected):
    from serving.engines.vllm_engine import max_lora_rank

    assert max_lora_rank(ranks) == expected


def test_vllm_refuses_ranks_above_512():
    from serving.config import ServeConfigError
    from serving.engines.vllm_engine import max_lora_rank

    with pytest.raises(ServeConfigError, match="up to 512"):
        max_lora_rank([1024])
