"""Deprecated location; moved to headig.diffusion.schedule. Kept for one release."""

from headig.diffusion.schedule import DenoisingState, current_state, denoising

__all__ = ["DenoisingState", "current_state", "denoising"]
