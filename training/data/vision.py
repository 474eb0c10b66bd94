"""Images in training records: where they are referenced, and reading them (Pillow), without torch.

A message that carries images gets its content as a list of parts, `{"type": "image"}` where an image goes
and `{"type": "text", "text": ...}` elsewhere, which is what processors' chat templates expect; the Example
keeps the image references (paths, data: URLs, bytes, PIL images) in the order of those parts.

Record shapes understood:
- the guide's `image` + `caption` (or `text`), and `image` + `question`/`answer`;
- OpenAI messages whose content has `{"type": "image_url", "image_url": {"url": ...}}` or
  `{"type": "image", "image": ...}` parts (a part without a reference takes the next of the record's `images`);
- ShareGPT conversations with `<image>` placeholders in the text and an `images` list.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from training.data.files import DataError

IMAGE_PLACEHOLDER = "<image>"
DEFAULT_IMAGE_QUESTION = "Describe the image."
# Pillow's decompression-bomb guard stays on: an image over this many pixels is refused, not decoded.
MAX_TRAINING_IMAGE_PIXELS = 64_000_000


class ImageRefs:
    """The record's images in order: explicit references first-come, then the record's `images` list."""

    def __init__(self, record_images, where: str):
        if record_images is None:
            record_images = []
        elif not isinstance(record_images, list):
            record_images = [record_images]
        self.pending = list(record_images)
        self.used: list = []
        self.where = where

    def take(self, explicit=None):
        """The reference for one image part: `explicit`, else the next of the record's `images`."""
        if explicit is None:
            if not self.pending:
                raise DataError(f"{self.where}: an image placeholder has no image (the record's 'images' list has "
                                f"{len(self.used)} entr{'y' if len(self.used) == 1 else 'ies'}).")
            explicit = self.pending.pop(0)
        self.used.append(explicit)
        return explicit

    def finish(self) -> list:
        if self.pending:
            raise DataError(f"{self.where}: {len(self.pending)} image(s) in 'images' have no place in the "
                            f"conversation (no image part or {IMAGE_PLACEHOLDER} left for them).")
        return self.used


def _part_reference(part: dict):
    if part.get("type") == "image_url":
        url = part.get("image_url")
        return url.get("url") if isinstance(url, dict) else url
    for key in ("image", "path", "url"):
        if part.get(key) is not None:
            return part[key]
    return None


def openai_content(content, refs: ImageRefs, where: str, text_of) -> str | list[dict]:
    """A message's content: plain text as it is, parts with images as the processor's part list."""
    if isinstance(content, str) and IMAGE_PLACEHOLDER in content and refs.pending:
        return text_with_placeholders(content, refs)
    if not isinstance(content, list):
        return text_of(content, where, "content")
    parts = []
    for part in content:
        if not isinstance(part, dict) or "type" not in part:
            raise DataError(f"{where}: every content part needs a 'type'.")
        if part["type"] in ("image", "image_url"):
            refs.take(_part_reference(part))
            parts.append({"type": "image"})
        elif part["type"] == "text":
            parts.append({"type": "text", "text": text_of(part.get("text"), where, "text")})
        else:
            raise DataError(f"{where}: content part type '{part['type']}' is not supported (text, image, image_url).")
    if not any(p["type"] == "image" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def text_with_placeholders(text: str, refs: ImageRefs) -> str | list[dict]:
    """ShareGPT/LLaVA text with `<image>` placeholders as parts, each taking the next image of the record."""
    if IMAGE_PLACEHOLDER not in text:
        return text
    parts: list[dict] = []
    for index, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if index:
            refs.take()
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def caption_messages(record: dict, image_ref, where: str, text_of) -> list[dict]:
    """The guide's records: `image` + `caption`/`text`, or `image` + `question`/`answer`, as a user/assistant pair."""
    answer = next((record[k] for k in ("caption", "answer", "text") if record.get(k) is not None), None)
    if answer is None:
        raise DataError(f"{where}: an image record needs a 'caption' (or 'question' and 'answer').")
    question = text_of(record.get("question") or DEFAULT_IMAGE_QUESTION, where, "question")
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": text_of(answer, where, "caption")}]


def image_base(origin: str) -> Path | None:
    """The folder relative image paths of a source are resolved against (the data file's), None for Hub data."""
    path = Path(origin)
    return path.parent if path.is_file() else None


def load_image(ref, base: Path | None, where: str):
    """The RGB PIL image a reference names; DataError naming the file and record when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_TRAINING_IMAGE_PIXELS
    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    described, source = _image_source(ref, base, where)
    try:
        with Image.open(source) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(f"{where}: image file {described} does not exist.") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{where}: image {described} is a directory, not an image file.") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"{where}: {described} is not an image Pillow can read.") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{where}: image {described} has more than {MAX_TRAINING_IMAGE_PIXELS:,} pixels.") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt files
        raise DataError(f"{where}: image {described} cannot be read ({exc}).") from exc


def _image_source(ref, base: Path | None, where: str):
    """(how to name the image in errors, what Image.open reads)."""
    if isinstance(ref, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        if ref.get("bytes"):
            return f"(embedded bytes of {ref.get('path') or 'the record'})", io.BytesIO(ref["bytes"])
        ref = ref.get("path")
    if isinstance(ref, bytes | bytearray):
        return "(embedded bytes)", io.BytesIO(ref)
    if not isinstance(ref, str) or not ref:
        raise DataError(f"{where}: an image reference must be a file path, a data: URL or image bytes, "
                        f"not {type(ref).__name__}.")
    if ref.startswith("data:"):
        header, _, payload = ref.partition(",")
        if ";base64" not in header:
            raise DataError(f"{where}: only base64 data: URLs are supported for images.")
        try:
            return "(data: URL)", io.BytesIO(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise DataError(f"{where}: the image data: URL is not valid base64.") from exc
    if ref.startswith(("http://", "https://")):
        raise DataError(f"{where}: image {ref} is a URL; training reads local files only (download it first).")
    path = Path(ref).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path), path
