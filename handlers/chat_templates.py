"""Everything we know about chat templates, in one place: the fallback templates of models that ship none,
the template families we can recognise (their end-of-turn tokens, their Ollama TEMPLATE), and how a
conversation is shaped before a template renders it (tool calls, tool turns, content parts). Training,
evaluation, serving and export all read it from here."""

from __future__ import annotations

import contextvars
import functools
import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from core.errors import UserError

# A rendering budget: a chat template comes with a model or an adapter, so it may be hostile (a 99999 x 99999
# loop, or one that writes gigabytes). Real templates render a conversation in milliseconds.
RENDER_SECONDS = 10.0
RENDER_CHARS = 32 * 1024 * 1024
_rendering = contextvars.ContextVar("chat_template_origin", default=None)

# A neutral ChatML template for base models that ship none; saved with the adapter.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A plain-text template for tokenizers without special chat tokens (GPT-2, GPT-NeoX).
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'tool' %}{{ '### Tool:\\n' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ '### Assistant:\\n' + (message['content'] or '') + eos_token + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TemplateFamily:
    """A chat format we can write as an Ollama template. Ollama hands the template the conversation as
    .Messages (system messages included) and the joined system prompt as .System."""

    name: str
    markers: tuple[str, ...]  # all of them appear in the family's Jinja templates
    go_template: str
    stops: tuple[str, ...]
    end_of_turn: tuple[str, ...]
    system_pattern: str | None  # over a rendered one-message conversation: group 1 is the default system prompt


CHATML = TemplateFamily(
    "ChatML", ("<|im_start|>", "<|im_end|>"),
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
    ("<|im_start|>", "<|im_end|>"), ("<|im_end|>",), r"<\|im_start\|>system\n(.*?)<\|im_end\|>")
LLAMA3 = TemplateFamily(
    "Llama 3", ("<|start_header_id|>", "<|eot_id|>"),
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
    ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), ("<|eot_id|>",),
    r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>")
# Gemma has no system role: the system prompt opens the first user turn, as its Jinja template does.
GEMMA = TemplateFamily(
    "Gemma", ("<start_of_turn>", "<end_of_turn>"),
    "{{- $first := true }}{{- range .Messages }}{{- if ne .Role \"system\" }}<start_of_turn>"
    "{{ if eq .Role \"assistant\" }}model{{ else }}user{{ end }}\n"
    "{{ if and $first $.System }}{{ $.System }}\n\n{{ end }}{{ $first = false }}{{ .Content }}<end_of_turn>\n"
    "{{ end }}{{- end }}<start_of_turn>model\n",
    ("<start_of_turn>", "<end_of_turn>"), ("<end_of_turn>",), None)
# Mistral puts the system prompt in the last user turn; the spaces around [/INST] differ between
# versions and are filled in from the model's own template; {eos} is the model's end of sequence.
MISTRAL = TemplateFamily(
    "Mistral", ("[INST]", "[/INST]"),
    "{{- range $i, $_ := .Messages }}{{- if eq .Role \"user\" }}[INST] "
    "{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}\n\n{{ end }}{{ .Content }}{space}[/INST]"
    "{{- else if eq .Role \"assistant\" }}{answer_space}{{ .Content }}{eos}{{- end }}{{- end }}",
    ("[INST]", "[/INST]"), (), None)
PHI3 = TemplateFamily(
    "Phi-3", ("<|assistant|>", "<|end|>"),
    "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
    ("<|end|>", "<|user|>", "<|assistant|>", "<|endoftext|>"), ("<|end|>",), r"<\|system\|>\n(.*?)<\|end\|>")
# The handlers' own fallback for tokenizers without chat tokens (GPT-2, GPT-NeoX): {eos} is the model's.
PLAIN = TemplateFamily(
    "plain (### User: / ### Assistant:)", ("### User:", "### Assistant:"),
    "{{- range .Messages }}{{- if eq .Role \"system\" }}{{ .Content }}\n\n"
    "{{ else if eq .Role \"user\" }}### User:\n{{ .Content }}\n\n"
    "{{ else if eq .Role \"tool\" }}### Tool:\n{{ .Content }}\n\n"
    "{{ else }}### Assistant:\n{{ .Content }}{eos}\n\n{{ end }}{{- end }}### Assistant:\n",
    ("### User:",), (), None)
FAMILIES = (CHATML, LLAMA3, GEMMA, MISTRAL, PHI3, PLAIN)


def family_of(template: str | None) -> TemplateFamily | None:
    """The family of a Jinja chat template, or None when it is none we can translate."""
    for family in FAMILIES:
        if template and all(marker in template for marker in family.markers):
            return family
    return None



def stop_token_ids(tokenizer, template: str | None) -> list[int]:
    """End-of-turn tokens of the chat template that are single tokens of the vocabulary, for generation to
    stop at (ChatML's <|im_end|> when eos is <|endoftext|>, Llama 3's <|eot_id|>, ...)."""
    family = family_of(template)
    ids = []
    for text in family.end_of_turn if family else ():
        token_id = tokenizer.convert_tokens_to_ids(text)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            ids.append(token_id)
    return ids



class ChatTemplateError(UserError, ValueError):
    """A chat template that ran past its rendering budget; the message names where it came from."""


def ensure_chat_template(tokenizer, fallback: str, origin: str | None = None) -> bool:
    """Give a tokenizer without a chat template the handler's fallback, and bound every rendering of its
    template (see `bound_rendering`; `origin` names the template's model, by default the tokenizer's path);
    True when the fallback was used."""
    bound_rendering(tokenizer, origin or getattr(tokenizer, "name_or_path", None) or "the model")
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = fallback
    return True


def bound_rendering(tokenizer, origin: str) -> None:
    """Make every `tokenizer.apply_chat_template` call (training, DPO, evaluation, the report's samples) run
    within RENDER_SECONDS and RENDER_CHARS of output, or raise ChatTemplateError naming `origin` (the model
    or adapter the template came from)."""
    original = tokenizer.apply_chat_template
    if getattr(original, "bounded_origin", None) is not None:
        original = original.__wrapped__

    @functools.wraps(original)
    def bounded(*args, **kwargs):
        _bound_output(kwargs.get("chat_template") or getattr(tokenizer, "chat_template", None))
        with rendering_budget(origin):
            return original(*args, **kwargs)

    bounded.bounded_origin = origin
    tokenizer.apply_chat_template = bounded


@contextmanager
def rendering_budget(origin: str) -> Iterator[None]:
    """Raise ChatTemplateError when rendering inside takes longer than RENDER_SECONDS.

    A signal timer interrupts the template's Python loop wherever it is. Only the main thread receives
    signals, so elsewhere (and inside another budget) only the output bound of `_bound_output` applies."""
    nested = _rendering.get() is not None
    token = _rendering.set(origin)
    if nested or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        try:
            yield
        finally:
            _rendering.reset(token)
        return

    def expired(_signum, _frame):
        raise ChatTemplateError(f"The chat template of {origin} did not finish rendering one conversation in "
                                f"{RENDER_SECONDS:g} seconds (real templates take milliseconds); fix or remove it.")

    # Nothing else in train.sh's, eval's or export's process arms SIGALRM, so the timer is this budget's alone.
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, RENDER_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _rendering.reset(token)


def _bounded_concat(pieces) -> str:
    """Jinja's output join, stopping at RENDER_CHARS instead of holding gigabytes of a runaway template."""
    kept, total = [], 0
    for piece in pieces:
        total += len(piece)
        if total > RENDER_CHARS:
            origin = _rendering.get() or "this model"
            raise ChatTemplateError(f"The chat template of {origin} writes more than {RENDER_CHARS // 2**20} MiB "
                                    "for one conversation (real templates write a few KiB); fix or remove it.")
        kept.append(piece)
    return "".join(kept)


def _bound_output(template) -> None:
    """Give the compiled template transformers will render (it caches one per template text) the bounded
    join. A transformers without that cache keeps only the time bound."""
    if not isinstance(template, str):
        return
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return
    _compile_jinja_template(template).environment.concat = _bounded_concat


def template_supports_tools(tokenizer) -> bool:
    template = tokenizer.chat_template
    return isinstance(template, str) and "tool_calls" in template


def normalise_messages(messages: list[dict], tools_supported: bool) -> list[dict]:
    """Templates without tool support get tool calls as JSON text in the assistant message (training and serving)."""
    if tools_supported:
        return messages
    out = []
    for message in messages:
        message = dict(message)
        calls = message.pop("tool_calls", None)
        if calls:
            rendered = "\n".join(json.dumps(c["function"], ensure_ascii=False) for c in calls)
            message["content"] = (message.get("content") or "") + f"<tool_call>\n{rendered}\n</tool_call>"
        out.append(message)
    return out


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """The conversation through the tokenizer's chat template (bounded when `bound_rendering` was applied)."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except ChatTemplateError:
        raise
    except Exception:
        # Templates that reject 'tool' (or 'system') roles: fold those turns into user turns.
        return tokenizer.apply_chat_template(fold_tool_turns(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)


def fold_tool_turns(messages: list[dict]) -> list[dict]:
    """Tool results as user turns, for templates that reject the 'tool' role (training and serving)."""
    return [{**m, "role": "user", "content": f"Tool result:\n{m['content']}"} if m["role"] == "tool" else m
            for m in messages]



def part_messages(messages: list[dict]) -> list[dict]:
    """Every content as a list of parts: processors' templates iterate content parts."""
    return [{**m, "content": [{"type": "text", "text": m.get("content") or ""}]} if not isinstance(m.get("content"),
            list) else m for m in messages]


