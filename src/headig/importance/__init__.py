"""Head importance: the value, its files and the statistics over it.

- :mod:`headig.importance.value`: :class:`HeadImportance` (validated, sign fixed:
  positive = the head helps) and :func:`as_importance`, the one coercion from
  "HeadImportance, tensor or path".
- :mod:`headig.importance.io`: safetensors + JSON-header files, the original research
  ``.pt`` (never unpickling arbitrary objects), and the consistency check on load.
- :mod:`headig.importance.stats`: :func:`combine` and :func:`compare`.

This package imports only :mod:`headig.runtime` (and, lazily, ``headig.__version__``).
See ``docs/importance-files.md``.
"""

from headig.importance.io import MEAN_RTOL, check_consistency, load_importance, save_importance
from headig.importance.stats import combine, compare
from headig.importance.value import (
    DEFAULT_FILENAME,
    FORMAT_NAME,
    ORIGINAL_SIGNS,
    POSTPROCESS,
    RANK_BY,
    SCHEMA_VERSION,
    SIGN_CONVENTION,
    HeadImportance,
    OriginalSign,
    as_importance,
)

__all__ = [
    "DEFAULT_FILENAME", "FORMAT_NAME", "MEAN_RTOL", "ORIGINAL_SIGNS", "POSTPROCESS", "RANK_BY",
    "SCHEMA_VERSION", "SIGN_CONVENTION", "HeadImportance", "OriginalSign", "as_importance",
    "check_consistency", "combine", "compare", "load_importance", "save_importance",
]
