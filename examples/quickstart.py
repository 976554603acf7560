# ruff: noqa: E402  (notebook style: each cell imports what it uses)
# %% [markdown]
# # headig quickstart: the library API on the embedded tiny model
#
# Runs on a laptop CPU in about a minute, offline: the tiny diffusion LM shipped with
# headig (LLaDA format, 3 layers x 4 heads) trained on six prompt→answer tasks.
# Each `# %%` block is a notebook cell (VS Code / Jupyter / `jupytext` open it as one);
# `python examples/quickstart.py` runs it top to bottom and writes into
# `quickstart-output/`.

# %% 1. Load the model and the data
from pathlib import Path

import torch

import headig
from headig import tasks
from headig.data import Example, encode_examples
from headig.toy.embedded import embedded_examples, load_embedded

OUT = Path("quickstart-output")
OUT.mkdir(exist_ok=True)

model, tokenizer = load_embedded()  # the same as headig.load_model(<checkpoint folder>)
fam = headig.family_of(model)
print(f"{fam.name}: {fam.n_layers} layers x {fam.n_heads} heads, mask id {fam.mask_token_id}")


def encode(split: str, per_task: int):
    """Encoded examples (prompt | completion) and their task labels, balanced over tasks."""
    raw = tasks.subset(embedded_examples(split), per_task)
    examples = [Example(e.prompt, e.completion, id=f"{split}-{i}", meta={"task": e.task})
                for i, e in enumerate(raw)]
    encoded, report = encode_examples(tokenizer, examples, add_bos=False)
    return encoded, {ex.id: ex.meta["task"] for ex in examples}


# Attribute on training examples, validate on held-out ones: never the same rows.
attribution_batch, _ = encode("train", 8)  # 48 examples
held_out, labels = encode("eval", 20)  # 120 examples
print(tokenizer.decode(held_out[0].input_ids), "| prompt tokens:", held_out[0].prompt_length)

# %% 2. Attribute: HeadIG along the Stochastic Threshold Path
from headig.attribution import STP, integrated_gradients

attribution = integrated_gradients(
    model, attribution_batch,
    path=STP(samples=4),  # 4 random threshold paths per example
    steps=8,  # trapezoid points per path
    mask_probs=(0.15, 0.3, 0.5, 0.7, 0.9), mask_samples_per_prob=2,  # the objective's masks
    progress=True,
)
importance = attribution.to_importance()  # positive score = the head helps
importance.save(OUT / "scores")  # safetensors + a JSON summary next to it

# %% 3. Inspect
print(importance.layer_head_table())
for layer, head, score in importance.top_k(3):
    print(f"layer {layer} head {head}: {score:+.3f}")
# Completeness: per example, the scores add up to J(all heads) - J(no heads) up to a residual
delta = (attribution.j_full - attribution.j_baseline).abs().mean()
print(f"completeness residual: {attribution.residual.abs().mean() / delta:.1%} of |J(1) - J(0)|")

from headig.plotting import save_heatmap

save_heatmap(importance, OUT / "heatmap.png", mark_top=3)

# %% 4. Prune: remove heads and look at what breaks
from headig.interventions import HeadMask
from headig.validation import generation_accuracy, loss_at_masks

print("intact:", generation_accuracy(model, held_out, labels=labels)["groups"])
with HeadMask.from_scores(model, importance, which="most", k=2) as mask:
    print("without", mask.removed, generation_accuracy(model, held_out, labels=labels)["groups"])
with HeadMask.from_scores(model, importance, which="least", k=2) as mask:
    print("without", mask.removed, generation_accuracy(model, held_out, labels=labels)["groups"])

# The held-out loss of several pruned models in one pass (same masks for all of them)
keep = torch.ones(3, fam.n_layers, fam.n_heads, dtype=torch.bool)
keep[1] = headig.select_heads(importance, "most", k=2)
keep[2] = headig.select_heads(importance, "least", k=2)
print("loss intact / -top2 / -bottom2:", loss_at_masks(model, held_out, keep).tolist())

# %% 5. Validate: the pruning sweep with random baselines and the exhaustive oracle
from headig.validation import prune_sweep

sweep = prune_sweep(model, held_out, importance, ks=[1, 2, 3, 4, 6], random_seeds=3,
                    accuracy=True, labels=labels, oracle_examples=24, progress=True)
print(sweep.to_markdown())  # most / least / random; oracle best / worst; fidelity
sweep.save(OUT / "prune")  # prune.csv, prune.json, prune.md, prune.png

# %% 6. Faithfulness: how close is HeadIG to exact Shapley values on 12 heads?
from headig.importance import compare
from headig.validation import coalition_table

table = coalition_table(model, attribution_batch)  # J of all 4096 head subsets
exact = table.to_importance()  # exact Shapley values (same objective and masks)
print("Spearman HeadIG vs exact Shapley:", round(compare(importance, exact)["spearman"], 3))

# %% 7. Sparse attention: uniform vs importance-adaptive budgets (same total)
from headig.validation import sparse_sweep

sparse = sparse_sweep(model, held_out, importance, keeps=(0.2, 0.3, 0.5), accuracy=True,
                      labels=labels)
print(sparse.to_markdown())
sparse.save(OUT / "sparse")
print(f"outputs in {OUT.resolve()}")
