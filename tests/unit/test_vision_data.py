"""Image records in every supported shape, image paths relative to the data file, and bad image data failing
with one sentence naming the file and the record (no model needed)."""

from __future__ import annotations

import base64
import json

import pytest
from tiny_vision import colour_image

from training.data.files import DataError
from training.data.formats import examples_from_source, refuse_images
from training.data.sources import load_sources
from training.data.vision import image_base, load_image

QUESTION = "What colour is this image?"


def _examples(path):
    return [e for source in load_sources(str(path)) for e in examples_from_source(source, None)]


def _write(folder, name, records):
    path = folder / name
    path.write_text(json.dumps(records))
    return path


def _parts(message):
    return [part["type"] for part in message["content"]]


def test_guide_caption_and_question_records(tmp_path):
    colour_image(tmp_path / "img" / "red.png", "red")
    data = _write(tmp_path, "v.json", [{"image": "img/red.png", "caption": "A red square."},
                                       {"image": "img/red.png", "question": QUESTION, "answer": "red"}])
    caption, qa = _examples(data)
    assert caption.format == qa.format == "vision" and caption.images == ["img/red.png"]
    assert _parts(caption.messages[0]) == ["image", "text"] and caption.messages[1]["content"] == "A red square."
    assert qa.messages[0]["content"][1]["text"] == QUESTION and qa.messages[1] == {"role": "assistant",
                                                                                 "content": "red"}
    # relative to the data file, wherever training runs from
    assert load_image(caption.image, image_base(caption.origin), "here").getpixel((0, 0)) == (220, 30, 30)


def test_openai_image_parts(tmp_path):
    png = colour_image(tmp_path / "blue.png", "blue").read_bytes()
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    data = _write(tmp_path, "chat.json", [
        {"messages": [{"role": "system", "content": "Name colours."},
                      {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": QUESTION}]},
                      {"role": "assistant", "content": "blue"}]},
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
         "images": ["blue.png"]},
    ])
    inline, listed = _examples(data)
    assert inline.format == "openai" and inline.images == [url] and _parts(inline.messages[1]) == ["image", "text"]
    assert inline.messages[0]["content"] == "Name colours."  # text messages stay plain text
    assert listed.images == ["blue.png"] and listed.messages[1]["content"] == "blue"
    assert load_image(inline.image, None, "here").size == (32, 32)


def test_sharegpt_image_placeholders(tmp_path):
    data = _write(tmp_path, "sg.json", [{"conversations": [
        {"from": "human", "value": "<image>\nWhich is first? <image> second?"},
        {"from": "gpt", "value": "red, then green"}], "images": ["a.png", "b.png"]}])
    example = _examples(data)[0]
    assert example.format == "sharegpt" and example.images == ["a.png", "b.png"]
    assert _parts(example.messages[0]) == ["image", "text", "image", "text"]
    assert example.messages[0]["content"][1]["text"] == "\nWhich is first? "


@pytest.mark.parametrize(("record", "message"), [
    ({"conversations": [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "x"}],
      "images": ["a.png"]}, "record 1: an image placeholder has no image"),
    ({"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
      "images": ["a.png", "b.png"]}, r"record 1: 1 image\(s\) in 'images' have no place"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "content part type 'audio' is not supported"),
    ({"image": "a.png", "question": "q"}, "needs a 'caption'"),
    ({"image": ["a.png", "b.png"], "caption": "c"}, "takes one image, not 2"),
])
def test_malformed_image_records(tmp_path, record, message):
    with pytest.raises(DataError, match=message):
        _examples(_write(tmp_path, "bad.json", [record]))


def test_unreadable_images_name_the_file_and_record(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    colour_image(tmp_path / "ok.png", "red")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes((tmp_path / "ok.png").read_bytes()[:40])
    data = _write(tmp_path, "v.json", [{"image": name, "caption": "c"} for name in
                                       ("ok.png", "missing.png", "notes.png", "folder.png", "cut.png")])
    examples = _examples(data)
    base = image_base(examples[0].origin)
    assert load_image(examples[0].image, base, "x").size == (32, 32)
    expected = [f"{tmp_path / 'missing.png'} does not exist", f"{tmp_path / 'notes.png'} is not an image",
                "is a directory", str(tmp_path / "cut.png")]
    for example, text in zip(examples[1:], expected, strict=True):
        where = f"{example.origin}, record {example.index + 1}"
        with pytest.raises(DataError) as error:
            load_image(example.image, base, where)
        assert text in str(error.value) and f"v.json, record {example.index + 1}:" in str(error.value)
    with pytest.raises(DataError, match="training reads local files only"):
        load_image("https://example.com/a.png", base, "here")
    with pytest.raises(DataError, match="not valid base64"):
        load_image("data:image/png;base64,@@@", base, "here")


def test_text_only_model_refuses_image_examples_of_any_format(tmp_path):
    data = _write(tmp_path, "chat.json", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                      {"role": "assistant", "content": "red"}], "images": ["a.png"]}])
    with pytest.raises(DataError, match=r"chat.json, record 2: an image example \(1 in the dataset\), but tiny "
                                        r"\(llama\) is a text-only model"):
        refuse_images(_examples(data), "tiny (llama)")
