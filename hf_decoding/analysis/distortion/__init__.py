r"""Comparing decoding strategies at matched mean kept mass (Kempton & Burrell, arXiv 2503.21929, §2b).

Locally normalized truncation reweights every sequence `w` by its distortion `log eps(w) = sum_t -log Z(c_t)`,
where `Z(c_t)` is the probability mass the strategy keeps at step `t` (`sum p^(1/tau)` for temperature). The paper
compares strategies whose *mean* kept mass over a set of contexts is equal (e.g. top-k 50, top-p 0.88 and
temperature 0.95 on Llama-2) and reports how much the distortion varies across samples: only differences
`|log eps(w) - log eps(v)|` between sequences change the sampled distribution.

This module reproduces that protocol on any causal LM through `model.generate`:

1. [`collect_contexts`] draws pure samples from the model and keeps the raw next-token logits of every step;
2. [`kept_mass`] measures `Z` of a strategy on those logits with the package's own processors and the identity
   `d = LSE(l) / tau - LSE(s)` ([`~hf_decoding.processors.distortion_from_scores`]), so `Z = exp(-d)`;
3. [`match_mass`] finds the `k`, `p`, `tau` or `min_p` whose mean kept mass equals a target;
4. [`compare_strategies`] samples under each matched strategy (and under `decoding="distortion_aware_nucleus"`,
   whose kept mass is exactly `p` at every step) and reports the spread of the total distortion that the decoders
   themselves measured (`out.distortion`), the pairwise log distortion ratios, the per-token NLL under the model
   and an estimate of the per-token entropy of the sampling distribution.

```python
>>> from hf_decoding.analysis.distortion import compare_strategies
>>> comparison = compare_strategies(model, tokenizer, ["Tell me a story."], target_mass=[0.65, 0.88])
>>> for row in comparison.table():
...     print(row["strategy"], row["parameter"], row["distortion_std"])
```

All samples have the same length (`min_new_tokens = max_new_tokens`), so a constant per-step distortion gives
identical totals. EOS is therefore never sampled, and the contexts are matched on the EOS-suppressed distribution
that the samplers actually truncate.
"""

from .comparison import DistortionComparison, StrategyResult, compare_strategies
from .matching import match_mass
from .plots import plot_histograms, plot_quality_diversity
from .sampling import Prompt as Prompt
from .sampling import collect_contexts, encode_prompts, generate_kwargs_for
from .strategies import DEFAULT_STRATEGIES, STRATEGIES, kept_mass
from .strategies import PARAMETER_NAMES as PARAMETER_NAMES

__all__ = [
    "DEFAULT_STRATEGIES",
    "STRATEGIES",
    "DistortionComparison",
    "StrategyResult",
    "collect_contexts",
    "compare_strategies",
    "encode_prompts",
    "generate_kwargs_for",
    "kept_mass",
    "match_mass",
    "plot_histograms",
    "plot_quality_diversity",
]
