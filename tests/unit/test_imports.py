"""Runs that neither quantize nor step an 8-bit optimizer keep bitsandbytes out of their process."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from core.imports import BITSANDBYTES, hide_bitsandbytes
from training.config import parse_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_modules():
    """sys.modules as it was, whatever the test hid."""
    before = sys.modules.get(BITSANDBYTES, "absent")
    sys.modules.pop(BITSANDBYTES, None)
    yield
    sys.modules.pop(BITSANDBYTES, None)
    if before != "absent":
        sys.modules[BITSANDBYTES] = before


def test_hidden_bitsandbytes_reads_as_not_installed(clean_modules):
    assert hide_bitsandbytes() is True
    assert importlib.util.find_spec(BITSANDBYTES) is None  # what peft and accelerate ask
    with pytest.raises(ImportError):
        importlib.import_module(BITSANDBYTES)


def test_an_imported_bitsandbytes_is_kept(clean_modules):
    module = type(sys)("bitsandbytes")
    sys.modules[BITSANDBYTES] = module
    assert hide_bitsandbytes() is False
    assert sys.modules[BITSANDBYTES] is module


@pytest.mark.parametrize(("flags", "needed"), [
    ([], False),
    (["--optimizer", "adafactor"], False),
    (["--method", "dpo"], False),
    (["--method", "qlora"], True),
    (["--use-8bit"], True),
    (["--optimizer", "adamw_bnb_8bit"], True),
    (["--optimizer", "paged_adamw_8bit"], True),
])
def test_which_runs_need_bitsandbytes(flags, needed):
    assert parse_config(["--model-dir", "m", "--data", "d.json", *flags]).needs_bitsandbytes is needed


def test_peft_loads_without_bitsandbytes_in_a_plain_run():
    """A fresh process, as train.sh runs: peft imports and wraps a layer with bitsandbytes hidden."""
    probe = ("import sys; sys.path.insert(0, sys.argv[1])\n"
             "from core.imports import hide_bitsandbytes; hide_bitsandbytes()\n"
             "import torch, peft\n"
             "model = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), "
             "peft.LoraConfig(r=2, target_modules=['0']))\n"
             "print(type(model.base_model.model[0]).__module__, 'bitsandbytes' in sys.modules and "
             "sys.modules['bitsandbytes'] is not None)\n")
    out = subprocess.run([sys.executable, "-c", probe, str(ROOT)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["peft.tuners.lora.layer", "False"]
