"""The GPU benchmark run, prepared as one script: sparse attention and attribution on CUDA.

It runs, one after the other, each as its own process (a crash or a timeout in one still
leaves the others' tables):

1. ``sparse_attention.py`` at 4k/16k/64k tokens in bfloat16 with LLaDA-8B's attention shape
   (32 heads of 128), kernel ``auto``, attention alone; then ``auto`` against the ``gather``
   fallback at 4k/16k (gather's copies grow with length, so not at 64k);
2. ``attribution.py`` speed tables (a)–(c) on a random LLaDA-8B-width model (d_model 4096,
   32 heads, MLP 12288, vocabulary 126464) with a few layers;
3. ``attribution.py --convergence-only`` on the same width: time to a 2% completeness
   residual vs the original sequential algorithm.

and writes every table, with the GPU's name, torch version and each step's wall time, to
``--out`` (default ``docs/benchmarks-gpu.md``), rewriting the file after every step so
that a run cut short keeps what it finished. Nothing is downloaded: every model is built in
memory.

    python benchmarks/gpu_suite.py                       # on a CUDA machine, ~5-8 minutes
    python benchmarks/gpu_suite.py --smoke --device cpu  # the same steps at toy sizes

``--smoke`` shrinks every size so the whole chain can be checked on a CPU in a minute; its
numbers mean nothing and it writes to ``--out`` only when given one explicitly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# scripts by their path in the repository (the steps run from its root), so that the
# report shows no machine-specific path
SPARSE = "benchmarks/sparse_attention.py"
ATTRIBUTION = "benchmarks/attribution.py"


def steps(device: str, smoke: bool, layers: int) -> list[tuple[str, list[str]]]:
    """(title, argv) of every step; sizes shrink with ``smoke``."""
    py = [sys.executable]
    if smoke:
        attention = ["--lengths", "512", "--keeps", "0.3", "--heads", "2", "--head-dim", "32",
                     "--repeats", "2", "--kernels", "gather", "--dtype", "float32"]
        width = ["--big-layers", "1", "--big-heads", "2", "--big-d", "64", "--big-seq", "64",
                 "--big-vocab", "256", "--repeats", "2", "--repeats-slow", "2",
                 "--tiny-examples", "1"]
        conv = ["--conv-layers", "1", "--conv-heads", "2", "--big-d", "64", "--conv-seq", "64",
                "--big-vocab", "256", "--ref-path-samples", "2", "--ref-steps", "4",
                "--conv-max-steps", "4", "--orig-max-steps", "4"]
    else:
        attention = ["--lengths", "4096,16384,65536", "--keeps", "0.1,0.3,0.5", "--heads", "32",
                     "--head-dim", "128", "--repeats", "5", "--kernels", "auto",
                     "--dtype", "bfloat16"]
        width = ["--big-layers", str(layers), "--big-heads", "32", "--big-d", "4096",
                 "--big-seq", "512", "--big-vocab", "126464"]
        conv = ["--conv-layers", str(layers), "--conv-heads", "32", "--big-d", "4096",
                "--conv-seq", "512", "--big-vocab", "126464", "--ref-path-samples", "16",
                "--ref-steps", "16"]
    # the gather fallback side by side with auto, where its copies stay small
    kernels = ["--lengths", "4096,16384", "--keeps", "0.3", "--kernels", "auto,gather"]
    kernels += (["--heads", "2", "--head-dim", "32", "--repeats", "2", "--dtype", "float32"]
                if smoke else ["--heads", "32", "--head-dim", "128", "--repeats", "5",
                               "--dtype", "bfloat16"])
    if smoke:
        kernels[1] = "512"
    dev = ["--device", device]
    return [
        ("Sparse attention alone", py + [SPARSE, *dev, *attention,
                                         "--skip-e2e"]),
        ("Sparse attention: auto vs gather", py + [SPARSE, *dev,
                                                   *kernels, "--skip-e2e"]),
        ("Attribution speed (a)–(c)", py + [ATTRIBUTION, *dev, *width]),
        ("Attribution: time to a converged score (d)",
         py + [ATTRIBUTION, *dev, "--convergence-only", "--conv-models",
               "random", "--conv-methods", "trapezoid,auto,dp_trapezoid", *conv]),
    ]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()})"


def demote(markdown: str) -> str:
    """Push a script's headings two levels down so they nest under the step's heading."""
    return "\n".join("##" + line if line.startswith("#") else line
                     for line in markdown.splitlines())


def write(out: Path | None, header: str, sections: list[str]) -> None:
    """Rewrite the whole report (atomically) after every step."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(header + "\n".join(sections))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--layers", type=int, default=4, help="layers of the random 8B-width model")
    p.add_argument("--out", type=Path, default=None,
                   help="markdown report (default: docs/benchmarks-gpu.md; none with --smoke)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds allowed per step")
    p.add_argument("--smoke", action="store_true", help="toy sizes, to check the chain")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine; "
                         "use --smoke --device cpu to check the script without a GPU")
    out = args.out if args.out is not None or args.smoke else ROOT / "docs" / "benchmarks-gpu.md"
    name = device_name(args.device)
    header = (f"# GPU benchmarks{' (smoke run: toy sizes, numbers mean nothing)' if args.smoke else ''}\n\n"
              f"Measured on **{name}** with `python benchmarks/gpu_suite.py"
              f"{' --smoke' if args.smoke else ''} --device {args.device}`, "
              f"{dt.date.today().isoformat()}; torch {torch.__version__}"
              f"{', CUDA ' + str(torch.version.cuda) if torch.version.cuda else ''}.\n"
              "Every section below is the output of one benchmark script, headings demoted.\n")
    sections: list[str] = []
    failures = 0
    for title, cmd in steps(args.device, args.smoke, args.layers):
        shown = " ".join(["python", *cmd[1:]])
        print(f"== {title}: {shown}", flush=True)
        t0 = time.perf_counter()
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                 cwd=ROOT)
            body, status = run.stdout, ("ok" if run.returncode == 0
                                        else f"FAILED (exit {run.returncode})")
            if run.returncode != 0:
                body += "\n" + run.stderr[-4000:]
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            body, status = partial, f"TIMED OUT after {args.timeout:.0f} s (partial output)"
        secs = time.perf_counter() - t0
        failures += status != "ok"
        print(body, flush=True)
        sections.append(f"\n## {title}\n\n`{shown}` — {status}, {secs:.0f} s\n\n"
                        f"{demote(body.strip())}\n")
        write(out, header, sections)
    if out is not None:
        print(f"report: {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
