"""`decoding="particle_gibbs"`: iterated conditional SMC over reasoning steps (Puri et al., Algorithm 2).

Each iteration runs the particle filter with N-1 free particles plus a retained reference trajectory in slot 0.
The reference is replayed token for token through the same batched cache (so it can be forked), is never
replaced by resampling, and at step `t` carries *its own step-`t` score* — not its final score, and not the score
of another step: the weight alignment that `its_hub` #54 and the reference code's `rewards[step]` vs
`rewards[step-1]` got wrong (regression-tested). After each iteration a new reference is drawn from the final
weights. `num_chains` independent chains run in parallel as extra groups of the same batch.
"""

from __future__ import annotations

import torch

from ..generation.outputs import DecodingOutput
from ..smc.arguments import SWEEP_ARGUMENTS, DecoderCall, particle_decoder
from ..smc.decoding import conditional_sweeps, merge_groups, positive_int_option, prepare, select_final
from ..smc.selection import select_particles
from ..smc.sweep import ReferencePath, SweepResult
from .particle_filter import PARTICLE_FILTER_DEFAULTS

__all__ = ["draw_references", "particle_gibbs"]


def draw_references(result: SweepResult, generator: torch.Generator | None) -> list[ReferencePath]:
    """One reference per group, drawn from the final normalised weights."""
    index = select_particles("sample", result.log_weights, result.scores, generator=generator)
    batch = result.batch
    refs = []
    for b in range(batch.num_groups):
        slot = b * batch.num_particles + int(index[b])
        refs.append(
            ReferencePath(
                steps=list(batch.slot_lists["steps"][slot]),
                scores=list(batch.slot_lists["scores"][slot]),
                texts=list(batch.slot_lists["texts"][slot]),
                finished=True,
            )
        )
    return refs


@particle_decoder(
    ("num_chains", "num_iterations", *SWEEP_ARGUMENTS),
    defaults={**PARTICLE_FILTER_DEFAULTS, "num_iterations": 4},
    notes={"num_particles": "Per iteration and chain, the reference included."},
)
def particle_gibbs(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""Particle Gibbs over reasoning steps (a `custom_generate` callable).

    Returns:
        As `particle_filter`; `.particles` holds the last iteration (`num_chains·num_particles` per prompt) and
        `.cost` the compute of all iterations.
    """
    setup, _ = prepare(call, method="particle_gibbs", defaults=PARTICLE_FILTER_DEFAULTS)
    iterations = positive_int_option(call, "num_iterations", 4)
    chains = positive_int_option(call, "num_chains", 1)
    result, session, forward_passes, generated = conditional_sweeps(
        setup, call, iterations, chains, lambda result: draw_references(result, setup.generator)
    )
    result = merge_groups(result, chains)
    selected = select_final(setup, result, setup.options.selection)
    return setup.output(result, selected, session, forward_passes, generated)
