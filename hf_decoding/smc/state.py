"""A particle batch: B prompts × N particles whose live particles are rows of **one** batched KV cache.

The prompt is prefilled once per prompt (B rows) and fanned out to B·N rows with the cache's own row re-indexing;
afterwards every resampling, fork or compaction re-indexes the cache rows, the token ids, the attention mask,
the stored next-token logits and every per-row state tensor *together*, through
[`hf_decoding.generation.loop.reorder_rows`]. Nothing is re-prefilled and no text is re-tokenized.

Vocabulary used throughout:

- a **slot** is one of the B·N particle positions, flat index `b * N + n`; slot-level data (log-weights, finished
  flags, per-particle Python lists such as step texts) lives in `slot_tensors` / `slot_lists`;
- a **row** is a row of the batched cache. Only *live* particles own a row; a finished particle is absorbed: its
  row is dropped (its tokens are kept in `finished_tokens`) so it costs no more compute. `row_slot[r]` is the slot
  of row `r`, `slot_row[s]` the row of slot `s` or `-1`;
- **holes**: particles advance through a reasoning step in lockstep, and a row that reached the end of its step
  waits for the others with pad tokens whose attention-mask entry is `0` and that do not advance its position
  ids, so its continuation is exactly what an unpadded sequence would produce.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig

from ..generation.cache import (
    copy_cache,
    decode_step,
    gather_rows_in_place,
    has_fixed_rows,
    prefill,
    reorder_rows,
    without_cache,
)

__all__ = ["ParticleBatch", "PrefilledPrompts", "flat_ancestors"]


@dataclass
class PrefilledPrompts:
    """B prompts run once through the model: their cache rows and next-token logits, ready to fan out.

    Args:
        input_ids (`torch.LongTensor` of shape `(B, P)`): the prompts (left padded).
        model_kwargs (`dict`): cache (B rows) and attention mask `(B, P)` (always explicit).
        next_logits (`torch.FloatTensor` of shape `(B, V)`): logits after each prompt.
        row_state (`dict[str, torch.Tensor]`): per-prompt values a proposal computed from the prefill (fanned out
            with the rows).
    """

    input_ids: torch.LongTensor
    model_kwargs: dict[str, Any]
    next_logits: torch.Tensor
    row_state: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def prefill(
        cls,
        model: Any,
        input_ids: torch.LongTensor,
        generation_config: GenerationConfig,
        model_kwargs: dict[str, Any],
        proposal: Any = None,
    ) -> PrefilledPrompts:
        """One prefill of the B prompts (transformers' own `_prefill` when available); a
        [`~hf_decoding.smc.proposal.RowProposal`] computes its per-row state from it."""
        model_kwargs = dict(model_kwargs)
        if model_kwargs.get("attention_mask") is None:
            # transformers drops an all-ones mask; holes need an explicit one.
            model_kwargs["attention_mask"] = torch.ones_like(input_ids)
        if model_kwargs.get("position_ids") is None and "position_ids" in inspect.signature(model.forward).parameters:
            # Positions count real tokens only (left padding does not shift them), as `generate` prepares them.
            mask = model_kwargs["attention_mask"]
            model_kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        outputs, model_kwargs = prefill(model, input_ids, generation_config, model_kwargs)
        next_logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)  # (B, V)
        del outputs
        # `_update_model_kwargs_for_generation` appended the mask column of the next token; the batch appends its
        # own column (0 for holes) in `append_tokens`.
        model_kwargs["attention_mask"] = model_kwargs["attention_mask"][:, :-1]
        model_kwargs.pop("position_ids", None)
        row_state: dict[str, torch.Tensor] = {}
        if proposal is not None:
            proposal.after_forward(row_state, next_logits, None)
        return cls(input_ids=input_ids, model_kwargs=model_kwargs, next_logits=next_logits, row_state=row_state)


def flat_ancestors(ancestors: torch.Tensor) -> torch.LongTensor:
    """Group-local ancestors `(B, N)` → flat source slots `(B·N,)` (`b * N + ancestors[b, n]`)."""
    batch, n = ancestors.shape
    offsets = torch.arange(batch, device=ancestors.device)[:, None] * n  # (B, 1)
    return (offsets + ancestors).reshape(-1)


class ParticleBatch:
    r"""B groups of N particles sharing one batched KV cache.

    Build it with [`ParticleBatch.from_prompts`]. Method-agnostic: a step-level particle filter, a token-level SMC,
    beam search and particle Gibbs all use the same three operations: [`append_tokens`] (+ [`feed`]),
    [`resample`] and [`drop_rows`].

    Attributes:
        num_groups (`int`): B, the number of prompts (or independent chains).
        num_particles (`int`): N, the particles per group.
        prompt_ids (`torch.LongTensor` of shape `(B, P)`): the prompts as given (left padded).
        input_ids (`torch.LongTensor` of shape `(R, T)`): token columns of the live rows (prompt, generated
            tokens and holes); `T >= P`.
        model_kwargs (`dict`): cache, attention mask `(R, T)` and the rest, as the model's forward takes them.
        next_logits (`torch.FloatTensor` of shape `(R, V)`): next-token logits after each row's last real token.
        real_len (`torch.LongTensor` of shape `(R,)`): real (unmasked) tokens of each row; the position id of the
            next token.
        row_slot (`torch.LongTensor` of shape `(R,)`): the slot of each row.
        row_state (`dict[str, torch.Tensor]`): per-row state, first dimension `R`, re-indexed with the rows.
        slot_tensors (`dict[str, torch.Tensor]`): per-slot tensors of shape `(B, N, ...)` (e.g. `"log_weights"`).
        slot_lists (`dict[str, list]`): per-slot Python lists of length `B·N` (e.g. step texts).
        finished_tokens (`list[torch.LongTensor | None]`): generated tokens of slots without a row.
        cache_rows (`int` or `None`): with a cache of fixed shape (`cache_implementation="static"`), the rows it
            was allocated with (B·N, at the fan-out). Live rows then occupy its first R rows, re-indexed in place;
            the rest are spare rows the forward runs on and ignores, so its shapes never change. `None`: the cache
            grows and shrinks with the live rows.
    """

    def __init__(
        self,
        *,
        num_particles: int,
        prompt_ids: torch.LongTensor,
        input_ids: torch.LongTensor,
        model_kwargs: dict[str, Any],
        next_logits: torch.Tensor,
        pad_token_id: int,
    ):
        self.num_groups = prompt_ids.shape[0]
        self.num_particles = num_particles
        self.prompt_ids = prompt_ids
        self.prompt_len = prompt_ids.shape[1]
        self.input_ids = input_ids
        self.model_kwargs = model_kwargs
        self.next_logits = next_logits
        self.pad_token_id = pad_token_id
        device = input_ids.device
        self.device = device
        self.row_slot = torch.arange(input_ids.shape[0], device=device)
        self.slot_row = self.row_slot.clone()
        self.real_len = self.model_kwargs["attention_mask"].sum(-1)
        self.row_state: dict[str, torch.Tensor] = {}
        self.slot_tensors: dict[str, torch.Tensor] = {}
        self.slot_lists: dict[str, list[Any]] = {}
        self.finished_tokens: list[torch.LongTensor | None] = [None] * self.num_slots
        self.token_values: dict[str, torch.Tensor] = {}
        self.finished_values: list[dict[str, torch.Tensor] | None] = [None] * self.num_slots
        self.forward_passes = 0
        self.cache_rows: int | None = input_ids.shape[0] if has_fixed_rows(model_kwargs) else None

    # ------------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_prompts(
        cls,
        model: Any,
        input_ids: torch.LongTensor,
        generation_config: GenerationConfig,
        model_kwargs: dict[str, Any],
        num_particles: int,
        pad_token_id: int,
    ) -> ParticleBatch:
        """Prefills the B prompts once, then fans the cache out to B·N rows (no N-fold prefill).

        Args:
            model: the causal LM.
            input_ids (`torch.LongTensor` of shape `(B, P)`): prompts as `generate` prepared them (left padded).
            generation_config (`GenerationConfig`): the call's merged config.
            model_kwargs (`dict`): `generate`'s model kwargs (cache, attention mask, position ids, ...).
            num_particles (`int`): N.
            pad_token_id (`int`): token written into holes.
        """
        prompts = PrefilledPrompts.prefill(model, input_ids, generation_config, model_kwargs)
        batch = cls.from_prefilled(prompts, num_particles, pad_token_id, copy=False)
        batch.forward_passes = 1
        return batch

    @classmethod
    def from_prefilled(
        cls, prompts: PrefilledPrompts, num_particles: int, pad_token_id: int, copy: bool = True
    ) -> ParticleBatch:
        """Fans prefilled prompts out to B·N rows; `copy=True` leaves `prompts` reusable (particle Gibbs
        iterations start from the same prefilled prompts)."""
        model_kwargs = copy_cache(prompts.model_kwargs) if copy else dict(prompts.model_kwargs)
        input_ids = prompts.input_ids
        fan_out = torch.arange(input_ids.shape[0], device=input_ids.device).repeat_interleave(num_particles)
        model_kwargs = reorder_rows(model_kwargs, fan_out)  # (B·N) rows of one cache
        batch = cls(
            num_particles=num_particles,
            prompt_ids=input_ids,
            input_ids=input_ids.index_select(0, fan_out),
            model_kwargs=model_kwargs,
            next_logits=prompts.next_logits.index_select(0, fan_out),
            pad_token_id=pad_token_id,
        )
        batch.row_state = {k: v.index_select(0, fan_out) for k, v in prompts.row_state.items()}
        batch.forward_passes = 0
        return batch

    def split_groups(self, copies: int) -> None:
        """Reinterprets B groups of `copies·N'` particles as `B·copies` groups of `N'` (the flat slot layout is the
        same): independent chains of one prompt share its single prefill."""
        if self.num_particles % copies:
            raise ValueError("num_particles must be divisible by copies")
        self.num_particles //= copies
        self.num_groups *= copies
        self.prompt_ids = self.prompt_ids.repeat_interleave(copies, dim=0)

    # --------------------------------------------------------------------------------------------------- properties
    @property
    def num_slots(self) -> int:
        """B·N."""
        return self.num_groups * self.num_particles

    @property
    def num_rows(self) -> int:
        """R, the live rows."""
        return self.input_ids.shape[0]

    @property
    def attention_mask(self) -> torch.Tensor:
        """`(R, T)` attention mask: 1 for real tokens, 0 for left padding and holes."""
        return self.model_kwargs["attention_mask"]

    @property
    def row_group(self) -> torch.LongTensor:
        """Group of each row, shape `(R,)`."""
        return torch.div(self.row_slot, self.num_particles, rounding_mode="floor")

    def has_row(self) -> torch.BoolTensor:
        """`(B, N)`: which particles own a cache row (are live)."""
        return (self.slot_row >= 0).view(self.num_groups, self.num_particles)

    # ------------------------------------------------------------------------------------------------ token columns
    def append_tokens(
        self, tokens: torch.LongTensor, real: torch.BoolTensor, values: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Appends one token column `(R,)`; rows where `real` is False get a hole (pad token, mask 0). `values`
        (`(R,)` each, e.g. the temperature a proposal applied) are recorded beside the token (NaN in holes)."""
        for key, value in (values or {}).items():
            column = torch.where(real, value.float(), torch.full_like(value, float("nan"), dtype=torch.float32))
            past = self.token_values.get(key)
            if past is None:
                width = self.input_ids.shape[1] - self.prompt_len
                past = torch.full((self.num_rows, width), float("nan"), device=self.device)
            self.token_values[key] = torch.cat([past, column[:, None]], dim=-1)
        tokens = torch.where(real, tokens, torch.full_like(tokens, self.pad_token_id))
        self.input_ids = torch.cat([self.input_ids, tokens[:, None]], dim=-1)
        mask = self.model_kwargs["attention_mask"]
        self.model_kwargs["attention_mask"] = torch.cat([mask, real[:, None].to(mask.dtype)], dim=-1)
        self._last_real = real

    def feed(self, model: Any, forward: Any | None = None) -> torch.Tensor:
        """Runs the model (or `forward`, its compiled call) on the last appended column; updates `next_logits` of
        the rows whose token was real. With a fixed-shape cache the spare rows run too (pad tokens), and are
        ignored.

        Returns:
            `torch.FloatTensor` of shape `(R, V)`: the new last-position logits (garbage on hole rows).
        """
        real = self._last_real
        rows = self.num_rows
        kwargs = self.model_kwargs
        # Holes do not advance positions: the token's position is the count of real tokens before it.
        kwargs["position_ids"] = self.real_len[:, None].clone()
        input_ids = self.input_ids
        spare = (self.cache_rows or rows) - rows
        if spare > 0:
            input_ids, kwargs = self._with_spare_rows(input_ids, kwargs, spare)
        outputs, kwargs = decode_step(model, input_ids, kwargs, forward=forward)
        kwargs["attention_mask"] = kwargs["attention_mask"][:rows, :-1]
        kwargs.pop("position_ids", None)
        self.model_kwargs = kwargs
        self.forward_passes += 1
        logits = outputs.logits[:rows, -1].to(dtype=torch.float32)  # (R, V)
        self.next_logits = torch.where(real[:, None], logits, self.next_logits)
        self.real_len = self.real_len + real.to(self.real_len.dtype)
        return logits

    def _with_spare_rows(
        self, input_ids: torch.LongTensor, kwargs: dict[str, Any], spare: int
    ) -> tuple[torch.LongTensor, dict[str, Any]]:
        """The forward's inputs for every cache row: the live rows, then `spare` rows of pad tokens (attending to
        whatever their cache rows hold, so that no row is fully masked)."""
        width = input_ids.shape[1]
        kwargs = dict(kwargs)
        mask = kwargs["attention_mask"]
        kwargs["attention_mask"] = torch.cat([mask, mask.new_ones(spare, width)])
        kwargs["position_ids"] = torch.cat([kwargs["position_ids"], kwargs["position_ids"].new_zeros(spare, 1)])
        return torch.cat([input_ids, input_ids.new_full((spare, width), self.pad_token_id)]), kwargs

    # ------------------------------------------------------------------------------------------------------ tokens
    def row_tokens(self, row: int) -> torch.LongTensor:
        """Generated (non-prompt, non-hole) tokens of row `row`."""
        mask = self.attention_mask[row, self.prompt_len :].bool()
        return self.input_ids[row, self.prompt_len :][mask]

    def slot_tokens(self, slot: int) -> torch.LongTensor:
        """Generated tokens of slot `slot` (live or finished)."""
        row = int(self.slot_row[slot])
        if row >= 0:
            return self.row_tokens(row)
        tokens = self.finished_tokens[slot]
        return tokens if tokens is not None else self.input_ids.new_zeros(0)

    def slot_values(self, slot: int) -> dict[str, torch.Tensor]:
        """The recorded per-token values of slot `slot`'s generated tokens (live or finished), by name."""
        row = int(self.slot_row[slot])
        if row < 0:
            return self.finished_values[slot] or {}
        mask = self.attention_mask[row, self.prompt_len :].bool()
        return {k: v[row][mask[: v.shape[1]]] for k, v in self.token_values.items()}

    def row_columns(self, row: int, start: int, length: int) -> torch.LongTensor:
        """`length` real tokens of row `row` starting at column `start` (one step, which has no holes inside)."""
        return self.input_ids[row, start : start + length]

    def particle_sequences(self) -> torch.LongTensor:
        """Every particle's prompt + generated tokens, right padded: `(B, N, P + L_max)`."""
        generated = [self.slot_tokens(s) for s in range(self.num_slots)]
        longest = max((t.numel() for t in generated), default=0)
        out = torch.full(
            (self.num_slots, self.prompt_len + longest), self.pad_token_id, dtype=torch.long, device=self.device
        )
        out[:, : self.prompt_len] = self.prompt_ids.repeat_interleave(self.num_particles, dim=0)
        for s, tokens in enumerate(generated):
            out[s, self.prompt_len : self.prompt_len + tokens.numel()] = tokens
        return out.view(self.num_groups, self.num_particles, -1)

    # ------------------------------------------------------------------------------------------------ re-indexing
    def _reindex_rows(self, row_index: torch.LongTensor, new_row_slot: torch.LongTensor) -> None:
        """Re-indexes every per-row piece with `row_index` (R',), then records the new row → slot map."""
        unchanged = row_index.shape[0] == self.num_rows and bool(
            (row_index == torch.arange(self.num_rows, device=self.device)).all()
        )
        if not unchanged:
            if row_index.numel() == 0:
                # Everything finished: release the cache.
                self.model_kwargs = without_cache(self.model_kwargs)
                self.model_kwargs["attention_mask"] = self.attention_mask[:0]
            elif self.cache_rows is not None:
                self.model_kwargs = gather_rows_in_place(self.model_kwargs, row_index)  # no reallocation
            else:
                self.model_kwargs = reorder_rows(self.model_kwargs, row_index)
            self.input_ids = self.input_ids.index_select(0, row_index)
            self.next_logits = self.next_logits.index_select(0, row_index)
            self.real_len = self.real_len.index_select(0, row_index)
            self.row_state = {k: v.index_select(0, row_index) for k, v in self.row_state.items()}
            self.token_values = {k: v.index_select(0, row_index) for k, v in self.token_values.items()}
        self.row_slot = new_row_slot
        self.slot_row = torch.full((self.num_slots,), -1, dtype=torch.long, device=self.device)
        self.slot_row[new_row_slot] = torch.arange(new_row_slot.shape[0], device=self.device)

    def resample(self, ancestors: torch.Tensor) -> bool:
        """Replaces particle `(b, n)` by a copy of particle `(b, ancestors[b, n])`, rows and all.

        Args:
            ancestors (`torch.LongTensor` of shape `(B, N)`): group-local ancestor indices.

        Returns:
            `bool`: whether anything moved (an identity `ancestors` is a no-op).
        """
        src = flat_ancestors(ancestors.to(self.device))  # (B·N,)
        if bool((src == torch.arange(self.num_slots, device=self.device)).all()):
            return False
        self.slot_tensors = {
            k: v.reshape(self.num_slots, *v.shape[2:]).index_select(0, src).reshape(v.shape)
            for k, v in self.slot_tensors.items()
        }
        src_list = src.tolist()
        self.slot_lists = {k: [_copy(v[s]) for s in src_list] for k, v in self.slot_lists.items()}
        self.finished_tokens = [self.finished_tokens[s] for s in src_list]
        self.finished_values = [self.finished_values[s] for s in src_list]
        src_rows = self.slot_row.index_select(0, src)  # (B·N,), -1 where the ancestor has no row
        has_row = src_rows >= 0
        new_row_slot = torch.arange(self.num_slots, device=self.device)[has_row]
        self._reindex_rows(src_rows[has_row], new_row_slot)
        return True

    def drop_rows(self, keep: torch.BoolTensor) -> None:
        """Absorbs the rows where `keep` (R,) is False: their tokens move to `finished_tokens`, their cache rows
        are freed."""
        if bool(keep.all()):
            return
        for row in (~keep).nonzero().flatten().tolist():
            self.finished_tokens[int(self.row_slot[row])] = self.row_tokens(row).clone()
            if self.token_values:
                self.finished_values[int(self.row_slot[row])] = {
                    k: v.clone() for k, v in self.slot_values(int(self.row_slot[row])).items()
                }
        index = keep.nonzero().flatten()
        self._reindex_rows(index, self.row_slot.index_select(0, index))

    def rows_of(self, slots: Sequence[int] | torch.Tensor) -> torch.LongTensor:
        """Rows of `slots` (`-1` for slots without a row)."""
        slots = torch.as_tensor(slots, dtype=torch.long, device=self.device)
        return self.slot_row.index_select(0, slots)


def _copy(value: Any) -> Any:
    """Copies mutable per-slot Python values so that resampled duplicates do not share them."""
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value
