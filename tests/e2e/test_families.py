"""Other model families end to end: install a local tiny model, train it with train.sh, serve the adapter.
Covers Conv1D layers (gpt2, which also has no chat template), fused projections (phi3, gpt_neox) and MoE."""

import subprocess

import openai
import pytest
from conftest import ROOT
from serving_helpers import load_state, running_server
from tiny_models import build_tiny_model


@pytest.mark.parametrize("family", ["gpt2", "phi3", "gpt_neox", "mixtral"])
def test_install_train_and_serve(family, tmp_path):
    from installer.install import InstallOptions, install

    source = build_tiny_model(family, tmp_path / "src", chat_template=family != "gpt2")
    model_dir = install(InstallOptions(model=str(source), models_dir=tmp_path / "models", name=f"tiny-{family}"),
                        echo=lambda _m: None).model_dir.root
    result = subprocess.run([str(model_dir / "train.sh"), "--data", str(ROOT / "examples" / "data" / "quickstart_qa.json"),
                             "--mode", "fast", "--no-tensorboard", "--skip-test"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0, result.stdout
    assert (model_dir / "lora" / "adapter_model.safetensors").is_file()
    if family == "gpt2":  # no chat template: the handler's fallback is saved with the adapter
        assert (model_dir / "lora" / "chat_template.jinja").is_file()
    state = load_state(model_dir)
    assert state.engine.adapters  # ./lora was loaded
    with running_server(state) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        served = [m.id for m in client.models.list().data]
        assert served[0].endswith(":lora")  # the default is the auto-loaded adapter
        answer = client.chat.completions.create(model=served[0], messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=6, temperature=0)
    assert answer.usage.completion_tokens >= 1 and answer.choices[0].finish_reason in ("stop", "length")
