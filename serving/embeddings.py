"""POST /v1/embeddings: the request body and the response. The vectors are the served model's last hidden states
mean-pooled over the input's tokens (serving/engines/transformers_engine.py `_embed`); a chat model's embeddings
are a weak retriever, but they let a RAG client's first call work against the model it talks to."""

from __future__ import annotations

import base64
import struct
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.protocol import MAX_PROMPTS, ApiError


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None  # an end-user label; not recorded here

    @field_validator("input")
    @classmethod
    def _inputs(cls, value):
        inputs = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else value
        if not inputs or any(len(item) == 0 for item in inputs):
            raise ValueError("input is empty")
        if len(inputs) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} inputs in one request")
        if any(t < 0 for item in inputs if not isinstance(item, str) for t in item):
            raise ValueError("token ids cannot be negative")
        return inputs

    @field_validator("dimensions")
    @classmethod
    def _dimensions(cls, value):
        if value is not None:
            raise ApiError(400, "dimensions (shortened embeddings) is not supported: this model's embeddings have "
                                "the width of its hidden states.", "dimensions", "unsupported_parameter")
        return value

    @property
    def inputs(self) -> list[str | list[int]]:
        return self.input  # type: ignore[return-value]


def _encoded(vector: list[float], encoding: str):
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")  # OpenAI's float32 layout


def embeddings_response(model: str, vectors: list[list[float]], encoding: str, prompt_tokens: int) -> dict:
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": index, "embedding": _encoded(vector, encoding)}
                     for index, vector in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
