"""Training a small masked-diffusion LM (a bidirectional transformer with a mask token) on offline text.

The masking process is LLaDA's / MDLM's: draw a masking level `t ~ U(0, 1)` per sequence (stratified over the
batch) and mask every token with probability `p = (1 - eps) t + eps`. LLaDA minimises the cross-entropy of the
masked tokens weighted by `1 / p` over all `B * L` positions, whose expectation is an upper bound (the negative
ELBO) on the per-token NLL; that is the held-out "masked NLL" reported by [`masked_nelbo`]. Training defaults to
the plain mean cross-entropy of the masked tokens (`loss_weighting="uniform"`): same minimiser, far lower variance
at the small batches a CPU allows.

The model is transformers' own `ModernBertForMaskedLM` (or `BertForMaskedLM`) with a small config and a
character tokenizer, so `save_pretrained` / `from_pretrained` just work; `config.mask_token_id` is stored in
`config.json` for the masked-diffusion decoder. ModernBERT's rotary positions and sliding-window layers matter at
this scale: with learnt absolute positions (BERT) the loss stays at the unigram plateau (about 3.2 nats per
character) for the whole CPU budget, while ModernBERT with 16-token local layers leaves it after about 100 steps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ..errors import invalid_argument
from .text import DEFAULT_FORTUNES_DIR, build_char_tokenizer, encode_stream, load_fortunes, split_records, text_windows

__all__ = [
    "DenoiserTrainingConfig",
    "build_denoiser",
    "heldout_windows",
    "masked_diffusion_loss",
    "masked_nelbo",
    "train_denoiser",
]

logger = logging.getLogger(__name__)
_LN2 = math.log(2.0)


@dataclass
class DenoiserTrainingConfig:
    """Options of [`train_denoiser`] (and of `hf-decoding diffusion train`, which reuses these fields)."""

    output_dir: str = field(default="denoiser-fortunes", metadata={"help": "where the model and tokenizer go"})
    corpus_dir: str = field(default=DEFAULT_FORTUNES_DIR, metadata={"help": "folder of '%'-separated text files"})
    architecture: str = field(default="modernbert", metadata={"help": "'modernbert' (ModernBertForMaskedLM) or 'bert'"})
    hidden_size: int = field(default=160, metadata={"help": "model width"})
    num_layers: int = field(default=4, metadata={"help": "transformer layers"})
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    intermediate_size: int = field(default=640, metadata={"help": "MLP width (ModernBERT's is gated: 2x the weights)"})
    local_attention: int = field(
        default=16,
        metadata={"help": "modernbert: sliding-window width of the local layers (locality is learnt faster)"},
    )
    global_every: int = field(default=2, metadata={"help": "modernbert: every n-th layer (from the first) is global"})
    seq_length: int = field(default=96, metadata={"help": "training window in characters (prompt + generation)"})
    batch_size: int = field(default=16, metadata={"help": "windows per step"})
    max_steps: int = field(default=1200, metadata={"help": "optimizer steps (about 13 min on one busy CPU core)"})
    learning_rate: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up, then cosine decay to 10%"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    prefix_fraction: float = field(
        default=0.25, metadata={"help": "share of windows with an unmasked random-length prefix (prompting)"}
    )
    mask_eps: float = field(default=1e-3, metadata={"help": "minimum masking probability"})
    loss_weighting: str = field(
        default="uniform", metadata={"help": "'uniform' (mean CE of masked tokens) or 'elbo' (LLaDA's 1/p weights)"}
    )
    holdout_fraction: float = field(default=0.05, metadata={"help": "records held out for evaluation"})
    eval_windows: int = field(default=512, metadata={"help": "held-out windows for the final masked NLL"})
    seed: int = field(default=0, metadata={"help": "seeds the split, the initialisation and every draw"})
    num_threads: int | None = field(
        default=1, metadata={"help": "torch CPU threads; 1 is fastest for this size on a shared 2-core machine"}
    )

    def __post_init__(self) -> None:
        if self.architecture not in ("bert", "modernbert"):
            raise invalid_argument("architecture", self.architecture, "'bert' or 'modernbert'")
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "seq_length",
            "batch_size",
            "max_steps",
            "eval_windows",
            "local_attention",
            "global_every",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid_argument(name, value, "a positive integer")
        if self.hidden_size % self.num_heads:
            raise invalid_argument("num_heads", self.num_heads, f"a divisor of hidden_size={self.hidden_size}")
        if not 0 <= self.prefix_fraction <= 1:
            raise invalid_argument("prefix_fraction", self.prefix_fraction, "a number in [0, 1]")
        if self.loss_weighting not in ("uniform", "elbo"):
            raise invalid_argument("loss_weighting", self.loss_weighting, "'uniform' or 'elbo'")
        if not 0 < self.mask_eps < 1:
            raise invalid_argument("mask_eps", self.mask_eps, "a number in (0, 1)")

    @classmethod
    def field_help(cls) -> dict[str, tuple[Any, str]]:
        """`{name: (default, help)}` for building a CLI."""
        return {f.name: (f.default, f.metadata.get("help", "")) for f in fields(cls)}


def build_denoiser(tokenizer: Any, config: DenoiserTrainingConfig) -> torch.nn.Module:
    """A randomly initialised masked LM sized by `config`, with `config.mask_token_id` set from the tokenizer."""
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": max(128, config.seq_length),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        if config.architecture == "bert":
            from transformers import BertConfig, BertForMaskedLM

            model_config = BertConfig(**common, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            model = BertForMaskedLM(model_config)
        else:
            from transformers import ModernBertConfig, ModernBertForMaskedLM

            model_config = ModernBertConfig(
                **common,
                bos_token_id=tokenizer.eos_token_id,
                cls_token_id=tokenizer.eos_token_id,
                sep_token_id=tokenizer.eos_token_id,
                global_attn_every_n_layers=config.global_every,
                local_attention=config.local_attention,
            )
            model = ModernBertForMaskedLM(model_config)
    model.config.mask_token_id = tokenizer.mask_token_id
    return model


def masked_diffusion_loss(
    model: torch.nn.Module,
    tokens: torch.LongTensor,
    mask_token_id: int,
    generator: torch.Generator | None = None,
    eps: float = 1e-3,
    prefix_fraction: float = 0.0,
    levels: torch.Tensor | None = None,
    weighting: str = "elbo",
) -> tuple[torch.Tensor, int]:
    r"""LLaDA's masked-diffusion loss on a batch of windows.

    Args:
        model: the masked LM.
        tokens (`torch.LongTensor` of shape `(B, L)`): clean windows.
        mask_token_id (`int`): the mask id.
        generator (`torch.Generator`, *optional*): source of the masking levels and masks.
        eps (`float`, *optional*, defaults to 1e-3): minimum masking probability.
        prefix_fraction (`float`, *optional*, defaults to 0): share of rows whose first `U[0, L/2)` tokens are never
            masked (conditional generation, as in LLaDA's SFT).
        levels (`torch.Tensor` of shape `(B,)`, *optional*): fixed `t` values (default: stratified uniform draws).
        weighting (`str`, *optional*, defaults to `"elbo"`): `"elbo"`: the `1/p`-weighted cross-entropy summed over
            masked tokens divided by `B * L` (LLaDA's loss, an upper bound on the NLL per token); `"uniform"`: the
            mean cross-entropy of the masked tokens. Both are minimised by the same conditionals; the uniform one
            has far lower variance at small batch sizes (the `1/p` weights reach `1/eps`).

    Returns:
        `(loss, masked_tokens)`: the loss (nats per token) and the number of masked tokens.
    """
    if weighting not in ("elbo", "uniform"):
        raise invalid_argument("weighting", weighting, "'elbo' or 'uniform'")
    batch, length = tokens.shape
    device = tokens.device
    if levels is None:
        offset = torch.rand((), generator=generator, device=device)
        levels = (offset + torch.arange(batch, device=device) / batch) % 1.0  # stratified t, lower variance
    p_mask = (1 - eps) * levels + eps  # (B,)
    masked = torch.rand((batch, length), generator=generator, device=device) < p_mask[:, None]  # (B, L)
    if prefix_fraction > 0:
        prefixed = torch.rand(batch, generator=generator, device=device) < prefix_fraction  # (B,)
        cut = torch.randint(0, max(1, length // 2), (batch,), generator=generator, device=device)
        keep = (torch.arange(length, device=device)[None] < cut[:, None]) & prefixed[:, None]
        masked &= ~keep
    inputs = torch.where(masked, torch.full_like(tokens, mask_token_id), tokens)
    logits = model(input_ids=inputs).logits  # (B, L, V)
    token_loss = torch.nn.functional.cross_entropy(logits[masked].float(), tokens[masked], reduction="none")  # (M,)
    if weighting == "uniform":
        return token_loss.sum() / masked.sum().clamp_min(1), int(masked.sum())
    weights = (1.0 / p_mask)[:, None].expand(batch, length)[masked]  # (M,)
    return (token_loss * weights).sum() / (batch * length), int(masked.sum())


@torch.no_grad()
def masked_nelbo(
    model: torch.nn.Module,
    windows: torch.LongTensor,
    mask_token_id: int,
    seed: int = 1234,
    batch_size: int = 64,
    repeats: int = 4,
) -> float:
    """Held-out masked NLL: the negative ELBO in bits per token, averaged over `repeats` seeded maskings."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(repeats):
        for start in range(0, windows.shape[0], batch_size):
            chunk = windows[start : start + batch_size].to(device)
            loss, _ = masked_diffusion_loss(model, chunk, mask_token_id, generator)
            total += float(loss) * chunk.shape[0]
            count += chunk.shape[0]
    return total / count / _LN2


def heldout_windows(tokenizer: Any, config: DenoiserTrainingConfig, max_windows: int | None = None) -> torch.Tensor:
    """The held-out evaluation windows `(W, seq_length)` of `config`'s corpus split."""
    _, heldout = split_records(load_fortunes(config.corpus_dir), config.holdout_fraction, config.seed)
    return text_windows(encode_stream(heldout, tokenizer), config.seq_length, max_windows)


def _learning_rate(step: int, config: DenoiserTrainingConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_denoiser(config: DenoiserTrainingConfig, progress: bool = True) -> dict[str, Any]:
    r"""Trains the denoiser and saves it (model, tokenizer, `training_summary.json`) to `config.output_dir`.

    Uses `accelerate.Accelerator` when accelerate is installed (so `accelerate launch` and GPUs work), plain
    PyTorch otherwise; a tqdm bar shows the loss. Every random draw comes from generators seeded by
    `config.seed`, so the same command on the same machine gives the same weights.

    Returns:
        The summary dict: parameter count, steps, seconds, final training loss, held-out masked NLL (bits/char).
    """
    from tqdm.auto import tqdm

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        from accelerate import Accelerator
    except ImportError:  # pragma: no cover - accelerate is in the `train` extra
        accelerator = None
    else:
        accelerator = Accelerator()
    device = accelerator.device if accelerator is not None else torch.device("cpu")

    records = load_fortunes(config.corpus_dir)
    train_records, heldout_records = split_records(records, config.holdout_fraction, config.seed)
    tokenizer = build_char_tokenizer(train_records)
    train_stream = encode_stream(train_records, tokenizer)
    eval_windows = text_windows(encode_stream(heldout_records, tokenizer), config.seq_length, config.eval_windows)
    model = build_denoiser(tokenizer, config)
    parameters = sum(p.numel() for p in model.parameters())
    logger.info(
        "denoiser: %s, %.2fM parameters, %d training tokens",
        config.architecture,
        parameters / 1e6,
        train_stream.numel(),
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    if accelerator is not None:
        model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    generator = torch.Generator().manual_seed(config.seed)
    mask_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    last_start = train_stream.numel() - config.seq_length
    started = time.perf_counter()
    running = None
    main_process = accelerator is None or accelerator.is_main_process
    bar = tqdm(range(config.max_steps), desc="train denoiser", disable=not (progress and main_process))
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        starts = torch.randint(0, last_start, (config.batch_size,), generator=generator)  # (B,)
        batch = torch.stack([train_stream[s : s + config.seq_length] for s in starts.tolist()]).to(device)
        loss, _ = masked_diffusion_loss(
            model,
            batch,
            tokenizer.mask_token_id,
            mask_generator,
            config.mask_eps,
            config.prefix_fraction,
            weighting=config.loss_weighting,
        )
        if accelerator is not None:
            accelerator.backward(loss)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        bar.set_postfix(loss=f"{running:.3f}", bits_per_char=f"{running / _LN2:.3f}")
    seconds = time.perf_counter() - started
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    heldout = masked_nelbo(unwrapped, eval_windows, tokenizer.mask_token_id, seed=config.seed + 2)
    summary = {
        "parameters": parameters,
        "steps": config.max_steps,
        "train_seconds": round(seconds, 1),
        "final_train_loss_nats": running,
        "heldout_masked_nll_bits_per_char": heldout,
        "heldout_windows": int(eval_windows.shape[0]),
        "train_tokens": int(train_stream.numel()),
        "config": asdict(config),
    }
    if main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        unwrapped.save_pretrained(config.output_dir)
        tokenizer.save_pretrained(config.output_dir)
        with open(os.path.join(config.output_dir, "training_summary.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        logger.info("saved the denoiser to %s (held-out masked NLL %.3f bits/char)", config.output_dir, heldout)
    return summary
