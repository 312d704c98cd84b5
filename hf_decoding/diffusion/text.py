"""Offline English text for the small denoiser: Debian `fortunes`, a character-level tokenizer, fixed windows.

`apt-get install fortunes` puts about 2.5 MB of quotes in `/usr/share/games/fortunes/`; each file holds
records separated by lines with a single `%`.
"""

from __future__ import annotations

import collections
import logging
import os
import random
from collections.abc import Sequence

import torch

from ..errors import MissingModelError, invalid_argument

__all__ = [
    "DEFAULT_FORTUNES_DIR",
    "SPECIAL_TOKENS",
    "build_char_tokenizer",
    "encode_stream",
    "load_fortunes",
    "split_records",
    "text_windows",
]

logger = logging.getLogger(__name__)

DEFAULT_FORTUNES_DIR = "/usr/share/games/fortunes"
#: Special tokens of the character tokenizer, in id order: pad 0, unk 1, mask 2, eos 3.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[MASK]", "[EOS]")


def _clean(text: str) -> str:
    # fortunes use backspace overstriking ("_\bx") for underlining, and tabs
    out: list[str] = []
    for ch in text.replace("\t", "    "):
        if ch == "\b":
            if out:
                out.pop()
            continue
        if ch == "\n" or (ord(ch) >= 32 and ord(ch) != 127):
            out.append(ch)
    return "".join(out).strip()


def load_fortunes(directory: str = DEFAULT_FORTUNES_DIR, min_chars: int = 16) -> list[str]:
    """All fortune records of the plain-text files in `directory` (not `.dat`/`.u8`), cleaned, in a fixed order.

    Raises:
        [`MissingModelError`]: the directory is missing; the message gives the `apt-get` line.
    """
    if not os.path.isdir(directory):
        raise MissingModelError(
            f"No fortunes at {directory!r}. Fix: `apt-get install -y fortunes` (Debian/Ubuntu), or pass "
            "--corpus-dir pointing at a folder of '%'-separated text files."
        )
    records: list[str] = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if "." in name or not os.path.isfile(path):
            continue
        with open(path, encoding="latin-1") as handle:
            chunks = handle.read().split("\n%\n")
        records.extend(r for r in (_clean(c) for c in chunks) if len(r) >= min_chars)
    logger.info("loaded %d fortune records from %s", len(records), directory)
    return records


def split_records(records: Sequence[str], holdout_fraction: float = 0.05, seed: int = 0) -> tuple[list, list]:
    """A seeded shuffle split into `(train, heldout)` records."""
    if not 0 < holdout_fraction < 1:
        raise invalid_argument("holdout_fraction", holdout_fraction, "a number in (0, 1)")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_heldout = max(1, int(len(records) * holdout_fraction))
    heldout = [records[i] for i in order[:n_heldout]]
    train = [records[i] for i in order[n_heldout:]]
    return train, heldout


def build_char_tokenizer(texts: Sequence[str], min_count: int = 20):
    """A character-level `PreTrainedTokenizerFast` (from the `tokenizers` library) over the characters of `texts`.

    Every character seen at least `min_count` times gets an id after [`SPECIAL_TOKENS`]; rarer ones map to
    `[UNK]`. Decoding concatenates characters (no spaces are inserted). It saves and loads with
    `save_pretrained` / `AutoTokenizer.from_pretrained` like any fast tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts = collections.Counter(ch for text in texts for ch in text)
    chars = sorted(ch for ch, n in counts.items() if n >= min_count)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]", eos_token="[EOS]"
    )


def encode_stream(records: Sequence[str], tokenizer) -> torch.LongTensor:
    """Every record's character ids followed by EOS, concatenated: shape `(total_tokens,)`."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in records:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def text_windows(stream: torch.LongTensor, length: int, max_windows: int | None = None) -> torch.LongTensor:
    """Non-overlapping windows of `length` tokens from a stream, shape `(W, length)`."""
    count = stream.numel() // length
    if max_windows is not None:
        count = min(count, max_windows)
    return stream[: count * length].view(count, length)
