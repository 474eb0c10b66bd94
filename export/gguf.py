"""The GGUF exports, made by llama.cpp's own converters (never a GGUF writer of ours): the merged model
through convert_hf_to_gguf.py, the adapter alone through convert_lora_to_gguf.py."""

from __future__ import annotations

import json
from pathlib import Path

from core.model_dir import write_json_atomic
from export.job import BYTES_PER_PARAMETER, ExportError, Job, native_dtype, parameters
from export.merged import load_merged, save_merged
from export.target import ExportTarget
from llamacpp import converter as llamacpp
from llamacpp.quantize import CONVERTER_TYPES, quantize_gguf


def _has_chat_template(weights: Path) -> bool:
    if (weights / "chat_template.jinja").is_file():
        return True
    try:
        return bool(json.loads((weights / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def needs_merged_copy(job: Job) -> bool:
    """The base model alone converts straight from model/ when it carries its chat template; anything else
    (an adapter to merge, a fallback template to add) goes through a merged copy first."""
    return job.adapter is not None or not _has_chat_template(job.model.weights)


def intermediate_dtype(job: Job) -> str:
    """The merged copy's dtype: float32 for an f32 GGUF (no rounding on the way), else the stored dtype."""
    return "float32" if job.outtype == "f32" else native_dtype(job.model)


def _log_path(job: Job, script: str) -> Path:
    return llamacpp.cache_root() / "logs" / f"{job.name}-{Path(script).stem}.log"


def convert_model(job: Job, dest: Path, staging: Path) -> None:
    """`dest` (a .gguf file): the model with its adapter merged, converted by convert_hf_to_gguf.py with
    the chat template and stop tokens in its metadata."""
    converter = llamacpp.locate(job.llama_cpp, job.echo)  # before the slow merge: a missing converter fails fast
    source = job.model.weights
    if needs_merged_copy(job):
        # The vocabulary alone converts in seconds and meets the usual refusals (unknown architecture or
        # tokenizer) before a merge that takes minutes on a large model.
        job.echo(f"Checking that {llamacpp.HF_CONVERTER} knows this architecture and tokenizer ...")
        llamacpp.run(converter, llamacpp.HF_CONVERTER, [str(source), "--vocab-only", "--outfile",
                                                        str(staging / "vocab-check.gguf")],
                     _log_path(job, llamacpp.HF_CONVERTER))

        dtype = intermediate_dtype(job)
        model, tokenizer = load_merged(job, dtype)
        source = staging / "merged"
        job.echo(f"Writing a merged copy ({dtype}) for the converter ...")
        save_merged(job, model, tokenizer, source, dtype)
        del model
    # The converter writes full precision or q8_0 itself; the 4- to 6-bit types are quantized from its 16-bit
    # output by llama.cpp's own quantizer, as llama-quantize does.
    converted_type = job.outtype if job.outtype in CONVERTER_TYPES else _sixteen_bit(job)
    converted = dest if converted_type == job.outtype else staging / f"full-{converted_type}.gguf"
    job.echo(f"Converting to GGUF ({converted_type}) with {llamacpp.HF_CONVERTER} ({converter.origin}) ...")
    name = job.name if job.adapter is None else f"{job.name}-{job.tag}"  # else the merged copy's "merged"
    llamacpp.run(converter, llamacpp.HF_CONVERTER, [str(source), "--outfile", str(converted), "--outtype",
                                                    converted_type, "--model-name", name],
                 _log_path(job, llamacpp.HF_CONVERTER))
    if converted != dest:
        job.echo(f"Quantizing to {job.outtype} with llama.cpp's quantizer ...")
        quantize_gguf(converted, dest, job.outtype)
        converted.unlink()


def _sixteen_bit(job: Job) -> str:
    return "bf16" if native_dtype(job.model) == "bfloat16" else "f16"


def model_gguf_bytes(job: Job) -> int:
    """Disk space convert_model needs at its peak: the merged copy (when one is made), the 16-bit GGUF the
    quantizer starts from (for the 4- to 6-bit types), and the result."""
    count = parameters(job)
    merged = count * (4 if intermediate_dtype(job) == "float32" else 2) if needs_merged_copy(job) else 0
    sixteen_bit = count * 2 if job.outtype not in CONVERTER_TYPES else 0  # the quantizer's input
    return int(merged + sixteen_bit + count * BYTES_PER_PARAMETER[job.outtype])


def gguf_filename(job: Job) -> str:
    """The model GGUF's name: <model>-<tag>-<outtype>.gguf."""
    return f"{job.name}-{job.tag}-{job.outtype}.gguf"


def write_gguf(job: Job, dest: Path, staging: Path) -> None:
    """The gguf export: one .gguf file for llama.cpp, LM Studio, Ollama and others."""
    convert_model(job, dest, staging)


def write_lora_gguf(job: Job, dest: Path, staging: Path) -> None:
    """The lora-gguf export: the adapter alone, for `llama-server -m BASE.gguf --lora FILE.gguf`."""
    converter = llamacpp.locate(job.llama_cpp, job.echo)
    job.echo(f"Converting the adapter to a GGUF LoRA ({job.outtype}) with {llamacpp.LORA_CONVERTER} "
             f"({converter.origin}) ...")
    llamacpp.run(converter, llamacpp.LORA_CONVERTER,
                 [str(job.adapter.path), "--base", str(job.model.weights), "--outfile", str(dest),
                  "--outtype", job.outtype], _log_path(job, llamacpp.LORA_CONVERTER))


def mark_path(path: Path) -> Path:
    """The hidden sidecar that marks a single-file export as this tool's: `.NAME.gguf.export.json`."""
    return path.with_name(f".{path.name}.export.json")


def _identity(path: Path) -> dict:
    status = path.stat()
    return {"inode": status.st_ino, "bytes": status.st_size, "mtime_ns": status.st_mtime_ns}


def _mark_of(path: Path) -> dict | None:
    try:
        return json.loads(mark_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class _GgufFile(ExportTarget):
    """An export that is one .gguf file made by llama.cpp's converter; --out may also be a directory for it."""

    gguf = True

    def place(self, job: Job, out: Path) -> Path:
        if out.is_dir():
            return out / self.default_name(job)
        if out.suffix != ".gguf":
            raise ExportError(f"--out {out}: a GGUF file name ends in .gguf (or give an existing directory).")
        return out

    def is_earlier_export(self, path: Path) -> bool:
        """A .gguf this tool wrote: its sidecar mark matches the file (a user's own .gguf has none, and one put
        in an export's place since has another inode, size or time)."""
        return path.is_file() and not path.is_symlink() and path.suffix == ".gguf" and _mark_of(path) == _identity(path)

    def mark(self, path: Path) -> None:
        write_json_atomic(mark_path(path), _identity(path))


class GgufTarget(_GgufFile):
    """--format gguf: the model (its adapter merged) as one GGUF file."""

    name = "gguf"

    def default_name(self, job: Job) -> str:
        return gguf_filename(job)

    def needed_bytes(self, job: Job) -> int:
        return model_gguf_bytes(job)

    def build(self, job: Job, dest: Path, staging: Path) -> None:
        write_gguf(job, dest, staging)


class LoraGgufTarget(_GgufFile):
    """--format lora-gguf: the adapter alone as a GGUF LoRA."""

    name = "lora-gguf"
    outtypes = CONVERTER_TYPES
    exports_adapter = True
    merges_adapter = False

    def refuse_outtype(self, outtype: str) -> str:
        return (f"--format lora-gguf writes the adapter in {', '.join(CONVERTER_TYPES)}, not {outtype}; "
                f"quantize the model instead with --format gguf --outtype {outtype}.")

    def default_name(self, job: Job) -> str:
        return f"{job.name}-lora-{job.outtype}.gguf" if job.tag == "tuned" else \
            f"{job.name}-{job.tag}-lora-{job.outtype}.gguf"

    def needed_bytes(self, job: Job) -> int:
        return sum(p.stat().st_size for p in Path(job.adapter.path).glob("adapter_model.*")) * 2

    def build(self, job: Job, dest: Path, staging: Path) -> None:
        write_lora_gguf(job, dest, staging)
