"""response_format json_object/json_schema parsed into one constraint, or a clear error."""

from types import SimpleNamespace

import pytest

from serving.engines.structured import FormatError, StructuredOutput, structured_output
from serving.protocol import ResponseFormat

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}


def test_response_format_becomes_one_constraint_or_a_clear_error():
    assert structured_output(None) is None
    assert structured_output(ResponseFormat(type="text")) is None
    assert structured_output(ResponseFormat(type="json_object")) == StructuredOutput("json_object")
    spec = ResponseFormat(type="json_schema", json_schema={"name": "reply", "schema": SCHEMA, "strict": True})
    assert structured_output(spec) == StructuredOutput("json_schema", SCHEMA)
    with pytest.raises(FormatError, match="'json_schema.schema'"):
        structured_output(ResponseFormat(type="json_schema", json_schema={"name": "reply"}))
    with pytest.raises(FormatError, match="with a 'name'"):
        structured_output(ResponseFormat(type="json_schema"))


class _FakeLlama:
    """Stands in for llama_cpp.Llama where only the calling convention matters: generate() asks its logits
    processors with (every token id so far, this step's 1-D float32 scores) and takes the best token. Its
    'model' is random logits, so only the grammar can make the answer JSON."""

    def __init__(self, vocab: int):
        import numpy as np

        self.vocab, self.rng = vocab, np.random.default_rng(0)
        self._ctx = SimpleNamespace(ctx=None)

    def n_vocab(self):
        return self.vocab

    def set_seed(self, seed):
        pass

    def reset(self):
        pass

    def generate(self, tokens, logits_processor=None, **sampling):
        import numpy as np

        ids = list(tokens)
        while True:
            scores = self.rng.normal(size=self.vocab).astype(np.float32)
            if logits_processor is not None:
                scores = logits_processor(np.array(ids, dtype=np.intc), scores)
            token = int(np.argmax(scores))
            ids.append(token)
            yield token


def _fake_llama_cpp(monkeypatch):
    import sys
    import types

    class LogitsProcessorList(list):  # llama_cpp.LogitsProcessorList: each processor in turn
        def __call__(self, input_ids, scores):
            for processor in self:
                scores = processor(input_ids, scores)
            return scores

    module = types.ModuleType("llama_cpp")
    module.LogitsProcessorList = LogitsProcessorList
    module.llama_cpp = types.SimpleNamespace(LLAMA_DEFAULT_SEED=0xFFFFFFFF,
                                             llama_set_adapters_lora=lambda *args: 0)  # base model: no adapters
    monkeypatch.setitem(sys.modules, "llama_cpp", module)


def test_the_llama_cpp_engine_enforces_the_same_grammar_through_its_logits_processors(builtin_model_dir,
                                                                                      monkeypatch):
    """llama-cpp-python is built on demand (not here): its engine's grammar path runs against a stand-in that calls
    logits processors the way llama_cpp.Llama.generate does."""
    import json

    from transformers import AutoTokenizer

    from serving.engines.base import Generation, GenerationParams
    from serving.engines.llamacpp_engine import LlamaCppEngine
    from serving.engines.structured import StructuredOutput

    _fake_llama_cpp(monkeypatch)
    tokenizer = AutoTokenizer.from_pretrained(str(builtin_model_dir / "model"))
    engine = LlamaCppEngine(_FakeLlama(len(tokenizer)), tokenizer, {}, {}, 2048, {tokenizer.eos_token_id})
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                               "why": {"type": "string", "maxLength": 12}},
              "required": ["answer", "why"], "additionalProperties": False}
    params = GenerationParams(max_tokens=60, temperature=0,
                              grammar=engine.compile_format(StructuredOutput("json_schema", schema)))
    generation = Generation(prompt_tokens=3)
    text = "".join(piece.text for piece in engine.stream([1, 2, 3], params, generation))
    answer = json.loads(text)
    assert answer["answer"] in ("yes", "no") and len(answer["why"]) <= 12 and generation.finish_reason == "stop"
    unconstrained = "".join(p.text for p in engine.stream([1, 2, 3], GenerationParams(max_tokens=20, temperature=0),
                                                          Generation(prompt_tokens=3)))
    with pytest.raises(ValueError):
        json.loads(unconstrained)  # the stand-in alone writes noise: the grammar made the difference


@pytest.mark.parametrize("vocab, width", [(49152, 49152), (33, 33), (33, 40), (100, 96)])
def test_the_bitmask_unpacks_to_one_flag_per_token_id(vocab, width):
    """Bit j of word i allows token 32 * i + j; ids past the mask are not allowed (llguidance's own torch kernel is
    torch.compile'd, which needs a C++ compiler at run time, so the engine unpacks the mask itself)."""
    import numpy as np

    from serving.engines.structured import GrammarGuide

    rng = np.random.default_rng(vocab)
    guide = GrammarGuide.__new__(GrammarGuide)
    guide.mask = rng.integers(-2**31, 2**31, size=(1, (vocab + 31) // 32), dtype=np.int64).astype(np.int32)
    expected = [t < 32 * guide.mask.shape[1] and bool((int(guide.mask[0, t // 32]) >> (t % 32)) & 1)
                for t in range(width)]
    assert guide.allowed(width).tolist() == expected
