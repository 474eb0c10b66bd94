"""Rendering refuses a value printed without an escaping filter, and quotes a plain path as before (the hostile
values themselves are in tests/e2e/test_render_escaping.py)."""

import jinja2
import pytest

from installer import render


def test_a_plain_path_is_quoted_as_before():
    assert render.shell_quote("/home/me/LLM/models/org_name") == "/home/me/LLM/models/org_name"
    assert render.shell_quote("/tmp/my models/x") == "'/tmp/my models/x'"


def test_a_value_printed_without_a_filter_is_refused():
    loader = jinja2.DictLoader({"bad.j2": "# {{ model_id }}\n", "good.j2": "# {{ model_id | comment }}\n"})
    with pytest.raises(RuntimeError, match="without escaping"):
        render.render_text("bad.j2", {"model_id": "x\ntouch PWNED"}, loader=loader)
    assert render.render_text("good.j2", {"model_id": "x\ntouch PWNED"}, loader=loader) == "# x\\ntouch PWNED\n"
