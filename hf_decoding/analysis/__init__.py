"""Analyses of decoding strategies (distortion at matched kept mass, ...). Import the submodules you need."""

from . import distortion, embeddings

__all__ = ["distortion", "embeddings"]
