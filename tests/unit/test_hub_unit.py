"""A Hub that cannot be reached is one sentence (the Hub itself, through a local stand-in, is in tests/e2e/test_hub.py)."""


def test_unreachable_hub(cli, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    result = cli("check", "acme/anything")
    assert result.exit_code == 1 and "Cannot reach the Hub" in result.output
