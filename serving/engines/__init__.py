"""The engines behind start.sh: the Engine interface and shared values (base.py), the engines (one module each) and
registry.py, which names them for --engine. Nothing here imports the server's modules above it (config, app, cli)."""
