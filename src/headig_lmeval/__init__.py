"""headig-dllm: the lm-evaluation-harness model for LLaDA and Dream with headig interventions.

This package is imported at interpreter start-up by ``headig_lmeval.pth`` (to register the
model with lm-eval when, and only when, lm-eval's registry is imported), so importing it
must stay free of torch, transformers and lm_eval. Everything heavy is loaded lazily.
"""

MODEL_NAME = "headig-dllm"
MODEL_TARGET = "headig_lmeval.model:HeadigDLLM"

__all__ = ["MODEL_NAME", "MODEL_TARGET", "HeadigDLLM", "ModelArgs", "parse_model_args",
           "register"]


def __getattr__(name: str):  # no typing import: this module loads at interpreter start
    if name == "HeadigDLLM":
        from headig_lmeval.model import HeadigDLLM

        return HeadigDLLM
    if name in ("ModelArgs", "parse_model_args"):
        from headig_lmeval import args

        return getattr(args, name)
    if name == "register":
        from headig_lmeval._hook import register

        return register
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
