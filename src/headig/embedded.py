"""Deprecated location; moved to headig.toy.embedded. Kept for one release."""

from headig.toy.embedded import *  # noqa: F403
from headig.toy.embedded import __all__  # noqa: F401
