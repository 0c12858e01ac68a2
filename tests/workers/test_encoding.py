"""Result encoding (PNG default, WebP/JPEG on request) and input decoding."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from workers.runner.encoding import InvalidInput, decode_image, encode_answer, encode_image, output_format


def _gradient(size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size))
    image.putdata([(x * 8 % 256, y * 8 % 256, 128) for y in range(size) for x in range(size)])
    return image


@pytest.mark.parametrize(
    ("fmt", "pil_format", "ext", "ctype"),
    [("png", "PNG", "png", "image/png"), ("webp", "WEBP", "webp", "image/webp"), ("jpeg", "JPEG", "jpg", "image/jpeg")],
)
def test_encodes_in_the_requested_format(fmt: str, pil_format: str, ext: str, ctype: str) -> None:
    encoded = encode_image(_gradient(), fmt)
    assert (encoded.extension, encoded.content_type) == (ext, ctype)
    with Image.open(io.BytesIO(encoded.data)) as decoded:
        assert decoded.format == pil_format and decoded.size == (32, 32)


def test_png_is_lossless() -> None:
    image = _gradient()
    assert decode_image(encode_image(image, "png").data).tobytes() == image.tobytes()


def test_output_format_defaults_to_png_and_rejects_unknown() -> None:
    assert output_format({}) == "png"
    assert output_format({"output_format": "WEBP"}) == "webp"
    with pytest.raises(InvalidInput):
        output_format({"output_format": "gif"})


def test_undecodable_input_is_invalid_input() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_image(b"definitely not an image")
    assert caught.value.code == "invalid_input"


def test_decoding_converts_to_rgb() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue()).mode == "RGB"


def test_answer_document() -> None:
    doc = json.loads(encode_answer("job-1", "a red square", 7, "tiny"))
    assert doc == {"job_id": "job-1", "text": "a red square", "seed": 7, "model_id": "tiny"}
