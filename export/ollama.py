"""The Ollama export: a directory with the GGUF and a Modelfile whose TEMPLATE (Ollama's Go-template
syntax), stop parameters and system prompt reproduce the chat template the model was trained with."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from core.quoting import brief, one_line, shell_quote
from export.gguf import convert_model, gguf_filename, model_gguf_bytes
from export.job import ExportError, Job
from export.merged import chat_template
from export.target import ExportTarget
from handlers.chat_templates import FAMILIES, MISTRAL, ChatTemplateError, TemplateFamily, bound_rendering, family_of

MODELFILE = "Modelfile"
SENTINEL = "\x01USER\x01"


def _render(tokenizer, messages: list[dict]) -> str | None:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except ChatTemplateError:  # past its budget: a hostile template, said in one sentence
        raise
    except (TemplateError, ValueError):  # a template that rejects the probe conversation just gives no hint
        return None


def go_text(text: str) -> str:
    """Literal text inside a Go template: as it is, or as a Go string action when it holds `{{` or `}}` that
    Go would read as an action (a tokenizer's end-of-sequence token comes with the model)."""
    if "{{" not in text and "}}" not in text:
        return text
    return "{{ " + json.dumps(text) + " }}"  # JSON's string escapes are valid in a Go string literal


def go_template(family: TemplateFamily, tokenizer) -> str:
    """The family's Ollama template, adapted to this model's variant of it."""
    template = family.go_template.replace("{eos}", go_text(getattr(tokenizer, "eos_token", None) or ""))
    if family is not MISTRAL:
        return template
    sample = _render(tokenizer, [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
                                 {"role": "user", "content": "U2"}]) or ""
    match = re.search(r"U1( ?)\[/INST\]( ?)A1", sample)
    space, answer_space = (match.group(1), match.group(2)) if match else ("", " ")
    return template.replace("{space}", space).replace("{answer_space}", answer_space)


def default_system_prompt(family: TemplateFamily | None, tokenizer) -> str | None:
    """The system prompt the template adds when the conversation has none (SmolLM2's, for one)."""
    if family is None or family.system_pattern is None:
        return None
    rendered = _render(tokenizer, [{"role": "user", "content": SENTINEL}]) or ""
    match = re.search(family.system_pattern, rendered, re.S)
    return match.group(1) if match and SENTINEL not in match.group(1) and match.group(1).strip() else None


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ExportError('The chat template or system prompt contains """, which an Ollama Modelfile cannot hold.')
    return f'"""{text}"""'


def _parameter(stop: str) -> str:
    """A stop PARAMETER line; a stop string that a quoted Modelfile value cannot hold is refused."""
    if not stop.isprintable() or '"' in stop or "\\" in stop:
        raise ExportError(f"The stop string {brief(stop)} (from the model's tokenizer) cannot be written in an "
                          "Ollama Modelfile: it holds a quote, a backslash or a control character.")
    return f'PARAMETER stop "{stop}"'


def modelfile(gguf_name: str, family: TemplateFamily | None, tokenizer, header: str) -> str:
    """The Modelfile text: FROM the GGUF beside it, TEMPLATE, stop PARAMETERs and SYSTEM when known.

    Every value is written for its place: comments on one line (a path may hold a newline that would
    otherwise start a directive), stop strings quoted, TEMPLATE and SYSTEM in triple quotes."""
    if not gguf_name.isprintable():
        raise ExportError(f"The GGUF name {brief(gguf_name)} holds a control character; rename the model.")
    lines = [f"# {one_line(header)}", "# Import: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}"]
    stops = list(family.stops) if family else []
    if family is not None:
        lines.append(f"TEMPLATE {_quoted(go_template(family, tokenizer))}")
    else:
        lines.append(f"# TEMPLATE: this chat format is none we translate ({', '.join(f.name for f in FAMILIES)});"
                     " Ollama uses the chat template in the GGUF's metadata.")
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos not in stops:
        stops.append(eos)
    lines += [_parameter(stop) for stop in stops]
    system = default_system_prompt(family, tokenizer)
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    return "\n".join(lines) + "\n"


def write_ollama(job: Job, dest: Path, staging: Path) -> None:
    """The ollama export: DIR/<name>.gguf and DIR/Modelfile."""
    from transformers import AutoTokenizer

    dest.mkdir()
    gguf_name = gguf_filename(job)
    convert_model(job, dest / gguf_name, staging)
    tokenizer = AutoTokenizer.from_pretrained(str(job.model.weights),
                                              trust_remote_code=bool(job.info.get("trust_remote_code")))
    tokenizer.chat_template = chat_template(job, tokenizer)
    bound_rendering(tokenizer, f"the adapter in {job.adapter.path}" if job.adapter else str(job.model.root))
    family = family_of(tokenizer.chat_template)
    job.note(f"Modelfile: {family.name} template for Ollama." if family else
             "Modelfile: the chat template is none we translate, so Ollama will use the template in the GGUF's "
             "metadata.")
    source = job.info.get("source") or job.model.root
    header = f"Written by llm-installer export from {source}" + (f" + adapter {job.adapter.path}" if job.adapter else "")
    (dest / MODELFILE).write_text(modelfile(gguf_name, family, tokenizer, header), encoding="utf-8")


def check_create(name: str) -> None:
    """--create NAME is possible: a valid name and ollama on PATH (checked before exporting)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]*", name):
        raise ExportError(f"--create {name!r}: an Ollama model name has letters, digits and . _ : / - only.")
    if shutil.which("ollama") is None:
        raise ExportError("--create needs the ollama command on PATH (https://ollama.com/download); without it, "
                          "export and run `ollama create NAME -f Modelfile` later.")


def offer_create(target: Path, create: str | None, job: Job) -> None:
    """Run `ollama create` when asked; otherwise say how to."""
    command = f"cd {shell_quote(target)} && ollama create NAME -f {MODELFILE}"
    if create is None:
        job.note(f"Import into Ollama with: {command}" + ("   (or export with --create NAME)" if shutil.which("ollama")
                                                           else ""))
        return
    job.echo(f"Running ollama create {create} ...")
    result = subprocess.run(["ollama", "create", create, "-f", MODELFILE], cwd=str(target), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {result.returncode}"
        raise ExportError(f"ollama create {create} failed ({reason}); the export in {target} is complete: retry with "
                          f"{command.replace('NAME', create)}.")
    job.note(f"Created the Ollama model {create}: ollama run {create}")


class OllamaTarget(ExportTarget):
    """--format ollama: a directory with the model's GGUF and a Modelfile; --create NAME imports it."""

    name = "ollama"
    gguf = True
    creates = True

    def default_name(self, job: Job) -> str:
        return f"{job.name}-ollama" if job.tag == "tuned" else f"{job.name}-{job.tag}-ollama"

    def needed_bytes(self, job: Job) -> int:
        return model_gguf_bytes(job)

    def build(self, job: Job, dest: Path, staging: Path) -> None:
        write_ollama(job, dest, staging)

    def check_create(self, name: str) -> None:
        check_create(name)

    def after(self, job: Job, path: Path, create: str | None) -> None:
        offer_create(path, create, job)
