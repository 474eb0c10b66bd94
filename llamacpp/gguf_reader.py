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


# GGUF value types (gguf's GGUFValueType) -> bytes of one value; strings (8) and arrays (9) vary in size.
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 8  # ggml has 4; anything past a few is a damaged header, never a real tensor
_MAX_NESTING = 8  # arrays of arrays of ...: real files nest at most once


class _HeaderWalk:
    """Walks a GGUF header with every length checked against the file's size before it is used.

    gguf's own reader trusts the lengths: an array claiming 2**40 elements makes it loop (and allocate)
    without bound past the end of the file. This walk reads only fixed-size integers, seeks over the
    data, and refuses a length that cannot fit in what remains, so its work is bounded by the file size.
    """

    def __init__(self, path: Path, handle, size: int, order: str) -> None:
        self.path, self.handle, self.size, self.order = path, handle, size, order

    def damaged(self, what: str) -> TruncatedGGUFError:
        """The error for a length that runs past the end of the file."""
        return TruncatedGGUFError(
            f"{self.path} is truncated or damaged: its header claims {what}, more than its {self.size:,} bytes hold."
        )

    def need(self, count: int, each: int, what: str) -> None:
        """Refuse `count` items of at least `each` bytes when the rest of the file cannot hold them."""
        if count * each > self.size - self.handle.tell():
            raise self.damaged(what)

    def uint(self, width: int, what: str) -> int:
        """One unsigned little- or big-endian integer of `width` bytes."""
        self.need(1, width, what)
        return int.from_bytes(self.handle.read(width), self.order)

    def skip(self, count: int) -> None:
        """Move past `count` bytes (already checked to be there)."""
        self.handle.seek(count, os.SEEK_CUR)

    def string(self, what: str) -> None:
        """A length-prefixed string, skipped once its length is known to fit."""
        length = self.uint(8, what)
        self.need(length, 1, f"a {length:,}-byte {what}")
        self.skip(length)

    def value(self, kind: int, depth: int = 0) -> None:
        """One metadata value of GGUF type `kind`, skipped."""
        if kind in _FIXED_SIZES:
            self.need(1, _FIXED_SIZES[kind], "a value")
            self.skip(_FIXED_SIZES[kind])
        elif kind == _STRING:
            self.string("string value")
        elif kind == _ARRAY and depth < _MAX_NESTING:
            self.array(depth + 1)
        else:
            raise TruncatedGGUFError(f"{self.path} is damaged: its header holds a value of unknown type {kind}.")

    def array(self, depth: int) -> None:
        """An array: its element type and count, then its elements (each at least one byte, strings eight)."""
        kind = self.uint(4, "an array type")
        count = self.uint(8, "an array length")
        each = _FIXED_SIZES.get(kind, 8 if kind == _STRING else 12)
        self.need(count, each, f"an array of {count:,} elements")
        if kind in _FIXED_SIZES:
            self.skip(count * each)
            return
        for _ in range(count):
            self.value(kind, depth)

    def tensor_info(self) -> None:
        """One tensor's name, dimensions, type and offset."""
        self.string("tensor name")
        dims = self.uint(4, "a tensor's dimension count")
        if dims > _MAX_DIMS:
            raise TruncatedGGUFError(f"{self.path} is damaged: a tensor in its header claims {dims:,} dimensions.")
        self.need(1, dims * 8 + 4 + 8, "a tensor's dimensions, type and offset")
        self.skip(dims * 8 + 4 + 8)

    def walk(self) -> None:
        """The whole header: counts, every key and value, every tensor's info."""
        self.handle.seek(8)  # magic and version
        tensors, entries = self.uint(8, "a tensor count"), self.uint(8, "a metadata count")
        self.need(tensors, 24, f"{tensors:,} tensors")  # a name length, dims, type and offset at least
        self.need(entries, 13, f"{entries:,} metadata entries")  # a key length, a type and a value at least
        for _ in range(entries):
            self.string("metadata key")
            self.value(self.uint(4, "a value type"))
        for _ in range(tensors):
            self.tensor_info()


def check_header_lengths(path: Path, size: int) -> None:
    """TruncatedGGUFError when any length in the header (strings, arrays, counts, dims) cannot fit in the
    file; reads the header only, in work bounded by the file's size, before gguf's reader trusts it."""
    with path.open("rb") as handle:
        handle.seek(4)
        raw = handle.read(4)
        if len(raw) < 4:
            raise TruncatedGGUFError(f"{path} is truncated: it ends inside its header.")
        # gguf writes the version in the file's byte order; a big-endian file reads as a huge little one.
        order = "little" if int.from_bytes(raw, "little") & 0xFFFF else "big"
        if int.from_bytes(raw, order) not in (2, 3):
            return  # gguf's reader names the unsupported version itself
        _HeaderWalk(path, handle, size, order).walk()


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
    check_header_lengths(path, size)
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
