"""headig.runtime: the one atomic write, fingerprint, distributed info and progress bar."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from headig import runtime


def test_atomic_write_replaces_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    runtime.atomic_write(target, "old")
    runtime.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_atomic_path_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"keep")
    with pytest.raises(RuntimeError), runtime.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_write_make_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.txt"
    with pytest.raises(FileNotFoundError):
        runtime.atomic_write(target, "x")
    runtime.atomic_write(target, "x", make_parents=True)
    assert target.read_text() == "x"


def test_fingerprint_matches_plain_sha256() -> None:
    ids = torch.tensor([1, 2, 3])
    want = hashlib.sha256(b"ex" + ids.numpy().tobytes()).hexdigest()
    assert runtime.fingerprint(["ex", ids]) == want
    assert runtime.fingerprint(["ex", ids.numpy()], n_hex=16) == want[:16]
    # length prefixes make the encoding unambiguous
    assert runtime.fingerprint(["ab", "c"]) == runtime.fingerprint(["a", "bc"])
    assert (runtime.fingerprint(["ab", "c"], length_prefix=True)
            != runtime.fingerprint(["a", "bc"], length_prefix=True))
    # a fixed value: sha256(b"v1\n" + len("a") + "a")
    assert runtime.fingerprint(["a"], header=b"v1\n", length_prefix=True) == hashlib.sha256(
        b"v1\n" + (1).to_bytes(8, "little") + b"a").hexdigest()
    with pytest.raises(TypeError, match="cannot fingerprint a int"):
        runtime.fingerprint([3])  # type: ignore[list-item]


def test_data_fingerprint_unchanged() -> None:
    from headig.data import Example, fingerprint

    exs = [Example("2+2=", "4"), Example("Q", "A")]
    h = hashlib.sha256(b"headig-examples-v1\n")
    for t in ("2+2=", "4", "Q", "A"):
        h.update(len(t.encode()).to_bytes(8, "little") + t.encode())
    assert fingerprint(exs) == h.hexdigest()


def test_json_digest_and_seed() -> None:
    assert runtime.json_digest({"b": 1, "a": 2}) == hashlib.sha256(
        b'{"a": 2, "b": 1}').hexdigest()
    assert runtime.json_digest({"p": Path("x")}, n_hex=8) == runtime.json_digest({"p": "x"})[:8]
    seed = runtime.stable_seed("gen", 7, [1, 2])
    raw = hashlib.sha256(json.dumps(("gen", 7, [1, 2])).encode()).digest()
    assert seed == int.from_bytes(raw[:8], "little") & ((1 << 63) - 1)
    assert 0 <= seed < 2 ** 63


def test_file_digest(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"abc" * 1000)
    assert runtime.file_digest(p, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_dist_info_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runtime.dist_info() == (0, 1)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert runtime.env_dist_info() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert runtime.env_dist_info() == (3, 4, 3)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.env_dist_info() == (3, 4, 1)


def test_progress_bar_disabled_is_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    bar = runtime.progress_bar(5, "work", enabled=False)
    bar.update(5)
    bar.close()
    assert capsys.readouterr().err == ""
    bar = runtime.progress_bar(3, "work", unit="ex", initial=1)
    assert bar.n == 1 and bar.total == 3
    bar.close()


def test_fingerprint_of_array_view() -> None:
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert runtime.fingerprint([a]) == hashlib.sha256(a.tobytes()).hexdigest()
