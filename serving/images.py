"""Images in chat requests: OpenAI `image_url` content parts, decoded and checked against the limits below,
then rendered with the model's processor (its chat template and image token expansion) by the engine
(serving/engines/multimodal.py).

Limits (one place; docs/serving.md quotes them):
- an image is a `data:image/...;base64,` URL of at most MAX_IMAGE_BYTES decoded bytes and MAX_IMAGE_PIXELS
  pixels; a remote http(s) URL is refused unless the server runs with --allow-remote-images (then it is
  fetched with a REMOTE_TIMEOUT_S timeout and the same byte limit);
- a request carries at most MAX_IMAGES_PER_REQUEST images and MAX_REQUEST_IMAGE_BYTES decoded bytes of them;
- a multimodal model's default --max-body-bytes is MULTIMODAL_BODY_BYTES (room for those images in base64).
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from handlers import is_multimodal_dir
from serving.protocol import ApiError

MAX_IMAGE_BYTES = 8 * 2**20
MAX_IMAGE_PIXELS = 25_000_000
MAX_IMAGES_PER_REQUEST = 8
MAX_REQUEST_IMAGE_BYTES = 20 * 2**20
MULTIMODAL_BODY_BYTES = 28_000_000  # 20 MiB of images as base64 (4/3) plus the text
REMOTE_TIMEOUT_S = 10
IMAGE_PART_TYPES = ("image_url", "image")


def body_limit(configured: int, default: int, model_path: Path) -> int:
    """The request body limit: --max-body-bytes when given, else the default, raised for a multimodal model."""
    if configured != default or not is_multimodal_dir(model_path):
        return configured
    return max(configured, MULTIMODAL_BODY_BYTES)


def _image_url(part) -> str | None:
    data = part.model_dump() if hasattr(part, "model_dump") else dict(part)
    value = data.get("image_url") if data.get("type") == "image_url" else data.get("image")
    if isinstance(value, dict):
        value = value.get("url")
    return value if isinstance(value, str) and value else None


def template_messages(messages, engine, allow_remote: bool = False) -> tuple[list[dict], list]:
    """(the template's messages, the decoded PIL images in order) for a request's messages; ApiError 400 for
    image parts a text-only model (or engine) cannot read, bad or oversized images."""
    out, images, total = [], [], 0
    for number, message in enumerate(messages):
        parts = message.content if isinstance(message.content, list) else None
        if not parts or not any(p.type in IMAGE_PART_TYPES for p in parts):
            out.append(message.as_template_message())
            continue
        if getattr(engine, "processor", None) is None:
            raise ApiError(400, "This model is text-only (or served by an engine without image support): it cannot "
                                "read image parts; send text, or serve a multimodal model with --engine transformers.",
                           f"messages.{number}.content", "image_input_unsupported")
        converted = []
        for index, part in enumerate(parts):
            where = f"messages.{number}.content.{index}"
            if part.type == "text":
                converted.append({"type": "text", "text": part.text or ""})
            elif part.type in IMAGE_PART_TYPES:
                if len(images) == MAX_IMAGES_PER_REQUEST:
                    raise ApiError(400, f"A request may carry at most {MAX_IMAGES_PER_REQUEST} images.", where,
                                   "too_many_images")
                image, size = decode_image(_image_url(part), where, allow_remote)
                total += size
                if total > MAX_REQUEST_IMAGE_BYTES:
                    raise ApiError(400, f"The request's images total more than {MAX_REQUEST_IMAGE_BYTES} bytes.",
                                   where, "images_too_large")
                images.append(image)
                converted.append({"type": "image"})
            else:
                raise ApiError(400, f"Content part type '{part.type}' is not supported (text, image_url).", where,
                               "unsupported_content")
        text_only = message.model_copy(update={"content": "".join(p.get("text", "") for p in converted)})
        out.append({**text_only.as_template_message(), "content": converted})
    return out, images


def _fetch(url: str, where: str) -> bytes:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=REMOTE_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            data = response.read(MAX_IMAGE_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ApiError(400, f"Cannot fetch the image at {url}: {exc}.", where, "image_fetch_failed") from exc
    return data


def _image_bytes(url: str | None, where: str, allow_remote: bool) -> bytes:
    if not url:
        raise ApiError(400, "An image part needs image_url.url (a data: URL).", where, "invalid_image")
    if url.startswith(("http://", "https://")):
        if not allow_remote:
            raise ApiError(400, "Remote image URLs are not fetched by this server: send the image inline as a "
                                "data:image/...;base64 URL (or start it with --allow-remote-images).", where,
                           "remote_image_refused")
        return _fetch(url, where)
    header, comma, payload = url.partition(",")
    if not (url.startswith("data:") and comma and header.endswith(";base64")):
        raise ApiError(400, "An image URL must be a data:image/...;base64,... URL.", where, "invalid_image")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ApiError(400, f"The image is over {MAX_IMAGE_BYTES} bytes.", where, "image_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "The image data: URL is not valid base64.", where, "invalid_image") from exc


def decode_image(url: str | None, where: str, allow_remote: bool = False):
    """(RGB PIL image, its encoded size in bytes) from an image part's URL; ApiError 400 when it is not one."""
    from PIL import Image, UnidentifiedImageError

    data = _image_bytes(url, where, allow_remote)
    if len(data) > MAX_IMAGE_BYTES:
        raise ApiError(400, f"The image is over {MAX_IMAGE_BYTES} bytes.", where, "image_too_large")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ApiError(400, f"The image is {image.width}x{image.height}, over {MAX_IMAGE_PIXELS} pixels.",
                               where, "image_too_large")
            image.load()
            return image.convert("RGB"), len(data)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(400, "The image cannot be decoded (PNG, JPEG, WebP, GIF, BMP ... are accepted).", where,
                       "invalid_image") from exc


def load_image_file(path: str):
    """An image from a local file for `--chat`'s /image command; ValueError with a sentence when it is not one."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path).expanduser()
    try:
        if file.stat().st_size > MAX_IMAGE_BYTES:
            raise ValueError(f"{file} is over {MAX_IMAGE_BYTES} bytes.")
        with Image.open(file) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as exc:
        raise ValueError(f"{file} does not exist.") from exc
    except (UnidentifiedImageError, IsADirectoryError) as exc:
        raise ValueError(f"{file} is not an image.") from exc
    except OSError as exc:
        raise ValueError(f"{file} cannot be read: {exc}.") from exc
