"""The server behind start.sh: an OpenAI-compatible API, a web chat page and a terminal chat."""
