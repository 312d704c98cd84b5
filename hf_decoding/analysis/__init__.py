"""Analyses of decoding strategies (distortion at matched kept mass, masked-diffusion convergence, ...).

Import the submodules you need.
"""

from . import convergence, distortion, embeddings

__all__ = ["convergence", "distortion", "embeddings"]
