"""llm-installer: install a Hugging Face model into its own directory, fine-tune it, serve it."""

__version__ = "0.1.0"
