"""lm-evaluation-harness (PyPI lm-eval) scoring the served base model and its tuned adapter on a custom
multiple-choice task read from a local JSON file (no Hub): `local-completions` sends token-id prompts with echo,
logprobs and max_tokens 1, which /v1/completions must answer as vLLM does; the questions go through the chat
template (--apply_chat_template), as the adapter was trained. docs/evaluation.md has the recipe."""

import json

import pytest
from facts import FACTS
from serving_helpers import load_state, running_server

TASK = """task: facts_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
target_delimiter: ""
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def write_task(folder):
    """The facts (the tuned adapter's training data) as four-way multiple choice: the right answer and three
    others, the right one at a varying place."""
    answers = [fact["answer"] for fact in FACTS]
    docs = []
    for index, fact in enumerate(FACTS):
        others = [a for a in answers if a != fact["answer"]][:3]
        place = index % 4
        docs.append({"question": fact["question"], "choices": others[:place] + [fact["answer"]] + others[place:],
                     "label": place})
    data = folder / "facts_mc.json"
    data.write_text(json.dumps(docs))
    (folder / "facts_mc.yaml").write_text(TASK.format(data=data))
    return folder


@pytest.mark.slow
def test_lm_eval_scores_base_and_tuned_through_the_completions_route(tuned_model_dir, tmp_path, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks = TaskManager(include_path=str(write_task(tmp_path)))
    scores = {}
    with running_server(load_state(tuned_model_dir)) as url:
        for model in ("tuned-model", "tuned-model:lora"):
            result = simple_evaluate(
                model="local-completions", tasks=["facts_mc"], task_manager=tasks, apply_chat_template=True,
                model_args=f"model={model},base_url={url}/v1/completions,tokenizer={tuned_model_dir / 'model'},"
                           "num_concurrent=1,max_retries=1,tokenized_requests=True")
            # Length-normalised: the answers differ in length, and a raw sum favours the short ones.
            scores[model] = result["results"]["facts_mc"]["acc_norm,none"]
    assert scores["tuned-model:lora"] > scores["tuned-model"], scores
