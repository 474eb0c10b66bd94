"""The CPU thread policy of training runs (training/threads.py)."""

import pytest

from training import threads
from training.threads import SMALL_HIDDEN, choose_threads


@pytest.mark.parametrize(("cores", "busy", "hidden", "expected"), [
    (2, 0.0, 576, 2),  # idle machine: one thread per core
    (2, 0.3, 576, 2),  # a little background work does not cost a core
    (2, 1.0, 576, 1),  # one core busy with another process: leave it to it
    (2, 2.0, 576, 1),  # everything busy: still one thread
    (8, 2.6, 4096, 5),
    (8, 0.0, SMALL_HIDDEN - 1, 1),  # too narrow to split
    (8, 0.0, None, 8),  # unknown width: by cores
])
def test_threads_follow_idle_cores_and_model_width(cores, busy, hidden, expected):
    choice = choose_threads(cores, busy, hidden)
    assert choice.threads == expected
    assert choice.reason


def test_the_users_omp_num_threads_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(threads.SAMPLE, "busy_cores", lambda: pytest.fail("sampled the load although the user chose"))
    assert threads.apply_cpu_threads(576) is None


def test_apply_sets_torchs_thread_count(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.SAMPLE, "busy_cores", lambda: 1.0)
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        assert threads.apply_cpu_threads(576).threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_load_sample_counts_other_processes_only(monkeypatch):
    import psutil

    class Me:
        def cpu_percent(self, interval):
            return 50.0  # half a logical CPU: loading the model

    monkeypatch.setattr(psutil, "Process", Me)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: 75.0)  # of 4 logical CPUs: 3 in use
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4 if logical else 2)
    sample = threads.LoadSample()
    sample.start()
    assert sample.busy_cores() == pytest.approx((3 - 0.5) * 2 / 4)  # others' 2.5 logical CPUs, in physical cores
