"""Requests per second of headig-dllm (lm-eval's LM API) against a plain per-request loop.

Three workloads, each run as a plain loop over the model (one request at a time, as a
minimal lm-eval wrapper does) and through ``HeadigDLLM`` at several ``--batch_size`` values:

- ``ll-1tok``: one-token continuations (MMLU-style answers); exact, one row per request;
- ``ll-mc``: multi-token continuations scored by the Monte-Carlo estimator (mc_num rows);
- ``gen``: ``generate_until`` with ``gen_length`` new tokens in ``steps`` denoising steps.

It also checks that every batch size returns the same numbers as the plain loop (max |d
loglik| and the number of differing generations), because a batch-size-dependent speed-up
would be worthless. The plain generation loop uses the same early stop on EOS as the
plugin, so the comparison measures batching and plumbing, not the stopping rule. Each
configuration runs ``--repeats`` times and the fastest run is reported (shared machines
are noisy).

    python benchmarks/lmeval_throughput.py                       # tiny fixture, CPU
    python benchmarks/lmeval_throughput.py --pretrained /ckpt/LLaDA-8B-Instruct \\
        --device cuda --batch-sizes 1,4,16 --gen-length 256 --steps 256 --block-length 32
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("Beautiful is better than ugly. Explicit is better than implicit. Simple is better "
        "than complex. Complex is better than complicated. Flat is better than nested. "
        "Sparse is better than dense. Readability counts. Special cases aren't special enough "
        "to break the rules. Although practicality beats purity. Errors should never pass "
        "silently. Unless explicitly silenced. In the face of ambiguity, refuse the temptation "
        "to guess. There should be one and preferably only one obvious way to do it.").split()


def make_texts(n: int, seed: int, lo: int, hi: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randrange(len(TEXT))
        k = rng.randint(lo, hi)
        out.append(" ".join(TEXT[(start + i) % len(TEXT)] for i in range(k)))
    return out


REPEATS = 3


def timed(fn):
    best, out = float("inf"), None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", default=str(ROOT / "tests/fixtures/tiny-llada"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-sizes", default="1,4,16")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (best kept)")
    p.add_argument("--requests", type=int, default=32, help="requests per workload")
    p.add_argument("--mc-num", type=int, default=32)
    p.add_argument("--mc-batch-size", type=int, default=32)
    p.add_argument("--gen-length", type=int, default=16)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workloads", default="ll-1tok,ll-mc,gen")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    global REPEATS
    REPEATS = max(1, a.repeats)
    if a.threads:
        torch.set_num_threads(a.threads)

    from lm_eval.api.instance import Instance

    from headig.diffusion.generation import generate
    from headig.diffusion.likelihood import loglikelihood
    from headig_lmeval.model import HeadigDLLM

    common = dict(pretrained=a.pretrained, device=a.device, dtype=a.dtype, mc_num=a.mc_num,
                  mc_batch_size=a.mc_batch_size, gen_length=a.gen_length, steps=a.steps)
    if a.block_length:
        common["block_length"] = a.block_length
    lm = HeadigDLLM(**common, batch_size=1)
    model = lm.model
    sizes = [int(x) for x in a.batch_sizes.split(",")]
    contexts = make_texts(a.requests, 0, 6, 40)
    one_tok = [" " + w for w in make_texts(a.requests, 1, 1, 1)]
    multi = [" " + t for t in make_texts(a.requests, 2, 3, 6)]
    workloads = a.workloads.split(",")
    rows: list[dict] = []

    def sync() -> None:
        if lm.device.type == "cuda":
            torch.cuda.synchronize()

    # warm-up (allocator, kernels, tokenizer caches)
    lm.loglikelihood([Instance("loglikelihood", {}, (contexts[0], multi[0]), 0)],
                     disable_tqdm=True)
    lm.generate_until([Instance("generate_until", {}, (contexts[0], {"until": []}), 0)],
                      disable_tqdm=True)

    for name in workloads:
        if name in ("ll-1tok", "ll-mc"):
            conts = one_tok if name == "ll-1tok" else multi
            reqs = [Instance("loglikelihood", {}, (c, x), i)
                    for i, (c, x) in enumerate(zip(contexts, conts))]
            pairs = [lm._encode_pair(c, x) for c, x in zip(contexts, conts)]

            def plain(pairs=pairs):
                out = []
                for ctx, cont in pairs:
                    ll, _ = loglikelihood(model, ctx, cont, mc_num=a.mc_num,
                                          batch_size=a.mc_batch_size, seed=lm.args.seed,
                                          stratum_size=a.mc_batch_size)
                    out.append(ll)
                sync()
                return out

            ref, secs = timed(plain)
            rows.append({"workload": name, "mode": "plain loop", "batch_size": 1,
                         "req_per_s": len(reqs) / secs, "seconds": secs, "max_abs_diff": 0.0})
            for bs in sizes:
                lm._batch_size = bs

                def run(reqs=reqs):
                    out = lm.loglikelihood(reqs, disable_tqdm=True)
                    sync()
                    return out

                out, secs = timed(run)
                diff = max(abs(o[0] - r) for o, r in zip(out, ref))
                rows.append({"workload": name, "mode": "headig-dllm", "batch_size": bs,
                             "req_per_s": len(reqs) / secs, "seconds": secs,
                             "max_abs_diff": diff})
        elif name == "gen":
            reqs = [Instance("generate_until", {}, (c, {"until": []}), i)
                    for i, c in enumerate(contexts)]
            s = lm._settings({})

            def plain_gen(s=s):
                out = []
                for c in contexts:
                    ids = torch.tensor([lm.tok_encode(c)], device=lm.device)
                    kw = dict(steps=s["steps"] or s["gen_length"], gen_length=s["gen_length"],
                              style=s["style"], stop_ids=lm._stop_ids)
                    if s["style"] == "llada":
                        kw["block_length"] = s["block_length"]
                    else:
                        kw["alg"] = s["alg"]
                    new = generate(model, ids, **kw)[0, ids.shape[1]:].tolist()
                    out.append(lm.tok_decode(lm._cut(new)))
                sync()
                return out

            ref, secs = timed(plain_gen)
            rows.append({"workload": name, "mode": "plain loop", "batch_size": 1,
                         "req_per_s": len(reqs) / secs, "seconds": secs, "n_differ": 0})
            for bs in sizes:
                lm._batch_size = bs

                def run_gen(reqs=reqs):
                    out = lm.generate_until(reqs, disable_tqdm=True)
                    sync()
                    return out

                out, secs = timed(run_gen)
                rows.append({"workload": name, "mode": "headig-dllm", "batch_size": bs,
                             "req_per_s": len(reqs) / secs, "seconds": secs,
                             "n_differ": sum(x != y for x, y in zip(out, ref))})
        else:
            raise SystemExit(f"unknown workload {name!r}; expected ll-1tok, ll-mc, gen")

    header = (f"headig-dllm throughput: {Path(a.pretrained).name}, {lm.family.name}, "
              f"{model.dtype}, device {lm.device}, torch threads {torch.get_num_threads()}, "
              f"{a.requests} requests/workload, mc_num {a.mc_num}, gen_length {a.gen_length}, "
              f"steps {a.steps}, block_length {a.block_length}, {platform.processor() or ''}")
    print(header)
    print("| workload | mode | batch size | requests/s | speed-up | agreement with plain loop |")
    print("|---|---|---:|---:|---:|---|")
    base = {r["workload"]: r["req_per_s"] for r in rows if r["mode"] == "plain loop"}
    for r in rows:
        if "max_abs_diff" in r:
            agree = f"max abs diff {r['max_abs_diff']:.1e}"
        else:
            agree = f"{r['n_differ']} of {a.requests} texts differ"
        print(f"| {r['workload']} | {r['mode']} | {r['batch_size']} | {r['req_per_s']:.1f} | "
              f"{r['req_per_s'] / base[r['workload']]:.2f}x | {agree} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
