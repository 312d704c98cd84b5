"""AutoDeco (arXiv 2510.26697): learned per-token temperature and top-p heads on any causal LM.

- [`AutoDecoConfig`], [`AutoDecoModelForCausalLM`] (`modeling.py`): the wrapper, heads-only checkpoints, Hub.
- [`AutoDecoHeads`] (`heads.py`): the two heads and the LM-head-input capture they read from.
- `losses.py`: tempered cross-entropy and the soft top-p loss (exclusive or inclusive cumulative sum).
- [`train_heads`] (`train.py`): accelerate-aware training, optional joint LoRA of the base.
- `data.py`: prompt/completion JSONL and rejection-sampled data from offline task generators.
- `control.py`: natural-language control (ranking loss) and its consistency measurement.
- `hub.py`: model card and the `custom_generate/` export.
- `eval.py`: the evaluation protocol of `docs/results/autodeco.md`.
"""

from .config import AutoDecoConfig
from .defaults import load_default_autodeco, shipped_heads_path
from .heads import AutoDecoHeads, HeadPredictions, capture_lm_head_input, probability_features
from .losses import AutoDecoLoss, AutoDecoLossConfig, chunked_autodeco_loss, soft_top_p_log_probs
from .modeling import AutoDecoCausalLMOutput, AutoDecoModelForCausalLM, register_auto_classes
from .train import AutoDecoTrainingConfig, TrainingResult, train_heads

# `AutoModelForCausalLM.from_pretrained(<autodeco dir>)` and `pipeline(...)` work once the package is imported.
register_auto_classes()

__all__ = [
    "AutoDecoCausalLMOutput",
    "AutoDecoConfig",
    "AutoDecoHeads",
    "AutoDecoLoss",
    "AutoDecoLossConfig",
    "AutoDecoModelForCausalLM",
    "AutoDecoTrainingConfig",
    "HeadPredictions",
    "TrainingResult",
    "capture_lm_head_input",
    "chunked_autodeco_loss",
    "load_default_autodeco",
    "probability_features",
    "register_auto_classes",
    "shipped_heads_path",
    "soft_top_p_log_probs",
    "train_heads",
]
