"""The end-of-run report: why training stopped, loss before and after, the general reference (what tuning cost
outside the user's data), and a sample answer from the base model and the tuned one."""

from __future__ import annotations

import shlex
from pathlib import Path

from training.eval_report import format_run_evaluation, trade_line

SAMPLE_TOKENS = 48


def _prompt_of(example) -> tuple[list[dict] | None, str]:
    if example.is_chat:
        turns = []
        for message in example.messages:
            if message["role"] == "assistant":
                break
            turns.append(message)
        return turns, ""
    return None, example.prompt or example.completion[:40]


def _generate(model, tokenizer, messages, prompt: str, device: str) -> str:
    import torch

    if messages is not None:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=messages is None).to(device)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=SAMPLE_TOKENS, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, use_cache=True)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def sample_answers(model, tokenizer, adapter_dir: Path, examples, held_out: bool, device: str) -> dict:
    """Greedy answers of the base model and of the chosen adapter to one example's prompt."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(adapter_dir / "adapter_model.safetensors"), device=device))
    model.eval()
    example = examples[-1]
    messages, prompt = _prompt_of(example)
    tuned = _generate(model, tokenizer, messages, prompt, device)
    with model.disable_adapter():
        base = _generate(model, tokenizer, messages, prompt, device)
    shown = messages[-1]["content"] if messages else prompt
    return {"prompt": shown, "base": base, "tuned": tuned, "held_out": held_out}


def final_report(info: dict, samples: dict | None, model_dir: Path | None = None) -> str:
    """A short human-readable summary, ending with what to run next."""
    metrics = info["metrics"]
    preference = info.get("preference")
    lines = ["", "=" * 60, "Training report", "=" * 60, f"Stop reason:      {info['stop_reason']}",
             f"Adapter kept:     {info['adapter']}"]
    if metrics["baseline_val_loss"] is not None and metrics["best_val_loss"] is not None:
        lines.append(f"Validation loss:  {metrics['baseline_val_loss']:.4f} before -> {metrics['best_val_loss']:.4f}"
                     " best" + (" (DPO loss)" if preference else ""))
        if not preference:
            lines.append(f"Perplexity:       {metrics['baseline_perplexity']:.2f} before -> "
                         f"{metrics['best_perplexity']:.2f} best")
    elif metrics.get("first_train_loss") is not None and metrics.get("best_train_loss") is not None:
        lines.append(f"Training loss:    {metrics['first_train_loss']:.4f} first step -> "
                     f"{metrics['best_train_loss']:.4f} best (no validation set)")
    if preference:
        lines += _preference_lines(preference)
    processes = info.get("distributed", {}).get("processes", 1)
    lines.append(f"Steps:            {metrics['steps']} optimizer steps ({metrics['evaluations']} evaluations, "
                 f"{info['timings']['seconds']:.1f}s{f', {processes} processes' if processes > 1 else ''})")
    lines += general_lines(info)
    for change in info.get("adaptive_changes", []):
        lines.append(f"Adaptive change:  {change}")
    if samples:
        label = "held-out prompt" if samples["held_out"] else "training prompt"
        lines += [f"Sample ({label}): {samples['prompt'][:200]}", f"  base model:  {samples['base'][:300]!r}",
                  f"  fine-tuned:  {samples['tuned'][:300]!r}"]
    if info.get("evaluation"):
        lines += format_run_evaluation(info["evaluation"], model_dir)
    if model_dir is not None:
        here = shlex.quote(str(model_dir))
        lines += [serve_command(info, model_dir),
                  f"Export it:  llm-installer export {here} --format merged               (transformers / vLLM)",
                  f"            llm-installer export {here} --format gguf --outtype q8_0   (llama.cpp, LM Studio)",
                  f"            llm-installer export {here} --format ollama --create NAME  (then: ollama run NAME)"]
    lines.append("=" * 60)
    return "\n".join(lines)


def serve_command(info: dict, model_dir: Path) -> str:
    """The line that says how to serve what was just trained: ./start.sh loads ./lora; an adapter written elsewhere
    (--output DIR) is served with --load-lora DIR."""
    output = (info.get("hyperparameters") or {}).get("output")
    if not output or Path(output).resolve() == (Path(model_dir) / "lora").resolve():
        return "Serve it:   ./start.sh   (./lora is loaded)"
    return (f"Serve it:   {shlex.quote(str(Path(model_dir) / 'start.sh'))} --load-lora "
            f"{shlex.quote(str(Path(output).resolve()))}")


def _preference_lines(preference: dict) -> list[str]:
    """DPO: reward accuracy (pairs whose chosen answer gains more than the rejected one over the reference)
    and the mean reward margin, at the kept evaluation."""
    lines = [f"DPO:              beta {preference['beta']:g}, reference {preference['reference']}"]
    for label, entry in (("kept", preference.get("best")), ("last", preference.get("final"))):
        if entry is None or (label == "last" and entry == preference.get("best")):
            continue
        lines.append(f"{f'Rewards ({label}):':<18}accuracy {entry['reward_accuracy']:.0%}, margin {entry['reward_margin']:.3f} "
                     f"(chosen {entry['reward_chosen']:+.3f}, rejected {entry['reward_rejected']:+.3f}) on "
                     f"{preference['measured_on']}, step {entry['step']}")
    return lines


def general_lines(info: dict) -> list[str]:
    """The report's lines on the general reference: the kept adapter's general loss against the base's, the rule,
    the cost, and the trade between the user's data and the general reference in one line."""
    section = info.get("forgetting")
    if not section:
        return []
    if not section["watched"]:
        return [f"General:          not watched ({section['reason']})"]
    kept, cost = section.get("kept"), section["cost"]
    rule = f"stop at +{section['max_forgetting']:.0%} (--max-forgetting)" if section["stops"] else "no stop"
    per = f"{cost['seconds_per_evaluation']:.1f}s per evaluation, " if cost["seconds_per_evaluation"] else ""
    lines = [f"General:          {section['reference']['prompts']} general prompts, the base model's own answers; "
             f"{rule}; {per}{cost['share_of_run']:.1%} of the run"]
    last = section["evaluations"][-1] if section["evaluations"] else None
    if kept is None and last is not None:  # the stop off: the kept evaluation was not one of the measured ones
        lines.append(f"                  loss {section['zero_loss']:.4f} ({section['zero_point']}) -> "
                     f"{last['general_loss']:.4f} at step {last['step']} ({last['forgetting']:+.1%}); the kept "
                     "adapter's evaluation was not measured")
    if kept is not None:
        lines.append(f"                  loss {section['zero_loss']:.4f} ({section['zero_point']}) -> "
                     f"{kept['general_loss']:.4f} kept ({kept['forgetting']:+.1%})")
        if "general" not in (info.get("evaluation") or {}):  # else the evaluation's table ends with it
            trade = trade_line(_domain(info), (section["base_loss"], kept["general_loss"]), _measure(info))
            lines.append(f"Trade:            {trade}")
    return lines


def _domain(info: dict) -> tuple[float, float] | None:
    """The user's data before and after: the evaluation's perplexity, else the validation's, else the training
    loss (first step, kept)."""
    evaluation, metrics = info.get("evaluation") or {}, info["metrics"]
    if "base" in evaluation and "tuned" in evaluation:
        return evaluation["base"]["perplexity"], evaluation["tuned"]["perplexity"]
    if info.get("preference") or info.get("kto"):  # their losses are no perplexity, nor an SFT loss
        return None
    if metrics.get("baseline_perplexity") is not None and metrics.get("best_perplexity") is not None:
        return metrics["baseline_perplexity"], metrics["best_perplexity"]
    if metrics.get("first_train_loss") is not None and metrics.get("best_train_loss") is not None:
        return metrics["first_train_loss"], metrics["best_train_loss"]
    return None


def _measure(info: dict) -> str:
    evaluation, metrics = info.get("evaluation") or {}, info["metrics"]
    if ("base" in evaluation and "tuned" in evaluation) or metrics.get("best_perplexity") is not None:
        return "perplexity"
    return "training loss"
