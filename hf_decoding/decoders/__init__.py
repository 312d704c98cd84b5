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

#: The built-in decoders, by the name `decoding=` takes.
BUILTIN_DECODERS = {
    "sample": sample,
    "autodeco": autodeco,
    "distortion_aware_nucleus": distortion_aware_nucleus,
    "particle_filter": particle_filter,
    "particle_gibbs": particle_gibbs,
    "parallel_tempering": parallel_tempering,
    "best_of_n": best_of_n,
    "weighted_best_of_n": weighted_best_of_n,
    "self_consistency": self_consistency,
    "beam_search_prm": beam_search_prm,
    "dvts": dvts,
    "masked_diffusion": masked_diffusion,
    "globally_normalized": globally_normalized,
}
for _name, _decoder in BUILTIN_DECODERS.items():
    register_decoder(_name, _decoder, overwrite=True)

__all__ = [
    "BUILTIN_DECODERS",
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
