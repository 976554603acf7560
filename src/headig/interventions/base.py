"""The one lifecycle every intervention shares: apply, remove, context manager.

An intervention changes a model's forward pass (hooks, a swapped attention function) and
must be able to undo exactly what it did. Subclasses implement :meth:`Intervention._install`
and register one undo callback per change with :meth:`Intervention._on_remove`; the base
class makes :meth:`~Intervention.apply` and :meth:`~Intervention.remove` idempotent and
undoes a partial install when ``_install`` raises half-way, so a failed ``apply`` never
leaves stray hooks behind.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

from torch.utils.hooks import RemovableHandle

Self = TypeVar("Self", bound="Intervention")
log = logging.getLogger("headig.interventions")


class Intervention(ABC):
    """Base class: ``with intervention: ...`` or ``intervention.apply()`` / ``.remove()``.

    It defines no ``__init__`` and no dataclass fields, so a subclass may be a plain class
    or a ``@dataclass`` (kvpress style)::

        @dataclass
        class Scale(Intervention):
            model: nn.Module
            factor: float

            def _install(self) -> None:
                hook = lambda m, a, out: out * self.factor
                self._on_remove(self.model.lm_head.register_forward_hook(hook))

        with Scale(model, 0.5):
            logits = model(ids).logits
    """

    # -------------------------------------------------------------- subclass API
    @abstractmethod
    def _install(self) -> None:
        """Make the changes; register each one's undo with :meth:`_on_remove`."""

    def _on_remove(self, undo: RemovableHandle | Callable[[], Any]) -> None:
        """Remember how to undo one change (a hook handle or a zero-argument callable)."""
        self._undo_stack().append(undo.remove if isinstance(undo, RemovableHandle) else undo)

    def _swap_attention_fn(self, attn: Any, make_fn: Callable[[Any], Any]) -> None:
        """Replace ``attn.attn_fn`` by ``make_fn(previous)`` and register the exact undo.

        The undo restores the previous function only while ours is still installed; if
        something replaced it since, that newer function is left in place (and logged).
        """
        prev = attn.attn_fn
        fn = make_fn(prev)
        attn.attn_fn = fn

        def restore() -> None:
            if attn.attn_fn is fn:
                attn.attn_fn = prev
            else:
                log.warning("layer %s's attention function was replaced after %s was applied; "
                            "leaving it in place", getattr(attn, "layer_idx", "?"),
                            type(self).__name__)

        self._on_remove(restore)

    # -------------------------------------------------------------- lifecycle
    def _undo_stack(self) -> list[Callable[[], Any]]:
        # created lazily so that dataclass subclasses need no __post_init__ call
        stack = self.__dict__.get("_undo")
        if stack is None:
            stack = self.__dict__["_undo"] = []
        return stack

    @property
    def active(self) -> bool:
        """True between a successful :meth:`apply` and the next :meth:`remove`."""
        return bool(self.__dict__.get("_active", False))

    def apply(self: Self) -> Self:
        """Install the intervention (a no-op when already active); returns self.

        If installing fails part-way, every change made so far is undone before the
        exception propagates.
        """
        if self.active:
            return self
        try:
            self._install()
        except BaseException:
            self.remove()
            raise
        self.__dict__["_active"] = True
        return self

    def remove(self) -> None:
        """Undo every change, last first (a no-op when nothing is installed)."""
        stack = self._undo_stack()
        first_error: BaseException | None = None
        while stack:  # keep undoing after a failure so that no change is left behind
            try:
                stack.pop()()
            except BaseException as err:  # noqa: BLE001 - re-raised below
                first_error = first_error or err
        self.__dict__["_active"] = False
        if first_error is not None:
            raise first_error

    def __enter__(self: Self) -> Self:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.remove()
