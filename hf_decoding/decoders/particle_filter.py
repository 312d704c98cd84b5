"""`decoding="particle_filter"`: sequential Monte Carlo over reasoning steps, weighted by a (process) reward model.

Puri et al. (arXiv 2502.01618): the latent states are reasoning steps, the transition is the LLM, and the
emission is a Bernoulli "acceptance" with probability the reward of the step. B prompts × N particles are B·N
rows of one batched KV cache; resampling re-indexes the cache rows (no re-prefill, no text round trip).
"""

from __future__ import annotations

from typing import Any

import torch

from ..generation.outputs import DecodingOutput
from ..smc.arguments import SWEEP_ARGUMENTS, DecoderCall, particle_decoder
from ..smc.decoding import prepare, select_final
from ..smc.sweep import ParticleSweep, ResamplingPolicy

__all__ = ["PARTICLE_FILTER_DEFAULTS", "particle_filter"]

PARTICLE_FILTER_DEFAULTS: dict[str, Any] = {
    "num_particles": 8,
    "score_mode": "model",
    "weight_transform": "logit",
    "softmax_temperature": 1.0,
    "weight_update": "potential",
    "resampling": "systematic",
    "ess_threshold": 0.5,
    "finished_particles": "absorb",
    "selection": "argmax",
    "on_reward_error": "raise",
}


@particle_decoder(SWEEP_ARGUMENTS, defaults=PARTICLE_FILTER_DEFAULTS)
def particle_filter(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""Particle filtering over reasoning steps (a `custom_generate` callable).

    Every option can also come from the generation config (`GenerationConfig(num_particles=16, ...)`) or from
    `preset="paper"`; the call's value wins, then the generation config, then the preset, then the default.

    Returns:
        `torch.LongTensor` of shape `(B, P + L)` (the selected particle of each prompt), or a
        [`~hf_decoding.DecodingOutput`] with `.particles` and `.cost` when `return_dict_in_generate=True`.
    """
    setup, _ = prepare(call, method="particle_filter", defaults=PARTICLE_FILTER_DEFAULTS)
    options = setup.options
    batch = setup.new_batch(options.num_particles, reuse=False)
    session = setup.new_session(batch)
    policy = ResamplingPolicy(options.resampling, options.ess_threshold, setup.generator)
    sweep = ParticleSweep(batch, setup.runner, session, options, policy, setup.meter, progress=bool(call["progress"]))
    result = sweep.run()
    return setup.output(result, select_final(setup, result, options.selection), session, 1 + batch.forward_passes)
