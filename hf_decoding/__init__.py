"""hf-decoding: recent decoding methods for any Hugging Face causal LM, through `model.generate`."""

from importlib.metadata import PackageNotFoundError, version

from . import decoders, rewards, smc
from .autodeco import AutoDecoConfig, AutoDecoModelForCausalLM, load_default_autodeco
from .diffusion import MaskedDiffusionOutput
from .errors import (
    HfDecodingError,
    HfDecodingWarning,
    IncompatibleCheckpointError,
    InvalidDecodingArgument,
    InvalidLogitsError,
    MissingModelError,
    RewardModelError,
    UnknownDecodingError,
)
from .generation import AutoDecoTrace, DecodingCost, DecodingOutput, DistortionTrace, ParticleTrace
from .models import available_models, load_default_model
from .processors import (
    DistortionAwareNucleusLogitsProcessor,
    DistortionTracker,
    LogitsWarper,
    PerRowMinPLogitsWarper,
    PerRowTemperatureLogitsWarper,
    PerRowTopKLogitsWarper,
    PerRowTopPLogitsWarper,
    TokenProbabilityLogitsProcessor,
)
from .registry import available_decoders, enable, get_decoder, register_decoder, set_default_decoding
from .rewards import (
    ArithmeticStepVerifier,
    LearnedPRM,
    OutcomeRewardModel,
    ProcessRewardModel,
    SelfCertainty,
    load_default_prm,
)

try:
    __version__ = version("hf-decoding")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "ArithmeticStepVerifier",
    "AutoDecoConfig",
    "AutoDecoModelForCausalLM",
    "AutoDecoTrace",
    "DecodingCost",
    "DecodingOutput",
    "DistortionAwareNucleusLogitsProcessor",
    "DistortionTrace",
    "DistortionTracker",
    "HfDecodingError",
    "HfDecodingWarning",
    "IncompatibleCheckpointError",
    "InvalidDecodingArgument",
    "InvalidLogitsError",
    "LearnedPRM",
    "LogitsWarper",
    "MaskedDiffusionOutput",
    "MissingModelError",
    "OutcomeRewardModel",
    "ParticleTrace",
    "PerRowMinPLogitsWarper",
    "PerRowTemperatureLogitsWarper",
    "PerRowTopKLogitsWarper",
    "PerRowTopPLogitsWarper",
    "ProcessRewardModel",
    "RewardModelError",
    "SelfCertainty",
    "TokenProbabilityLogitsProcessor",
    "UnknownDecodingError",
    "__version__",
    "available_decoders",
    "available_models",
    "decoders",
    "enable",
    "get_decoder",
    "load_default_autodeco",
    "load_default_model",
    "load_default_prm",
    "register_decoder",
    "rewards",
    "set_default_decoding",
    "smc",
]
