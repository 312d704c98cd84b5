r"""Natural-language control of AutoDeco's predictions (paper Sec. "Emergent control").

The paper appends a command such as "low diversity" / "high diversity" to the prompt and, after targeted
training with a ranking loss, finds that the predicted temperature moves in the intended direction for 99% / 96%
of held-out prompts. Only *relative* control is learned: predictions move with respect to the same prompt
without a command.

With predictions `T̂` on the completion positions of the same completion under the three prompts (no command,
low, high), the ranking loss is

    L = mean ReLU(m - (T̂_base - T̂_low)) + mean ReLU(m - (T̂_high - T̂_base))       (and the same for P̂),

added to the usual AutoDeco losses (which anchor `T̂_base`). [`measure_control_consistency`] reports the share of
held-out prompts whose mean `T̂` (and `P̂`) over a teacher-forced completion moves in the intended direction.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import invalid_argument
from .heads import HeadPredictions

__all__ = [
    "ControlConfig",
    "ControlReport",
    "completion_predictions",
    "control_ranking_loss",
    "measure_control_consistency",
    "with_phrase",
]


@dataclass
class ControlConfig:
    """Natural-language control training options.

    Args:
        low_phrase (`str`, *optional*): command appended to the user message for low diversity.
        high_phrase (`str`, *optional*): command appended for high diversity.
        margin (`float`, *optional*, defaults to 0.1): margin `m` of the ranking loss.
        weight (`float`, *optional*, defaults to 1.0): weight of the ranking loss in the total loss.
        control_temperature (`bool`, *optional*, defaults to `True`): rank `T̂`.
        control_top_p (`bool`, *optional*, defaults to `True`): rank `P̂`.
    """

    low_phrase: str = "Use low diversity."
    high_phrase: str = "Use high diversity."
    margin: float = 0.1
    weight: float = 1.0
    control_temperature: bool = True
    control_top_p: bool = True

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise invalid_argument("margin", self.margin, "non-negative")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def with_phrase(prompt: Any, phrase: str) -> list[dict[str, str]]:
    """A copy of the chat `prompt` with `phrase` appended (on a new line) to its last user message."""
    if isinstance(prompt, str):
        raise invalid_argument(
            "prompt",
            prompt[:40],
            "chat messages (a list of {'role', 'content'} dicts)",
            "Natural-language control appends the command to the user message; store prompts as messages.",
        )
    messages = copy.deepcopy(list(prompt))
    for message in reversed(messages):
        if message.get("role") == "user":
            message["content"] = f"{message['content']}\n{phrase}"
            return messages
    raise invalid_argument("prompt", prompt, "chat messages with a user turn")


def control_ranking_loss(
    base: HeadPredictions, low: HeadPredictions, high: HeadPredictions, config: ControlConfig
) -> torch.Tensor:
    """The ranking loss over aligned positions (all `(N,)` predictions of the same completion tokens)."""
    terms = []
    if config.control_temperature:
        terms.append(F.relu(config.margin - (base.temperature - low.temperature)).mean())
        terms.append(F.relu(config.margin - (high.temperature - base.temperature)).mean())
    if config.control_top_p:
        terms.append(F.relu(config.margin - (base.top_p - low.top_p)).mean())
        terms.append(F.relu(config.margin - (high.top_p - base.top_p)).mean())
    if not terms:
        return base.temperature.new_zeros(())
    return torch.stack(terms).sum()


@torch.no_grad()
def completion_predictions(
    model: Any, tokenizer: Any, prompts: Sequence[Any], completions: Sequence[str], batch_size: int = 16
) -> list[HeadPredictions]:
    """Teacher-forced head predictions on the completion positions of each (prompt, completion) pair.

    Returns one [`HeadPredictions`] per pair with `(n_i,)` tensors (`n_i` = completion tokens incl. EOS).
    """
    from .data import encode_example
    from .modeling import base_hidden_states, logits_from_hidden

    base = model.llm
    device = next(base.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[HeadPredictions] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [
            encode_example(tokenizer, p, c)
            for p, c in zip(prompts[start : start + batch_size], completions[start : start + batch_size], strict=True)
        ]
        width = max(len(e.input_ids) for e in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        labels = torch.full((len(encoded), width), -100, dtype=torch.long)
        for i, e in enumerate(encoded):  # right padding
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[i, : len(e.input_ids)] = 1
            labels[i, : len(e.labels)] = torch.tensor(e.labels)
        hidden = base_hidden_states(base, ids.to(device), mask.to(device))[:, :-1]  # (B, L-1, H)
        selected = (labels[:, 1:] != -100).to(device)
        for i in range(len(encoded)):
            h = hidden[i][selected[i]]  # (n_i, H)
            predictions = model.heads(h, logits_from_hidden(base, h))
            out.append(HeadPredictions(predictions.temperature.float().cpu(), predictions.top_p.float().cpu()))
    return out


@dataclass
class ControlReport:
    """Consistency of natural-language control on held-out prompts.

    Args:
        num_prompts (`int`): prompts measured.
        mean_temperature (`dict[str, float]`): mean `T̂` under `"base"`, `"low"`, `"high"`.
        mean_top_p (`dict[str, float]`): mean `P̂` under the same conditions.
        consistency_temperature (`dict[str, float]`): share of prompts whose mean `T̂` moved in the intended
            direction (`"low"`: decreased, `"high"`: increased).
        consistency_top_p (`dict[str, float]`): the same for `P̂`.
    """

    num_prompts: int
    mean_temperature: dict[str, float]
    mean_top_p: dict[str, float]
    consistency_temperature: dict[str, float]
    consistency_top_p: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_control_consistency(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    completions: Sequence[str],
    config: ControlConfig | None = None,
    batch_size: int = 16,
) -> ControlReport:
    """How often the control phrases move mean `T̂` / `P̂` in the intended direction (teacher forced).

    Args:
        model ([`AutoDecoModelForCausalLM`]): the model.
        prompts (`Sequence`): held-out chat prompts (without command).
        completions (`Sequence[str]`): one completion per prompt, scored under all three prompts (e.g. the model's
            greedy answer to the prompt without command), so that only the command differs.
        config ([`ControlConfig`], *optional*): the phrases.
    """
    config = config or ControlConfig()
    conditions = {
        "base": list(prompts),
        "low": [with_phrase(p, config.low_phrase) for p in prompts],
        "high": [with_phrase(p, config.high_phrase) for p in prompts],
    }
    means: dict[str, torch.Tensor] = {}
    for name, variant in conditions.items():
        predictions = completion_predictions(model, tokenizer, variant, completions, batch_size)
        means[f"{name}_t"] = torch.stack([p.temperature.mean() for p in predictions])
        means[f"{name}_p"] = torch.stack([p.top_p.mean() for p in predictions])
    return ControlReport(
        num_prompts=len(prompts),
        mean_temperature={k: float(means[f"{k}_t"].mean()) for k in conditions},
        mean_top_p={k: float(means[f"{k}_p"].mean()) for k in conditions},
        consistency_temperature={
            "low": float((means["low_t"] < means["base_t"]).float().mean()),
            "high": float((means["high_t"] > means["base_t"]).float().mean()),
        },
        consistency_top_p={
            "low": float((means["low_p"] < means["base_p"]).float().mean()),
            "high": float((means["high_p"] > means["base_p"]).float().mean()),
        },
    )
