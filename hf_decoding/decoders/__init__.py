"""Decoders: one module per method. Each is a `custom_generate` callable and is registered by name."""

from ..registry import register_decoder
from .autodeco import autodeco
from .beam_search_prm import beam_search_prm
from .best_of_n import best_of_n
from .distortion_aware_nucleus import distortion_aware_nucleus
from .dvts import dvts
from .globally_normalized import globally_normalized
from .masked_diffusion import masked_diffusion
from .parallel_tempering import parallel_tempering
from .particle_filter import particle_filter
from .particle_gibbs import particle_gibbs
from .sample import sample
from .self_consistency import self_consistency
from .weighted_best_of_n import weighted_best_of_n

register_decoder("sample", sample, overwrite=True)
register_decoder("autodeco", autodeco, overwrite=True)
register_decoder("distortion_aware_nucleus", distortion_aware_nucleus, overwrite=True)
register_decoder("particle_filter", particle_filter, overwrite=True)
register_decoder("particle_gibbs", particle_gibbs, overwrite=True)
register_decoder("parallel_tempering", parallel_tempering, overwrite=True)
register_decoder("best_of_n", best_of_n, overwrite=True)
register_decoder("weighted_best_of_n", weighted_best_of_n, overwrite=True)
register_decoder("self_consistency", self_consistency, overwrite=True)
register_decoder("beam_search_prm", beam_search_prm, overwrite=True)
register_decoder("dvts", dvts, overwrite=True)
register_decoder("masked_diffusion", masked_diffusion, overwrite=True)
register_decoder("globally_normalized", globally_normalized, overwrite=True)

__all__ = [
    "autodeco",
    "beam_search_prm",
    "best_of_n",
    "distortion_aware_nucleus",
    "dvts",
    "globally_normalized",
    "masked_diffusion",
    "parallel_tempering",
    "particle_filter",
    "particle_gibbs",
    "sample",
    "self_consistency",
    "weighted_best_of_n",
]
