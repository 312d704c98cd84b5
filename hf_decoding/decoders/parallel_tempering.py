"""`decoding="parallel_tempering"`: particle Gibbs chains on a temperature ladder with reference swaps
(Puri et al., Algorithm 3).

Chain `k` targets `p(x) exp(Phi(x) / T_k)` with `Phi` the sum of the log-potentials over steps (the final one for
`weight_update="twisted"`). Every chain is a group of the same batched cache, so one sweep advances all of them.
After each iteration each chain draws a new reference; then adjacent chains propose to swap references and accept
with the Metropolis-Hastings probability `min(1, exp((1/T_k - 1/T_{k+1}) (Phi(x_{k+1}) - Phi(x_k))))`. The answer
is selected from the coldest chain (smallest temperature, normally 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import invalid_argument
from ..generation.loop import option
from ..generation.outputs import DecodingOutput
from ..smc.arguments import SWEEP_ARGUMENTS, DecoderCall, particle_decoder
from ..smc.decoding import conditional_sweeps, positive_int_option, prepare, select_final
from ..smc.potentials import log_potentials
from ..smc.sweep import ReferencePath, SweepResult
from .particle_filter import PARTICLE_FILTER_DEFAULTS
from .particle_gibbs import draw_references

__all__ = ["parallel_tempering", "swap_references"]


def _phi(ref: ReferencePath, transform: str, twisted: bool) -> float:
    scores = torch.tensor(ref.scores[-1:] if twisted else ref.scores, dtype=torch.float64)
    return float(log_potentials(scores, transform, 1.0).sum()) if scores.numel() else 0.0


def swap_references(
    references: list[ReferencePath],
    ladder: Sequence[float],
    transform: str,
    twisted: bool,
    generator: torch.Generator | None,
) -> tuple[list[ReferencePath], int]:
    """Proposes swaps between adjacent chains of every prompt (chains are consecutive groups); returns the new
    references and the number of accepted swaps."""
    chains = len(ladder)
    refs = list(references)
    accepted = 0
    for start in range(0, len(refs), chains):
        for k in range(chains - 1):
            a, b = start + k, start + k + 1
            phi_a, phi_b = _phi(refs[a], transform, twisted), _phi(refs[b], transform, twisted)
            log_ratio = (1.0 / ladder[k] - 1.0 / ladder[k + 1]) * (phi_b - phi_a)
            if math.isnan(log_ratio):
                continue
            u = torch.rand((), generator=generator, dtype=torch.float64).item()
            if log_ratio >= 0 or u < math.exp(log_ratio):
                refs[a], refs[b] = refs[b], refs[a]
                accepted += 1
    return refs, accepted


@particle_decoder(
    ("temperature_ladder", "num_iterations", *(name for name in SWEEP_ARGUMENTS if name != "softmax_temperature")),
    defaults={**PARTICLE_FILTER_DEFAULTS, "num_iterations": 2},
    notes={"num_particles": "Per chain."},
)
def parallel_tempering(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""Parallel tempering of particle-Gibbs chains (a `custom_generate` callable).

    Returns:
        As `particle_filter`; `.particles` holds the coldest chain's last iteration, `.cost` everything.
    """
    setup, _ = prepare(call, method="parallel_tempering", defaults=PARTICLE_FILTER_DEFAULTS)
    iterations = positive_int_option(call, "num_iterations", 2)
    ladder = option(call.generation_config, "temperature_ladder", call["temperature_ladder"], (1.0, 2.0, 4.0))
    if isinstance(ladder, (str, bytes)) or not hasattr(ladder, "__iter__"):
        raise invalid_argument(
            "temperature_ladder",
            ladder,
            "a non-empty list of finite temperatures > 0",
            "One chain per temperature: e.g. temperature_ladder=[1.0, 2.0, 4.0] (a single chain: [1.0]).",
        )
    ladder = list(ladder)
    if not ladder or any(
        isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0 for t in ladder
    ):
        raise invalid_argument("temperature_ladder", ladder, "a non-empty list of finite temperatures > 0")
    chains = len(ladder)
    options = setup.options
    groups = call.input_ids.shape[0] * chains
    temperatures = torch.tensor([ladder[g % chains] for g in range(groups)], dtype=torch.float64)
    swaps = 0

    def next_references(result: SweepResult) -> list[ReferencePath]:
        nonlocal swaps
        references, accepted = swap_references(
            draw_references(result, setup.generator),
            ladder,
            options.weight_transform,
            options.weight_update == "twisted",
            setup.generator,
        )
        swaps += accepted
        return references

    result, session, forward_passes, generated = conditional_sweeps(
        setup, call, iterations, chains, next_references, temperatures
    )
    result = _coldest_chain(result, chains, int(min(range(chains), key=lambda k: ladder[k])))
    selected = select_final(setup, result, options.selection)
    setup.meter.seconds["swaps_accepted"] = float(swaps)
    return setup.output(result, selected, session, forward_passes, generated)


def _coldest_chain(result: SweepResult, chains: int, coldest: int) -> SweepResult:
    """Keeps the groups of chain `coldest` only (one per prompt)."""
    batch = result.batch
    n = batch.num_particles
    keep_groups = list(range(coldest, batch.num_groups, chains))
    keep_slots = [g * n + i for g in keep_groups for i in range(n)]
    index = torch.tensor(keep_groups, device=result.log_weights.device)
    batch.slot_lists = {k: [v[s] for s in keep_slots] for k, v in batch.slot_lists.items()}
    batch.finished_tokens = [batch.finished_tokens[s] for s in keep_slots]
    batch.finished_values = [batch.finished_values[s] for s in keep_slots]
    batch.slot_row = torch.full((len(keep_slots),), -1, dtype=torch.long, device=batch.device)
    batch.num_groups = len(keep_groups)
    batch.prompt_ids = batch.prompt_ids.index_select(0, index)
    result.log_weights = result.log_weights.index_select(0, index)
    result.scores = result.scores.index_select(0, index)
    result.ess = result.ess.index_select(0, index)
    result.ancestors = result.ancestors.index_select(0, index)
    result.log_normalizer = result.log_normalizer.index_select(0, index)
    return result
