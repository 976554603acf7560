"""Deprecated location; moved to headig.attribution.paths (and .rules). Kept for one release.

``Path`` is the old name of :class:`headig.attribution.GatePath`; it shadowed
:class:`pathlib.Path`, so new code should use ``GatePath``.
"""

from headig.attribution.paths import DP, STP, GatePath, Ramp, Sampling
from headig.attribution.rules import BUILTIN_RULES, GRID_RULES, PathPoints, gauss_legendre_01

Path = GatePath
RULES = BUILTIN_RULES

__all__ = ["DP", "GRID_RULES", "RULES", "STP", "GatePath", "Path", "PathPoints", "Ramp",
           "Sampling", "gauss_legendre_01"]
