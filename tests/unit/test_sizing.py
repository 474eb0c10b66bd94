"""Automatic batch size from the model's shape, the row length and the memory left."""

import pytest

from training.sizing import MAX_ROWS, activation_bytes_per_token, auto_batch_rows

LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256}
GIB = 1024 ** 3


def test_checkpointing_and_half_precision_shrink_activations():
    full = activation_bytes_per_token(LLAMA_8B, "float32", checkpointing=False)
    half = activation_bytes_per_token(LLAMA_8B, "bfloat16", checkpointing=False)
    checkpointed = activation_bytes_per_token(LLAMA_8B, "bfloat16", checkpointing=True)
    assert full > half > checkpointed
    # Korthikanti et al.: 34 * hidden bytes per layer and token in 16-bit, plus float32 logits
    assert half == 32 * 34 * 4096 + 3 * 4 * 128256


def test_more_memory_or_shorter_rows_allow_bigger_batches():
    small = auto_batch_rows(LLAMA_8B, 2048, "cuda", "bfloat16", False, 20 * GIB).rows
    large = auto_batch_rows(LLAMA_8B, 2048, "cuda", "bfloat16", False, 60 * GIB).rows
    short = auto_batch_rows(LLAMA_8B, 256, "cuda", "bfloat16", False, 20 * GIB).rows
    assert 1 <= small < large <= MAX_ROWS["cuda"] and small < short


@pytest.mark.parametrize(("free", "expected"), [(0, 1), (10 ** 15, MAX_ROWS["cuda"])])
def test_batch_stays_between_one_and_the_cap(free, expected):
    assert auto_batch_rows(LLAMA_8B, 2048, "cuda", "bfloat16", False, free).rows == expected


def test_unmeasurable_memory_falls_back_to_the_cap_with_a_reason():
    choice = auto_batch_rows({"hidden_size": 64, "num_hidden_layers": 2}, 128, "mps", "float16", False, None)
    assert choice.rows == 4 and "cannot be measured" in choice.reason
