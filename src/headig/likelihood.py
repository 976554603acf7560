"""Deprecated location; moved to headig.diffusion.likelihood. Kept for one release."""

from headig.diffusion.likelihood import *  # noqa: F403
from headig.diffusion.likelihood import __all__  # noqa: F401
