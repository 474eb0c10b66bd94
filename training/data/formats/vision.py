"""The vision format: caption records, one image (`image`, `images`, `image_path` or `image_url`) with a
`caption` (or `text`), or with a `question` and `answer`. Images inside chat formats are those formats' business."""

from __future__ import annotations

from training.data.files import DataError
from training.data.formats.base import DataFormat, Example, record_place, text_field
from training.data.vision import caption_messages

NAME = "vision"
IMAGE_KEYS = ("image", "images", "image_path", "image_url")


def convert(record: dict, origin: str, index: int) -> Example:
    where = record_place(origin, index)
    image = next((record[k] for k in IMAGE_KEYS if record.get(k) is not None), None)
    if isinstance(image, list):
        if len(image) != 1:
            raise DataError(f"{where}: a caption record takes one image, not {len(image)} (use messages for more).")
        image = image[0]
    if image is None:
        raise DataError(f"{where}: the record has no image (fields {', '.join(IMAGE_KEYS)}).")
    return Example(NAME, origin, index, images=[image], messages=caption_messages(record, image, where, text_field))


FORMAT = DataFormat(NAME, signatures=(("image",), ("images",)), required=(), convert=convert)
