"""Deprecated location; moved to headig.toy.train_tiny. Kept for one release.

``python -m headig.train_tiny ...`` still trains (it runs :func:`headig.toy.train_tiny.main`).
"""

from headig.toy.train_tiny import *  # noqa: F403
from headig.toy.train_tiny import __all__, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
