"""The ``headig`` command line: attribute -> show/plot -> validate, and a one-command demo."""

from headig.cli.main import main

__all__ = ["main"]
