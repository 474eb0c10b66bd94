"""`check`: what a model is and whether it fits here, from metadata alone."""

from __future__ import annotations

from core.system import machine_info
from core.units import human_bytes, human_count
from handlers import handler_for_config
from installer.estimate import memory_table, native_dtype, parameter_count
from installer.install import needs_remote_code
from installer.vision_info import vision_line, vision_summary
from llamacpp.gguf_reader import DEQUANTIZED_NOTE
from sources.registry import read_metadata
from sources.selection import select_files


def _targets_text(targets: list[str] | str) -> str:
    return "every linear layer (all-linear)" if targets == "all-linear" else ", ".join(targets)


def check_report(model: str, revision: str | None = None, trust_remote_code: bool = False) -> dict:
    """Everything `check` shows, as one JSON-ready dict."""
    meta = read_metadata(model, revision)
    handler = handler_for_config(meta.config)
    parameters, parameter_source = parameter_count(meta, trust_remote_code)
    selection = select_files(meta.files)
    machine = machine_info()
    table = memory_table(parameters or 0, machine.budget_bytes)
    rank = handler.lora_rank(parameters or 0)
    return {
        "model": model,
        "source_kind": meta.kind,
        "revision": meta.revision,
        "family": meta.config.get("model_type"),
        "handler": handler.name,
        "architecture": (meta.config.get("architectures") or [None])[0],
        "parameters": parameters,
        "parameters_from": parameter_source,
        "dtype": native_dtype(meta),
        "download_bytes": selection.total_bytes,
        "download_files": [f.path for f in selection.files],
        "pickle_only": selection.pickle_only,
        "memory": {row.name: row.bytes for row in table},
        "fits": {row.name: row.fits for row in table},
        "memory_budget": {"kind": machine.budget_name, "bytes": machine.budget_bytes},
        "lora_rank": rank,
        "lora_alpha": 2 * rank,
        "target_modules": handler.default_targets(parameters or 0),
        "trust_remote_code": needs_remote_code(meta.config, handler),
        "training_precision": handler.training_precision,
        "max_sequence_length": handler.max_sequence_length,
        "quantization": list(handler.quantization),
        "gated": meta.gated,
        "gguf": _gguf_report(meta.gguf) if meta.gguf is not None else None,
        "multimodal": handler.is_multimodal(meta.config),
        "vision": vision_summary(meta.config, handler, trust_remote_code),
    }


def _gguf_report(info) -> dict:
    return {"file": str(info.path), "architecture": info.architecture, "quantization": info.quantization,
            "file_bytes": info.file_bytes, "installs_as": info.dtype, "context_length": info.context_length,
            "license": info.license, "note": DEQUANTIZED_NOTE}


def _gguf_lines(gguf: dict) -> list[str]:
    return [
        f"GGUF file:       {gguf['file']} ({human_bytes(gguf['file_bytes'])}, {gguf['quantization']}, "
        f"context {gguf['context_length'] or '?'}, license {gguf['license'] or 'not stated'})",
        f"Installs as:     {gguf['installs_as']} safetensors. {gguf['note']}",
    ]


def format_report(report: dict) -> str:
    """The human-readable form of `check_report`."""
    lines = [
        f"Model:           {report['model']} ({report['source_kind']})",
        f"Family:          {report['family']} -> handler '{report['handler']}'",
        f"Architecture:    {report['architecture']}",
        f"Parameters:      {human_count(report['parameters'])} ({report['parameters']:,} from {report['parameters_from']})"
        if report["parameters"] else "Parameters:      unknown",
        *(_gguf_lines(report["gguf"]) if report.get("gguf") else [
            f"Native dtype:    {report['dtype']}",
            f"Download size:   {human_bytes(report['download_bytes'])} in {len(report['download_files'])} files"
            + (" (pickle weights only: install needs --allow-pickle)" if report["pickle_only"] else ""),
        ]),
        f"Remote code:     {'required (--trust-remote-code)' if report['trust_remote_code'] else 'no'}",
        *([f"Input:           {vision_line(report['vision'])}"] if report.get("vision") else []),
        "",
        f"Memory (fits this machine's {report['memory_budget']['kind']}: {human_bytes(report['memory_budget']['bytes'])})",
    ]
    for name, size in report["memory"].items():
        mark = "yes" if report["fits"][name] else "no"
        lines.append(f"  {name.replace('_', ' '):<18} {human_bytes(size):>12}   fits: {mark}")
    lines += [
        "",
        f"LoRA:            rank {report['lora_rank']}, alpha {report['lora_alpha']}, "
        f"targets {_targets_text(report['target_modules'])}",
        f"Training:        {report['training_precision']} on GPU (float32 on CPU), "
        f"max sequence length {report['max_sequence_length']}, "
        f"quantization {', '.join(report['quantization']) or 'not supported'}",
    ]
    return "\n".join(lines)
