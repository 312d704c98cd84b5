"""Token probability encoded in output embeddings: analysis, dimension pruning and probability steering.

Cho et al., "Understanding Token Probability Encoding in Output Embeddings" (COLING 2025, arXiv 2406.01468) observe
that the average output probability of a token over a dataset, ᾱ_w, is close to log-linear in its output embedding
(its LM-head row) `E_w`:

    −log ᾱ_w ≈ A · E_w + B            (multiple linear regression over the vocabulary)

and that the encoding is sparse: a few dimensions carry it, 30–40% of the dimensions can be deleted with little
change of the output distribution, and moving `E_w` along the fitted direction scales the token's probability by a
chosen ratio. This package measures all three on any causal LM of transformers:

- [`probability_encoding`]: ᾱ_w (and the unigram frequency as an alternative target), the MLR fit scored on a
  held-out split of the *vocabulary*, two per-dimension saliencies, the R²-vs-number-of-dimensions curves (top
  dimensions, top principal components, random dimensions) and the closed-form baseline `−log ᾱ_w ≈ −z̄_w + c`
  from the mean logit (the mean final hidden state `h̄` times `E_w`, plus any bias).
- [`prune_output_dimensions`]: zeroes the least probability-relevant dimensions, axis-aligned or in the PCA basis
  of the output embeddings; [`pruning_curve`] measures what that does, for 0–90% removed.
- [`steer_token_probability`]: moves chosen rows along a steering direction so that their probability scales by a
  ratio; [`steering_curve`] compares the achieved ratio with the target, and with the exact
  [`~hf_decoding.processors.token_probability.TokenProbabilityLogitsProcessor`].

Every edit is reversible and exact: it installs a *new* `nn.Parameter` on the output-embedding module and
[`OutputEmbeddingEdit.restore`] puts the original parameter object back, so the weights are bit-identical
afterwards and the original tensor is never written to. With tied embeddings (SmolLM2, Gemma) this also unties
the output embeddings for the duration of the edit: the input embeddings never change, and the tie is back after
`restore`. Do not `save_pretrained` a model while an edit is active.

The logits are reconstructed as `softcap(lm_head(h))`, where `h` is the last hidden state of `model.get_decoder()`
(after the final norm) and `softcap` is the model's `final_logit_softcapping` when it has one; an `lm_head` bias is
included by the head module itself. Every collection pass checks this reconstruction against the model's own
logits once and raises [`IncompatibleCheckpointError`] for architectures that scale their logits otherwise.

Example:

```python
>>> import hf_decoding as hfd
>>> from hf_decoding.analysis import embeddings
>>> model, tok = hfd.load_default_model()
>>> report = embeddings.probability_encoding(model, tok, texts)          # texts: a list of strings
>>> report.fit.r2, report.fit.spearman                                   # held-out vocabulary split
>>> with embeddings.prune_output_dimensions(model, 0.3, report=report):  # 30% of the dimensions zeroed
...     out = model.generate(**inputs)
>>> with embeddings.steer_token_probability(model, [tok.convert_tokens_to_ids("Ġcat")], 5.0, report=report):
...     out = model.generate(**inputs)                                    # "cat" about 5× as likely
```
"""

from .edit import OutputEmbeddingEdit
from .encoding import TARGETS as TARGETS
from .encoding import DimensionCurve, ProbabilityEncodingReport, probability_encoding
from .fit import LinearFit, fit_log_linear
from .head import OutputHead, output_head
from .head import Texts as Texts
from .plots import plot_dimension_curve, plot_probability_pca, plot_pruning_curves, plot_steering_curve
from .pruning import BASES as BASES
from .pruning import DEFAULT_FRACTIONS as DEFAULT_FRACTIONS
from .pruning import RANKINGS as RANKINGS
from .pruning import PruningCurve, PruningPoint, prune_output_dimensions, pruning_curve, pruning_curves
from .steering import DEFAULT_RATIOS as DEFAULT_RATIOS
from .steering import DIRECTIONS as DIRECTIONS
from .steering import SteeringCurve, steer_token_probability, steering_curve, steering_vector

__all__ = [
    "DimensionCurve",
    "LinearFit",
    "OutputEmbeddingEdit",
    "OutputHead",
    "ProbabilityEncodingReport",
    "PruningCurve",
    "PruningPoint",
    "SteeringCurve",
    "fit_log_linear",
    "output_head",
    "plot_dimension_curve",
    "plot_probability_pca",
    "plot_pruning_curves",
    "plot_steering_curve",
    "probability_encoding",
    "prune_output_dimensions",
    "pruning_curve",
    "pruning_curves",
    "steer_token_probability",
    "steering_curve",
    "steering_vector",
]
