r"""A learned process reward model: a value head on a frozen causal LM, trained on the policy's own samples.

```python
from hf_decoding.rewards.training import LearnedPRM, PRMTrainingConfig, train_prm
result = train_prm(model, tokenizer, train_problems, heldout_problems, PRMTrainingConfig(), output_dir="prm")
prm = LearnedPRM.from_pretrained("prm")        # a ProcessRewardModel (base: the default SmolLM2)
prm.score(["What is 3 + 4?"], ["3 + 4 = 7\n\nThe answer is 7."])
```

**Labelling (why outcome labels).** Math-Shepherd labels a step by rolling out `M` completions from it and checking
their final answers; with `S` steps per sample that costs `S * M` extra generations per sample, far beyond 2 CPU
cores. Here each completion is its own single rollout: every step of a sample gets the sample's outcome (final answer
right or wrong vs the gold answer), the Math-Shepherd "hard" label with `M = 1`. Labelling then costs exactly the
`K` samples per problem, nothing more. Its noise is one-sided in kind: a correct step followed by a mistake is
labelled wrong, and a wrong equation that is later ignored (or a lucky final answer) is labelled right. To measure
it, every step also gets an exact label from [`check_equations`] (all equations of the step right; a step with no
equation inherits the outcome), and the fraction of steps where the two disagree is reported as `label_noise`. The
exact label is never used for training: it only measures the noise and scores the held-out AUROC.

**Scorer.** A `Linear(hidden, 2)` head (class 1 = "step is correct") reads the base model's final hidden state at a
step-tag token appended after each step, in the [`ProcessRewardModel`] layout (chat template, steps separated by
the tag). The tag is a special token the tokenizer already has and normal text never contains (`<file_sep>` for
SmolLM2, a code-pretraining separator). The base is frozen, so its hidden states at the tags are computed once and
the head is trained on them with cross-entropy and AdamW (accelerate's `Accelerator` places it when installed).

**Saved.** `prm_head.safetensors` (the head only), `prm_config.json` (base model name, hidden size, step tag,
positive index, training config, metrics) and a `README.md` card. [`LearnedPRM.from_pretrained`] returns a
[`ProcessRewardModel`] whose model is a [`LearnedPRM`]: base hidden states -> head at every position, so scoring and
the KV-cached decoding sessions of `ProcessRewardModel` work unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import TokenClassifierOutput

from ..errors import IncompatibleCheckpointError, invalid_argument
from ..models import load_default_model
from .answers import extract_answer, normalize_answer
from .arithmetic import check_equations
from .base import split_steps
from .process import ProcessRewardModel

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_STEP_TAG",
    "HEAD_FILE",
    "LabelledSample",
    "LearnedPRM",
    "PRMTrainingConfig",
    "PRMTrainingResult",
    "auroc",
    "label_samples",
    "train_prm",
]

logger = logging.getLogger(__name__)

HEAD_FILE = "prm_head.safetensors"
CONFIG_FILE = "prm_config.json"
DEFAULT_STEP_TAG = "<file_sep>"
"""SmolLM2's code-pretraining file separator: one token, never produced in chat text."""


# --------------------------------------------------------------------------------------------------------- metrics
def auroc(scores: Sequence[float], labels: Sequence[int | bool]) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U, ties counted half); `nan` without both classes."""
    if len(scores) != len(labels):
        raise invalid_argument("labels", f"{len(labels)} labels", f"one label per score ({len(scores)} scores)")
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return math.nan
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# --------------------------------------------------------------------------------------------------------- labels
@dataclass
class LabelledSample:
    """One policy sample: its steps, the outcome label (propagated to every step) and the exact per-step label."""

    prompt: str
    answer: str
    completion: str
    steps: list[str]
    correct: bool
    outcome_labels: list[int]
    exact_labels: list[int]


def step_labels(completion: str, answer: str, step_delimiter: str = "\n\n") -> LabelledSample:
    """Labels one completion: outcome (final answer == gold) on every step, and the exact verifier label per step.

    Args:
        completion (`str`): the sampled answer.
        answer (`str`): the gold answer.
        step_delimiter (`str`, *optional*, defaults to `"\n\n"`): how the completion splits into steps.
    """
    steps = split_steps(completion, step_delimiter)
    correct = extract_answer(completion) == normalize_answer(answer)
    exact = []
    for step in steps:
        right, total = check_equations(step)
        exact.append(int(right == total) if total else int(correct))
    return LabelledSample("", answer, completion, steps, correct, [int(correct)] * len(steps), exact)


def label_samples(
    model: Any,
    tokenizer: Any,
    problems: Sequence[tuple[str, str]],
    *,
    samples_per_problem: int = 4,
    max_new_tokens: int = 64,
    temperature: float = 0.4,
    batch_size: int = 8,
    seed: int = 0,
    step_delimiter: str = "\n\n",
    progress: bool = True,
) -> tuple[list[LabelledSample], float]:
    """Samples `samples_per_problem` completions per `(prompt, gold answer)` with plain `model.generate` and labels
    their steps (see the module docs). Returns the samples and the wall time in seconds.

    Sampling is seeded per batch (`seed + batch index`) inside `torch.random.fork_rng`, so the caller's global RNG
    is left untouched and a run is reproducible.
    """
    if not problems:
        raise invalid_argument("problems", problems, "a non-empty list of (prompt, answer) pairs")
    started = time.perf_counter()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[LabelledSample] = []
    try:
        starts = list(range(0, len(problems), batch_size))
        for number, start in enumerate(tqdm(starts, desc="label", disable=not progress)):
            batch = problems[start : start + batch_size]
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
                )
                for p, _ in batch
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed + number)
                seqs = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=samples_per_problem,
                    pad_token_id=pad,
                )  # (len(batch) * K, prompt + new)
            decoded = tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for row, text in enumerate(decoded):
                prompt, answer = batch[row // samples_per_problem]
                sample = step_labels(text.strip(), answer, step_delimiter)
                sample.prompt = prompt
                out.append(sample)
    finally:
        tokenizer.padding_side = side
    return out, time.perf_counter() - started


def label_noise(samples: Sequence[LabelledSample]) -> dict[str, float]:
    """Disagreement of the outcome labels with the exact ones, over all steps and over steps with equations."""
    pairs = [(o, e, s) for x in samples for o, e, s in zip(x.outcome_labels, x.exact_labels, x.steps, strict=True)]
    checked = [(o, e) for o, e, s in pairs if check_equations(s)[1]]
    return {
        "label_noise": sum(o != e for o, e, _ in pairs) / max(len(pairs), 1),
        "label_noise_steps_with_equations": sum(o != e for o, e in checked) / max(len(checked), 1),
        "steps_with_equations": len(checked),
    }


# --------------------------------------------------------------------------------------------------------- model
class LearnedPRM(nn.Module):
    """A frozen causal LM's final hidden states -> `Linear(hidden, 2)` at every position (logits `(B, L, 2)`).

    Forward takes what [`ProcessRewardModel`] passes (`input_ids`, `attention_mask`, `position_ids`, `use_cache`
    and the cache under the installed transformers' keyword) and hands it all to the base's backbone.

    Args:
        base (`PreTrainedModel`): the causal LM (its `base_model` backbone is called; it is frozen in place,
            `requires_grad=False`, and its weights are never saved).
        head (`nn.Linear`, *optional*): the value head; a fresh `Linear(hidden_size, 2)` by default.
        prm_config (`dict`, *optional*): what `save_pretrained` records (base name, step tag, metrics, ...).
    """

    def __init__(self, base: Any, head: nn.Linear | None = None, prm_config: dict[str, Any] | None = None):
        super().__init__()
        self.base = base
        self.config = base.config
        hidden = int(base.config.hidden_size)
        self.head = head if head is not None else nn.Linear(hidden, 2)
        if self.head.in_features != hidden or self.head.out_features != 2:
            raise IncompatibleCheckpointError(
                f"`head` must map the base's hidden size {hidden} to 2 classes, got Linear({self.head.in_features}, "
                f"{self.head.out_features}). Load a head trained on this base, or train one with `train_prm`."
            )
        self.prm_config = dict(prm_config or {})
        for p in self.base.parameters():
            p.requires_grad_(False)

    def hidden_states(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        """The backbone's output (`last_hidden_state` `(B, L, H)`, and the cache when `use_cache`)."""
        return self.base.base_model(input_ids=input_ids, **kwargs)

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> TokenClassifierOutput:
        hidden = self.hidden_states(input_ids, **kwargs).last_hidden_state  # (B, L, H)
        return TokenClassifierOutput(logits=self.head(hidden.to(self.head.weight.dtype)))  # (B, L, 2)

    def save_pretrained(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Writes `prm_head.safetensors` (head only), `prm_config.json` and `README.md` into `directory`."""
        path = pathlib.Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(path / HEAD_FILE), metadata={"format": "pt"})
        config = {**self.prm_config, "hidden_size": int(self.config.hidden_size), "num_labels": 2}
        config.setdefault("positive_index", 1)
        config.setdefault("step_tag", DEFAULT_STEP_TAG)
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n", encoding="utf-8")
        (path / "README.md").write_text(_model_card(config), encoding="utf-8")
        return path

    @classmethod
    def from_pretrained(
        cls, directory: str | pathlib.Path, base_model: Any = None, tokenizer: Any = None, **prm_kwargs: Any
    ) -> ProcessRewardModel:
        """Loads a saved head onto `base_model` (default: the offline base named in the config) as a PRM.

        Args:
            directory (`str`): written by [`save_pretrained`] / `hf-decoding prm train`.
            base_model (`PreTrainedModel`, *optional*): the base; `load_default_model(config["base_model"])` if
                `None` (then `tokenizer` comes with it).
            tokenizer (`PreTrainedTokenizerBase`, *optional*): required when `base_model` is given.
            prm_kwargs: overrides of the [`ProcessRewardModel`] options (`batch_size`, ...).

        Returns:
            [`ProcessRewardModel`] whose `.model` is a `LearnedPRM`.
        """
        path = pathlib.Path(directory)
        if not (path / HEAD_FILE).is_file() or not (path / CONFIG_FILE).is_file():
            raise invalid_argument(
                "directory", str(directory), f"a folder holding {HEAD_FILE} and {CONFIG_FILE}", "Train one with "
                "`hf-decoding prm train --output-dir DIR` or `LearnedPRM.save_pretrained(DIR)`."
            )  # fmt: skip
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        if base_model is None:
            base_model, tokenizer = load_default_model(config.get("base_model", "smollm2-135m-instruct"))
        elif tokenizer is None:
            raise invalid_argument(
                "tokenizer", None, "the base model's tokenizer when `base_model` is given", "Pass the tokenizer too."
            )
        hidden = int(base_model.config.hidden_size)
        if int(config.get("hidden_size", hidden)) != hidden:
            raise IncompatibleCheckpointError(
                f"`base_model` has hidden size {hidden} but the head in {directory} was trained for "
                f"{config['hidden_size']} ({config.get('base_model')!r}). Pass that base model."
            )
        state = load_file(str(path / HEAD_FILE))
        head = nn.Linear(hidden, 2)
        head.load_state_dict(state)
        dtype = next(base_model.parameters()).dtype
        module = cls(base_model, head.to(device=next(base_model.parameters()).device, dtype=dtype), config).eval()
        options = {
            "step_tag": config.get("step_tag", DEFAULT_STEP_TAG),
            "positive_index": int(config.get("positive_index", 1)),
            "system_prompt": config.get("system_prompt"),
            "step_delimiter": config.get("step_delimiter", "\n\n"),
        }
        options.update(prm_kwargs)
        return ProcessRewardModel(module, tokenizer, **options)


def _model_card(config: dict[str, Any]) -> str:
    metrics = config.get("metrics", {})
    flat = {**metrics, **{f"heldout {k}": v for k, v in metrics.get("heldout", {}).items()}}
    rows = "\n".join(f"| {k} | {v} |" for k, v in flat.items() if not isinstance(v, (dict, list)))
    return (
        f"---\nlibrary_name: hf-decoding\nbase_model: {config.get('base_model_id', config.get('base_model'))}\n"
        "tags:\n- process-reward-model\n- hf-decoding\n---\n\n"
        f"# Learned process reward head for {config.get('base_model')}\n\n"
        f"A `Linear({config.get('hidden_size')}, 2)` value head on the frozen base, read at the step tag "
        f"`{config.get('step_tag')}` appended after each step (class {config.get('positive_index', 1)} = step "
        "correct). Trained with `hf-decoding prm train` on the policy's own samples of arithmetic word problems, "
        "every step labelled with the outcome of its sample (Math-Shepherd hard labels, one rollout). Weights of "
        "the head only; the base comes from `hf_decoding.load_default_model()`.\n\n"
        "```python\nfrom hf_decoding.rewards.training import LearnedPRM\nprm = LearnedPRM.from_pretrained(path)"
        "  # a ProcessRewardModel\n```\n\n"
        f"## Metrics (`heldout`: problems never trained on)\n\n| metric | value |\n|---|---|\n{rows}\n"
    )


# --------------------------------------------------------------------------------------------------------- training
def _finite(value: Any) -> Any:
    """NaN (an AUROC without both classes) -> `None`, so the JSON written is strict."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


@dataclass
class PRMTrainingConfig:
    """Options of [`train_prm`] (and of `hf-decoding prm train`)."""

    samples_per_problem: int = field(default=4, metadata={"help": "Policy samples per problem (K)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens per sample (1-step problems need ~40)."})
    temperature: float = field(
        default=0.4, metadata={"help": "Sampling temperature: SmolLM2 is right ~20% of the time at 0.3-0.5."}
    )
    generation_batch_size: int = field(default=8, metadata={"help": "Problems per generate call."})
    epochs: int = field(default=10, metadata={"help": "Passes over the step features."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the head."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    batch_size: int = field(default=32, metadata={"help": "Steps per optimizer update."})
    feature_batch_size: int = field(default=8, metadata={"help": "Sequences per base forward pass."})
    seed: int = field(default=0, metadata={"help": "Sampling seed, head init and data order."})
    step_tag: str = field(default=DEFAULT_STEP_TAG, metadata={"help": "Single-token tag read after each step."})
    step_delimiter: str = field(default="\n\n", metadata={"help": "How a sample splits into steps."})
    base_model: str = field(default="smollm2-135m-instruct", metadata={"help": "Offline name of the base."})
    progress_bar: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})

    def __post_init__(self) -> None:
        for name in ("samples_per_problem", "max_new_tokens", "generation_batch_size", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid_argument(name, value, "a positive integer")
        if self.feature_batch_size < 1:
            raise invalid_argument("feature_batch_size", self.feature_batch_size, "a positive integer")
        for name in ("temperature", "learning_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise invalid_argument(name, value, "a positive number")

    def label_options(self) -> dict[str, Any]:
        """The keyword arguments of [`label_samples`] these options set."""
        return {
            "samples_per_problem": self.samples_per_problem,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "batch_size": self.generation_batch_size,
            "step_delimiter": self.step_delimiter,
            "progress": self.progress_bar,
        }


@dataclass
class PRMTrainingResult:
    """What [`train_prm`] returns: the PRM (a [`ProcessRewardModel`] over a [`LearnedPRM`]) and the metrics."""

    prm: ProcessRewardModel
    metrics: dict[str, Any]
    train_samples: list[LabelledSample]
    heldout_samples: list[LabelledSample]


@torch.no_grad()
def tag_features(prm: ProcessRewardModel, samples: Sequence[LabelledSample], batch_size: int = 8) -> torch.Tensor:
    """Final hidden states at every step tag of every sample, in order: `(total steps, hidden)`."""
    module: LearnedPRM = prm.model
    device = next(module.parameters()).device
    features: list[torch.Tensor] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        seqs, positions = [], []
        for sample in chunk:
            ids, tags = prm.prefix_ids(sample.prompt), []
            for k, step in enumerate(sample.steps):
                ids += [*prm.segment_ids(step, first=k == 0, whole=False), prm.tag_id]
                tags.append(len(ids) - 1)
            seqs.append(ids)
            positions.append(tags)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), prm.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, width - len(seq) :] = torch.tensor(seq)
            mask[i, width - len(seq) :] = 1
        hidden = module.hidden_states(
            ids.to(device), attention_mask=mask.to(device), position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device)
        ).last_hidden_state  # (b, width, H)
        for i, seq in enumerate(seqs):
            offset = width - len(seq)
            features.append(hidden[i, [offset + p for p in positions[i]]].float().cpu())  # (steps, H)
    return torch.cat(features) if features else torch.zeros(0, int(module.config.hidden_size))


def _fit_head(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, config: PRMTrainingConfig) -> list[float]:
    """Cross-entropy + AdamW on precomputed features; returns the mean loss of every epoch."""
    try:
        from accelerate import Accelerator
    except ImportError:  # accelerate is optional: plain CPU/GPU placement
        Accelerator = None
    generator = torch.Generator().manual_seed(config.seed)
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    backward = torch.Tensor.backward
    if Accelerator is not None:
        accelerator = Accelerator()
        head, optimizer, loader = accelerator.prepare(head, optimizer, loader)
        backward = accelerator.backward
    history = []
    head.train()
    bar = tqdm(range(config.epochs), desc="train head", disable=not config.progress_bar)
    for _ in bar:
        total, count = 0.0, 0
        for xb, yb in loader:
            device = next(head.parameters()).device
            loss = nn.functional.cross_entropy(head(xb.to(device)), yb.to(device))  # (b, 2) vs (b,)
            optimizer.zero_grad()
            backward(loss)
            optimizer.step()
            total, count = total + loss.detach().item() * len(yb), count + len(yb)
        history.append(total / max(count, 1))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    head.eval()
    return history


def _evaluate(head: nn.Linear, x: torch.Tensor, samples: Sequence[LabelledSample]) -> dict[str, Any]:
    with torch.no_grad():
        p = head(x.to(head.weight.device, head.weight.dtype)).softmax(-1)[:, 1].float().cpu().tolist()  # (steps,)
    outcome = [y for s in samples for y in s.outcome_labels]
    exact = [y for s in samples for y in s.exact_labels]
    last, k = [], 0
    for s in samples:
        k += len(s.steps)
        last.append(p[k - 1])
    return {
        "step_auroc_outcome_labels": auroc(p, outcome),
        "step_auroc_exact_labels": auroc(p, exact),
        "final_answer_auroc": auroc(last, [s.correct for s in samples]),
        "steps": len(p),
        "samples": len(samples),
        "sample_accuracy": sum(s.correct for s in samples) / max(len(samples), 1),
    }


def train_prm(
    model: Any,
    tokenizer: Any,
    train_problems: Sequence[tuple[str, str]],
    heldout_problems: Sequence[tuple[str, str]] = (),
    config: PRMTrainingConfig | None = None,
    output_dir: str | pathlib.Path | None = None,
    train_samples: Sequence[LabelledSample] | None = None,
    heldout_samples: Sequence[LabelledSample] | None = None,
    labelling_seconds: float = 0.0,
) -> PRMTrainingResult:
    """Labels the policy's own samples, trains the head on the frozen base, evaluates on held-out problems, saves.

    Args:
        model (`PreTrainedModel`): the policy, also the PRM's frozen base.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer (must hold `config.step_tag` as one token).
        train_problems, heldout_problems (`Sequence[tuple[str, str]]`): `(user prompt, gold answer)` pairs; the
            held-out ones are sampled with another seed (`config.seed + 1_000_000`).
        config ([`PRMTrainingConfig`], *optional*): options.
        output_dir (`str`, *optional*): where [`LearnedPRM.save_pretrained`] writes the head.
        train_samples, heldout_samples (`list[LabelledSample]`, *optional*): already labelled samples (skip sampling).
        labelling_seconds (`float`, *optional*, defaults to 0): time already spent labelling them (reported).

    Returns:
        [`PRMTrainingResult`]; `metrics` has the labelling and training seconds, label noise and held-out AUROCs.
    """
    config = config or PRMTrainingConfig()
    metrics: dict[str, Any] = {}
    label = config.label_options()
    seconds = float(labelling_seconds)
    if train_samples is None:
        train_samples, train_seconds = label_samples(model, tokenizer, train_problems, seed=config.seed, **label)
        seconds += train_seconds
    if heldout_samples is None and heldout_problems:
        heldout_samples, held_seconds = label_samples(
            model, tokenizer, heldout_problems, seed=config.seed + 1_000_000, **label
        )
        seconds += held_seconds
    train_samples, heldout_samples = list(train_samples), list(heldout_samples or [])
    metrics["labelling_seconds"] = round(seconds, 1)
    metrics.update({f"train_{k}": v for k, v in label_noise(train_samples).items()})
    metrics["train_samples"] = len(train_samples)
    metrics["train_steps"] = sum(len(s.steps) for s in train_samples)
    metrics["train_sample_accuracy"] = sum(s.correct for s in train_samples) / max(len(train_samples), 1)
    if not any(s.correct for s in train_samples) or all(s.correct for s in train_samples):
        raise invalid_argument(
            "train_problems", f"{len(train_problems)} problems", "problems whose samples are sometimes right and "
            "sometimes wrong (all outcome labels are equal)", "Use more problems or a lower `temperature`."
        )  # fmt: skip

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    hidden = int(model.config.hidden_size)
    head = nn.Linear(hidden, 2)
    with torch.no_grad():  # seeded init, independent of the global RNG
        bound = 1 / math.sqrt(hidden)
        head.weight.copy_(torch.rand(head.weight.shape, generator=generator) * 2 * bound - bound)
        head.bias.zero_()
    prm_config = {
        "base_model": config.base_model,
        "base_model_id": "HuggingFaceTB/SmolLM2-135M-Instruct" if config.base_model.startswith("smollm2") else None,
        "step_tag": config.step_tag,
        "positive_index": 1,
        "system_prompt": None,
        "step_delimiter": config.step_delimiter,
        "training": asdict(config),
    }
    module = LearnedPRM(model, head, prm_config).eval()
    prm = ProcessRewardModel(module, tokenizer, step_tag=config.step_tag, system_prompt=None)
    x = tag_features(prm, train_samples, config.feature_batch_size)  # (steps, H)
    y = torch.tensor([v for s in train_samples for v in s.outcome_labels], dtype=torch.long)
    metrics["feature_seconds"] = round(time.perf_counter() - started, 1)
    fit_started = time.perf_counter()
    history = _fit_head(head.float(), x, y, config)
    head.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
    metrics["head_training_seconds"] = round(time.perf_counter() - fit_started, 1)
    metrics["training_seconds"] = round(time.perf_counter() - started, 1)  # features + head
    metrics["loss_history"] = [round(v, 5) for v in history]
    metrics["train"] = _evaluate(head, x, train_samples)
    if heldout_samples:
        held_x = tag_features(prm, heldout_samples, config.feature_batch_size)
        metrics.update({f"heldout_{k}": v for k, v in label_noise(heldout_samples).items()})
        metrics["heldout"] = _evaluate(head, held_x, heldout_samples)
        # The saved PRM must score exactly what was evaluated: re-score a few samples through ProcessRewardModel.
        few = heldout_samples[:4]
        direct = head(held_x[: sum(len(s.steps) for s in few)].to(head.weight)).softmax(-1)[:, 1].tolist()
        through = [v for row in prm.score([s.prompt for s in few], [s.completion for s in few]) for v in row]
        metrics["score_path_max_abs_diff"] = max(abs(a - b) for a, b in zip(direct, through, strict=True))
    metrics = _finite(metrics)
    module.prm_config["metrics"] = {k: v for k, v in metrics.items() if k != "loss_history"}
    if output_dir is not None:
        module.save_pretrained(output_dir)
    logger.info("PRM head trained in %.1f s: %s", metrics["training_seconds"], metrics.get("heldout"))
    return PRMTrainingResult(prm, metrics, train_samples, heldout_samples)
