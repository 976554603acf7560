"""(prompt, completion) examples for attribution and validation: loading, recipes, encoding.

An :class:`Example` is a prompt and the completion whose likelihood is attributed
(:mod:`headig.data.examples`). :mod:`headig.data.sources` reads local JSON / JSONL / CSV
files (or a folder of ``<split>.<ext>`` files, or in-memory records) and, when the optional
``datasets`` package is installed, Hugging Face datasets. Recipes
(:mod:`headig.data.recipes`, a public registry) turn raw records into examples with the
exact strings of the original research scripts (gsm8k, mmlu, humaneval, chat).
:func:`encode_example` (:mod:`headig.data.encoding`) turns an example into token ids with a
known prompt/completion boundary. See ``docs/data.md``.

This package imports only :mod:`headig.runtime`, torch and the standard library.
"""

from headig.data.encoding import (
    EncodedExample,
    EncodingReport,
    ExampleDropped,
    encode_example,
    encode_examples,
)
from headig.data.examples import Example, fingerprint
from headig.data.recipes import (
    RECIPES,
    Recipe,
    available_recipes,
    gsm8k_final_answer,
    recipe_for_dataset,
    register_recipe,
)
from headig.data.sources import load_examples, load_records

__all__ = [
    "RECIPES", "EncodedExample", "EncodingReport", "Example", "ExampleDropped", "Recipe",
    "available_recipes", "encode_example", "encode_examples", "fingerprint",
    "gsm8k_final_answer", "load_examples", "load_records", "recipe_for_dataset",
    "register_recipe",
]
