"""Packed rows: each example attends only to itself (the position ids restart per example)."""


def test_packed_rows_do_not_attend_across_examples():
    import torch
    from tiny_models import tiny_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    first, second = torch.randint(5, 300, (1, 7)), torch.randint(5, 300, (1, 5))
    positions = torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0)
    with torch.no_grad():
        packed = model(input_ids=torch.cat([first, second], 1), position_ids=positions, use_cache=False).logits
        alone = model(input_ids=second, use_cache=False).logits
    assert torch.allclose(packed[0, 7:], alone[0], atol=1e-5)
