"""headig-dllm through the real command lines, in subprocesses, offline: the start-up hook,
registration next to lm-eval's built-ins, the literal ``lm_eval --model headig-dllm`` run on
local tasks, fail-fast argument errors on every entry point, a two-process torchrun, and the
wheel shipping the hook."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="headig-dllm needs lm-eval (pip install 'headig[lmeval]')")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = "tests/fixtures/tiny-llada"
TASKS = "headig_mc,headig_gen,headig_rolling"
PTH = ROOT / "src" / "headig_lmeval" / "headig_lmeval.pth"
HOOK_MISSING = ("headig_lmeval.pth is not in site-packages: reinstall headig (pip install -e .) "
                "or run `python -m headig_lmeval install-hook`")


def env(tmp: Path | None = None, **extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.pop("HEADIG_LMEVAL_NO_HOOK", None)
    e.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if tmp is not None:
        e.update(HF_DATASETS_CACHE=str(tmp / "hf_datasets"), HF_HOME=str(tmp / "hf_home"))
    e.update(extra)
    return e


def run(cmd: list[str], *, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def py(code: str, **extra: str) -> str:
    out = run([sys.executable, "-c", code], env=env(**extra))
    assert out.returncode == 0, out.stderr
    return out.stdout


# Cross-batch and cross-process float tolerance. A log-likelihood here is a sum of float32
# log-probabilities of the target tokens, averaged over mc_num masked draws. Running a request
# in a batch of a different composition (another rank's share, another batch size) changes
# how the CPU matmul kernels block their reductions, so each logit may round differently:
# relative error ~1e-7 (a few float32 ulps, eps = 6e-8) per accumulated term, and the longest
# reduction in the tiny model is mlp_hidden_size = 128 terms, i.e. <= ~1.3e-5 relative per
# logit in the worst case (observed: ~1e-8). The log-probs of one sum all have the same sign,
# so the sum's relative error is bounded by the same figure. A real bug (another mask draw,
# another seed, a dropped token) moves these values by 1e-2 to 1e1, far outside this band.
LL_RTOL = 1e-7 * 128
LL_ATOL = 1e-6  # for values near zero (a confident one-token answer)


def same_results(a: object, b: object) -> bool:
    """Equal up to float rounding of batch composition: text, booleans and structure
    exactly; floats (also floats logged as strings) within LL_RTOL / LL_ATOL."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_results(x, y) for x, y in zip(a, b))
    fa, fb = _as_float(a), _as_float(b)
    if fa is not None and fb is not None:
        return abs(fa - fb) <= LL_ATOL + LL_RTOL * max(abs(fa), abs(fb))
    return a == b


def _as_float(x: object) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return None


def model_args(**kw: object) -> str:
    return ",".join(f"{k}={v}" for k, v in {"pretrained": TINY, "mc_num": 8, **kw}.items())


# ----------------------------------------------------------------------------- start-up hook


def test_hook_armed_at_startup_without_heavy_imports():
    assert (Path(sysconfig.get_paths()["purelib"]) / "headig_lmeval.pth").is_file(), HOOK_MISSING
    state = json.loads(py(
        "import sys, json; print(json.dumps([m in sys.modules for m in "
        "('torch', 'lm_eval', 'transformers', 'headig', 'headig_lmeval')] + "
        "[any(getattr(f, '_headig_lmeval_hook', False) for f in sys.meta_path)]))"))
    assert state == [False, False, False, False, False, True]
    off = json.loads(py("import sys, json; print(json.dumps(any(getattr(f, "
                        "'_headig_lmeval_hook', False) for f in sys.meta_path)))",
                        HEADIG_LMEVAL_NO_HOOK="1"))
    assert off is False


def test_hook_startup_cost_is_negligible():
    """The .pth line imports nothing; executing it costs well under a millisecond."""
    out = run([sys.executable, "-X", "importtime", "-c", "pass"], env=env())
    assert "headig" not in out.stderr
    line = PTH.read_text()
    code = (
        "import sys, time\nline = open(sys.argv[1]).read()\nbest = 1.0\n"
        "for _ in range(50):\n"
        "    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "
        "'_headig_lmeval_hook', False)]\n"
        "    t = time.perf_counter(); exec(line); best = min(best, time.perf_counter() - t)\n"
        "print(best)")
    best = float(run([sys.executable, "-c", code, str(PTH)], env=env()).stdout)
    assert line.count("\n") == 1 and line.startswith("import ")
    assert best < 2e-3, f"start-up hook took {best * 1e3:.2f} ms"


_REGISTRY_PROBE = """
import json, sys
if sys.argv[1] == "models-first":
    import lm_eval.models
from lm_eval.api.registry import get_model, model_registry
try:  # like the CLI: the first get_model() loads the built-ins into an empty registry
    cls = get_model("headig-dllm").__name__
except ValueError:
    cls = None
names = sorted(model_registry.keys())
print(json.dumps({"names": names, "cls": cls, "torch": "torch" in sys.modules}))
"""


@pytest.mark.parametrize("order", ["registry-first", "models-first"])
def test_registration_keeps_builtin_models(order):
    on = json.loads(run([sys.executable, "-c", _REGISTRY_PROBE, order], env=env()).stdout)
    off = json.loads(run([sys.executable, "-c", _REGISTRY_PROBE, order],
                         env=env(HEADIG_LMEVAL_NO_HOOK="1")).stdout)
    assert "hf" in off["names"] and "headig-dllm" not in off["names"]
    assert set(on["names"]) == set(off["names"]) | {"headig-dllm"}
    assert on["cls"] == "HeadigDLLM" and off["cls"] is None


# ----------------------------------------------------------------------------- CLI runs


def _samples(out_dir: Path) -> dict[tuple[str, int], list]:
    found: dict[tuple[str, int], list] = {}
    for f in out_dir.rglob("samples_*.jsonl"):
        task = re.match(r"samples_(.+?)_\d{4}-", f.name).group(1)
        for line in f.read_text().splitlines():
            s = json.loads(line)
            found[(task, s["doc_id"])] = s["filtered_resps"]
    return found


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The literal command a user types, on the local tasks, offline."""
    tmp = tmp_path_factory.mktemp("lmeval")
    cmd = [str(BIN / "lm_eval"), "--model", "headig-dllm", "--model_args",
           model_args(), "--include_path", "tests/lmeval_tasks", "--tasks", TASKS,
           "--batch_size", "2", "--log_samples", "--output_path", str(tmp / "out")]
    out = run(cmd, env=env(tmp))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    results = json.loads(next((tmp / "out").rglob("results_*.json")).read_text())
    return tmp, results, _samples(tmp / "out")


def test_cli_runs_local_tasks(cli_run):
    _, results, samples = cli_run
    r = results["results"]
    assert 0.0 <= r["headig_mc"]["acc,none"] <= 1.0
    assert 0.0 <= r["headig_gen"]["exact_match,none"] <= 1.0
    assert r["headig_rolling"]["word_perplexity,none"] > 1.0
    assert r["headig_rolling"]["bits_per_byte,none"] > 0.0
    assert len(samples) == 4 + 3 + 2
    assert results["config"]["model"] == "headig-dllm"
    assert len(results["config"]["headig_fingerprint"]) == 64


def test_cli_matches_in_process_model(cli_run):
    """What the CLI logged is what the model computes in process for the same requests."""
    from lm_eval.api.instance import Instance

    from headig_lmeval.model import HeadigDLLM

    _, _, samples = cli_run
    lm = HeadigDLLM(pretrained=str(ROOT / TINY), mc_num=8, device="cpu")
    docs = [json.loads(x) for x in (ROOT / "tests/lmeval_tasks/data/mc.jsonl").read_text()
            .splitlines()]
    reqs = [Instance("loglikelihood", {}, (docs[0]["question"], c), 0)
            for c in docs[0]["choices"]]
    expected = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    logged = [float(x[0]) for x in samples[("headig_mc", 0)]]
    # the CLI ran these in batches of 2, the in-process model one by one: see LL_RTOL
    assert same_results(logged, expected), (logged, expected)
    gen = [json.loads(x) for x in (ROOT / "tests/lmeval_tasks/data/gen.jsonl").read_text()
           .splitlines()]
    text = lm.generate_until([Instance("generate_until", {}, (gen[1]["prompt"], {
        "until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}), 0)], disable_tqdm=True)
    # generated text is compared exactly: greedy generation is batch-invariant in its token
    # ids (tests/test_generation.py::test_batch_equals_rows_alone checks that with torch.equal)
    assert samples[("headig_gen", 1)] == text


_DIST_SCRIPT = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
out = lm_eval.simple_evaluate(
    model="headig-dllm", model_args=sys.argv[1], tasks=sys.argv[2].split(","), batch_size=2,
    task_manager=TaskManager(include_path="tests/lmeval_tasks", include_defaults=False),
    log_samples=True)
if out is not None:  # rank 0 holds the gathered results
    samples = {f"{t}|{s['doc_id']}": s["filtered_resps"] for t, ss in out["samples"].items()
               for s in ss}
    json.dump({"samples": samples, "world": out["config"].get("headig_world_size")},
              open(sys.argv[3], "w"))
"""


def test_torchrun_two_processes_match_single_process(cli_run, tmp_path):
    """Data-parallel run (what `accelerate launch` does: env:// rendezvous, all_gather,
    gather_object, barrier): the same per-sample results as the single-process CLI run.
    lm-eval's evaluator is driven directly to skip indexing its whole task library twice.

    Each rank batches its own share of the requests, so batch compositions differ from the
    single-process run: log-likelihoods agree within LL_RTOL (float32 rounding), generated
    text and greedy flags exactly."""
    script = tmp_path / "dist_eval.py"
    script.write_text(_DIST_SCRIPT)
    torchrun = shutil.which("torchrun", path=str(BIN)) or str(BIN / "torchrun")
    result = tmp_path / "samples.json"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 400),
           str(script), model_args(), TASKS, str(result)]
    out = run(cmd, env=env(tmp_path))
    assert out.returncode == 0, out.stderr[-5000:]
    got = json.loads(result.read_text())
    assert got["world"] == 2
    dist = {tuple(k.split("|")): _leaves_as_str(v) for k, v in got["samples"].items()}
    single = {(t, str(d)): _leaves_as_str(v) for (t, d), v in cli_run[2].items()}
    assert dist.keys() == single.keys()
    differ = {k: (dist[k], single[k]) for k in dist if not same_results(dist[k], single[k])}
    assert not differ, differ


def test_tolerance_accepts_rounding_and_rejects_real_changes():
    """The two values a torchrun run once produced pass; a change a bug would make does not."""
    assert same_results(["-133.29947913834263", "False"], [-133.29947787925363, "False"])
    assert same_results([["-14.528695225715637", "False"]], [[-14.528695, "False"]])
    assert not same_results(["-133.29947913834263"], ["-133.2894791"])  # 1e-2 away
    assert not same_results([["-1.0", "True"]], [["-1.0", "False"]])
    assert not same_results(["the cat"], ["the cot"])
    assert not same_results(["-1.0", "-2.0"], ["-1.0"])


def _leaves_as_str(x):
    """The CLI's sample log stores every value as str(value); compare in that form."""
    return [_leaves_as_str(v) for v in x] if isinstance(x, (list, tuple)) else str(x)


@pytest.mark.parametrize("entry, bad, message", [
    ([sys.executable, "-m", "lm_eval", "run", "--model", "headig-dllm"], "prune=most,prune_k=2",
     "needs importance"),
    ([str(BIN / "headig-eval")], "bogus_arg=1", "unknown headig-dllm model_args 'bogus_arg'"),
])
def test_entry_points_fail_fast_on_bad_args(tmp_path, entry, bad, message):
    """`python -m lm_eval run` finds the model through the hook and the model refuses the
    arguments before any task work; headig-eval refuses them before lm-eval even starts."""
    cmd = [*entry, "--model_args", f"pretrained={TINY},{bad}", "--include_path",
           "tests/lmeval_tasks", "--tasks", "headig_mc"]
    t0 = time.perf_counter()
    out = run(cmd, env=env(tmp_path), timeout=120)
    elapsed = time.perf_counter() - t0
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-3000:]
    if "bogus" in bad:
        assert "Valid arguments" in out.stderr and "prune_k_frac" in out.stderr
        assert elapsed < 10
    assert "Building contexts" not in out.stderr  # failed before any task work


def test_headig_eval_defaults_model():
    from headig_lmeval.cli import with_default_model

    assert with_default_model(["--tasks", "x"]) == ["--model", "headig-dllm", "--tasks", "x"]
    assert with_default_model(["run", "--tasks", "x"])[:3] == ["run", "--model", "headig-dllm"]
    assert with_default_model(["--model", "hf"]) == ["--model", "hf"]
    assert with_default_model(["ls", "tasks"]) == ["ls", "tasks"]


# ----------------------------------------------------------------------------- packaging


def test_wheel_ships_startup_hook(tmp_path):
    """`pip install headig[lmeval]` must put headig_lmeval.pth next to the packages."""
    out = run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
               "--no-build-isolation", "-q", "-w", str(tmp_path)], env=env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("headig-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("headig_lmeval.pth").decode() == PTH.read_text()
        entry_points = next(n for n in z.namelist() if n.endswith("entry_points.txt"))
        eps = z.read(entry_points).decode()
    assert "[lm_eval.models]" in eps and "headig-dllm = headig_lmeval.model:HeadigDLLM" in eps
    assert "headig-eval = headig_lmeval.cli:main" in eps
