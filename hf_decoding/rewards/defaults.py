"""The learned process reward model shipped with the package, loaded offline.

`hf_decoding/_data/prm_smollm2/` holds a `Linear(576, 2)` value head (4.8 KB, safetensors) on the frozen
SmolLM2-135M-Instruct, trained by `hf-decoding prm train` on the policy's own samples of one-operation arithmetic
problems (outcome labels propagated to steps); `docs/results/prm.md` reports its AUROC (about 0.67 on held-out
steps: clearly above chance, far from reliable). No base weights are shipped.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from .process import ProcessRewardModel
from .training import LearnedPRM

__all__ = ["load_default_prm", "shipped_prm_path"]


def shipped_prm_path() -> Any:
    """The folder of the shipped PRM head (a `pathlib`-like traversable)."""
    return importlib.resources.files("hf_decoding") / "_data" / "prm_smollm2"


def load_default_prm(base_model: Any = None, tokenizer: Any = None, **prm_kwargs: Any) -> ProcessRewardModel:
    """The shipped learned PRM as a [`ProcessRewardModel`] (`reward_model=` of the particle decoders).

    Args:
        base_model (`PreTrainedModel`, *optional*): the frozen SmolLM2-135M-Instruct to put the head on; pass the
            policy itself to share its weights (the PRM never changes them). Loaded offline when not given.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): its tokenizer (required with `base_model`).
        prm_kwargs: [`ProcessRewardModel`] options (`batch_size`, ...).
    """
    with importlib.resources.as_file(shipped_prm_path()) as directory:
        return LearnedPRM.from_pretrained(directory, base_model=base_model, tokenizer=tokenizer, **prm_kwargs)
