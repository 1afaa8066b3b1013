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

# Query templates as used for CLIP zero-shot prompts: they dominate real retrieval queries, so they
# get whole-word tokens (as they do in the real vocabulary).
_TEMPLATES = """
a photo of a. a photo of an. a photo of the. a picture of a. a picture of an. an image of a. an image of the.
a close-up photo of a. a close-up photo of the. a cropped photo of a. a bright photo of a. a dark photo of a.
a blurry photo of a. a good photo of a. a bad photo of a. a low resolution photo of a.
a jpeg corrupted photo of a.
a photo of a small. a photo of a big. a photo of one. a photo of many. a rendering of a. a drawing of a.
a sketch of a. a painting of a. a sculpture of a. a cartoon. a tattoo of a. a toy. an origami. a plastic.
art of the. itap of a. a black and white photo of the. a pixelated photo of the. a photo of the nice.
a photo of the weird. a photo of the cool. a photo of my. a photo of a clean. a photo of a dirty.
a photo taken in the wild. a photo taken at night. a photo taken during the day. a macro photo of a.
a wildlife photo of a. a field guide photo of a. a specimen of. a species of. this is a photo of.
there is a in the scene. there is the in the scene. a type of animal. a type of plant. a type of bird.
a type of insect. a type of flower. a type of fish. a type of mushroom. a type of tree.
"""

# Common English words of image descriptions: scenes, colours, counts, places, objects.
_COMMON = """
the a an of in on at with and or to from by for is are was be this that these those it its there here
one two three four five six seven eight nine ten many some several few group pair single
red orange yellow green blue purple pink brown black white gray grey golden silver dark light bright pale
small large big tiny huge little tall short long wide young old adult juvenile male female baby
photo photograph picture image snapshot close up closeup view shot portrait landscape scene background
forest tree trees grass field meadow garden park river lake sea ocean beach sand rock rocks stone mountain
mountains hill desert snow ice water pond stream sky cloud clouds sun sunset sunrise night day morning
city street road building house car bus truck bicycle boat train plane airplane bridge window door wall
table chair bed sofa kitchen room floor food fruit apple banana orange flower flowers leaf leaves branch
animal animals bird birds fish insect insects mammal reptile amphibian plant plants mushroom fungus
cat cats dog dogs horse cow sheep goat pig deer fox wolf bear lion tiger leopard cheetah elephant giraffe
zebra monkey ape rabbit mouse rat squirrel bat owl eagle hawk duck goose swan crow sparrow robin parrot
penguin frog toad snake lizard turtle tortoise crocodile shark whale dolphin octopus crab spider ant bee
butterfly moth beetle dragonfly fly worm snail rose tulip daisy sunflower lily orchid oak pine maple fern
moss cactus person people man woman child boy girl hand face eye eyes head body wing wings tail feather
fur skin shell nest egg eggs sitting standing walking running flying swimming eating sleeping perched
looking lying resting hunting feeding playing close distant near far front side top bottom left right
wild domestic common rare native species genus family order class kingdom specimen habitat wildlife nature
"""

# Latin-style binomial names (genus + epithet), the shape of species labels in biodiversity retrieval.
_SPECIES = """
felis catus. canis lupus familiaris. canis lupus. vulpes vulpes. ursus arctos. ursus maritimus.
panthera leo. panthera tigris. panthera pardus. acinonyx jubatus. equus caballus. equus quagga.
bos taurus. ovis aries. capra hircus. sus scrofa. cervus elaphus. odocoileus virginianus.
loxodonta africana. elephas maximus. giraffa camelopardalis. homo sapiens. pan troglodytes.
oryctolagus cuniculus. mus musculus. rattus norvegicus. sciurus vulgaris. sciurus carolinensis.
procyon lotor. lutra lutra. meles meles. erinaceus europaeus. bubo bubo. strix aluco. tyto alba.
aquila chrysaetos. haliaeetus leucocephalus. falco peregrinus. buteo buteo. anas platyrhynchos.
cygnus olor. branta canadensis. corvus corax. corvus corone. passer domesticus. turdus merula.
turdus migratorius. erithacus rubecula. parus major. cyanistes caeruleus. pica pica. columba livia.
ardea cinerea. ardea herodias. larus argentatus. sturnus vulgaris. hirundo rustica. apus apus.
spheniscus demersus. aptenodytes forsteri. rana temporaria. bufo bufo. lithobates catesbeianus.
natrix natrix. vipera berus. python regius. lacerta agilis. chelonia mydas. testudo hermanni.
crocodylus niloticus. alligator mississippiensis. carcharodon carcharias. salmo salar. salmo trutta.
oncorhynchus mykiss. cyprinus carpio. esox lucius. tursiops truncatus. orcinus orca. megaptera novaeangliae.
octopus vulgaris. carcinus maenas. apis mellifera. bombus terrestris. danaus plexippus. vanessa atalanta.
aglais io. pieris rapae. papilio machaon. coccinella septempunctata. lucanus cervus. anax imperator.
musca domestica. formica rufa. araneus diadematus. helix aspersa. lumbricus terrestris.
quercus robur. quercus alba. pinus sylvestris. acer saccharum. acer pseudoplatanus. betula pendula.
fagus sylvatica. fraxinus excelsior. salix alba. taraxacum officinale. bellis perennis. rosa canina.
helianthus annuus. tulipa gesneriana. lilium candidum. papaver rhoeas. trifolium repens. urtica dioica.
pteridium aquilinum. amanita muscaria. boletus edulis. agaricus bisporus. cantharellus cibarius.
"""


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
    lines: list[str] = []
    # Repetition weights the merges: templates first (most frequent), then everyday words, then species names.
    for text, weight in ((_TEMPLATES, 4), (_COMMON, 2), (_SPECIES, 1)):
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
