"""A busy TensorBoard port is said clearly: --tensorboard-only refuses and names a free one, and a port bound but
not listening counts as busy (TensorBoard itself is started in tests/e2e/test_tensorboard_lifetime.py)."""

import logging
import socket

from training import tensorboard_server


def test_tensorboard_only_refuses_a_busy_port_and_names_a_free_one(tmp_path, caplog):
    (tmp_path / "logs" / "training").mkdir(parents=True)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.INFO, logger="train"):
            assert tensorboard_server.serve_only(tmp_path, port) == 1
    assert f"Port {port} is in use" in caplog.text and "--tensorboard-only" in caplog.text


def test_a_port_bound_but_not_listening_counts_as_busy():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        assert tensorboard_server.port_in_use(holder.getsockname()[1])
