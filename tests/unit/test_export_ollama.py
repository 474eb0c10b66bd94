"""Ollama Modelfiles: a TEMPLATE in Go-template syntax for each chat-template family we recognise, checked
against the Jinja template it replaces."""

from __future__ import annotations

import pytest

from handlers import PLAIN_CHAT_TEMPLATE

# --- Ollama templates ----------------------------------------------------------------------------------------

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA_TEMPLATE = (  # Gemma 3's way: a system message opens the first user turn
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}{%- for message in loop_messages -%}{%- set role = 'model' if message['role'] == 'assistant' else "
    "'user' -%}{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] + "
    "'<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")
MISTRAL_TEMPLATE = (  # v0.3: the system prompt goes into the last user turn
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}{%- if message['role'] == 'user' %}{%- if loop.last and system is defined %}"
    "{{ '[INST] ' + system + '\n\n' + message['content'] + '[/INST]' }}{%- else %}"
    "{{ '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}{%- else %}{{ ' ' + message['content'] + eos_token }}"
    "{%- endif %}{%- endfor %}")
MISTRAL_V01_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content']"
    " + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")
PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


@pytest.mark.parametrize("template,family,stops", [
    (SMOLLM2_TEMPLATE, "ChatML", ["<|im_start|>", "<|im_end|>"]),
    (LLAMA3_TEMPLATE, "Llama 3", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    (GEMMA_TEMPLATE, "Gemma", ["<start_of_turn>", "<end_of_turn>"]),
    (MISTRAL_TEMPLATE, "Mistral", ["[INST]", "[/INST]", "<|im_end|>"]),  # this test tokenizer's eos
    (PHI3_TEMPLATE, "Phi-3", ["<|end|>", "<|user|>", "<|assistant|>"]),
    (PLAIN_CHAT_TEMPLATE, "plain (### User: / ### Assistant:)", ["### User:", "<|im_end|>"]),
])
def test_modelfile_for_each_template_family(template, family, stops, tiny_llama_dir):
    from transformers import AutoTokenizer

    from export.ollama import family_of, modelfile

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tokenizer.chat_template = template
    found = family_of(template)
    assert found is not None and found.name == family
    text = modelfile("m.gguf", found, tokenizer, "test")
    assert "FROM ./m.gguf\n" in text and 'TEMPLATE """' in text
    for stop in stops:
        assert f'PARAMETER stop "{stop}"' in text
    body = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert body.count("{{") == body.count("}}") and ".Messages" in body and ".Content" in body
    opened = sum(body.count(f"{{{{- {k} ") + body.count(f"{{{{ {k} ") for k in ("if", "range"))
    assert opened == body.count("end }}"), body  # every if/range is closed
    assert ("SYSTEM" in text) == (family == "ChatML")  # only SmolLM2's template has a default system prompt
    if family == "ChatML":
        assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    if family.startswith("plain"):
        assert "{{ .Content }}<|im_end|>\n\n" in body  # the assistant turn ends with this model's eos
    # What Ollama will send the model is what the Jinja template renders (less the BOS llama.cpp adds),
    # with and without a system message (Ollama puts the Modelfile's SYSTEM first when a chat has none).
    default = text.split('SYSTEM """', 1)[1].split('"""', 1)[0] if 'SYSTEM """' in text else None
    for conversation in (CONVERSATION, CONVERSATION[1:]):
        expected = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        expected = expected.removeprefix(tokenizer.bos_token or "")
        sent = conversation if conversation[0]["role"] == "system" or not default else \
            [{"role": "system", "content": default}, *conversation]
        assert render_go_template(body, sent) == expected, family


def test_mistral_v01_variant_keeps_its_spaces(tiny_llama_dir):
    from transformers import AutoTokenizer

    from export.ollama import MISTRAL, go_template

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tokenizer.chat_template = MISTRAL_V01_TEMPLATE
    body = go_template(MISTRAL, tokenizer)
    conversation = CONVERSATION[1:]
    expected = tokenizer.apply_chat_template(conversation, tokenize=False).removeprefix(tokenizer.bos_token or "")
    assert render_go_template(body, conversation) == expected


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}]


def render_go_template(template: str, messages: list[dict]) -> str:
    """Go's text/template, the subset our Ollama templates use (range, if/else if/else, variables, eq/ne/and/
    len/slice, {{- -}} trimming), executed with the values Ollama gives a chat template (.Messages, .System)."""
    import re

    pieces = re.split(r"(\{\{-? .*? -?\}\})", template, flags=re.S)
    for i, piece in enumerate(pieces):  # {{- trims the text before, -}} the text after
        if piece.startswith("{{- "):
            pieces[i - 1] = pieces[i - 1].rstrip()
        if piece.endswith(" -}}"):
            pieces[i + 1] = pieces[i + 1].lstrip()
    tokens = [(p.strip("{}-").strip(), True) if p.startswith("{{") else (p, False) for p in pieces]
    root = {"System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"),
            "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}

    def parse(position, stop):
        """Nodes until one of `stop` (an action keyword); returns nodes, the stopping action, position."""
        nodes = []
        while position < len(tokens):
            text, action = tokens[position]
            position += 1
            if not action:
                nodes.append(("text", text))
            elif text.split(" ")[0] in stop or text == "else":
                return nodes, text, position
            elif text.startswith(("if ", "range ")):
                body, ended, position = parse(position, ("end", "else"))
                branches = [(text, body)]
                while ended != "end":
                    body, next_end, position = parse(position, ("end", "else"))
                    branches.append((ended, body))
                    ended = next_end
                nodes.append(("block", branches))
            else:
                nodes.append(("action", text))
        return nodes, None, position

    def split(expr):
        """Words of a pipeline; a parenthesised group (nested ones too) is one word."""
        words, depth, quoted, current = [], 0, False, ""
        for char in expr + " ":
            if char == " " and depth == 0 and not quoted:
                if current:
                    words.append(current)
                current = ""
                continue
            quoted ^= char == '"'
            depth += {"(": 1, ")": -1}.get(char, 0) if not quoted else 0
            current += char
        return words

    def value(expr, dot, scope):
        words = split(expr)
        if len(words) > 1:
            args = [value(w, dot, scope) for w in words[1:]]
            return {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "len": len, "slice": lambda x, i: x[i:],
                    "and": lambda *xs: next((x for x in xs if not x), xs[-1])}[words[0]](*args)
        word = words[0]
        if word.startswith("("):
            return value(word[1:-1], dot, scope)
        if word.startswith('"'):
            return word[1:-1]
        if word in ("true", "false"):
            return word == "true"
        if word.startswith("$."):
            return root[word[2:]]
        if word.startswith("$"):
            return scope[word]
        return dot[word[1:]] if word.startswith(".") else int(word)

    def run(nodes, dot, scope, out):
        for kind, node in nodes:
            if kind == "text":
                out.append(node)
            elif kind == "action" and re.match(r"\$\w+ :?= ", node):
                name, _, expr = node.split(" ", 2)
                scope[name] = value(expr, dot, scope)
            elif kind == "action":
                out.append(str(value(node, dot, scope)))
            else:
                for head, body in node:
                    if head.startswith("range "):
                        match = re.match(r"range (?:(\$\w+), (\$\w+) := )?(.+)", head)
                        for index, item in enumerate(value(match.group(3), dot, scope)):
                            if match.group(1):
                                scope[match.group(1)], scope[match.group(2)] = index, item
                            run(body, item, scope, out)
                        break
                    condition = head.removeprefix("else").strip().removeprefix("if").strip()
                    if not condition or value(condition, dot, scope):
                        run(body, dot, scope, out)
                        break

    out: list[str] = []
    run(parse(0, ())[0], root, {}, out)
    return "".join(out)


def test_modelfile_for_an_unknown_template_leaves_it_to_the_gguf(tiny_llama_dir):
    from transformers import AutoTokenizer

    from export.ollama import family_of, modelfile

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    assert family_of("{{ messages[0]['content'] }}") is None and family_of(None) is None
    text = modelfile("m.gguf", None, tokenizer, "test")
    assert "TEMPLATE" not in text.replace("# TEMPLATE", "") and "GGUF's metadata" in text
    assert f'PARAMETER stop "{tokenizer.eos_token}"' in text
