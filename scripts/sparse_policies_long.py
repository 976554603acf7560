"""Budget policies compared on the long-context model (tiny-dllm-long): the docs' table.

Scores (HeadIG importance, sparsity sensitivity) come from training draws of
``headig.toy.long_context`` (never held out); losses and accuracy from the model's
held-out ``eval.jsonl`` (or ``eval_examples`` when the folder has none). Block size 16.

    python scripts/sparse_policies_long.py --model_dir src/headig/assets/tiny-dllm-long \
        --out runs/policies-long
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import headig
from headig.objective import MaskedDiffusionObjective
from headig.validation.settings import AccuracySettings
from headig.validation.sparse import compare_budget_policies


def main() -> None:
    from headig.toy import long_context as lc

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=6, help="training draws for the scores")
    p.add_argument("--held", type=int, default=24, help="held-out examples (split over tasks)")
    p.add_argument("--keeps", default="0.1,0.2,0.3,0.5")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--policies", default="uniform,adaptive,sensitivity")
    p.add_argument("--sensitivity_steps", type=int, default=4)
    p.add_argument("--importance_steps", type=int, default=4)
    p.add_argument("--accuracy", action="store_true")
    args = p.parse_args()

    folder = Path(args.model_dir)
    model, _ = headig.load_model(folder)
    per = max(1, args.held // len(lc.LONG_TASKS))
    pool = lc.read_jsonl(folder / "eval.jsonl") if (folder / "eval.jsonl").is_file() \
        else lc.eval_examples(per_task=per)
    held_ex = [e for t in lc.LONG_TASKS for e in [x for x in pool if x.task == t][:per]]
    train_ex = lc.train_batch(seed=777, step=0, n=args.train, length=lc.EVAL_CONTEXT)

    def rows(examples: list, split: str) -> list[dict]:
        return [{"input_ids": torch.tensor(pr + co), "prompt_length": len(pr),
                 "id": f"{split}-{i}"} for i, (pr, co) in enumerate(lc.encode_fast(examples))]

    labels = {f"eval-{i}": e.task for i, e in enumerate(held_ex)}
    t0 = time.time()
    res = compare_budget_policies(
        model, rows(train_ex, "train"), rows(held_ex, "eval"),
        keeps=[float(k) for k in args.keeps.split(",")],
        seeds=[int(s) for s in args.seeds.split(",")], policies=args.policies.split(","),
        block_size=16, sensitivity_steps=args.sensitivity_steps,
        importance_steps=args.importance_steps, oracle_examples=6, oracle_moves=4,
        objective=MaskedDiffusionObjective(mask_probs=(0.15, 0.5, 0.9), mask_samples_per_prob=1),
        accuracy=AccuracySettings(enabled=args.accuracy, labels=labels), internal_batch_size=32,
        on_stage=lambda m: print(f"{time.time() - t0:7.1f}s {m}", flush=True))
    res.save(args.out, plot=False)
    print(res.to_markdown())
    print("dense:", res.meta["dense_loss"])
    print("sensitivity completeness:", res.meta["sensitivity_completeness"])


if __name__ == "__main__":
    main()
