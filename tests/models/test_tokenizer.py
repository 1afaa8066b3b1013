"""Tests of the offline CLIP tokenizer: id range, specials, padding, round trip, byte fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.models.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, build_offline_tokenizer, learn_merges


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer folder built once for this module."""
    out = tmp_path_factory.mktemp("tokenizer")
    build_offline_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir: Path):
    """The saved tokenizer, reloaded the way a model folder is read."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tok_dir)


def test_files_and_vocab_layout(tok_dir: Path) -> None:
    """The folder holds HF and original-format files; the vocabulary has CLIP's exact layout."""
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (tok_dir / name).is_file(), name
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == VOCAB_SIZE
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE))
    assert vocab["<|startoftext|>"] == BOS_ID and vocab["<|endoftext|>"] == EOS_ID
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # byte tokens first, then their word-end forms
    assert (tok_dir / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")


def test_loaders_agree(tok_dir: Path, tok) -> None:
    """AutoTokenizer loads the same CLIP tokenizer with the real model's length and pad token."""
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(tok_dir)
    assert type(auto).__name__ == "CLIPTokenizer"
    assert len(auto) == VOCAB_SIZE and auto.model_max_length == 77
    assert auto.pad_token_id == EOS_ID
    text = "a close-up photo of Canis lupus"
    assert auto(text)["input_ids"] == tok(text)["input_ids"]


def test_ids_specials_and_padding(tok) -> None:
    """Ids stay below 49408, sequences start/end with the specials, pad/truncate to 77."""
    texts = ["a photo of a cat", "an image of the forest at night", "word " * 200]
    batch = tok(texts, padding="max_length", truncation=True, max_length=77)
    for ids in batch["input_ids"]:
        assert len(ids) == 77
        assert max(ids) < VOCAB_SIZE and min(ids) >= 0
        assert ids[0] == BOS_ID and EOS_ID in ids
    assert batch["input_ids"][2][-1] == EOS_ID  # truncation keeps the end token
    assert sum(batch["attention_mask"][0]) < 77  # the short text is padded, with a zero mask


def test_common_words_are_single_tokens(tok) -> None:
    """The learned merges make query words whole tokens, as in the real vocabulary."""
    tokens = tok.convert_ids_to_tokens(tok("a photo of felis catus")["input_ids"])
    words = ["a</w>", "photo</w>", "of</w>", "felis</w>", "catus</w>"]
    assert tokens == ["<|startoftext|>", *words, "<|endoftext|>"]


def test_round_trip_lowercases(tok) -> None:
    """Decoding gives the text back, lower-cased."""
    ids = tok("A Photo of Felis CATUS", padding="max_length", max_length=77)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of felis catus"


@pytest.mark.parametrize("text", ["Ñandú über 🦜", "zqxjv kwyzz", "東京の猫", "\u200b\u2603 ?!"])
def test_unknown_words_use_bytes(tok, text: str) -> None:
    """Any text tokenizes (byte fallback) to valid ids without the unknown token and decodes back."""
    ids = tok(text)["input_ids"]
    assert len(ids) > 2 and max(ids) < VOCAB_SIZE
    assert EOS_ID not in ids[1:-1]  # <|endoftext|> doubles as unk: it must not appear inside
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")


def test_training_is_deterministic() -> None:
    """Retraining the merges (bypassing the in-process cache) gives the same list: ids are reproducible."""
    assert learn_merges.__wrapped__() == learn_merges()
    assert len(learn_merges()) > 500
