"""Deprecated location; moved to headig.diffusion.generation. Kept for one release."""

from headig.diffusion.generation import *  # noqa: F403
from headig.diffusion.generation import __all__, _model_device  # noqa: F401
