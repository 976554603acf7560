"""Lazy registration of ``headig-dllm`` with lm-eval, run from ``headig_lmeval.pth``.

lm-eval 0.4.13 has no plugin discovery: its CLI resolves ``--model`` in
``lm_eval.api.registry.model_registry``. Importing torch or lm_eval at every interpreter
start to register there would be slow, so ``headig_lmeval.pth`` defines, inline, a tiny
finder first on ``sys.meta_path`` (no file is imported at start-up). The finder ignores every
import except ``lm_eval.api.registry``; for that one it imports this module and delegates
to :class:`_RegistryFinder`, whose loader registers the *string* placeholder
``"headig_lmeval.model:HeadigDLLM"`` once the registry module has executed (lm-eval imports
the class on first use). :func:`install` arms the same hook from Python.

Order matters: ``get_model`` loads lm-eval's built-in models only into an *empty* registry,
so registering first would hide ``--model hf``. :func:`register` therefore imports
``lm_eval.models`` (which registers the built-ins, themselves lazy strings) before adding
ours, and never overrides an existing ``headig-dllm`` entry (newer lm-eval versions may
already hold it from the ``lm_eval.models`` entry point).

Set ``HEADIG_LMEVAL_NO_HOOK=1`` to disable the hook. Nothing here may import torch.
"""

from __future__ import annotations

import os
import sys

# No `typing`/`types` imports at run time: this module loads at every interpreter start and
# importing typing alone costs more than everything else here together.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

MODEL_NAME = "headig-dllm"
MODEL_TARGET = "headig_lmeval.model:HeadigDLLM"
REGISTRY_MODULE = "lm_eval.api.registry"
DISABLE_ENV = "HEADIG_LMEVAL_NO_HOOK"
MARK = "_headig_lmeval_hook"  # set on every finder of ours, including the .pth bootstrap


def register(registry_module: ModuleType | None = None) -> bool:
    """Register ``headig-dllm`` in lm-eval's model registry, after lm-eval's built-ins.

    Returns True if this call added the entry, False if it was already there. Raises
    ImportError when lm-eval is missing and RuntimeError for an lm-eval without the
    0.4.13-style lazy registry.
    """
    if registry_module is None:
        import lm_eval.api.registry as registry_module
    registry = getattr(registry_module, "model_registry", None)
    if registry is None or not hasattr(registry, "register"):
        raise RuntimeError(
            "this lm-eval has no lazy model registry (lm_eval.api.registry.model_registry); "
            "headig-dllm needs lm-eval >= 0.4.13 (pip install 'headig[lmeval]')"
        )
    # Built-ins first: get_model() only loads them into an empty registry. When the registry
    # is being imported *by* lm_eval.models, this import returns the partly initialised
    # module and lm_eval.models registers its built-ins right after we return.
    import lm_eval.models  # noqa: F401

    if MODEL_NAME in registry:
        return False
    registry.register(MODEL_NAME, target=MODEL_TARGET)
    return True


def registered(name: str = MODEL_NAME) -> Any:
    """Class decorator: register the decorated lm-eval model class under ``name``.

    lm-eval's own ``register_model`` decorator, made safe for headig-dllm: lm-eval's
    built-in models are registered first (via :func:`register`, which also adds the lazy
    placeholder the start-up hook would add), and the placeholder is then upgraded to the
    class itself. An existing entry that is neither (a newer lm-eval's entry point) is kept.
    Failures only warn, so defining the class never breaks on an unusual lm-eval.
    """
    def decorate(cls: Any) -> Any:
        try:
            register()
            from lm_eval.api.registry import register_model

            register_model(name)(cls)
        except ValueError:  # already registered with another target: keep it
            pass
        except Exception as err:  # pragma: no cover - lm-eval layout changed
            print(f"headig_lmeval: could not register {name!r} with lm-eval: {err}",
                  file=sys.stderr)
        return cls

    return decorate


class _RegisteringLoader:
    """Wraps the real loader of ``lm_eval.api.registry``; registers after it executes."""

    def __init__(self, inner: Any, finder: _RegistryFinder) -> None:
        self._inner = inner
        self._finder = finder

    def create_module(self, spec: Any) -> ModuleType | None:
        create = getattr(self._inner, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        self._finder.uninstall()
        try:
            register(module)
        except Exception as err:  # never break lm-eval itself
            print(f"headig_lmeval: could not register {MODEL_NAME!r} with lm-eval: {err}",
                  file=sys.stderr)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...
        return getattr(self._inner, name)


class _RegistryFinder:
    """A meta-path finder that only reacts to ``lm_eval.api.registry``."""

    _headig_lmeval_hook = True

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != REGISTRY_MODULE:
            return None
        spec = None
        for finder in list(sys.meta_path):
            if finder is self or getattr(finder, MARK, False):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisteringLoader(spec.loader, self)
        return spec

    def uninstall(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


def install() -> bool:
    """Arm the hook (idempotent). Returns False when disabled or nothing was needed."""
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        return False
    if REGISTRY_MODULE in sys.modules:  # lm-eval already imported: register right away
        try:
            return register(sys.modules[REGISTRY_MODULE])
        except Exception:
            return False
    if installed():
        return False
    sys.meta_path.insert(0, _RegistryFinder())
    return True


def installed() -> bool:
    """Whether the start-up hook is armed in this interpreter (before lm-eval is imported)."""
    return any(getattr(f, MARK, False) for f in sys.meta_path)
