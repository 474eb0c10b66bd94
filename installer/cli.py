"""The `llm-installer` command line. Heavy libraries are imported inside commands so that
`--help` and `list` stay instant."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from core import __version__
from core.errors import UserError
from core.model_dir import ModelDir, installed_models
from core.settings import DEVICES, DTYPES, QUANTIZATIONS, models_dir, validate_name
from core.units import human_bytes, human_count
from export.pipeline import FORMATS, OUTTYPES
from installer.demo import DEFAULT_MODEL as DEMO_MODEL
from installer.demo import RECIPES as DEMO_RECIPES
from training.data.formats import FORMATS as DATASET_FORMATS

MODELS_DIR_OPTION = click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Models directory (default: $LLM_MODELS_DIR, the config file's models_dir, or ~/LLM/models).",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@contextmanager
def reported(interrupted: str | None = None) -> Iterator[None]:
    """The one error model of every command: a UserError (the user's to fix) becomes one sentence and exit
    status 1; with `interrupted`, Ctrl+C prints that sentence and exits 130. Anything else is a bug and keeps
    its traceback."""
    try:
        yield
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        click.echo(f"\n{interrupted}", err=True)
        sys.exit(130)


def _root(option: Path | None) -> Path:
    with reported():
        return models_dir(option)


def _find_model(root: Path, name: str) -> ModelDir:
    with reported():
        validate_name(name)
    model = ModelDir(root / name)
    if not (model.info_path.exists() or model.marker.exists()):
        known = ", ".join(m.root.name for m in installed_models(root)) or "none"
        raise click.ClickException(f"No model named '{name}' in {root} (installed: {known}).")
    return model


def _model_arg(target: str, models_dir: Path | None) -> ModelDir:
    """An installed model given as a directory (`.` inside it) or as a NAME in the models directory."""
    path = Path(target).expanduser()
    return ModelDir(path.resolve()) if (path / "model_info.json").is_file() else _find_model(_root(models_dir), target)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llm-installer")
def cli() -> None:
    """Install Hugging Face models into directories of their own, fine-tune them with LoRA
    (./train.sh) and serve them on an OpenAI-compatible API (./start.sh).

    \b
    Example:
      llm-installer check meta-llama/Llama-3-8B
      llm-installer install builtin:tiny-chat
    """


@cli.command()
@click.argument("model")
@click.option("--revision", help="Branch, tag or commit on the Hub.")
@click.option("--trust-remote-code", is_flag=True, help="Allow counting parameters with the repository's own code.")
@JSON_OPTION
def check(model: str, revision: str | None, trust_remote_code: bool, as_json: bool) -> None:
    """Show what MODEL is and whether it fits this machine, reading metadata only.

    MODEL is a Hub id (org/name), a local model directory, a .gguf file (its header only),
    ollama:NAME[:TAG] or builtin:NAME.

    \b
    Example:
      llm-installer check Qwen/Qwen2.5-0.5B-Instruct --json
      llm-installer check ./SmolLM2-135M-Instruct.Q4_1.gguf
    """
    from installer.check import check_report, format_report

    with reported():
        report = check_report(model, revision, trust_remote_code)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@cli.command()
@click.argument("model")
@click.option("--name", help="Directory name under the models directory (default: org_name).")
@MODELS_DIR_OPTION
@click.option("--revision", help="Branch, tag or commit on the Hub.")
@click.option("--quantization", type=click.Choice(QUANTIZATIONS), default="none", show_default=True,
              help="Default quantization for train.sh/start.sh.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto",
              show_default=True, help="Default dtype for start.sh.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Default device for train.sh/start.sh.")
@click.option("--force", is_flag=True, help="Reinstall: fetch every file again (adapters are kept).")
@click.option("--trust-remote-code", is_flag=True, help="Allow models that run code from their repository.")
@click.option("--allow-pickle", is_flag=True, help="Allow repositories that ship only pickle (.bin) weights.")
@click.option("--gguf-file", metavar="NAME.gguf", help="Install this GGUF file of a Hub repository (converted to safetensors).")
def install(model: str, models_dir: Path | None, force: bool, **options) -> None:
    """Install MODEL into a directory of its own with train.sh and start.sh.

    MODEL is a Hub id (org/name), a local model directory, a .gguf file, ollama:NAME[:TAG]
    (a model already pulled into the local Ollama store) or builtin:NAME (smollm2-135m, tiny-chat).
    GGUF weights are dequantized into safetensors so that train.sh and start.sh can use them.
    Interrupted installs resume when the same command is run again.

    \b
    Example:
      llm-installer install meta-llama/Llama-3-8B
      llm-installer install builtin:smollm2-135m
      llm-installer install ollama:llama3.2:1b
      llm-installer install bartowski/Qwen2.5-0.5B-Instruct-GGUF --gguf-file Qwen2.5-0.5B-Instruct-Q8_0.gguf
    """
    from installer.install import InstallOptions
    from installer.install import install as run_install

    root = _root(models_dir)
    with reported("Interrupted: run the same command again to resume."):
        result = run_install(InstallOptions(model=model, models_dir=root, force=force, **options), echo=click.echo)
    if result.already_installed:
        return
    info = result.info
    click.echo(
        f"Installed {model} ({info['handler']} handler, {human_count(info['parameters'])} parameters) "
        f"in {result.model_dir.root} in {result.seconds:.1f}s ({result.fetch_mode}, "
        f"{human_bytes(result.model_dir.disk_bytes())} on disk)."
    )
    if info.get("vision"):
        from installer.vision_info import vision_line

        click.echo(f"The model is {vision_line(info['vision'])}.")
    click.echo(f"Next: cd {shlex.quote(str(result.model_dir.root))} && ./train.sh --data 'data/*.json' && ./start.sh")


@cli.command()
@click.option("--model", type=click.Choice(list(DEMO_RECIPES)), default=DEMO_MODEL, show_default=True,
              help="Built-in model to use (tiny-chat: seconds, but a toy that knows only what it is taught).")
@MODELS_DIR_OPTION
def demo(model: str, models_dir: Path | None) -> None:
    """Install a built-in model, fine-tune it on the bundled examples, serve it and compare its answers
    before and after training, printing every command it runs. Offline; a few minutes on 2 CPU cores.

    \b
    Example:
      llm-installer demo
      llm-installer demo --model builtin:tiny-chat
    """
    from installer.demo import run_demo

    with reported("Interrupted: the model directory is kept; run the demo again to redo the steps."):
        run_demo(model, _root(models_dir), echo=click.echo)


@cli.command(name="list")
@MODELS_DIR_OPTION
@JSON_OPTION
def list_models(models_dir: Path | None, as_json: bool) -> None:
    """List installed models.

    \b
    Example:
      llm-installer list --json
    """
    rows = []
    for model in installed_models(_root(models_dir)):
        info = model.read_info() or {}
        rows.append({
            "name": model.root.name,
            "source": info.get("source"),
            "family": info.get("family") or "?",
            "parameters": info.get("parameters"),
            "size_bytes": model.disk_bytes(),
            "adapter": model.adapter_state(),
            "status": model.status(),
            "path": str(model.root),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"No models installed in {_root(models_dir)}.")
        return
    header = f"{'NAME':<36} {'FAMILY':<12} {'PARAMS':>8} {'SIZE':>10}  {'ADAPTER':<24} STATUS"
    click.echo(header)
    for row in rows:
        click.echo(
            f"{row['name']:<36} {row['family']:<12} {human_count(row['parameters']):>8} "
            f"{human_bytes(row['size_bytes']):>10}  {row['adapter']:<24} {row['status']}"
        )


@cli.command()
@click.argument("name")
@MODELS_DIR_OPTION
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def remove(name: str, models_dir: Path | None, yes: bool) -> None:
    """Delete the installed model NAME (weights, adapters, checkpoints).

    \b
    Example:
      llm-installer remove meta-llama_Llama-3-8B -y
    """
    root = _root(models_dir)
    model = _find_model(root, name)
    if model.root.is_symlink():  # an alias: remove the name, never the model it points to
        _remove_alias(model.root, yes)
        return
    target = model.root.resolve()
    if target.parent != root or not target.is_dir():
        raise click.ClickException(f"Refusing to delete {target}: it is not directly inside {root}.")
    if not yes:
        click.confirm(f"Delete {target} ({human_bytes(model.disk_bytes())})?", abort=True)
    shutil.rmtree(target)
    click.echo(f"Removed {target}.")


def _remove_alias(link: Path, yes: bool) -> None:
    """Delete the symlink `link` in the models directory; what it points to stays."""
    pointed = link.resolve()
    if not yes:
        click.confirm(f"Delete the link {link} (to {pointed}, which is kept)?", abort=True)
    link.unlink()
    click.echo(f"Removed the link {link}; {pointed} is kept.")


@cli.command()
@click.argument("name", required=False)
@click.option("--all", "all_models", is_flag=True, help="Update every installed model.")
@MODELS_DIR_OPTION
def update(name: str | None, all_models: bool, models_dir: Path | None) -> None:
    """Re-render train.sh and start.sh from the current templates (weights and adapters untouched).

    \b
    Example:
      llm-installer update --all
    """
    from core.model_dir import DamagedInstallError, check_info
    from installer.render import render_wrappers

    root = _root(models_dir)
    if bool(name) == all_models:
        raise click.UsageError("Give either NAME or --all.")
    targets = installed_models(root) if all_models else [_find_model(root, name)]
    for model in targets:
        info = model.read_info()
        if not info or not info.get("complete"):
            click.echo(f"Skipped {model.root.name}: install incomplete (run install again to resume).")
            continue
        try:
            render_wrappers(model, check_info(info, model.info_path))
        except DamagedInstallError as exc:
            if not all_models:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"Skipped {model.root.name}: {exc}")
            continue
        click.echo(f"Updated wrappers of {model.root.name}.")


@cli.command()
@click.argument("target", default=".")
@click.option("--fix-cuda", is_flag=True, help="Also make bitsandbytes (QLoRA, 8-bit) work with this CUDA torch.")
@MODELS_DIR_OPTION
def fix(target: str, fix_cuda: bool, models_dir: Path | None) -> None:
    """Repair an installed model: re-render its wrappers, check the install, optionally fix CUDA libraries.

    TARGET is a model directory (default: the current one) or an installed model's name.

    \b
    Example (inside a model directory):
      llm-installer fix . --fix-cuda
    """
    from installer import fix as repair

    model = _model_arg(target, models_dir)
    with reported():
        repair.fix_model_dir(model, click.echo)
        if fix_cuda:
            repair.fix_cuda(click.echo)


@cli.command()
@MODELS_DIR_OPTION
@JSON_OPTION
def doctor(models_dir: Path | None, as_json: bool) -> None:
    """Check Python, torch, GPUs, memory, disk, packages and Hub settings.

    \b
    Example:
      llm-installer doctor
    """
    from installer.doctor import diagnose

    findings = diagnose(_root(models_dir))
    if as_json:
        click.echo(json.dumps([f.__dict__ for f in findings], indent=2))
    else:
        for finding in findings:
            click.echo(f"[{finding.level:<4}] {finding.topic:<14} {finding.detail}")
    if any(f.level == "fail" for f in findings):
        sys.exit(1)


@cli.command()
@click.argument("target")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="merged: safetensors directory; gguf: one GGUF file (llama.cpp's converter); lora-gguf: the "
                   "adapter alone as a GGUF LoRA; ollama: GGUF + Modelfile.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Where to write (default: TARGET/exports/...). An existing directory takes a GGUF file inside it.")
@click.option("--outtype", type=click.Choice(OUTTYPES),
              help="GGUF tensor type (default f16; q4_k_m and the other 4- to 6-bit types are made by llama.cpp's "
                   "quantizer, from ./llm-installer setup --engine llama.cpp); for merged the safetensors dtype "
                   "(default: the model's own).")
@click.option("--adapter", type=click.Path(file_okay=False, path_type=Path),
              help="Adapter directory to export (default: TARGET/lora).")
@click.option("--no-lora", is_flag=True, help="gguf/ollama: export the base model even when ./lora exists.")
@click.option("--llama-cpp", type=click.Path(file_okay=False, path_type=Path),
              help="Convert with this llama.cpp checkout (default: $LLM_INSTALLER_LLAMA_CPP, else the pinned release, "
                   "fetched once).")
@click.option("--create", metavar="NAME", help="ollama: also run `ollama create NAME` (needs ollama on PATH).")
@MODELS_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON (progress goes to stderr).")
def export(target: str, fmt: str, out: Path | None, outtype: str | None, adapter: Path | None, no_lora: bool,
           llama_cpp: Path | None, create: str | None, models_dir: Path | None, as_json: bool) -> None:
    """Export an installed model with its adapter: merged safetensors, GGUF, a LoRA GGUF or an Ollama model.

    TARGET is an installed model's name or directory. See docs/export.md.

    \b
    Example (inside a model directory, after ./train.sh):
      llm-installer export . --format gguf --outtype q8_0
      llm-installer export . --format ollama --create my-model
    """
    from export.pipeline import export_model

    model = _model_arg(target, models_dir)
    echo = (lambda message: click.echo(message, err=True)) if as_json else click.echo
    with reported("Interrupted: nothing was written."):
        result = export_model(model.root, fmt, out=out, outtype=outtype, adapter=adapter, no_lora=no_lora,
                              llama_cpp=llama_cpp, create=create, echo=echo)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    click.echo(f"Exported {fmt} ({result.outtype}) to {result.path}: {human_bytes(result.total_bytes)} in "
               f"{result.seconds:.1f}s.")


@cli.command(name="eval")
@click.argument("target")
@click.option("--data", required=True, help="Held-out data: anything train.sh's --data accepts (file, directory, glob, "
                                            "comma list, NAME:SPLIT), in any format it reads.")
@click.option("--adapter", type=click.Path(file_okay=False, path_type=Path),
              help="Adapter directory to compare with the base model (default: TARGET/lora).")
@click.option("--no-lora", is_flag=True, help="Evaluate the base model alone.")
@click.option("--no-base", is_flag=True, help="Evaluate the tuned model alone (half the time).")
@click.option("--max-examples", type=int, help="Evaluate a seeded random sample of this many examples.")
@click.option("--max-new-tokens", type=int,
              help="Longest greedy answer in tokens (default: the longest reference answer + 16, at most 512).")
@click.option("--batch-size", type=int, help="Prompts generated together (default: 32 on a GPU, 8 otherwise).")
@click.option("--device", type=click.Choice(DEVICES), help="Where to run (default: the model's default device).")
@click.option("--dataset-format", type=click.Choice(DATASET_FORMATS), help="Force a dataset format instead of "
                                                                          "detecting it.")
@click.option("--no-general", is_flag=True, help="Skip the general reference (base and tuned on the base model's own "
                                                 "answers to general prompts: what tuning cost outside your data).")
@MODELS_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON (progress goes to stderr).")
def evaluate(target: str, models_dir: Path | None, as_json: bool, **options) -> None:
    """Compare the base model and the tuned one on held-out data: loss and perplexity on the answer tokens,
    exact match, ROUGE-L and BLEU of greedy answers, answers per second; and on the general reference (the base
    model's own answers to general prompts), so what tuning cost outside your data shows beside what it gained.

    TARGET is an installed model's name or directory. See docs/training.md.

    \b
    Example (inside a model directory, after ./train.sh):
      llm-installer eval . --data held_out.json
      llm-installer eval . --data held_out.json --json --max-examples 200
    """
    from installer.evaluation import EvalOptions, evaluate_installed

    model = _model_arg(target, models_dir)
    echo = (lambda message: click.echo(message, err=True)) if as_json else click.echo
    with reported("Interrupted."):
        result = evaluate_installed(model.root, EvalOptions(**options), echo=echo)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from training.eval_report import format_table

    click.echo(format_table(result))
    click.echo(f"Took {result['setup']['seconds']:.1f}s.")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="llm-installer")
