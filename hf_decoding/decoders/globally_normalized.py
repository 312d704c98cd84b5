r"""`decoding="globally_normalized"`: sample the globally normalized counterpart of a warper chain by SMC.

A temperature/truncation chain normalized token by token samples
`q^L(w) = prod_t p(w_t | c_t)^(1/tau) 1[w_t in S_t] / Z_t`, which is the global measure
`q^G(w) ∝ prod_t p(w_t | c_t)^(1/tau) 1[w_t in S_t]` (the model raised to `1/tau`, restricted to sequences whose every
token is in the kept set) reweighted by the path-dependent distortion `prod_t 1 / Z_t` (Kempton & Burrell,
arXiv 2503.21929). Sequential Monte Carlo with `q^L` as proposal corrects this: the incremental importance weight of
step `t` is the local normalizer `Z_t = exp(-d_t)`, which depends on the prefix only, so particles are resampled
(when the effective sample size falls below `ess_threshold * N`) *before* each token is drawn.

Each input row runs `num_particles` particles; the returned sequence of the row is one particle drawn from the final
weights (so a batch of identical prompts gives independent draws whose law tends to `q^G` as `num_particles`
grows). `out.particles` holds every particle, its final log-weight, the ESS per step, the ancestors and the SMC
estimate of `log sum_w prod_t p^(1/tau) 1[w_t in S_t]` (for truncation alone: `log p(A)`, the model's probability
of staying in the kept sets), whose exponential is unbiased. The warpers are the ones `generate` builds from the
config (`temperature`, `top_k`, `top_p`, `min_p`, ...), exactly as `decoding="sample"` applies them.

With AutoDeco heads (an `AutoDecoModelForCausalLM`, or `autodeco_heads=` on a plain model) `tau_t` and the top-p
of `S_t` are the values the heads predict for each particle from its own prefix (the proposal is
`decoding="autodeco"`, through the same code), so the target is `prod_t p(w_t | c_t)^(1/tau_t(c_t)) 1[w_t in
S_t(c_t)]` and the weight of a step is the row's kept mass under its own predicted values;
`out.autodeco` holds the values applied to the returned particle.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from ..errors import invalid_argument
from ..generation.arguments import GENERATOR, SEED, STREAMER, Argument, DecoderCall, decoder
from ..generation.cache import decode_forward, decode_step, pad_token_tensor, prefill, reorder_rows
from ..generation.loop import call_generator, option, select_tokens
from ..generation.outputs import DecodingCost, DecodingOutput, DistortionTrace, ParticleTrace
from ..generation.processing import ProcessorChain
from ..smc.arguments import ARGUMENTS
from ..smc.proposal import build_proposal
from ..smc.resampling import RESAMPLING_SCHEMES, resample
from ..smc.state import flat_ancestors
from ..smc.weights import add_log_increments, ess, log_evidence, reset_after_resampling

__all__ = ["GLOBALLY_NORMALIZED_DEFAULTS", "GLOBAL_SAMPLERS", "globally_normalized"]

GLOBALLY_NORMALIZED_DEFAULTS: dict[str, Any] = {
    "num_particles": 8,
    "resampling": "systematic",
    "ess_threshold": 0.5,
    "global_sampler": "smc",
}

#: Values of `global_sampler`.
GLOBAL_SAMPLERS: tuple[str, ...] = ("smc", "imh")


def _check(num_particles: Any, resampling: Any, ess_threshold: Any, global_sampler: Any) -> None:
    if global_sampler not in GLOBAL_SAMPLERS:
        raise invalid_argument("global_sampler", global_sampler, "'smc' or 'imh'")
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise invalid_argument("num_particles", num_particles, "a positive integer")
    if resampling not in RESAMPLING_SCHEMES:
        raise invalid_argument("resampling", resampling, "one of " + ", ".join(repr(s) for s in RESAMPLING_SCHEMES))
    if isinstance(ess_threshold, bool) or not isinstance(ess_threshold, (int, float)) or not 0 <= ess_threshold <= 1:
        raise invalid_argument("ess_threshold", ess_threshold, "a number in [0, 1] (1: resample before every token)")


@decoder(
    (
        Argument("num_particles", "int", "particles per input row.", "int | None"),
        Argument("resampling", "str", "one of `hf_decoding.smc.RESAMPLING_SCHEMES`.", "str | None"),
        Argument(
            "ess_threshold",
            "float",
            "resample a row's particles before a token when their ESS is below `ess_threshold * num_particles` "
            "(1: before every token, 0: never, i.e. importance sampling).",
            "float | None",
        ),
        Argument(
            "global_sampler",
            "str",
            '`"smc"` as above, or `"imh"`: independent Metropolis-Hastings with local decoding as proposal '
            "(Gareev et al., 2024): the `num_particles` sequences are drawn independently (no resampling) and "
            "visited in order, sequence `i` replacing the current state with probability "
            "`min(1, prod Z(w_i) / prod Z(w_current))`; the last state is returned and `out.particles.selected` "
            "names it.",
            "str | None",
        ),
        dataclasses.replace(SEED, doc="seeds a private `torch.Generator` for sampling, resampling and the final draw."),
        GENERATOR,
        STREAMER,
        dataclasses.replace(
            ARGUMENTS["autodeco_heads"],
            doc="AutoDeco heads (bound by `AutoDecoModelForCausalLM.generate`): the sampler whose global measure "
            "is targeted is AutoDeco's, so every row is warped with its own predicted temperature and top-p and "
            "weighted by its own kept mass; `out.autodeco` holds the values of the returned rows.",
        ),
        ARGUMENTS["autodeco_proposal"],
    ),
    defaults=GLOBALLY_NORMALIZED_DEFAULTS,
)
@torch.no_grad()
def globally_normalized(call: DecoderCall) -> torch.LongTensor | DecodingOutput:
    r"""SMC sampling from the globally normalized version of the configured warpers (a `custom_generate` callable).

    Returns:
        `(B, L + new)` tokens, or a [`DecodingOutput`] with `particles`, `distortion` (of the returned particle's
        path), `cost` and, with AutoDeco heads, `autodeco` when `return_dict_in_generate=True`.
    """
    started = time.perf_counter()
    model, input_ids, generation_config = call.model, call.input_ids, call.generation_config
    logits_processor, stopping_criteria, model_kwargs = call.logits_processor, call.stopping_criteria, call.model_kwargs
    streamer = call["streamer"]
    values = {name: option(generation_config, name, call[name], d) for name, d in GLOBALLY_NORMALIZED_DEFAULTS.items()}
    num_particles, resampling = values["num_particles"], values["resampling"]
    ess_threshold, global_sampler = values["ess_threshold"], values["global_sampler"]
    _check(num_particles, resampling, ess_threshold, global_sampler)
    if global_sampler == "imh":
        ess_threshold = 0.0  # independent proposals: never resample
    if not generation_config.do_sample:
        raise invalid_argument(
            "do_sample", False, "True for decoding='globally_normalized'", "Pass do_sample=True (it samples)."
        )
    device = input_ids.device
    generator = call_generator(call)
    proposal = build_proposal(call, logits_processor)  # AutoDeco's heads, when given
    chain = ProcessorChain(proposal.processors if proposal is not None else logits_processor)
    row_state: dict[str, torch.Tensor] = {}
    batch, n = input_ids.shape[0], num_particles
    pad_token_id = pad_token_tensor(generation_config)
    pad_token_id = pad_token_id.to(device) if pad_token_id is not None else torch.zeros((), dtype=torch.long)
    has_eos = any(hasattr(criterion, "eos_token_id") for criterion in stopping_criteria)

    # One prefill per prompt, then B*N rows: slot b * N + i is particle i of prompt b.
    outputs, model_kwargs = prefill(model, input_ids, generation_config, model_kwargs)
    logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)  # (B, V)
    del outputs
    if proposal is not None:
        proposal.after_forward(row_state, logits, None)
    fan_out = torch.arange(batch, device=device).repeat_interleave(n)  # (B*N,)
    model_kwargs = reorder_rows(model_kwargs, fan_out)  # a static cache: B*N rows allocated once, here
    forward = decode_forward(model, generation_config, model_kwargs)  # compiled where `generate` would compile
    logits = logits.index_select(0, fan_out)
    row_state = {k: v.index_select(0, fan_out) for k, v in row_state.items()}
    applied: dict[str, torch.Tensor] = {}  # (B*N, steps) values the proposal applied along each particle's path
    ids = input_ids.index_select(0, fan_out)  # (B*N, L)

    log_weights = torch.zeros(batch, n, dtype=torch.float64, device=device)
    unfinished = torch.ones(batch * n, dtype=torch.bool, device=device)
    distortion = torch.zeros(batch * n, 0, device=device)  # (B*N, steps) along each particle's path
    ess_trace, ancestor_trace = [], []
    identity = torch.arange(n, device=device).expand(batch, n)
    forward_passes, generated, step = 1, 0, 0
    while True:
        if proposal is not None:
            proposal.before_token(row_state)
        scores, step_distortion = chain(ids, logits, step)  # (B*N, V), (B*N,)
        step_distortion = torch.where(unfinished, step_distortion, 0.0)
        # Incremental weight Z_t = exp(-d_t): known before the token is drawn.
        log_weights = add_log_increments(log_weights, -step_distortion.double().view(batch, n))
        ess_trace.append(ess(log_weights))
        resampled = ess(log_weights) < ess_threshold * n if ess_threshold < 1 else torch.ones(batch, dtype=torch.bool)
        ancestors = identity
        if bool(resampled.any()):
            drawn = resample(resampling, log_weights, generator=generator)  # (B, N)
            ancestors = torch.where(resampled[:, None].to(device), drawn, identity)
            log_weights = reset_after_resampling(log_weights, resampled.to(device))
            index = flat_ancestors(ancestors)  # (B*N,)
            model_kwargs = reorder_rows(model_kwargs, index)
            ids, scores, unfinished = ids[index], scores[index], unfinished[index]
            step_distortion, distortion = step_distortion[index], distortion[index]
            row_state = {k: v[index] for k, v in row_state.items()}
            applied = {k: v[index] for k, v in applied.items()}
        ancestor_trace.append(ancestors)
        tokens = select_tokens(scores, True, generator)  # (B*N,)
        if has_eos:
            tokens = torch.where(unfinished, tokens, pad_token_id)
        generated += int(unfinished.sum())
        distortion = torch.cat([distortion, step_distortion[:, None]], dim=-1)
        if proposal is not None:
            for key, value in proposal.token_values(row_state).items():
                column = torch.where(unfinished, value.float(), float("nan"))[:, None]  # NaN: no prediction used
                applied[key] = torch.cat([applied[key], column], dim=-1) if key in applied else column
        ids = torch.cat([ids, tokens[:, None]], dim=-1)
        if streamer is not None:
            streamer.put(tokens.cpu())
        unfinished = unfinished & ~stopping_criteria(ids, None)
        step += 1
        if not bool(unfinished.any()):
            break
        outputs, model_kwargs = decode_step(model, ids, model_kwargs, forward=forward)
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
        del outputs
        if proposal is not None:
            proposal.after_forward(row_state, logits, unfinished)
        forward_passes += 1
    if streamer is not None:
        streamer.end()

    # One particle per row, drawn from the final weights.
    if global_sampler == "imh":
        selected = _independent_metropolis_hastings(log_weights, generator)
    else:
        selected = resample("multinomial", log_weights, generator=generator, num_samples=1)[:, 0]  # (B,)
    rows = torch.arange(batch, device=device) * n + selected
    sequences = ids[rows]
    if not generation_config.return_dict_in_generate:
        return sequences
    per_step = distortion[rows]
    out = DecodingOutput(
        sequences=sequences,
        distortion=DistortionTrace(per_step=per_step, total=per_step.sum(-1)),
        particles=ParticleTrace(
            sequences=ids.view(batch, n, -1),
            log_weights=log_weights,
            ess=torch.stack(ess_trace, dim=-1),
            ancestors=torch.stack(ancestor_trace, dim=1),
            selected=selected,
            log_normalizer=log_evidence(log_weights),
        ),
        cost=DecodingCost(
            forward_passes=forward_passes,
            generated_tokens=generated,
            seconds={"total": time.perf_counter() - started},
        ),
    )
    if proposal is not None:
        out.autodeco = proposal.make_trace({k: v[rows] for k, v in applied.items()})
    return out


def _independent_metropolis_hastings(log_weights: torch.Tensor, generator: torch.Generator | None) -> torch.LongTensor:
    """Final state of an IMH chain per row over proposals `0..N-1` with importance log-weights `(B, N)`."""
    batch, n = log_weights.shape
    state = torch.zeros(batch, dtype=torch.long, device=log_weights.device)
    uniforms = torch.rand(batch, n, generator=generator, device=log_weights.device, dtype=torch.float64)
    for i in range(1, n):
        current = log_weights.gather(1, state[:, None]).squeeze(1)  # (B,)
        log_accept = (log_weights[:, i] - current).clamp(max=0.0)
        # A state of weight 0 (-inf) is always left; a proposal of weight 0 is never taken.
        accept = torch.isneginf(current) | (torch.log(uniforms[:, i]) < log_accept)
        state = torch.where(accept & ~torch.isneginf(log_weights[:, i]), torch.full_like(state, i), state)
    return state
