"""Record, or compare exactly against, the outputs of headig's public API.

Why: refactors that move modules or merge duplicates must not change a single number. This
script runs small, seeded calls of every public entry point (the tiny test fixtures, the
embedded model, the lm-eval model) and stores their outputs: tensors in
``snapshot.safetensors``, everything else (scalars, tables, strings) in ``snapshot.json``.
Wall-clock, timestamp and host fields are stripped so two runs of unchanged code agree.

    python scripts/behaviour_snapshot.py OUT_DIR                  # record
    python scripts/behaviour_snapshot.py --compare OUT_DIR        # recompute, compare exactly
    python scripts/behaviour_snapshot.py --compare OUT_DIR --sections golden,gating

Comparison is exact (``torch.equal`` for tensors, ``==`` for JSON values); one line per key,
exit status 1 on any difference or missing key.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
FAMILIES = ("tiny-llada", "tiny-dream")
FAST = dict(mask_probs=(0.3, 0.7), mask_samples_per_prob=1)
# Key words of wall-clock time, dates, hosts, library versions: such keys are not compared.
VOLATILE_WORDS = {"s", "ms", "sec", "secs", "second", "seconds", "time", "times", "timestamp",
                  "created", "date", "datetime", "host", "hostname", "wall", "elapsed",
                  "duration", "throughput", "speed", "platform", "python", "pid", "git",
                  "commit", "cwd", "user"}
VOLATILE_KEYS = {"torch_version", "transformers_version", "lm_eval_version", "numpy_version",
                 "pretty_env_info", "upper_git_hash", "model_source"}
STRIPPED: set[str] = set()


def volatile(key: str) -> bool:
    """Whether a dict key or table column names a wall-clock, date or host field."""
    k = key.lower()
    hit = k in VOLATILE_KEYS or any(w in VOLATILE_WORDS for w in re.split(r"[^a-z0-9]+", k))
    if hit:
        STRIPPED.add(key)
    return hit


# ----------------------------------------------------------------------------- recording


class Recorder:
    """Collects tensors and JSON values under ``section.key`` names."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.values: dict[str, Any] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="headig-snapshot-"))
        self.prefix = ""

    def add(self, key: str, value: Any) -> None:
        name = f"{self.prefix}{key}"
        if name in self.tensors or name in self.values:
            raise KeyError(f"duplicate snapshot key {name}")
        if isinstance(value, torch.Tensor):
            self.tensors[name] = value.detach().cpu().contiguous().clone()
        else:
            self.values[name] = canonical(value, str(self.tmp))

    def add_attribution(self, key: str, a: Any) -> None:
        for field in ("scores", "per_example", "residual", "j_full", "j_baseline"):
            v = getattr(a, field)
            if v is not None:
                self.add(f"{key}.{field}", v)
        self.add(f"{key}.example_ids", list(a.example_ids))
        self.add(f"{key}.layers", list(a.layers))
        self.add(f"{key}.meta", a.meta)


def canonical(value: Any, tmp: str = "") -> Any:
    """A JSON-able copy with volatile keys dropped and temporary paths neutralised."""
    if isinstance(value, dict):
        return {str(k): canonical(v, tmp) for k, v in value.items()
                if not volatile(str(k))}
    if isinstance(value, (list, tuple)):
        return [canonical(v, tmp) for v in value]
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().tolist(), "dtype": str(value.dtype)}
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        value = value.replace(tmp, "<tmp>") if tmp else value
        return value.replace(str(ROOT), "<root>")
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return canonical(value.item(), tmp)
    if hasattr(value, "__dataclass_fields__"):
        return canonical({k: getattr(value, k) for k in value.__dataclass_fields__}, tmp)
    return repr(value)


def strip_table(text: str) -> str:
    """Drop columns whose header looks volatile from CSV text."""
    lines = text.strip().splitlines()
    if not lines:
        return text
    head = lines[0].split(",")
    keep = [i for i, h in enumerate(head) if not volatile(h)]
    return "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i in keep)
                     for line in lines)


@contextlib.contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    torch.manual_seed(seed)
    yield


# ----------------------------------------------------------------------------- helpers

_MODELS: dict[str, tuple[Any, Any]] = {}


def model(name: str) -> tuple[Any, Any]:
    """(model, tokenizer) for a fixture name or ``embedded``, float32 CPU, cached."""
    import headig
    if name not in _MODELS:
        if name == "embedded":
            from headig.embedded import load_embedded
            _MODELS[name] = load_embedded()
        else:
            _MODELS[name] = headig.load_model(FIXTURES / name)
    return _MODELS[name]


def golden(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(FIXTURES / name / "golden.safetensors"))


def random_batch(n: int = 3, length: int = 12, prompt: int = 6, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [dict(input_ids=torch.randint(0, 490, (length,), generator=g), prompt_length=prompt,
                 id=f"ex{i}") for i in range(n)]


def embedded_batch(split: str, per_task: int, start: int = 0) -> tuple[list, dict, list]:
    """Encoded embedded-task examples, their task labels, and the raw task examples."""
    from headig import tasks
    from headig.data import Example, encode_examples
    from headig.embedded import embedded_examples
    _, tok = model("embedded")
    raw = tasks.subset(embedded_examples(split), per_task)
    exs = [Example(e.prompt, e.completion, id=f"{split}-{i}", meta={"task": e.task})
           for i, e in enumerate(raw)]
    enc, report = encode_examples(tok, exs, add_bos=False)
    return enc, {e.id: e.meta["task"] for e in exs}, raw


# ----------------------------------------------------------------------------- sections


def sec_golden(r: Recorder) -> None:
    import headig
    for name in FAMILIES:
        m, _ = model(name)
        g = golden(name)
        with torch.no_grad():
            r.add(f"{name}.forward", m(g["forward.input_ids"]).logits)
            r.add(f"{name}.padded", m(g["padded.input_ids"],
                                      attention_mask=g["padded.attention_mask"]).logits)
            bf, _ = headig.load_model(FIXTURES / name, dtype="bfloat16", tokenizer=False)
            r.add(f"{name}.bf16", bf(g["forward.input_ids"]).logits)
        r.add(f"{name}.family", {k: getattr(m.family, k) for k in (
            "name", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mask_token_id",
            "logit_shift")})


def sec_estimators(r: Recorder) -> None:
    import headig
    from headig import STP
    for name in (*FAMILIES, "embedded"):
        m, _ = model(name)
        batch = (random_batch() + [dict(input_ids=torch.arange(20, 29), prompt_length=4,
                                         id="short")]
                 if name != "embedded" else embedded_batch("train", 1)[0][:4])
        ig = headig.integrated_gradients
        runs: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
            ("ig_dp_trap4", ig, dict(path=headig.DP(), rule="trapezoid", steps=4)),
            ("ig_dp_gl3", ig, dict(path=headig.DP(), rule="gauss_legendre", steps=3)),
            ("ig_stp_right4", ig, dict(path=STP(samples=2), rule="right", steps=4)),
            ("ig_stp_narrow", ig, dict(path=STP(samples=2, ramp="narrow", width=0.1,
                                                sampling="antithetic"),
                                       rule="ramp_gauss", steps=2)),
            ("ig_abs_ibs3", ig, dict(path=STP(samples=2), steps=3, postprocess="abs",
                                     internal_batch_size=3, seed=5)),
            ("ig_mid_layer0", ig, dict(path=headig.DP(), rule="midpoint", steps=3, layers=[0])),
            ("ig_left_base_sum", ig, dict(path=headig.DP(), rule="left", steps=3, baseline=0.3,
                                          loss_normalize="sum")),
            ("ig_groups", ig, dict(path=STP(samples=3, sampling="stratified"), steps=2,
                                   examples_per_group=1, internal_batch_size=2, seed=2)),
            ("shapley_sampling", headig.shapley_sampling, dict(layers=[1], permutations=3)),
            ("exact_shapley", headig.exact_shapley, dict(layers=[1])),
            ("leave_one_out", headig.leave_one_out, {}),
            ("gradient_at_ones", headig.gradient_at_ones, {}),
        ]
        for key, fn, kw in runs:
            with seeded():
                r.add_attribution(f"{name}.{key}", fn(m, batch, **kw, **FAST))
    # resume: kill a checkpointed run part-way (a forward hook raises), then resume it
    m, _ = model("tiny-llada")
    batch = random_batch(n=4)
    kw = dict(path=STP(samples=2), steps=4, examples_per_group=1, **FAST)
    ckpt = r.tmp / "run.ckpt.safetensors"
    calls = {"n": 0}

    def die(module: Any, args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    handle = m.register_forward_pre_hook(die)
    killed = False
    try:
        headig.integrated_gradients(m, batch, checkpoint=ckpt, **kw)
    except KeyboardInterrupt:
        killed = True
    finally:
        handle.remove()
    r.add("resume.killed", killed)
    r.add("resume.checkpoint_written", ckpt.is_file())
    r.add_attribution("resume.resumed", headig.integrated_gradients(m, batch, checkpoint=ckpt,
                                                                    **kw))
    r.add_attribution("resume.fresh", headig.integrated_gradients(m, batch, **kw))
    imp = headig.integrated_gradients(m, batch, **kw).to_importance()
    r.add("to_importance.scores", imp.scores)
    r.add("to_importance.meta", imp.meta)


def sec_likelihood(r: Recorder) -> None:
    from headig import likelihood as L
    for name in FAMILIES:
        m, _ = model(name)
        g = golden(name)
        p = g["loglik.prompt"]
        for j in range(3):
            a = g[f"loglik.answer{j}"]
            r.add(f"{name}.exact{j}", L.exact_loglikelihood(m, p, a))
            r.add(f"{name}.mc{j}", list(L.loglikelihood(m, p, a, mc_num=16, seed=3,
                                                        greedy_check=True)))
        a = g["loglik.answer2"]
        for b in (1, 7):
            r.add(f"{name}.bs{b}", list(L.loglikelihood(m, p, a, mc_num=14, batch_size=b,
                                                        seed=3)))
        r.add(f"{name}.cfg", list(L.loglikelihood(m, p, g["loglik.answer1"], cfg_scale=2.0,
                                                  mc_num=8)))
        reqs = [(p, g["loglik.answer1"]), (p[:3], g["loglik.answer2"]),
                (p, g["loglik.answer0"]), (p[2:].tolist(), g["loglik.answer2"].tolist())]
        r.add(f"{name}.batch", [list(x) for x in L.loglikelihood_batch(m, reqs, mc_num=8,
                                                                       batch_size=5, seed=11)])
    r.add("patterns", L.draw_mask_patterns(5, 20, seed=0, stratum_size=8))


def sec_generation(r: Recorder) -> None:
    from headig.generation import generate
    for name in FAMILIES:
        m, _ = model(name)
        g = golden(name)
        cases = json.loads((FIXTURES / name / "golden.json").read_text())["cases"]
        for case, settings in cases["generate"]["settings"].items():
            r.add(f"{name}.{case}", generate(m, g["generate.prompt"], **settings))
        pset = cases["padded"]["generate_settings"]
        r.add(f"{name}.padded", generate(m, g["padded.prompt_ids"],
                                         g["padded.prompt_attention_mask"], **pset))
        for style, extra in (("llada", {"block_length": 4}), ("dream", {"alg": "entropy"})):
            gen = torch.Generator().manual_seed(7)
            r.add(f"{name}.sampled_{style}", generate(
                m, g["generate.prompt"], steps=4, gen_length=8, temperature=0.7, style=style,
                generator=gen, **extra))


def sec_gating(r: Recorder) -> None:
    from headig import HeadGate, HeadMask, select_heads
    for name in FAMILIES:
        m, _ = model(name)
        ids = golden(name)["forward.input_ids"]
        gates = torch.rand(3, 2, 4, generator=torch.Generator().manual_seed(0))
        scores = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            with HeadGate(m, gates):
                r.add(f"{name}.gate_rows", m(ids).logits)
            with HeadGate(m, gates[0, 1:], layers=[1]):
                r.add(f"{name}.gate_layer1", m(ids).logits)
            for which in ("most", "least", "random"):
                with HeadMask.from_scores(m, scores, which, k=3):
                    r.add(f"{name}.mask_{which}", m(ids).logits)
                r.add(f"{name}.select_{which}", select_heads(scores, which, k=3))
                r.add(f"{name}.select_{which}_frac", select_heads(scores, which, k_frac=0.25,
                                                                  layers=[1], by="abs"))
        g = gates[0].clone().requires_grad_(True)
        with HeadGate(m, g):
            m(ids).logits.logsumexp(-1).mean().backward()
        r.add(f"{name}.gate_grad", g.grad)


def sec_sparse(r: Recorder) -> None:
    from headig import SparseAttentionPatch
    from headig.generation import generate
    for name in FAMILIES:
        m, _ = model(name)
        ids = torch.randint(0, 400, (2, 61), generator=torch.Generator().manual_seed(0))
        imp = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
        for kernel in ("gather", "dense_mask"):
            for mode, kw in (("uniform", {}), ("adaptive", {"importance": imp})):
                patch = SparseAttentionPatch(m, mode, keep=0.3, block_size=4, min_seq_len=0,
                                             kernel=kernel, **kw)
                with patch, torch.no_grad():
                    r.add(f"{name}.{kernel}.{mode}", m(ids).logits)
                r.add(f"{name}.{kernel}.{mode}.budgets", patch.budgets(16))
                for layer, p in sorted(patch.last_patterns.items()):
                    r.add(f"{name}.{kernel}.{mode}.kept{layer}", p.kept)
                r.add(f"{name}.{kernel}.{mode}.stats", dict(sorted(patch.stats.items())))
        g = golden(name)
        kw = (dict(steps=8, gen_length=8, block_length=4) if name == "tiny-llada"
              else dict(steps=8, gen_length=8, alg="entropy"))
        with torch.no_grad(), SparseAttentionPatch(m, "adaptive", importance=imp, keep=0.3,
                                                   skip=0.25, block_size=2, min_seq_len=0,
                                                   kernel="gather") as patch:
            r.add(f"{name}.generate", generate(m, g["generate.prompt"], **kw))
        r.add(f"{name}.generate.stats", dict(sorted(patch.stats.items())))


def sec_validation(r: Recorder) -> None:
    import headig
    from headig.faithfulness import faithfulness
    from headig.objective import MaskedDiffusionObjective
    from headig.validate import coalition_table, generation_accuracy, prune_sweep, sparse_sweep
    m, _ = model("embedded")
    attr, _, _ = embedded_batch("train", 1)
    held, labels, _ = embedded_batch("eval", 1)
    obj = MaskedDiffusionObjective(**FAST)
    imp = headig.integrated_gradients(m, attr, path=headig.STP(samples=2), steps=4,
                                      objective=obj).to_importance()
    r.add("imp.scores", imp.scores)
    sweep = prune_sweep(m, held, imp, ks=[2, 4], random_seeds=2, accuracy=True, labels=labels,
                        oracle_examples=3, objective=obj)
    r.add("prune.dict", sweep.to_dict())
    r.add("prune.csv", strip_table(sweep.to_csv()))
    r.add("prune.oracle_csv", strip_table(sweep.oracle_csv()))
    table = coalition_table(m, held[:3], layers=[0, 2], objective=obj)
    r.add("coalition.values", table.values)
    r.add("coalition.shapley", table.shapley())
    r.add("coalition.oracle", [table.oracle(k) for k in (1, 3)])
    r.add("genacc", generation_accuracy(m, held, labels=labels))
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[1, 2] = False
    r.add("genacc_pruned", generation_accuracy(m, held, labels=labels, keep=keep,
                                               batch_size=5))
    ss = sparse_sweep(m, held, imp, keeps=[0.3, 1.0], modes=["standard", "uniform", "adaptive"],
                      objective=obj, accuracy=True, labels=labels)
    r.add("sparse.dict", ss.to_dict())
    r.add("sparse.csv", strip_table(ss.to_csv()))
    fm, _ = model("tiny-llada")
    fbatch = random_batch(n=2, length=10)
    res = faithfulness(fm, fbatch, grid="minimal", objective=obj, seeds=[0, 1])
    r.add("faithfulness.dict", res.to_dict())


def sec_toy(r: Recorder) -> None:
    from headig import tasks
    from headig.embedded import embedded_examples
    from headig.train_tiny import TrainConfig, build_model, build_tokenizer, llada_config, train
    train_set, eval_set = tasks.make_splits(3, 40, 2)
    r.add("splits", [[e.prompt, e.completion, e.task] for e in train_set + eval_set])
    r.add("reference", [tasks.reference_answer(e.prompt) for e in eval_set])
    m, tok = model("embedded")
    exs = tasks.subset(embedded_examples("eval"), 3)
    r.add("accuracy", tasks.accuracy(m, tok, exs))
    r.add("completion_loss", tasks.completion_loss(m, tok, exs, per_task=True))
    r.add("completion_loss_all", tasks.completion_loss(m, tok, exs, samples_per_prob=1))
    cfg = TrainConfig(seed=0, n_layers=1, n_heads=2, head_dim=8, mlp_hidden=32, steps=12,
                      batch_size=8, warmup=3, n_train=120, n_eval_per_task=2)
    tr, _ = tasks.make_splits(cfg.seed, cfg.n_train, cfg.n_eval_per_task)
    tm = build_model(llada_config(cfg), cfg.seed)
    r.add("train.curve", train(tm, build_tokenizer(), tr, cfg, log_every=4))
    for k, v in sorted(tm.state_dict().items()):
        r.add(f"train.weights.{k}", v)


def sec_importance(r: Recorder) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from headig import HeadImportance, combine, compare
    g = torch.Generator().manual_seed(0)
    a = HeadImportance(scores=torch.randn(2, 4, generator=g), meta={"note": "snapshot"})
    b = HeadImportance.from_per_example(torch.randn(3, 2, 4, generator=g), layers=[0, 1])
    path = a.save(r.tmp / "imp")
    r.add("tensors", load_file(str(path))["scores"] if "scores" in load_file(str(path))
          else torch.stack(list(load_file(str(path)).values())))
    r.add("tensor_names", sorted(load_file(str(path))))
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    r.add("header", {k: _maybe_json(v) for k, v in header.items()})
    sidecar = path.with_suffix(".json")
    r.add("sidecar", json.loads(sidecar.read_text()) if sidecar.is_file() else None)
    back = HeadImportance.load(path)
    r.add("load.scores", back.scores)
    r.add("load.meta", back.meta)
    r.add("load.layers", list(back.layers) if back.layers is not None else None)
    r.add("to_json", json.loads(back.to_json()))
    r.add("top_k", back.top_k(3))
    r.add("table", back.layer_head_table())
    r.add("b.scores", b.scores)
    r.add("combine", combine([a, b]).scores)
    r.add("compare", compare(a, b, k=3))


def _maybe_json(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def sec_lmeval(r: Recorder) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from headig_lmeval.model import HeadigDLLM
    cwd = Path.cwd()
    os.chdir(ROOT)  # the local tasks' data_files are relative to the repository
    try:
        for name in FAMILIES:
            lm = HeadigDLLM(pretrained=str(FIXTURES / name), device="cpu", mc_num=8,
                            batch_size=4)
            out = lm_eval.simple_evaluate(
                model=lm, tasks=["headig_mc", "headig_gen", "headig_rolling"], limit=2,
                log_samples=True, task_manager=TaskManager(
                    include_path=str(ROOT / "tests/lmeval_tasks"), include_defaults=False))
            r.add(f"{name}.results", out["results"])
            for task, samples in sorted(out["samples"].items()):
                r.add(f"{name}.samples.{task}", [dict(doc_id=s["doc_id"], resps=s["resps"],
                                                      filtered=s["filtered_resps"])
                                                 for s in samples])
    finally:
        os.chdir(cwd)


def sec_demo(r: Recorder) -> None:
    from headig.demo import run_demo
    rep = run_demo(r.tmp / "demo", quick=True, progress=False)
    r.add("numbers", rep.numbers)
    r.add("files", sorted(rep.files))
    for key, p in sorted(rep.files.items()):
        p = Path(p)
        if p.suffix == ".json":
            r.add(f"file.{key}", json.loads(p.read_text()))
        elif p.suffix == ".csv":
            r.add(f"file.{key}", strip_table(p.read_text()))
        elif p.suffix == ".safetensors":
            from safetensors.torch import load_file
            for k, v in sorted(load_file(str(p)).items()):
                r.add(f"file.{key}.{k}", v)


def sec_data(r: Recorder) -> None:
    from headig.data import Example, encode_examples, fingerprint, load_examples
    recs = [{"prompt": "The cat sat on the", "completion": " mat and slept."},
            {"prompt": "Two plus two is", "completion": " four, said Ann."},
            {"prompt": "Rain falls", "completion": " on the green hills."},
            {"prompt": "A very long prompt " * 6, "completion": " end."},
            {"question": "Q: 3+4?", "answer": "So 3+4=7.\n#### 7"}]
    f = r.tmp / "data.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in recs[:4]))
    exs = load_examples(f, limit=3, seed=1)
    r.add("loaded", [[e.prompt, e.completion, e.id] for e in exs])
    r.add("fingerprint", fingerprint(exs))
    g = load_examples(recs[4:], recipe="gsm8k", seed=None)
    r.add("gsm8k", [[e.prompt, e.completion, e.id] for e in g])
    for name in FAMILIES:
        _, tok = model(name)
        ex = [Example(x["prompt"], x["completion"], id=f"e{i}") for i, x in enumerate(recs[:4])]
        for kw_name, kw in (("default", {}), ("short", {"max_length": 20}),
                            ("chat", {"chat_template": True, "add_bos": False})):
            enc, report = encode_examples(tok, ex, **kw)
            r.add(f"{name}.{kw_name}.report", report.to_dict())
            r.add(f"{name}.{kw_name}.encoded", [[e.id, e.prompt_length, e.truncated,
                                                 e.input_ids.tolist()] for e in enc])


SECTIONS: dict[str, Callable[[Recorder], None]] = {
    "golden": sec_golden, "estimators": sec_estimators, "likelihood": sec_likelihood,
    "generation": sec_generation, "gating": sec_gating, "sparse": sec_sparse,
    "validation": sec_validation, "toy": sec_toy, "importance": sec_importance,
    "data": sec_data, "lmeval": sec_lmeval, "demo": sec_demo,
}


# ----------------------------------------------------------------------------- compare


def _json_max_diff(a: Any, b: Any) -> float | None:
    """Largest absolute difference of matching numeric leaves (None if shapes differ)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return None if a == b else math.inf
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b)
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        diffs = [_json_max_diff(a[k], b[k]) for k in a]
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        diffs = [_json_max_diff(x, y) for x, y in zip(a, b)]
    else:
        return None if a != b else 0.0
    if any(d is None for d in diffs):
        return None
    return max(diffs, default=0.0)


def compare(ref_dir: Path, r: Recorder, sections: list[str]) -> int:
    from safetensors.torch import load_file
    ref_t = load_file(str(ref_dir / "snapshot.safetensors"))
    ref_v = json.loads((ref_dir / "snapshot.json").read_text())["values"]
    prefixes = tuple(f"{s}." for s in sections)
    keys = sorted({k for k in (*ref_t, *ref_v) if k.startswith(prefixes)}
                  | set(r.tensors) | set(r.values))
    bad = 0
    for k in keys:
        if k in ref_t or k in r.tensors:
            if k not in ref_t or k not in r.tensors:
                print(f"DIFF {k}: {'missing now' if k in ref_t else 'new key'}")
                bad += 1
                continue
            a, b = ref_t[k], r.tensors[k]
            if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b):
                print(f"ok   {k}")
                continue
            if a.shape == b.shape:
                d = (a.double() - b.double()).abs().nan_to_num(math.inf).max().item() \
                    if a.numel() else 0.0
                print(f"DIFF {k}: max abs diff {d:.3e} (dtype {a.dtype} -> {b.dtype})")
            else:
                print(f"DIFF {k}: shape {tuple(a.shape)} -> {tuple(b.shape)}")
            bad += 1
        else:
            if k not in ref_v or k not in r.values:
                print(f"DIFF {k}: {'missing now' if k in ref_v else 'new key'}")
                bad += 1
                continue
            a, b = ref_v[k], json.loads(json.dumps(r.values[k]))
            if json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True):
                print(f"ok   {k}")
                continue
            d = _json_max_diff(a, b)
            print(f"DIFF {k}: " + ("structure/text differs" if d is None
                                   else f"max abs diff {d:.3e}"))
            bad += 1
    print(f"{len(keys) - bad} ok, {bad} differ")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", help="folder to record the snapshot into")
    ap.add_argument("--compare", metavar="DIR", help="recompute and compare with DIR")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = ap.parse_args(argv)
    if bool(args.out) == bool(args.compare):
        ap.error("give either OUT (record) or --compare DIR")
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown sections {unknown}; expected some of {list(SECTIONS)}")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(False)
    r = Recorder()
    for s in sections:
        t0 = time.perf_counter()
        r.prefix = f"{s}."
        torch.manual_seed(0)
        SECTIONS[s](r)
        print(f"[{s}] {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    print(f"stripped keys: {sorted(STRIPPED)}", file=sys.stderr)
    if args.compare:
        return compare(Path(args.compare), r, sections)
    from safetensors.torch import save_file
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(r.tensors, str(out / "snapshot.safetensors"))
    digest = hashlib.sha256((out / "snapshot.safetensors").read_bytes()).hexdigest()
    (out / "snapshot.json").write_text(json.dumps(
        {"sections": sections, "tensors_sha256": digest, "values": r.values},
        indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(r.tensors)} tensors and {len(r.values)} values into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
