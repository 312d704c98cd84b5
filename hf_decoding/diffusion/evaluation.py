r"""Quality measures of masked-diffusion decoding on a trained denoiser, where exact KL is out of reach.

- [`policy_nll`]: the held-out NLL of a decoding *policy*. Reveal the true continuation of held-out windows in
  the order the sampler would (teacher forcing): at each step the rule picks positions from the current state,
  and the true tokens there are scored under the model's factorised prediction. For position rules that depend
  only on the state (`random`, `low_confidence`/`threshold` with `unmasking_confidence="max_prob"`, `margin`,
  `entropy`, `entropy_bound`) this is exactly `-log q(x | prompt)` of the sampler at temperature 1 along the
  drawn mask path, so its gap to one token per step is the real-model counterpart of Li & Cai's
  `E_M KL(p || q_M)` (plus the model's own inconsistency, since `p_hat` is not a consistent joint).
- [`mutual_information_estimate`]: per-position `I(X_i; X_{-i} | prompt)` estimated as
  `E[log p_hat(x_i | x_{-i}) - log p_hat(x_i | prompt)]` on held-out text, plugged into Theorem 1.
- [`word_validity`]: the share of generated words found in the training corpus (a spelling proxy for samples).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import invalid_argument
from .adapters import MaskedDiffusionAdapter, resolve_mask_token_id
from .config import MaskedDiffusionConfig
from .schedules import unmasking_schedule
from .selection import ADAPTIVE_RULES, Candidates, commit_counts, position_scores, select_positions

__all__ = [
    "corpus_vocabulary",
    "default_policies",
    "mutual_information_estimate",
    "nfe_quality_table",
    "policy_nll",
    "theorem1_prediction",
    "word_validity",
]

_LN2 = math.log(2.0)
_WORD = re.compile(r"[A-Za-z]+")


@torch.no_grad()
def policy_nll(
    model: Any,
    windows: torch.LongTensor,
    prompt_length: int,
    *,
    diffusion_steps: int | None = None,
    block_length: int | None = None,
    unmasking: str = "random",
    unmasking_schedule_name: str = "linear",
    unmasking_threshold: float = 0.9,
    unmasking_entropy_bound: float = 0.1,
    mask_token_id: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    r"""Teacher-forced NLL of a decoding policy on held-out windows.

    Args:
        model: the denoiser.
        windows (`torch.LongTensor` of shape `(W, P + G)`): held-out text; the first `prompt_length` tokens are the
            prompt, the remaining `G` are scored.
        prompt_length (`int`): `P`.
        diffusion_steps, block_length, unmasking, unmasking_threshold, unmasking_entropy_bound: as in the decoder
            (`unmasking_schedule_name` is its `unmasking_schedule`). Confidence is always the state's `max_prob`.
        mask_token_id (`int`, *optional*): default from the model config.
        seed (`int`, *optional*, defaults to 0): seeds the random positions.
        batch_size (`int`, *optional*, defaults to 64): windows per forward pass.

    Returns:
        `{"nll_bits_per_token", "forward_passes_per_sequence", "tokens_per_forward"}`; forward passes are those a
        batch-1 sampler would make (steps that reveal at least one of the sequence's tokens).
    """
    gen_length = windows.shape[1] - prompt_length
    if gen_length < 1:
        raise invalid_argument("prompt_length", prompt_length, f"smaller than the window length {windows.shape[1]}")
    config = MaskedDiffusionConfig(
        gen_length=gen_length,
        diffusion_steps=diffusion_steps,
        block_length=block_length,
        unmasking=unmasking,
        unmasking_confidence="max_prob",
        unmasking_schedule=unmasking_schedule_name,
        unmasking_threshold=unmasking_threshold,
        unmasking_entropy_bound=unmasking_entropy_bound,
    )
    mask_id = resolve_mask_token_id(model, mask_token_id)
    adapter = MaskedDiffusionAdapter(model, mask_id)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    total_logp, total_steps = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        truth = windows[start : start + batch_size].to(device)  # (b, P + G)
        x = truth.clone()
        x[:, prompt_length:] = mask_id
        for block, block_steps in enumerate(config.steps_per_block()):
            lo = prompt_length + block * config.block_length
            hi = lo + config.block_length
            counts = unmasking_schedule(config.block_length, block_steps, unmasking_schedule_name, config.schedule_eps)
            step = 0
            while bool((x[:, lo:hi] == mask_id).any()):
                scheduled = counts[step] if step < len(counts) else config.block_length
                step += 1
                if scheduled == 0 and unmasking not in ADAPTIVE_RULES:
                    continue
                masked = x[:, lo:hi] == mask_id  # (b, N)
                logits = adapter(x)[:, lo:hi].float()
                logits[..., mask_id] = float("-inf")  # as in the sampler
                probs = torch.softmax(logits, dim=-1)  # (b, N, V)
                target = truth[:, lo:hi]
                candidates = Candidates(
                    tokens=target, confidence=probs.gather(-1, target[..., None]).squeeze(-1), probs=probs
                )
                scores = position_scores(unmasking, candidates, generator, "max_prob")
                n_commit = commit_counts(
                    unmasking,
                    candidates,
                    masked,
                    scheduled,
                    threshold=unmasking_threshold,
                    entropy_bound=unmasking_entropy_bound,
                    confidence="max_prob",
                )
                chosen = select_positions(scores, masked, n_commit)  # (b, N)
                total_logp += float(torch.log(candidates.confidence.clamp_min(1e-30))[chosen].sum())
                total_steps += int(masked.any(-1).sum())
                x[:, lo:hi] = torch.where(chosen, target, x[:, lo:hi])
    n = windows.shape[0]
    return {
        "nll_bits_per_token": -total_logp / (n * gen_length) / _LN2,
        "forward_passes_per_sequence": total_steps / n,
        "tokens_per_forward": n * gen_length / total_steps,
    }


@torch.no_grad()
def mutual_information_estimate(
    model: Any, windows: torch.LongTensor, prompt_length: int, mask_token_id: int | None = None, batch_size: int = 256
) -> dict[str, Any]:
    r"""Per-position `I_i ~ E[log p_hat(x_i | x_{-i}) - log p_hat(x_i | prompt only)]` in nats, shape `(G,)`.

    Costs `G + 1` forward passes per window (one per left-out position, one with the whole generation masked).

    Returns:
        `{"per_position": list[float], "sum_nats": float, "sum_bits": float}`.
    """
    gen_length = windows.shape[1] - prompt_length
    mask_id = resolve_mask_token_id(model, mask_token_id)
    adapter = MaskedDiffusionAdapter(model, mask_id)
    device = next(model.parameters()).device
    full_context = torch.zeros(gen_length, dtype=torch.float64)
    prompt_only = torch.zeros(gen_length, dtype=torch.float64)
    positions = torch.arange(gen_length, device=device)
    for window in windows.to(device):
        truth = window[prompt_length:]  # (G,)
        blank = window.clone()
        blank[prompt_length:] = mask_id
        logp = torch.log_softmax(adapter(blank[None])[0, prompt_length:].float(), -1)  # (G, V)
        prompt_only += logp.gather(-1, truth[:, None]).squeeze(-1).double().cpu()
        left_out = window.repeat(gen_length, 1)  # (G, P + G): row i masks position i only
        left_out[positions, prompt_length + positions] = mask_id
        for lo in range(0, gen_length, batch_size):
            rows = slice(lo, lo + batch_size)
            logits = adapter(left_out[rows])  # (g, P + G, V)
            index = prompt_length + positions[rows]
            logp_i = torch.log_softmax(logits[torch.arange(index.numel(), device=device), index].float(), -1)
            full_context[rows] += logp_i.gather(-1, truth[rows, None]).squeeze(-1).double().cpu()
    per_position = ((full_context - prompt_only) / windows.shape[0]).clamp_min(0.0)
    return {
        "per_position": per_position.tolist(),
        "sum_nats": float(per_position.sum()),
        "sum_bits": float(per_position.sum()) / _LN2,
    }


def theorem1_prediction(mi_sum: float, gen_length: int, steps: int) -> float:
    """Theorem 1's bound `(2 ** ceil(log2 s_max) - 1) / G * mi_sum` for the balanced schedule of `steps` steps."""
    s_max = max(unmasking_schedule(gen_length, steps, "linear"))
    return (2 ** math.ceil(math.log2(s_max)) - 1) / gen_length * mi_sum


def corpus_vocabulary(texts: Iterable[str]) -> set[str]:
    """Lower-cased alphabetic words of `texts`."""
    return {w.lower() for text in texts for w in _WORD.findall(text)}


def word_validity(texts: Iterable[str], vocabulary: set[str], min_length: int = 2) -> float:
    """Share of alphabetic words (at least `min_length` letters) of `texts` that occur in `vocabulary`.

    Words cut by the start or end of a text are skipped (they are fragments by construction).
    """
    hits = total = 0
    for text in texts:
        matches = list(_WORD.finditer(text))
        for match in matches:
            if match.start() == 0 or match.end() == len(text):
                continue
            word = match.group().lower()
            if len(word) >= min_length:
                total += 1
                hits += word in vocabulary
    return hits / total if total else 0.0


def default_policies(gen_length: int) -> list[tuple[str, dict[str, Any]]]:
    """The policies of the NFE-vs-quality table as `(label, policy_nll keyword arguments)`: random unmasking at
    `T = G, G/2, ..., 4`, confidence order at `T = G, G/2, G/4`, Fast-dLLM thresholds and the EB-sampler."""
    policies: list[tuple[str, dict[str, Any]]] = []
    steps = gen_length
    while steps >= 4:
        policies.append((f"random T={steps}", {"unmasking": "random", "diffusion_steps": steps}))
        steps //= 2
    for steps in (gen_length, gen_length // 2, gen_length // 4):
        policies.append((f"low_confidence T={steps}", {"unmasking": "low_confidence", "diffusion_steps": steps}))
    for tau in (0.95, 0.9, 0.8, 0.7, 0.5):
        policies.append((f"threshold tau={tau}", {"unmasking": "threshold", "unmasking_threshold": tau}))
    for gamma in (0.1, 0.3, 1.0):
        policies.append(
            (f"entropy_bound gamma={gamma}", {"unmasking": "entropy_bound", "unmasking_entropy_bound": gamma})
        )
    return policies


def nfe_quality_table(
    model: Any,
    windows: torch.LongTensor,
    prompt_length: int,
    policies: list[tuple[str, dict[str, Any]]] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """[`policy_nll`] for every policy: NLL (bits/token), its gap to random `T = G`, forward passes, speed-up."""
    from tqdm.auto import tqdm

    gen_length = windows.shape[1] - prompt_length
    policies = default_policies(gen_length) if policies is None else policies
    rows = []
    for label, kwargs in tqdm(policies, desc="policies", disable=not progress):
        result = policy_nll(model, windows, prompt_length, seed=seed, **kwargs)
        rows.append({"policy": label, **kwargs, **result})
    reference = next(
        (r for r in rows if r.get("unmasking") == "random" and r.get("diffusion_steps") == gen_length), rows[0]
    )
    for row in rows:
        row["delta_nll_bits_per_token"] = row["nll_bits_per_token"] - reference["nll_bits_per_token"]
        row["speedup_vs_one_per_step"] = gen_length / row["forward_passes_per_sequence"]
    return rows
