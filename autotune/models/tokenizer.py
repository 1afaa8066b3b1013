"""An offline CLIP tokenizer: CLIP's byte-level BPE format, merges learned from built-in text."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

from autotune.errors import ModelError

VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407
MAX_LENGTH = 77
END_OF_WORD = "</w>"

# CLIP's exact split pattern (transformers' CLIPTokenizer): words, single digits, punctuation runs.
_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

# The built-in text, kept as data (tokenizer_corpus.json beside this file), in three parts:
# - templates: query templates as used for CLIP zero-shot prompts; they dominate real retrieval queries, so they
#   get whole-word tokens (as they do in the real vocabulary);
# - common: English words of image descriptions (scenes, colours, counts, places, objects);
# - species: Latin-style binomial names (genus + epithet), the shape of species labels in biodiversity retrieval.
_CORPUS_FILE = Path(__file__).with_name("tokenizer_corpus.json")


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (printable bytes first, in this exact order)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _configure(tok: Tokenizer) -> None:
    """Give a raw tokenizer CLIP's normaliser and pre-tokeniser, so training sees the words CLIP will see."""
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def builtin_corpus() -> list[str]:
    """Return the built-in training text (templates, common words, species names), one line per item."""
    parts = json.loads(_CORPUS_FILE.read_text(encoding="utf-8"))
    lines: list[str] = []
    # Repetition weights the merges: templates first (most frequent), then everyday words, then species names.
    for text, weight in ((parts["templates"], 4), (parts["common"], 2), (parts["species"], 1)):
        items = [s.strip() for s in text.replace("\n", " ").split(".") if s.strip()]
        lines.extend(items * weight)
    return lines


def _pair_counts(words: dict[tuple[str, ...], int]) -> dict[tuple[str, str], int]:
    """Count adjacent symbol pairs over words weighted by frequency."""
    counts: dict[tuple[str, str], int] = {}
    for word, freq in words.items():
        for pair in zip(word, word[1:], strict=False):
            counts[pair] = counts.get(pair, 0) + freq
    return counts


def _merge_word(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every occurrence of ``pair`` in ``word`` by the joined symbol (left to right)."""
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


@lru_cache(maxsize=1)
def learn_merges() -> tuple[tuple[str, str], ...]:
    """Learn byte-level BPE merges (CLIP format, ``</w>`` word ends) from the built-in corpus.

    A plain BPE loop rather than ``tokenizers``' BpeTrainer: the trainer breaks count ties in hash order, so
    its merges (and thus token ids) change from run to run; here ties go to the smallest pair, always.
    """
    tok = Tokenizer(BPE())
    _configure(tok)
    words: dict[tuple[str, ...], int] = {}
    for line in builtin_corpus():
        normalized = tok.normalizer.normalize_str(line) if tok.normalizer else line
        for piece, _span in tok.pre_tokenizer.pre_tokenize_str(normalized) if tok.pre_tokenizer else []:
            symbols = tuple(piece[:-1]) + (piece[-1] + END_OF_WORD,)
            words[symbols] = words.get(symbols, 0) + 1
    merges: list[tuple[str, str]] = []
    counts = _pair_counts(words)
    while counts:
        # Highest count first; equal counts by symbol order so the result never depends on hashing.
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        merged = {w: f for w, f in words.items() if pair[0] in w and pair[1] in w}
        for word, freq in merged.items():
            new_word = _merge_word(word, pair)
            if new_word == word:
                continue
            del words[word]
            words[new_word] = words.get(new_word, 0) + freq
            # Update pair counts incrementally: only the words that changed contribute differently.
            for old in zip(word, word[1:], strict=False):
                counts[old] -= freq
                if counts[old] == 0:
                    del counts[old]
            for new in zip(new_word, new_word[1:], strict=False):
                counts[new] = counts.get(new, 0) + freq
    return tuple(merges)


def build_vocab(merges: tuple[tuple[str, str], ...]) -> dict[str, int]:
    """Lay out CLIP's vocabulary: 256 bytes, their ``</w>`` forms, merge results, placeholders, then specials.

    Example:
        >>> vocab = build_vocab(learn_merges())
        >>> len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"]
        (49408, 49406, 49407)
    """
    byte_tokens = list(_bytes_to_unicode().values())
    tokens = byte_tokens + [t + END_OF_WORD for t in byte_tokens]
    seen = set(tokens)
    for a, b in merges:
        merged = a + b
        if merged not in seen:
            seen.add(merged)
            tokens.append(merged)
    if len(tokens) > BOS_ID:
        raise ModelError(f"offline tokenizer: {len(tokens)} base+merge tokens do not fit below id {BOS_ID}")
    # Placeholders keep the real id layout (specials at 49406/49407): BPE only emits tokens reachable
    # by merges, so these ids are never produced by encoding.
    n = 0
    while len(tokens) < BOS_ID:
        name = f"<|unused{n}|>"
        n += 1
        if name not in seen:
            tokens.append(name)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}


def build_offline_tokenizer(out_dir: Path) -> Any:
    """Build a working CLIP tokenizer without any download and save it (HF files + vocab.json/merges.txt).

    The result has CLIP's layout (49408 ids, ``<|startoftext|>``=49406, ``<|endoftext|>``=49407, lower-casing,
    ``</w>`` word ends, pads with ``<|endoftext|>``, ``model_max_length`` 77); any text tokenizes through the
    256 byte tokens. Only the merges differ from the real tokenizer (ids of real checkpoints do not match).

    Example:
        >>> tok = build_offline_tokenizer(Path("/tmp/clip-tok"))
        >>> ids = tok("a photo of felis catus", padding="max_length", max_length=77)["input_ids"]
        >>> ids[0], len(ids)
        (49406, 77)
        >>> tok.decode(ids, skip_special_tokens=True)
        'a photo of felis catus'
    """
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merges = learn_merges()
    vocab = build_vocab(merges)
    # tokenizers' BPE takes merges as (left, right) tuples; transformers annotates them as strings.
    merge_pairs: Any = list(merges)
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merge_pairs,
        model_max_length=MAX_LENGTH,
        do_lower_case=True,
    )
    tokenizer.save_pretrained(str(out_dir))
    # Also ship the slow-format files, so tools that only understand CLIP's original layout can read it.
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (out_dir / "merges.txt").write_text(merges_text, encoding="utf-8")
    return tokenizer
