"""Deprecated location; moved to headig.toy.tasks. Kept for one release."""

from headig.toy.tasks import *  # noqa: F403
from headig.toy.tasks import __all__  # noqa: F401
