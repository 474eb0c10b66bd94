"""GGUF files: read their metadata without touching the tensors, and convert one into a normal
Hugging Face model directory (safetensors, config, generation config, tokenizer, chat template).

Training and serving work on that directory. The weights are dequantized once here, so a LoRA
run starts from the GGUF's (lossy) values, not from the original full-precision model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError

GGUF_MAGIC = b"GGUF"
DEQUANTIZED_NOTE = (
    "Training starts from weights dequantized from the GGUF: they keep the quantization error of the file, "
    "so quality is that of the quantized model, not of the original full-precision one."
)
# Dominant ggml type -> dtype the safetensors are written in. Dequantized values of quantized blocks
# carry far more error than bfloat16 rounding adds, except 8-bit blocks, whose fp16 scales float16 keeps.
FLOAT_TYPES = {"F32": "float32", "F64": "float32", "F16": "float16", "BF16": "bfloat16"}
EIGHT_BIT_TYPES = ("Q8_0", "Q8_1", "Q8_K")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


class GGUFError(UserError, ValueError):
    """A GGUF file that cannot be installed; the message says why in one sentence."""


class NotGGUFError(GGUFError):
    """The file does not start with the GGUF magic bytes."""


class TruncatedGGUFError(GGUFError):
    """The file ends before the data its header announces."""


class UnsupportedGGUFError(GGUFError):
    """transformers' GGUF loader cannot read this architecture, tokenizer or tensor type."""


@dataclass
class GGUFInfo:
    """What a GGUF file's header says, read without loading any tensor."""

    path: Path
    architecture: str
    name: str | None
    parameters: int
    quantization: str
    file_bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)  # ggml type -> elements
    context_length: int | None = None
    license: str | None = None
    tokenizer: str | None = None

    @property
    def dtype(self) -> str:
        """The dtype the converted safetensors are written in."""
        dominant = max(self.tensor_types, key=self.tensor_types.get) if self.tensor_types else "F32"
        if dominant in FLOAT_TYPES:
            return FLOAT_TYPES[dominant]
        return "float16" if dominant in EIGHT_BIT_TYPES else "bfloat16"


def _check_magic(path: Path) -> int:
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            magic = handle.read(4)
    except FileNotFoundError as exc:
        raise GGUFError(f"No such GGUF file: {path}") from exc
    except IsADirectoryError as exc:
        raise GGUFError(f"{path} is a directory, not a GGUF file.") from exc
    if magic != GGUF_MAGIC:
        raise NotGGUFError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes).")
    return size


def _field(reader, key: str):
    entry = reader.fields.get(key)
    if entry is None:
        return None
    return entry.contents()


def read_gguf_info(path: str | os.PathLike) -> GGUFInfo:
    """Architecture, parameters, quantization and size of a GGUF file, from its header alone."""
    import gguf

    path = Path(path).expanduser()
    size = _check_magic(path)
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except (ValueError, IndexError, OverflowError, UnicodeDecodeError) as exc:
        # The reader walks the header with memory-mapped views; running off the end of the file is
        # the usual cause, and a damaged header the other.
        raise TruncatedGGUFError(f"{path} is truncated or damaged: its header cannot be read ({exc}).") from exc
    tensor_types: dict[str, int] = {}
    data_end = 0
    for tensor in reader.tensors:
        tensor_types[tensor.tensor_type.name] = tensor_types.get(tensor.tensor_type.name, 0) + int(tensor.n_elements)
        data_end = max(data_end, int(tensor.data_offset) + int(tensor.n_bytes))
    if data_end > size:
        raise TruncatedGGUFError(
            f"{path} is truncated: its tensors need {data_end:,} bytes but the file has {size:,}; download it again."
        )
    architecture = _field(reader, "general.architecture")
    if not architecture:
        raise GGUFError(f"{path} has no general.architecture in its metadata, so it is not a model GGUF.")
    file_type = _field(reader, "general.file_type")
    try:
        quantization = gguf.LlamaFileType(int(file_type)).name if file_type is not None else None
    except ValueError:  # a file type newer than this gguf package
        quantization = None
    quantization = quantization.removeprefix("MOSTLY_").removeprefix("ALL_") if quantization else None
    if not quantization:
        quantization = max(tensor_types, key=tensor_types.get) if tensor_types else "unknown"
    context = _field(reader, f"{architecture}.context_length")
    return GGUFInfo(
        path=path,
        architecture=str(architecture),
        name=_field(reader, "general.name"),
        parameters=sum(tensor_types.values()),
        quantization=quantization,
        file_bytes=size,
        tensor_types=tensor_types,
        context_length=int(context) if context is not None else None,
        license=_field(reader, "general.license"),
        tokenizer=_field(reader, "tokenizer.ggml.model"),
    )


def transformers_config(info: GGUFInfo) -> dict:
    """The transformers config (model_type, architectures, shapes) the GGUF describes; metadata only.

    Raises UnsupportedGGUFError when transformers' GGUF loader cannot read the architecture.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(str(info.path.parent), gguf_file=str(info.path)).to_dict()
    except ValueError as exc:
        if "not supported" not in str(exc):
            raise
        raise UnsupportedGGUFError(
            f"{info.path} holds a '{info.architecture}' model, an architecture transformers' GGUF loader "
            f"does not support (supported: {', '.join(supported_architectures())})."
        ) from exc
    config.pop("quantization_config", None)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type"))
    if not config.get("architectures") and model_class:
        config["architectures"] = [model_class]
    config["dtype"] = info.dtype
    return config


def supported_architectures() -> list[str]:
    """GGUF architecture names transformers can load (its legacy loader and its block-aware one)."""
    from transformers.integrations.gguf import GGUF_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_ARCHS) | set(GGUF_SUPPORTED_ARCHITECTURES)
    return sorted(names - {"general", "tokenizer"})


def check_supported(info: GGUFInfo) -> None:
    """UnsupportedGGUFError when transformers cannot load this architecture."""
    names = supported_architectures()
    # transformers maps a few llama.cpp spellings itself (qwen2moe -> qwen2_moe, ...): compare without them.
    squashed = {name.replace("_", "").replace("-", "") for name in names}
    if info.architecture not in names and info.architecture.replace("-", "").replace("_", "") not in squashed:
        raise UnsupportedGGUFError(
            f"{info.path} holds a '{info.architecture}' model, an architecture transformers' GGUF loader "
            f"does not support (supported: {', '.join(names)})."
        )


def convert_gguf(path: str | os.PathLike, dest: Path, echo: Callable[[str], None] = print) -> GGUFInfo:
    """Write the model in GGUF file `path` into directory `dest` as a normal model directory."""
    info = read_gguf_info(path)
    check_supported(info)
    dest.mkdir(parents=True, exist_ok=True)
    echo(f"Converting {info.path.name} ({info.architecture}, {info.quantization}) to {info.dtype} safetensors. "
         + DEQUANTIZED_NOTE)
    _convert_tokenizer(info, dest)
    _convert_model(info, dest)
    for written in dest.iterdir():
        written.chmod(0o644)  # save_pretrained leaves some files owner-only
    dest.chmod(0o755)
    return info


def _convert_tokenizer(info: GGUFInfo, dest: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(info.path.parent), gguf_file=str(info.path))
    except ValueError as exc:
        if "tokenizer" not in str(exc).lower():
            raise
        raise UnsupportedGGUFError(
            f"{info.path} has a '{info.tokenizer}' tokenizer, which transformers cannot rebuild from a GGUF."
        ) from exc
    if info.context_length:
        tokenizer.model_max_length = info.context_length
    tokenizer.save_pretrained(dest)


def _convert_model(info: GGUFInfo, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    dtype = getattr(torch, info.dtype)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(info.path.parent), gguf_file=str(info.path), dtype=dtype,
        quantization_config=GgufConfig(gguf_file=str(info.path), dequantize=True),
    )
    # save_pretrained refuses a model loaded "quantized" from GGUF: rebuild a plain one from the same
    # config (without quantization_config) and move the dequantized tensors into it, no copy made.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = info.dtype
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = loaded.state_dict()
    packed = [name for name, tensor in state.items() if not tensor.is_floating_point()]
    if packed:
        raise RuntimeError(f"GGUF weights still packed after dequantization: {packed[:3]}")
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in missing if name not in _tied_names(plain)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(dest)


def _tied_names(model) -> set[str]:
    """Parameter names that tie_weights() fills from another parameter (e.g. lm_head from the embeddings)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    return set(getattr(model, "all_tied_weights_keys", None) or {})
