"""llm-installer: install a Hugging Face model into its own directory, fine-tune it, serve it."""

from core import __version__

__all__ = ["__version__"]
