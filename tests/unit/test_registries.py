"""Every kind of variant is one module plus one registry line: these tests walk each registry, so a variant
that is registered but broken (or a registry that stops finding its modules) fails here."""

from __future__ import annotations

import inspect

import pytest


def test_every_model_source_is_registered_once_and_claims_its_own_arguments(tmp_path):
    from sources.base import Source, SourceError
    from sources.registry import SOURCE_MODULES, all_sources, source_for

    sources = all_sources()
    assert [s.name for s in sources] == ["builtin", "ollama", "gguf", "local", "hub"]
    assert len(SOURCE_MODULES) == len(sources) and all(isinstance(s, Source) for s in sources)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "dir").mkdir()
    claimed = {"builtin:tiny-chat": "builtin", "ollama:llama3.2:1b": "ollama", str(gguf): "gguf",
               str(tmp_path / "dir"): "local", "org/name": "hub"}
    for model, kind in claimed.items():
        assert source_for(model).name == kind, model
    with pytest.raises(SourceError, match="is not a Hub id"):
        source_for("nothing-like-a-model")
    with pytest.raises(SourceError, match="No such model directory"):
        source_for(str(tmp_path / "missing"))


def test_export_targets_come_from_the_registry_in_the_cli_order():
    from export.pipeline import FORMATS
    from export.registry import get, names
    from export.target import ExportTarget

    assert FORMATS == names() == ("merged", "gguf", "lora-gguf", "ollama")
    for name in FORMATS:
        target = get(name)
        assert isinstance(target, ExportTarget) and target.name == name
    assert names(gguf=True) == ("gguf", "lora-gguf", "ollama")


def test_serving_engines_are_named_as_the_flag_spells_them_and_load():
    from serving.config import parse_config
    from serving.engines.base import Engine
    from serving.engines.registry import DEFAULT_ENGINE, ENGINES, _resolve

    assert tuple(ENGINES) == ("transformers", "llama.cpp", "vllm") and DEFAULT_ENGINE == "transformers"
    for name, entry in ENGINES.items():
        if entry.hands_off:  # a server that replaces this process (vLLM): its hand-off function exists
            assert callable(_resolve(entry.hand_off))
            continue
        engine = entry.engine_class()
        assert issubclass(engine, Engine) and engine.name == name
        assert inspect.signature(engine.load).parameters.keys() == inspect.signature(Engine.load).parameters.keys()
    assert parse_config(["--model-dir", ".", "--engine", "llama.cpp"]).engine == "llama.cpp"


def test_training_objectives_implement_the_interface_and_sft_takes_the_rest():
    from training.config import TrainConfig
    from training.data.formats import convert_record
    from training.objectives.base import Objective
    from training.objectives.registry import OBJECTIVES, objective_for

    required = [name for name in vars(Objective) if not name.startswith("_")]
    for objective in OBJECTIVES:
        missing = [name for name in required if not hasattr(objective, name)]
        assert not missing, (objective.__name__, missing)
    assert OBJECTIVES[-1].name == "sft"
    pairs = [convert_record({"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}, "preference", "p.json", 0)]
    chat = [convert_record({"question": "Q?", "answer": "Yes."}, "qa", "q.json", 0)]
    assert objective_for(TrainConfig(data="x", model_dir="m"), pairs, False).name == "dpo"
    assert objective_for(TrainConfig(data="x", model_dir="m"), chat, False).name == "sft"


def test_every_data_format_is_registered_detected_and_offered_as_a_choice():
    from training.config import FORMATS as CHOICES
    from training.data.formats import FORMATS, REGISTRY, data_format, detect_format

    assert CHOICES == FORMATS and sorted(FORMATS) == sorted({fmt.name for fmt, _ in REGISTRY})
    for fmt, _ in REGISTRY:
        assert data_format(fmt.name) is fmt
        for signature in fmt.signatures:
            record = dict.fromkeys(signature, "x")
            assert detect_format(record) is not None


def test_every_model_family_module_registers_a_handler():
    import pkgutil

    import handlers
    from handlers.registry import _NOT_FAMILIES, all_handlers

    modules = {m.name for m in pkgutil.iter_modules(handlers.__path__)} - _NOT_FAMILIES
    assert len(all_handlers()) >= len(modules)


def test_the_layering_contract_holds():
    """import-linter's contracts in pyproject.toml: floors import only downwards, no cycles in a package."""
    from conftest import ROOT
    from importlinter.application.use_cases import lint_imports
    from importlinter.configuration import configure

    configure()  # what the lint-imports command does first, without its logging set-up (which mutes other loggers)
    kept = lint_imports(config_filename=str(ROOT / "pyproject.toml"), cache_dir=None, no_logo=True)
    assert kept, "the layering is broken: .venv/bin/lint-imports says which import"
