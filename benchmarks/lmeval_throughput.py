"""Requests per second of headig-dllm (lm-eval's LM API) against a plain per-request loop.

Three workloads, each run as a plain loop over the model (one request at a time, as a
minimal lm-eval wrapper does) and through ``HeadigDLLM`` at several ``--batch_size`` values:

- ``ll-1tok``: one-token continuations (MMLU-style answers); exact, one row per request;
- ``ll-mc``: multi-token continuations scored by the Monte-Carlo estimator (mc_num rows);
- ``gen``: ``generate_until`` with ``gen_length`` new tokens in ``steps`` denoising steps.

It also checks that every batch size returns the same numbers as the plain loop (max |d
loglik| and the number of differing generations), because a batch-size-dependent speed-up
would be worthless. The plain generation loop uses the same early stop on EOS as the
plugin, so the comparison measures batching and plumbing, not the stopping rule. Timing
goes through ``_timing.interleaved``: every repeat runs the plain loop and every batch size
once, in a rotating order; a cell is the median over ``--repeats`` repeats, and speed-ups
are paired within a repeat and shown as median [min–max]. The load average before and
after is printed, with a warning when the machine was busy.

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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import LoadRecord, Spread, conditions, interleaved, ratios  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", default=str(ROOT / "tests/fixtures/tiny-llada"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-sizes", default="1,4,16")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved repeats of every configuration (median reported)")
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
    unknown = sorted(set(a.workloads.split(",")) - {"ll-1tok", "ll-mc", "gen"})
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; expected ll-1tok, ll-mc, gen")
    if a.repeats < 1:
        raise SystemExit(f"--repeats {a.repeats}; expected at least 1")
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
    load = LoadRecord.start()

    def sync() -> None:
        if lm.device.type == "cuda":
            torch.cuda.synchronize()

    # warm-up (allocator, kernels, tokenizer caches)
    lm.loglikelihood([Instance("loglikelihood", {}, (contexts[0], multi[0]), 0)],
                     disable_tqdm=True)
    lm.generate_until([Instance("generate_until", {}, (contexts[0], {"until": []}), 0)],
                      disable_tqdm=True)

    def measure(name: str, plain, batched, agreement) -> None:
        """Interleave the plain loop and every batch size; one row each."""
        outputs: dict[str, object] = {}
        variants = {"plain": plain}
        for bs in sizes:
            variants[f"bs{bs}"] = lambda bs=bs: batched(bs)
        times = interleaved(variants, a.repeats, warmup=0, results=outputs)
        n = len(contexts)
        for key, secs in times.items():
            speed = Spread.of(ratios(times, "plain", key))
            rows.append({"workload": name, "mode": "plain loop" if key == "plain" else
                         "headig-dllm", "batch_size": 1 if key == "plain" else int(key[2:]),
                         "req_per_s": n / Spread.of(secs).median, "seconds": secs,
                         "speed_up": speed.fmt(), **agreement(outputs[key], outputs["plain"])})

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

            def run(bs, reqs=reqs):
                lm._batch_size = bs
                out = [o[0] for o in lm.loglikelihood(reqs, disable_tqdm=True)]
                sync()
                return out

            measure(name, plain, run, lambda out, ref: {
                "max_abs_diff": max(abs(o - r) for o, r in zip(out, ref))})
        else:
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

            def run_gen(bs, reqs=reqs):
                lm._batch_size = bs
                out = lm.generate_until(reqs, disable_tqdm=True)
                sync()
                return out

            measure(name, plain_gen, run_gen, lambda out, ref: {
                "n_differ": sum(x != y for x, y in zip(out, ref))})

    header = (f"headig-dllm throughput: {Path(a.pretrained).name}, {lm.family.name}, "
              f"{model.dtype}, device {lm.device}, torch threads {torch.get_num_threads()}, "
              f"{a.requests} requests/workload, mc_num {a.mc_num}, gen_length {a.gen_length}, "
              f"steps {a.steps}, block_length {a.block_length}, {platform.processor() or ''}")
    load.stop()
    print(header)
    print(f"{conditions()}\n{load.report()}\n")
    print(f"Requests/s from the median of {a.repeats} interleaved repeats; speed-up over the "
          "plain loop paired within a repeat, median [min–max].\n")
    print("| workload | mode | batch size | requests/s | speed-up | agreement with plain loop |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        if "max_abs_diff" in r:
            agree = f"max abs diff {r['max_abs_diff']:.1e}"
        else:
            agree = f"{r['n_differ']} of {a.requests} texts differ"
        print(f"| {r['workload']} | {r['mode']} | {r['batch_size']} | {r['req_per_s']:.1f} | "
              f"{r['speed_up']} | {agree} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"header": header, "load_before": load.before,
                                            "load_after": load.after, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
