"""Routing by the request's `model`, adapter admission (one adapter state at a time, first come first served),
and the start-up checks of --lora NAME=PATH and the API key: in process, no model loaded."""

import threading
import time
from pathlib import Path

import pytest

from core.adapter import AdapterInfo
from serving.config import ServeConfig, ServeConfigError, parse_config
from serving.engines.gate import AdapterGate
from serving.protocol import ApiError
from serving.router import Router


def _adapter(name: str) -> AdapterInfo:
    return AdapterInfo(path=Path(f"/adapters/{name}"), rank=8, alpha=16, base_model="base", target_modules=["q_proj"],
                       chat_template=None)


def test_router_resolves_base_default_and_named_ids():
    router = Router("m", {"m:lora": _adapter("lora"), "sql": _adapter("sql")}, default="m:lora", source="org/m")
    assert router.resolve(None).model_id == "m:lora" and router.resolve("").model_id == "m:lora"
    assert router.resolve("m").key is None and router.resolve("m").adapter is None
    assert router.resolve("sql").adapter.path == Path("/adapters/sql")
    assert len({router.resolve(i).key for i in ("m", "m:lora", "sql")}) == 3
    with pytest.raises(ApiError) as error:
        router.resolve("gpt-4o")
    assert error.value.status == 404 and error.value.code == "model_not_found" and error.value.param == "model"
    assert "m, m:lora, sql" in error.value.message


def test_models_list_exactly_what_can_be_asked_for():
    router = Router("m", {"m:lora": _adapter("lora"), "sql": _adapter("sql")}, default="m:lora", source="org/m")
    cards = router.cards(created=1)
    assert [c["id"] for c in cards] == ["m:lora", "m", "sql"]
    assert [c["default"] for c in cards] == [True, False, False]
    assert cards[1]["parent"] is None and cards[1]["root"] == "org/m" and cards[1]["adapter"] is None
    assert cards[2]["parent"] == "m" and cards[2]["adapter"]["rank"] == 8
    assert [c["id"] for c in Router("m").cards(created=1)] == ["m"]


def test_router_refuses_duplicate_ids_and_unknown_default():
    with pytest.raises(ValueError, match="two models"):
        Router("m", {"m": _adapter("x")})
    with pytest.raises(ValueError, match="not served"):
        Router("m", {}, default="m:lora")


def _gate_run(gate, key, log, cancel=None, hold=0.05):
    cancel = cancel or threading.Event()
    with gate.admit(key, cancel) as admitted:
        if admitted:
            log.append(("start", key))
            time.sleep(hold)
            log.append(("end", key))
        else:
            log.append(("cancelled", key))


def test_gate_never_runs_two_adapters_at_once_and_shares_one():
    switches, active, overlap = [], [], []
    lock = threading.Lock()

    def switch(key):
        switches.append(key)
        assert not active, "switched while generating"

    gate = AdapterGate(4, switch)

    def run(key):
        with gate.admit(key, threading.Event()):
            with lock:
                active.append(key)
                if len(set(active)) > 1:
                    overlap.append(list(active))
            time.sleep(0.03)
            with lock:
                active.remove(key)

    order = ["a", "a", None, None, "a", "b", "b"]
    threads = []
    for key in order:
        threads.append(threading.Thread(target=run, args=(key,)))
        threads[-1].start()
        time.sleep(0.005)  # arrival order
    for thread in threads:
        thread.join(10)
    assert not overlap
    assert switches == ["a", None, "a", "b"]  # first come, first served: runs of one key share the model


def test_gate_same_key_runs_concurrently_up_to_the_slots():
    gate = AdapterGate(2, lambda key: None)
    peak, current = [0], [0]
    lock = threading.Lock()

    def run():
        with gate.admit("a", threading.Event()):
            with lock:
                current[0] += 1
                peak[0] = max(peak[0], current[0])
            time.sleep(0.05)
            with lock:
                current[0] -= 1

    threads = [threading.Thread(target=run) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak[0] == 2


def test_gate_request_cancelled_while_queued_never_starts():
    gate = AdapterGate(1, lambda key: None)
    log, cancel = [], threading.Event()
    first = threading.Thread(target=_gate_run, args=(gate, "a", log), kwargs={"hold": 0.3})
    first.start()
    time.sleep(0.05)
    queued = threading.Thread(target=_gate_run, args=(gate, "b", log, cancel))
    queued.start()
    time.sleep(0.05)
    cancel.set()
    queued.join(5)
    assert ("cancelled", "b") in log and ("start", "b") not in log
    assert ("end", "a") not in log  # it gave up while the first one was still running
    first.join(5)
    assert gate.waiting == 0


def test_lora_flags_are_parsed_and_checked(tmp_path):
    cfg = parse_config(["--model-dir", str(tmp_path), "--lora", "sql=/a/b", "--lora", "chat=~/c"])
    assert cfg.named_adapters() == {"sql": Path("/a/b"), "chat": Path("~/c").expanduser()}
    for bad, message in ((["--lora", "noequals"], "NAME=PATH"), (["--lora", "x=/a", "--lora", "x=/b"], "twice"),
                         (["--lora", "bad name=/a"], "letters")):
        with pytest.raises(ServeConfigError, match=message):
            parse_config(["--model-dir", str(tmp_path), *bad])


@pytest.mark.parametrize("key", ["clé-secrète", "key with\nnewline", " padded "])
def test_api_keys_no_client_can_send_are_refused_at_start(tmp_path, monkeypatch, key):
    with pytest.raises(ServeConfigError, match="printable ASCII"):
        parse_config(["--model-dir", str(tmp_path), "--api-key", key])
    monkeypatch.setenv("LLM_API_KEY", key)
    with pytest.raises(ServeConfigError, match="LLM_API_KEY"):
        ServeConfig(model_dir=tmp_path).apply_install_defaults()
