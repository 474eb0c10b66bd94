"""Answer-only labels with the installed built-in model's tokenizer: the loss falls on the assistant's answers and
their end-of-turn tokens, not on the prompt."""

from training.data.formats import convert_record
from training.data.tokenize import IGNORE_INDEX, tokenize_example

OPENAI = {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
                       {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                       {"role": "assistant", "content": "6"}]}


def test_loss_only_on_answers_and_eos(builtin_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir / "model")
    example = convert_record(OPENAI, "openai", "inline", 0)
    tokens = tokenize_example(tokenizer, example, 512)
    learned = tokenizer.decode([t for t, label in zip(tokens.input_ids, tokens.labels, strict=True)
                                if label != IGNORE_INDEX])
    assert learned.replace("<|im_end|>", "|").replace("\n", "") == "4|6|"
    assert tokens.labels[-2] == tokenizer.eos_token_id or tokenizer.eos_token_id in tokens.labels
    everything = tokenize_example(tokenizer, example, 512, train_on_prompt=True)
    assert everything.trainable == len(everything.input_ids)
    truncated = tokenize_example(tokenizer, example, 8)
    assert truncated.truncated and len(truncated.input_ids) == 8
