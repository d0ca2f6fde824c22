"""ModelTokenizer: the batch encoder without offsets (when the library runs batches serially)
gives the token ids the plain encoder gives."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from pdmodel.tokenizer import DEFAULT_MODEL_DIR, ModelTokenizer, serial_batches

TEXTS = [
    "",
    " ",
    "What is AI?",
    "has decode not and her also all",
    "naïve café — 東京 🚀 emoji\n\n\ttabs  and   spaces",
    "<|end_of_text|> inside text <|begin_of_text|>",
    "x" * 5000,
]


def test_serial_encoding_gives_the_same_ids() -> None:
    library = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    plain = ModelTokenizer(library, [], serial=False)
    serial = ModelTokenizer(library, [], serial=True)
    for text in TEXTS:
        expected = library.encode(text, add_special_tokens=False).ids
        assert serial.encode(text) == expected
        assert plain.encode(text) == expected
        assert serial.encode_unlocked(text) == expected


@pytest.mark.parametrize(
    ("value", "serial"),
    [(None, False), ("false", True), ("FALSE", True), ("0", True), ("true", False), ("1", False)],
)
def test_batches_are_serial_when_the_library_is_told_so(
    monkeypatch: pytest.MonkeyPatch, value: str | None, serial: bool
) -> None:
    if value is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", value)
    assert serial_batches() is serial
