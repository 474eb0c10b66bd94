"""./train.sh in an installed model's directory, and reading what it wrote (the training, preference and
run-file end-to-end tests)."""

from __future__ import annotations

import json
import subprocess


def train_sh(model_dir, *args, **popen):
    """Run ./train.sh without TensorBoard or the sample test; with popen=True, the running process."""
    command = [str(model_dir / "train.sh"), "--no-tensorboard", "--skip-test", *args]
    if popen:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def adapter_info(model_dir):
    return json.loads((model_dir / "lora" / "adapter_info.json").read_text())


def adapter_weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "lora" / "adapter_model.safetensors"))


def max_difference(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def greedy_answers(model_dir, questions):
    """The adapter's greedy answers to each question, through plain transformers + PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir / "model")
    model = PeftModel.from_pretrained(model, model_dir / "lora").eval()
    answers = []
    for question in questions:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
        answers.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


def interrupt_after(process, evaluations, sig):
    """Send `sig` to a running train.sh once it has logged `evaluations` evaluations; its status and output."""
    seen, output = 0, []
    for line in process.stdout:
        output.append(line)
        seen += line.startswith("Evaluation #") or "| Evaluation #" in line or " Evaluation #" in line
        if seen >= evaluations:
            process.send_signal(sig)
            break
    rest, _ = process.communicate(timeout=120)
    return process.returncode, "".join(output) + rest


def random_adapter(model_dir, target):
    """A LoRA adapter of the model with random weights (far from the base), saved like ./lora."""
    import torch
    from transformers import AutoModelForCausalLM

    from training.modeling import wrap_with_lora

    model = AutoModelForCausalLM.from_pretrained(model_dir / "model")
    torch.manual_seed(0)
    model = wrap_with_lora(model, ["q_proj", "v_proj"], 4, 8, 0.0, False, False)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    model.save_pretrained(target)
    return target


def losses_across_resume(model_dir, info) -> tuple[dict, int]:
    """({step: training loss} of the last checkpoint's history, the step the run resumed from)."""
    from training.outputs import numbered_checkpoints

    history = json.loads((numbered_checkpoints(model_dir / "checkpoints")[-1] / "trainer_state.json").read_text())
    losses = {h["step"]: h["train_loss"] for h in history["loop"]["history"] if "lr" in h}
    return losses, int(info["resumed_from"].split("-")[-1])
