"""The one resumable, sharded runner behind every estimator, and the run-folder state machine.

:func:`run_attribution` drives an estimator's per-group attribution over the examples:

* **resume** – with ``checkpoint=FILE`` per-example results are written atomically (write to a
  temporary file, then ``os.replace``) after every group of examples and reused on restart.
  A resumed run is bit-identical to an uninterrupted one: an example's masks and thresholds
  depend only on the seed and its id, and the remaining examples form the same groups.
* **shards** – under ``torch.distributed`` (``torchrun``) rank r takes examples r, r+W, ...,
  writes its own checkpoint file, and the per-example results are gathered so that every
  rank returns the single-process result.

:class:`RunFolder` is the output-folder logic of ``headig attribute`` (fresh / resume /
done, refusal of a folder holding another run, the log, checkpoint cleanup), so that any
front end gets the same guarantees.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from headig.attribution import engine
from headig.attribution.objective import Item, MaskedDiffusionObjective
from headig.attribution.results import Attribution, postprocess
from headig.models.family import family_of
from headig.runtime import (
    atomic_path,
    atomic_write,
    dist_info,
    fingerprint,
    init_process_group,
    json_digest,
    progress_bar,
)

#: per example, its raw attribution [L', H], or (attribution, info) where ``info`` is a small
#: JSON-able dict (e.g. the convergence record of ``steps="auto"``) kept in the checkpoint and
#: returned in ``meta["example_info"]``
GroupFn = Callable[[list[Item]], list[Any]]
Done = tuple[Tensor, float, float, "dict[str, Any] | None"]


def data_fingerprint(items: Sequence[Item]) -> str:
    """Hash of the ids, tokens and completion spans (a checkpoint only resumes the same data)."""
    return fingerprint((part for it in items for part in (it.id, it.input_ids, it.completion)),
                       n_hex=16)


def atomic_save(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write a safetensors checkpoint so that a crash leaves either the old or the new file."""
    from safetensors.torch import save_file

    with atomic_path(path, make_parents=True) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"headig_checkpoint": json.dumps(meta)})


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Done]:
    """Per-example (attribution, J(1), J(α0), info) from a checkpoint of the same run, else {}."""
    from safetensors import safe_open

    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("headig_checkpoint", "{}"))
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(
                f"checkpoint {path} was written by a run with different settings or data "
                f"(fingerprint {meta.get('fingerprint')!r}, this run {fingerprint!r}); "
                "use another checkpoint path or delete it"
            )
        done = {}
        info = meta.get("info") or [None] * len(meta["ids"])
        for i, ex_id in enumerate(meta["ids"]):
            done[ex_id] = (f.get_tensor(f"a{i}").double(), float(meta["j_full"][i]),
                           float(meta["j_base"][i]), info[i])
    return done


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    return dist_info()


@contextlib.contextmanager
def process_group(device: str | torch.device, world: int) -> Iterator[None]:
    """Join the torchrun / accelerate process group for ``world`` > 1 ranks if none is set up
    yet (nccl on CUDA, gloo otherwise), and leave it on exit; a no-op in a single process."""
    own = world > 1 and torch.distributed.is_available() and init_process_group(device)
    try:
        yield
    finally:
        if own:
            torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def rank_checkpoint(path: str | os.PathLike, rank: int, world: int) -> Path:
    """The checkpoint file of one rank (the plain path in a single process)."""
    p = Path(path)
    return p if world <= 1 else p.with_name(f"{p.stem}.rank{rank}of{world}{p.suffix}")


def run_attribution(
    model: nn.Module,
    items: Sequence[Item],
    *,
    estimator: str,
    attribute_group: GroupFn,
    settings: dict[str, Any],
    objective: MaskedDiffusionObjective,
    layers: list[int],
    baseline: float,
    postprocess_name: str,
    internal_batch_size: int,
    return_per_example: bool,
    checkpoint: str | os.PathLike | None,
    examples_per_group: int,
    progress: bool,
) -> Attribution:
    """Attribute every item (resuming and sharding as described above) into an Attribution."""
    family = family_of(model)
    full_settings = {
        "estimator": estimator, **settings, **objective.settings(), "baseline": float(baseline),
        "postprocess": postprocess_name, "layers": list(layers),
    }
    data_fp = data_fingerprint(items)
    run_fp = json_digest([full_settings, data_fp], n_hex=16)
    rank, world = dist_rank_world()
    ckpt = None if checkpoint is None else rank_checkpoint(checkpoint, rank, world)
    done = load_checkpoint(ckpt, run_fp) if ckpt is not None else {}
    mine = [it for i, it in enumerate(items) if i % world == rank]
    todo = [it for it in mine if it.id not in done]

    shape = (len(layers), family.n_heads)
    ones = torch.ones(1, *shape)
    base = torch.full((1, *shape), float(baseline))
    bar = progress_bar(len(mine), f"headig {estimator}", enabled=progress and rank == 0,
                       unit="ex", initial=len(mine) - len(todo))
    start_time = time.time()
    try:
        for g0 in range(0, len(todo), examples_per_group):
            group = todo[g0:g0 + examples_per_group]
            attributions = attribute_group(group)
            ends = engine.evaluate_points(model, objective,
                                          [engine.PointRequest(it, torch.cat([ones, base]))
                                           for it in group],
                                          layers=layers, with_grad=False,
                                          internal_batch_size=internal_batch_size)
            for it, a, (vals, _) in zip(group, attributions, ends):
                a, info = a if isinstance(a, tuple) else (a, None)
                done[it.id] = (a.double(), float(vals[0]), float(vals[1]), info)
            if ckpt is not None:
                ids = [it.id for it in mine if it.id in done]
                ck_meta = {"fingerprint": run_fp, "ids": ids,
                           "j_full": [done[x][1] for x in ids],
                           "j_base": [done[x][2] for x in ids]}
                if any(done[x][3] is not None for x in ids):
                    ck_meta["info"] = [done[x][3] for x in ids]
                atomic_save(ckpt, {f"a{i}": done[x][0] for i, x in enumerate(ids)}, ck_meta)
            bar.update(len(group))
    finally:
        bar.close()

    local = {it.id: done[it.id] for it in mine}
    if world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, local)
        for part in gathered:
            local.update(part)
    raw = torch.stack([local[it.id][0] for it in items])  # [N, L', H] float64
    j_full = torch.tensor([local[it.id][1] for it in items], dtype=torch.float64)
    j_base = torch.tensor([local[it.id][2] for it in items], dtype=torch.float64)
    residual = raw.sum((1, 2)) - (j_full - j_base)
    mean = postprocess(raw, postprocess_name).mean(0)
    scores = torch.zeros(family.n_layers, family.n_heads, dtype=torch.float32)
    scores[layers] = mean.float()
    import headig

    meta = {
        **full_settings,
        "sign_convention": "positive_helps",
        "objective": "J = -(masked-token cross-entropy on the completion span)",
        "model": getattr(model, "name_or_path", None) or type(model).__name__,
        "family": family.name,
        "n_layers": family.n_layers, "n_heads": family.n_heads,
        "n_examples": len(items),
        "data_fingerprint": data_fp,
        "run_fingerprint": run_fp,
        "headig_version": headig.__version__,
        "torch_version": torch.__version__,
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "world_size": world,
        "python": platform.python_version(),
        "seconds": round(time.time() - start_time, 3),
    }
    infos = [local[it.id][3] for it in items]
    if any(x is not None for x in infos):
        meta["example_info"] = [{"id": it.id, **(x or {})} for it, x in zip(items, infos)]
    full_raw = None
    if return_per_example:
        full_raw = torch.zeros(len(items), family.n_layers, family.n_heads, dtype=torch.float64)
        full_raw[:, layers] = raw
    return Attribution(scores=scores, layers=tuple(layers), example_ids=[it.id for it in items],
                       per_example=full_raw, j_full=j_full, j_baseline=j_base,
                       residual=residual, meta=meta)


# ----------------------------------------------------------------------------- run folders
RESULT_FILE = "head_importance.safetensors"
LOG_FILE = "attribution.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
LOG_SCHEMA = 1

State = Literal["fresh", "resume", "done"]


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomic JSON write (a reader never sees half a log)."""
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


class RunFolder:
    """An output folder holding one attribution run: its log, checkpoints and result.

    ``identity`` is every setting that determines the result; a folder holding a run with
    another identity is refused instead of being mixed with this one. ``normalize`` maps an
    identity to its comparable form (e.g. estimator aliases to canonical names).
    """

    def __init__(self, out: str | os.PathLike, identity: dict[str, Any], *, rank: int = 0,
                 world: int = 1,
                 normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.out = Path(out).expanduser()
        self.identity = identity
        self.rank, self.world = rank, world
        self._normalize = normalize or (lambda d: d)

    @property
    def result(self) -> Path:
        return self.out / RESULT_FILE

    @property
    def log_file(self) -> Path:
        return self.out / LOG_FILE

    @property
    def checkpoint(self) -> Path:
        """The checkpoint path to pass to an estimator (the runner adds the rank suffix)."""
        return self.out / CHECKPOINT_FILE

    def read_log(self) -> dict[str, Any] | None:
        if not self.log_file.is_file():
            return None
        try:
            return json.loads(self.log_file.read_text())
        except json.JSONDecodeError:
            return None

    def checkpoints(self) -> list[Path]:
        """Every checkpoint file in the folder, of any rank and world size."""
        stem = Path(CHECKPOINT_FILE).stem
        return sorted(self.out.glob(f"{stem}*.safetensors"))

    def changed(self, previous: dict[str, Any]) -> list[str]:
        """Identity keys whose values differ from ``previous``."""
        a, b = self._normalize(dict(previous)), self._normalize(dict(self.identity))
        return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))

    def prepare(self, overwrite: bool = False) -> State:
        """Decide what to do with the folder: 'fresh', 'resume' or 'done'. Raises on conflicts."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
        prev = self.read_log() if out.is_dir() else None
        ckpts = self.checkpoints() if out.is_dir() else []
        if overwrite:
            if self.rank == 0:
                for f in [*ckpts, self.result, self.log_file,
                          out / Path(RESULT_FILE).with_suffix(".json").name]:
                    f.unlink(missing_ok=True)
            return "fresh"
        if prev is not None and prev.get("identity") is not None:
            changed = self.changed(prev["identity"])
            if changed:
                raise ValueError(f"--out {out} holds a run with different settings (differs in "
                                 f"{', '.join(changed)}); choose another --out or pass --overwrite")
            if prev.get("status") == "complete" and self.result.is_file():
                return "done"
            return "resume" if ckpts else "fresh"
        if self.result.is_file():
            raise ValueError(f"--out {out} already holds {RESULT_FILE} from another run; choose "
                             "another --out or pass --overwrite")
        return "resume" if ckpts else "fresh"

    def write_log(self, log: dict[str, Any]) -> None:
        """Write the run log (rank 0 only; other ranks do nothing)."""
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.log_file, log)

    def cleanup(self, keep_checkpoint: bool) -> None:
        """After success: remove this rank's checkpoint (rank 0 also removes leftovers of an
        earlier attempt with another world size) unless it is to be kept."""
        if keep_checkpoint:
            return
        rank_checkpoint(self.checkpoint, self.rank, self.world).unlink(missing_ok=True)
        if self.rank == 0:
            for leftover in self.checkpoints():
                leftover.unlink(missing_ok=True)


__all__ = ["CHECKPOINT_FILE", "LOG_FILE", "LOG_SCHEMA", "RESULT_FILE", "RunFolder",
           "atomic_save", "barrier", "data_fingerprint", "dist_rank_world", "load_checkpoint",
           "process_group", "rank_checkpoint", "run_attribution", "write_json"]
