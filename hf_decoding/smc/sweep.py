"""One sweep of a step-level particle method over a [`ParticleBatch`], and the pieces every particle decoder
shares: the resampling / selection policies, the reference path of conditional SMC, and output assembly.

A sweep repeats, until every particle finished:

1. **generate** one reasoning step for every live particle ([`~hf_decoding.smc.steps.StepRunner`]);
2. **score** the particles that produced a step ([`~hf_decoding.rewards.RewardSession`]) and turn the score into a
   log-potential `g_t` ([`log_potentials`]);
3. **weight**: add the incremental log-weight (`g_t`, or `g_t - g_{t-1}` when twisted; finished particles add
   `0`, or their last `g` under the reference behaviour);
4. **absorb** particles that finished (their cache rows are freed);
5. **resample / select** with the policy: ESS-triggered SMC resampling ([`ResamplingPolicy`]), top-k beam
   selection ([`TopKPolicy`]) or nothing ([`NoResampling`], best-of-N). After an SMC resampling each weight of the
   group is set to the group mean, which keeps the evidence estimate unbiased.

Particle Gibbs passes a [`ReferencePath`] per group: slot 0 then replays the reference's tokens (teacher-forced
through the same batched cache), keeps the reference's own step-`t` score at step `t` (the weight alignment the
reference implementations got wrong), and is never replaced by resampling, though it can be copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..generation.outputs import DecodingOutput, ParticleTrace
from ..rewards.base import RewardSession
from .cost import CostMeter
from .options import ParticleOptions
from .potentials import aggregate_scores, log_potentials
from .resampling import resample, stable_ancestors
from .state import ParticleBatch, flat_ancestors
from .steps import StepRunner
from .weights import add_log_increments, ess, log_evidence, reset_after_resampling, should_resample

__all__ = [
    "NoResampling",
    "ParticleSweep",
    "ReferencePath",
    "ResamplingPolicy",
    "SweepResult",
    "TopKPolicy",
    "assemble_output",
]


# ------------------------------------------------------------------------------------------------------- policies
class NoResampling:
    """Independent particles (best-of-N, self-consistency): nothing is ever resampled."""

    reset_weights = False

    def choose(self, log_weights: torch.Tensor, live: torch.Tensor, scores: torch.Tensor, has_reference: torch.Tensor):
        return None, torch.zeros(log_weights.shape[0], dtype=torch.bool, device=log_weights.device)


class ResamplingPolicy:
    """ESS-triggered SMC resampling with a named scheme; conditional (reference kept in slot 0) where a group has a
    reference path.

    Args:
        scheme (`str`): a key of [`~hf_decoding.smc.RESAMPLING_SCHEMES`].
        ess_threshold (`float`): resample a group when `ESS < ess_threshold * N` (`>= 1`: always).
        generator (`torch.Generator`, *optional*): the randomness.
    """

    reset_weights = True

    def __init__(self, scheme: str, ess_threshold: float, generator: torch.Generator | None):
        self.scheme = scheme
        self.ess_threshold = ess_threshold
        self.generator = generator

    def choose(
        self, log_weights: torch.Tensor, live: torch.Tensor, scores: torch.Tensor, has_reference: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        batch, n = log_weights.shape
        need = should_resample(log_weights, self.ess_threshold) & live.any(-1)  # (B,)
        if not bool(need.any()):
            return None, need
        ancestors = stable_ancestors(resample(self.scheme, log_weights, self.generator))  # (B, N)
        if bool(has_reference.any()) and n > 1:
            # Conditional resampling: the N-1 free slots draw from all N particles; slot 0 keeps the reference.
            free = resample(self.scheme, log_weights, self.generator, num_samples=n - 1)  # (B, N-1)
            conditional = torch.cat([torch.zeros_like(free[:, :1]), free], dim=-1)
            ancestors = torch.where(has_reference[:, None], conditional, ancestors)
        identity = torch.arange(n, device=log_weights.device).expand(batch, n)
        return torch.where(need[:, None], ancestors, identity), need


class TopKPolicy:
    """Step-level beam selection: within blocks of `block_size` particles, the live particles are ranked by their
    current score, the best `keep` survive and are copied into the other live slots of the block.

    `beam_search_prm` uses one block of N with `keep = ceil(live / beam_width)`; `dvts` uses blocks of
    `beam_width` (independent subtrees) with `keep = 1`.

    Args:
        block_size (`int`): particles per block (`N` for beam search, `M` for DVTS subtrees).
        keep (`int`, *optional*): survivors per block; `None` means `ceil(live / beam_width)`.
        beam_width (`int`, *optional*, defaults to 1): M, copies made of each survivor.
    """

    reset_weights = False

    def __init__(self, block_size: int, keep: int | None = None, beam_width: int = 1):
        self.block_size = block_size
        self.keep = keep
        self.beam_width = beam_width

    def choose(
        self, log_weights: torch.Tensor, live: torch.Tensor, scores: torch.Tensor, has_reference: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        batch, n = live.shape
        ancestors = torch.arange(n).expand(batch, n).clone()
        live_cpu, scores_cpu = live.cpu(), torch.nan_to_num(scores.cpu().double(), nan=-math.inf)
        for b in range(batch):
            for start in range(0, n, self.block_size):
                slots = [s for s in range(start, min(start + self.block_size, n)) if live_cpu[b, s]]
                if len(slots) < 2:
                    continue
                keep = self.keep if self.keep is not None else math.ceil(len(slots) / self.beam_width)
                ranked = sorted(slots, key=lambda s: (-scores_cpu[b, s].item(), s))
                kept = ranked[: max(1, keep)]
                others = [s for s in slots if s not in kept]
                for i, s in enumerate(others):
                    ancestors[b, s] = kept[i % len(kept)]
        ancestors = ancestors.to(log_weights.device)
        changed = (ancestors != torch.arange(n, device=log_weights.device)).any(-1)
        return (ancestors if bool(changed.any()) else None), changed


# ------------------------------------------------------------------------------------------------ reference paths
@dataclass
class ReferencePath:
    """A retained trajectory for conditional SMC (particle Gibbs).

    Args:
        steps (`list[torch.LongTensor]`): the token ids of each of its steps.
        scores (`list[float]`): its aggregated reward score after each step (as recorded when it was generated).
        texts (`list[str]`): the text of each step (for the reward session).
        finished (`bool`): whether it finished (EOS, stop pattern, limits) at its last step.
    """

    steps: list[torch.Tensor]
    scores: list[float]
    texts: list[str]
    finished: bool = True


@dataclass
class SweepResult:
    """What a sweep leaves: the batch (every particle's tokens) and per-particle weights, scores and history.

    Args:
        batch ([`ParticleBatch`]): final particles (`slot_lists["scores"]`, `["steps"]`, `["texts"]` per slot).
        log_weights (`torch.Tensor` of shape `(B, N)`): final log-weights.
        scores (`torch.Tensor` of shape `(B, N)`): each particle's final aggregated reward (`-inf` if never scored).
        ess (`torch.Tensor` of shape `(B, steps)`): ESS after each step's weighting (before resampling).
        ancestors (`torch.Tensor` of shape `(B, steps, N)`): ancestor of each slot at each step (identity when the
            step did not resample).
        log_normalizer (`torch.Tensor` of shape `(B,)`): the SMC evidence estimate.
        generated_tokens (`int`): tokens generated over all particles.
    """

    batch: ParticleBatch
    log_weights: torch.Tensor
    scores: torch.Tensor
    ess: torch.Tensor
    ancestors: torch.Tensor
    log_normalizer: torch.Tensor
    generated_tokens: int
    resampled: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


# ---------------------------------------------------------------------------------------------------------- sweep
class ParticleSweep:
    r"""Runs one sweep: generate a step, score, weight, absorb, resample/select — until every particle finished.

    Args:
        batch ([`ParticleBatch`]): freshly built particles.
        runner ([`StepRunner`]): generates one step for every live row.
        session ([`RewardSession`], *optional*): the reward side (`None`: unweighted particles, no reward calls).
        options ([`ParticleOptions`]): weighting options.
        policy: [`ResamplingPolicy`], [`TopKPolicy`] or [`NoResampling`].
        meter ([`CostMeter`]): phase timings.
        temperatures (`torch.Tensor` of shape `(B,)`, *optional*): softmax temperature per group (parallel
            tempering); defaults to `options.softmax_temperature` everywhere.
        keep_steps (`bool`, *optional*, defaults to `False`): record each particle's step tokens (for references).
        progress (`bool`, *optional*, defaults to `False`): show a tqdm bar over steps.
    """

    def __init__(
        self,
        batch: ParticleBatch,
        runner: StepRunner,
        session: RewardSession | None,
        options: ParticleOptions,
        policy: Any,
        meter: CostMeter,
        temperatures: torch.Tensor | None = None,
        keep_steps: bool = False,
        progress: bool = False,
    ):
        self.batch = batch
        self.runner = runner
        self.session = session
        self.options = options
        self.policy = policy
        self.meter = meter
        b = batch.num_groups
        self.temperatures = (
            temperatures.to(torch.float64)
            if temperatures is not None
            else torch.full((b,), float(options.softmax_temperature), dtype=torch.float64)
        )
        self.keep_steps = keep_steps
        self.progress = progress

    def _g(self, values: list[float], groups: list[int]) -> torch.Tensor:
        scores = torch.tensor(values, dtype=torch.float64)
        return log_potentials(scores, self.options.weight_transform, self.temperatures.cpu()[groups])

    @torch.no_grad()
    def run(self, references: list[ReferencePath | None] | None = None) -> SweepResult:
        """Runs the sweep; `references[b]` (particle Gibbs) is replayed in slot 0 of group `b`."""
        batch, opts, n = self.batch, self.options, self.batch.num_particles
        groups, slots_total = batch.num_groups, batch.num_slots
        device = batch.device
        batch.slot_tensors["log_weights"] = torch.zeros(groups, n, dtype=torch.float64, device=device)
        batch.slot_lists["scores"] = [[] for _ in range(slots_total)]
        batch.slot_lists["texts"] = [[] for _ in range(slots_total)]
        if self.keep_steps:
            batch.slot_lists["steps"] = [[] for _ in range(slots_total)]
        has_reference = torch.zeros(groups, dtype=torch.bool, device=device)
        if references is not None:
            has_reference = torch.tensor([r is not None for r in references], dtype=torch.bool, device=device)
        ess_history: list[torch.Tensor] = []
        ancestor_history: list[torch.Tensor] = []
        resampled_history: list[torch.Tensor] = []
        generated = 0
        step = 0
        bar = tqdm(desc="particle steps", unit="step", disable=not self.progress, leave=False)
        while batch.num_rows > 0:
            row_slots = batch.row_slot.tolist()
            forced = None
            ref_rows: dict[int, int] = {}
            if references is not None:
                forced = {}
                for b, ref in enumerate(references):
                    row = int(batch.slot_row[b * n])
                    if ref is not None and row >= 0 and step < len(ref.steps):
                        last = step == len(ref.steps) - 1
                        forced[row] = (ref.steps[step], last and ref.finished)
                        ref_rows[row] = b
            with self.meter.phase("generation"):
                result = self.runner.run(batch, step, forced=forced)
            lengths = result.lengths.tolist()
            generated += int(sum(lengths))
            texts = result.texts
            # Per-slot bookkeeping of the new step.
            for r, slot in enumerate(row_slots):
                batch.slot_lists["texts"][slot].append(texts[r] if texts is not None else "")
                if self.keep_steps:
                    batch.slot_lists["steps"][slot].append(batch.row_columns(r, result.start_col, lengths[r]).clone())
            new_scores: dict[int, float] = {}
            if self.session is not None:
                stats = None
                if result.logprob_sum is not None:
                    stats = [
                        {"logprob_sum": float(lp), "certainty_sum": float(c), "length": float(k)}
                        for lp, c, k in zip(
                            result.logprob_sum.tolist(), result.certainty_sum.tolist(), lengths, strict=False
                        )
                    ]
                self.session.extend(row_slots, texts, lengths, stats)
                to_score = [slot for r, slot in enumerate(row_slots) if r not in ref_rows]
                with self.meter.phase("reward"):
                    raw = self.session.score(to_score, opts.score_mode, step)
                for slot, values in zip(to_score, raw, strict=False):
                    new_scores[slot] = aggregate_scores(values, opts.score_mode)
                for r, b in ref_rows.items():
                    ref = references[b]
                    new_scores[row_slots[r]] = ref.scores[min(step, len(ref.scores) - 1)]
            with self.meter.phase("resampling"):
                log_weights = batch.slot_tensors["log_weights"]
                if self.session is not None:
                    increments = self._increments(row_slots, new_scores)
                    log_weights = add_log_increments(log_weights, increments.to(device))
                    batch.slot_tensors["log_weights"] = log_weights
                ess_history.append(ess(log_weights))
                batch.drop_rows(~result.finished)
                live = batch.has_row()
                scores_now = self.current_scores().to(device)
                ancestors, resampled = (None, torch.zeros(groups, dtype=torch.bool, device=device))
                if bool(live.any()):
                    ancestors, resampled = self.policy.choose(log_weights, live, scores_now, has_reference)
                if ancestors is not None:
                    reset = reset_after_resampling(log_weights, resampled) if self.policy.reset_weights else None
                    batch.resample(ancestors)
                    if self.session is not None:
                        self.session.reorder(flat_ancestors(ancestors).tolist())
                    if reset is not None:
                        batch.slot_tensors["log_weights"] = reset
                else:
                    ancestors = torch.arange(n, device=device).expand(groups, n)
                ancestor_history.append(ancestors.clone())
                resampled_history.append(resampled)
            step += 1
            bar.update(1)
        bar.close()
        log_weights = batch.slot_tensors["log_weights"]
        empty = torch.zeros(groups, 0, dtype=torch.float64, device=device)
        return SweepResult(
            batch=batch,
            log_weights=log_weights,
            scores=self.current_scores().to(device),
            ess=torch.stack(ess_history, dim=-1) if ess_history else empty,
            ancestors=(
                torch.stack(ancestor_history, dim=1)
                if ancestor_history
                else torch.zeros(groups, 0, n, dtype=torch.long, device=device)
            ),
            log_normalizer=log_evidence(log_weights),
            generated_tokens=generated,
            resampled=torch.stack(resampled_history, dim=-1) if resampled_history else empty.bool(),
        )

    def current_scores(self) -> torch.Tensor:
        """Each particle's latest aggregated score, `(B, N)` (`-inf` if never scored)."""
        batch = self.batch
        values = [s[-1] if s else -math.inf for s in batch.slot_lists["scores"]]
        return torch.tensor(values, dtype=torch.float64).view(batch.num_groups, batch.num_particles)

    def _increments(self, row_slots: list[int], new_scores: dict[int, float]) -> torch.Tensor:
        """Incremental log-weights `(B, N)` of this step; records the new scores in `slot_lists["scores"]`."""
        batch, opts, n = self.batch, self.options, self.batch.num_particles
        history = batch.slot_lists["scores"]
        increments = torch.zeros(batch.num_slots, dtype=torch.float64)
        stepped = set(row_slots)
        slots, now, prev, idle, idle_last = [], [], [], [], []
        for slot in range(batch.num_slots):
            if slot in stepped:
                if slot not in new_scores:
                    continue
                value = new_scores[slot]
                slots.append(slot)
                now.append(value)
                prev.append(history[slot][-1] if history[slot] else math.nan)
                history[slot].append(value)
            elif opts.finished_particles == "reference" and opts.weight_update == "potential" and history[slot]:
                idle.append(slot)
                idle_last.append(history[slot][-1])
        if slots:
            g_now = self._g(now, [s // n for s in slots])
            if opts.weight_update == "twisted":
                g_prev = self._g(prev, [s // n for s in slots])
                g_prev = torch.where(torch.isnan(g_prev), torch.zeros_like(g_prev), g_prev)
                # -inf - -inf would be NaN: a particle that was already impossible stays impossible.
                inc = torch.where(torch.isneginf(g_prev), torch.full_like(g_now, -math.inf), g_now - g_prev)
            else:
                inc = g_now
            increments[slots] = inc
        if idle:
            increments[idle] = self._g(idle_last, [s // n for s in idle])
        return increments.view(batch.num_groups, n)


# ------------------------------------------------------------------------------------------------------ outputs
def assemble_output(
    *,
    result: SweepResult,
    selected: torch.Tensor,
    generation_config: Any,
    meter: CostMeter,
    session: RewardSession | None,
    forward_passes: int,
    generated_tokens: int,
    extra_calls: int = 0,
) -> torch.LongTensor | DecodingOutput:
    """The selected particle of each group as `generate`'s output: a `(B, P + L)` tensor, or a
    [`DecodingOutput`] with `.particles` ([`ParticleTrace`]) and `.cost` when `return_dict_in_generate`."""
    with meter.phase("selection"):
        sequences = result.batch.particle_sequences()  # (B, N, P + L)
        index = selected.to(sequences.device)
        chosen = sequences[torch.arange(sequences.shape[0], device=sequences.device), index]  # (B, P + L)
        batch = result.batch
        lengths = [batch.slot_tokens(b * batch.num_particles + int(index[b])).numel() for b in range(batch.num_groups)]
        chosen = chosen[:, : batch.prompt_len + max(lengths, default=0)]
    if not generation_config.return_dict_in_generate:
        return chosen
    cost = meter.result(
        forward_passes=forward_passes,
        generated_tokens=generated_tokens,
        reward_calls=(session.calls if session is not None else 0) + extra_calls,
        reward_tokens=session.tokens if session is not None else 0,
    )
    return DecodingOutput(
        sequences=chosen,
        particles=ParticleTrace(
            sequences=sequences,
            log_weights=result.log_weights.float(),
            ess=result.ess.float(),
            ancestors=result.ancestors,
            selected=selected,
            log_normalizer=result.log_normalizer.float(),
        ),
        cost=cost,
    )
