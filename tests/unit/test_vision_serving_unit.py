"""Images in a request: size limits in pixels and bytes (the served model is in tests/e2e/test_vision_serving.py)."""

import pytest
from tiny_vision import colour_image, data_url


def test_image_size_limits(monkeypatch, tmp_path):
    from serving import images
    from serving.protocol import ApiError

    png = colour_image(tmp_path / "big.png", "red", size=64)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ApiError, match="64x64, over 1000 pixels"):
        images.decode_image(data_url(png), "messages.0")
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 50)
    with pytest.raises(ApiError, match="over 50 bytes"):
        images.decode_image(data_url(png), "messages.0")
