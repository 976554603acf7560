"""headig-dllm through lm-eval's LM API, in process: golden parity, estimator error,
batch-size independence, stop strings, rolling windows, chat templates, interventions,
argument validation and the response-cache key."""

from __future__ import annotations

import random
import sqlite3
import time

import pytest
import torch

pytest.importorskip("lm_eval", reason="headig-dllm needs lm-eval (pip install 'headig[lmeval]')")

from lm_eval.api.instance import Instance  # noqa: E402

from headig.importance import HeadImportance  # noqa: E402
from headig.interventions import select_heads  # noqa: E402
from headig_lmeval.args import (
    ModelArgsError,
    parse_layers,
    parse_model_args,
    resolve_layers,  # noqa: E402
)
from headig_lmeval.model import HeadigDLLM  # noqa: E402
from tests.conftest import fixture_path  # noqa: E402

LLADA, DREAM = "tiny-llada", "tiny-dream"
FAMILIES = [LLADA, DREAM]


def make(name: str, **kwargs) -> HeadigDLLM:
    return HeadigDLLM(pretrained=str(fixture_path(name)), device="cpu", **kwargs)


_CACHE: dict[tuple, HeadigDLLM] = {}


def cached(name: str, **kwargs) -> HeadigDLLM:
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        _CACHE[key] = make(name, **kwargs)
    return _CACHE[key]


def gen_req(context: str, **gen_kwargs) -> Instance:
    return Instance("generate_until", {}, (context, gen_kwargs), 0)


def ll_req(context: str, continuation: str) -> Instance:
    return Instance("loglikelihood", {}, (context, continuation), 0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models gain nothing from intra-op threads, and on a busy machine two
    spinning OpenMP threads made this module 5-10x slower; restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def importance_file(tmp_path_factory):
    """Random head scores for the tiny models (both have 2 layers x 4 heads)."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("imp") / "head_importance.safetensors"
    HeadImportance(scores=torch.randn(2, 4, generator=g), meta={"note": "test"}).save(path)
    return path


# ----------------------------------------------------------------------------- arguments


def test_unknown_arg_lists_valid_ones():
    with pytest.raises(ModelArgsError) as err:
        parse_model_args({"pretrained": "x", "prune_fraq": 0.1})
    msg = str(err.value)
    assert "prune_fraq" in msg and "did you mean 'prune_k_frac'" in msg
    assert "Valid arguments" in msg and "mc_num" in msg and "block_length" in msg


def test_dense_is_the_new_name_of_standard():
    assert parse_model_args({"pretrained": "x", "attention": "dense"}).attention == "standard"


@pytest.mark.parametrize("kwargs, pattern", [
    ({}, "pretrained is required"),
    ({"prune": "most", "prune_k": 2}, "needs importance"),
    ({"prune": "random", "prune_k": 1, "prune_k_frac": 0.1}, "exactly one of prune_k"),
    ({"prune": "random"}, "exactly one of prune_k"),
    ({"prune_k": 2}, "only apply with prune"),
    ({"keep": 0.3}, "only apply to sparse attention"),
    ({"attention": "uniform", "min_keep": 0.1}, "only apply to attention=adaptive"),
    ({"attention": "adaptive"}, "needs importance"),
    ({"attention": "sparse"}, "expected one of"),
    ({"gen_length": 8, "max_new_tokens": 16}, "conflict"),
    ({"gen_length": 8, "block_length": 3}, "multiple of block_length"),
    ({"gen_length": 8, "block_length": 4, "steps": 3}, "multiple of the number of blocks"),
    ({"alg": "entropy", "block_length": 4}, "cannot be combined"),
    ({"layers": "first"}, "layers="),
    ({"importance": "/nonexistent/imp.safetensors", "prune": "most", "prune_k": 1},
     "does not exist"),
    ({"temperature": -1}, ">= 0"),
    ({"dtype": "float8"}, "expected one of"),
    ({"mc_num": 0}, "mc_num"),
    ({"batch_size": "many"}, "expected an integer"),
    ({"prune_k_frac": 1.5, "prune": "random"}, "fraction in"),
])
def test_bad_args_fail_with_clear_message(kwargs, pattern):
    args = {"pretrained": "x", **kwargs} if kwargs else {}
    with pytest.raises(ModelArgsError, match=pattern):
        parse_model_args(args)


def test_bad_args_fail_before_loading(monkeypatch, tmp_path):
    import headig

    def boom(*a, **k):
        raise AssertionError("weights must not be loaded for invalid arguments")

    monkeypatch.setattr(headig, "load_model", boom)
    wrong = tmp_path / "wrong.safetensors"
    HeadImportance(scores=torch.ones(3, 4)).save(wrong)
    t0 = time.perf_counter()
    with pytest.raises(ModelArgsError, match=r"shape \(3, 4\).*\[2, 4\]"):
        make(LLADA, importance=str(wrong), prune="most", prune_k=1)
    with pytest.raises(ModelArgsError, match="prune: k=8"):
        make(LLADA, prune="random", prune_k=8)  # 8 heads in all: cannot remove every one
    with pytest.raises(ModelArgsError, match="out of range"):
        make(LLADA, prune="random", prune_k=1, layers="0;5")
    with pytest.raises(ModelArgsError, match="needs importance"):
        make(LLADA, prune="least", prune_k_frac=0.25)
    with pytest.raises(ModelArgsError, match="only apply to Dream-style"):
        make(LLADA, top_p=0.9)  # LLaDA checkpoints generate LLaDA-style unless alg is set
    with pytest.raises(ModelArgsError, match="cannot be combined"):
        make(DREAM, remasking="random", top_k=5)
    assert time.perf_counter() - t0 < 2.0


def test_layer_syntax():
    assert resolve_layers(parse_layers("0-1"), 2) == [0, 1]
    assert resolve_layers(parse_layers("-1:-1"), 2) == [1]
    assert resolve_layers(parse_layers("1;0"), 4) == [0, 1]
    assert resolve_layers(parse_layers(1), 2) == [1]
    with pytest.raises(ModelArgsError, match="out of range"):
        resolve_layers(parse_layers("0;5"), 2)


def test_lm_eval_string_parsing_and_cli_batch_size():
    lm = HeadigDLLM.create_from_arg_string(
        f"pretrained={fixture_path(LLADA)},mc_num=4,seed=7,batch_size=3",
        {"batch_size": 1, "device": "cpu"})
    assert lm.args.mc_num == 4 and lm.args.seed == 7 and lm.batch_size == 3
    assert lm.max_length == 256 and lm.device == torch.device("cpu")


# ----------------------------------------------------------------------------- golden


@pytest.mark.parametrize("case, settings", [
    ("generate.lowconf_blocks", {"steps": 8, "block_length": 4}),
    ("generate.lowconf_single", {"steps": 4, "block_length": 8}),
])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_golden_llada_generation_token_for_token(golden, case, settings, batch_size):
    lm = cached(LLADA, batch_size=batch_size, stop_early=False)
    g = golden(LLADA)
    prompts = g["generate.prompt"].tolist()
    out = lm.generate_ids(prompts, {"max_gen_toks": 8, **settings})
    assert out == g[case][:, 6:].tolist()


@pytest.mark.parametrize("alg", ["entropy", "maskgit_plus", "topk_margin"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_golden_dream_generation_token_for_token(golden, alg, batch_size):
    lm = cached(DREAM, batch_size=batch_size, stop_early=False)
    g = golden(DREAM)
    out = lm.generate_ids(g["generate.prompt"].tolist(),
                          {"max_gen_toks": 8, "steps": 8, "alg": alg})
    assert out == g[f"generate.{alg}"][:, 6:].tolist()


@pytest.mark.parametrize("name, case, settings", [
    (LLADA, "padded.generate_lowconf", {"steps": 4, "block_length": 4}),
    (DREAM, "padded.generate_entropy", {"steps": 4}),  # Dream default alg: entropy
])
def test_golden_padded_batch_through_generate_until(golden, name, case, settings):
    """The golden left-padded batch, from text, through lm-eval's generate_until."""
    import json

    texts = json.loads((fixture_path(name) / "golden.json").read_text())["cases"]["padded"][
        "texts"]
    g = golden(name)
    lm = cached(name, batch_size=2, stop_early=False)
    mask = g["padded.prompt_attention_mask"].bool()
    for j, text in enumerate(texts):  # the plugin tokenises exactly like the golden run
        assert lm.tok_encode(text) == g["padded.prompt_ids"][j][mask[j]].tolist()
    new = g[case][:, 17:]
    ids = lm.generate_ids([lm.tok_encode(t) for t in texts], {"max_gen_toks": 8, **settings})
    assert ids == new.tolist()
    out = lm.generate_until([gen_req(t, until=[], max_gen_toks=8, **settings) for t in texts],
                            disable_tqdm=True)
    assert out == [lm.tok_decode(lm._cut(row)) for row in new.tolist()]
    # early stopping (the default) cannot change the text
    lm_stop = cached(name, batch_size=2)
    assert lm_stop.generate_until(
        [gen_req(t, until=[], max_gen_toks=8, **settings) for t in texts],
        disable_tqdm=True) == out


@pytest.mark.parametrize("name", FAMILIES)
def test_golden_loglikelihood(golden, name):
    g = golden(name)
    lm = cached(name)
    prompt = g["loglik.prompt"].tolist()
    pairs = [(prompt, g[f"loglik.answer{j}"].tolist()) for j in range(3)]
    scored = lm.score_tokens(pairs)
    expected = g["loglik.expected"].tolist()
    ll0, se0, _ = scored[0]
    assert abs(ll0 - expected[0]) <= 1e-4 and se0 == 0.0  # one token: exact
    for (ll, se, _), exp in zip(scored[1:], expected[1:]):
        assert 0 < se < 1.0
        assert abs(ll - exp) <= 4 * se + 1e-4, (ll, exp, se)
    # the lm-eval entry point returns the same numbers
    via_api = lm._loglikelihood_tokens([(None, p, t) for p, t in pairs], disable_tqdm=True)
    assert [x[0] for x in via_api] == [x[0] for x in scored]


# ----------------------------------------------------------------------------- batching


def test_loglikelihood_independent_of_batch_size_and_order():
    lm = make(LLADA, mc_num=16, mc_batch_size=8)
    reqs = [ll_req("Beautiful is better than", " ugly"),
            ll_req("Beautiful is better than", " ugly and dense"),
            ll_req("Explicit is", " better than implicit."),
            ll_req("", " Simple is better"),
            ll_req("Errors should never pass silently. Unless", " explicitly silenced.")]
    ref = lm.loglikelihood(reqs, disable_tqdm=True)
    for bs in (2, 5):
        lm._batch_size = bs
        order = list(range(len(reqs)))
        random.Random(bs).shuffle(order)
        out = lm.loglikelihood([reqs[i] for i in order], disable_tqdm=True)
        for i, (ll, greedy) in zip(order, out):
            assert abs(ll - ref[i][0]) <= 1e-4 and greedy == ref[i][1]
    assert all(isinstance(g, bool) for _, g in ref)


@pytest.mark.parametrize("name", FAMILIES)
def test_generation_independent_of_batch_size(name):
    prompts = ["Beautiful is", "If the implementation is hard to explain, it's a bad idea.",
               "Errors should never pass", "Now is better than never"]
    kw = {"until": [], "max_gen_toks": 8, "steps": 8}
    lm = make(name, batch_size=1)
    greedy = lm.generate_until([gen_req(p, **kw) for p in prompts], disable_tqdm=True)
    sample_kw = {**kw, "do_sample": True, "temperature": 0.9}
    sampled = lm.generate_until([gen_req(p, **sample_kw) for p in prompts], disable_tqdm=True)
    assert sampled != greedy  # sampling is on
    for bs in (3, 4):
        lm._batch_size = bs
        rev = list(reversed(prompts))
        assert lm.generate_until([gen_req(p, **kw) for p in rev],
                                 disable_tqdm=True) == list(reversed(greedy))
        assert lm.generate_until([gen_req(p, **sample_kw) for p in rev],
                                 disable_tqdm=True) == list(reversed(sampled))
    # lm-eval repeats a request k times for pass@k: the copies get different draws
    reps = lm.generate_until([gen_req(prompts[0], **sample_kw)] * 3, disable_tqdm=True)
    assert reps[0] == sampled[0] and len(set(reps)) > 1


def test_until_max_gen_toks_and_gen_kwargs_override():
    lm = cached(LLADA)
    full = lm.generate_ids([lm.tok_encode("Beautiful is")], {"max_gen_toks": 8})[0]
    text = lm.tok_decode(lm._cut(full))
    assert len(full) == 8
    stop = text[3:5]
    assert stop and stop in text
    cut = lm.generate_until([gen_req("Beautiful is", until=[stop], max_gen_toks=8)],
                            disable_tqdm=True)[0]
    assert cut == text[:text.index(stop)]
    short = lm.generate_ids([lm.tok_encode("Beautiful is")], {"max_gen_toks": 4})[0]
    assert len(short) == 4
    # per-request diffusion settings override model_args (one step commits all 8 tokens)
    fast = lm.generate_ids([lm.tok_encode("Beautiful is")], {"max_gen_toks": 8, "steps": 1})[0]
    assert fast != full
    with pytest.raises(ModelArgsError, match="multiple of block_length"):
        lm.generate_until([gen_req("x", max_gen_toks=8, block_length=3)], disable_tqdm=True)


def test_unknown_gen_kwargs_warn(caplog):
    lm = cached(LLADA)
    with caplog.at_level("WARNING"):
        lm.generate_until([gen_req("Beautiful is", until=[], max_gen_toks=4, num_beams=1)],
                          disable_tqdm=True)
    assert "num_beams" in caplog.text


def test_rolling_is_sum_of_window_estimates():
    lm = make(LLADA, mc_num=8, max_length=16)
    text = "Beautiful is better than ugly. Explicit is better than implicit. Simple is better."
    ids = lm.tok_encode(text)
    assert len(ids) > 16  # several windows
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)],
                                        disable_tqdm=True)
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
        ids, lm.prefix_token_id, 15, 1)]
    assert sum(len(c) for _, c in windows) == len(ids)  # every token scored once
    assert all(len(a) + len(b) <= 16 for a, b in windows)
    expected = sum(ll for ll, _, _ in lm.score_tokens(windows))
    assert total == pytest.approx(expected, abs=1e-9) and total < 0


def test_chat_template_and_prefix():
    lm = cached(DREAM)
    chat = [{"role": "user", "content": "Beautiful is"}]
    text = lm.apply_chat_template(chat)
    assert text == lm.tokenizer.apply_chat_template(chat, tokenize=False,
                                                    add_generation_prompt=True)
    ids = lm.tok_encode(text)
    im_start = lm.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert im_start in ids  # special-token strings map to their ids
    assert lm.tokenizer_name.endswith("tiny-dream")
    # empty context: the continuation is scored after the prefix (BOS) token
    ((ll, _),) = lm.loglikelihood([ll_req("", " Beautiful")], disable_tqdm=True)
    cont = lm.tok_encode(" Beautiful")
    ((ll2, _, _),) = lm.score_tokens([([lm.prefix_token_id], cont)])
    assert ll == ll2


# ----------------------------------------------------------------------------- interventions


def test_pruned_variant_changes_outputs(importance_file):
    base = cached(LLADA)
    pruned = make(LLADA, importance=str(importance_file), prune="most", prune_k=2)
    scores = HeadImportance.load(importance_file)
    keep = select_heads(scores, "most", k=2)
    assert pruned.removed_heads == [tuple(x) for x in (~keep).nonzero().tolist()]
    assert len(pruned.removed_heads) == 2 and base.removed_heads == []
    reqs = [ll_req("Beautiful is better than", " ugly"), ll_req("Explicit is", " better")]
    a = base.loglikelihood(reqs, disable_tqdm=True)
    b = pruned.loglikelihood(reqs, disable_tqdm=True)
    assert all(abs(x[0] - y[0]) > 1e-3 for x, y in zip(a, b))
    g = [gen_req("If the implementation is hard to explain, it's a bad idea.", until=[],
                 max_gen_toks=8)]
    assert base.generate_until(g, disable_tqdm=True) != pruned.generate_until(
        g, disable_tqdm=True)
    rnd = make(LLADA, prune="random", prune_k_frac=0.25, layers="1")
    assert len(rnd.removed_heads) == 1 and rnd.removed_heads[0][0] == 1
    assert len({base.fingerprint, pruned.fingerprint, rnd.fingerprint}) == 3


@pytest.mark.parametrize("attention", ["uniform", "adaptive"])
def test_sparse_variant_changes_outputs(importance_file, attention):
    base = cached(LLADA)
    extra = {"importance": str(importance_file)} if attention == "adaptive" else {}
    sparse = make(LLADA, attention=attention, keep=0.25, block_size=2, skip=0.0,
                  min_seq_len=0, sparse_kernel="gather", **extra)
    assert sparse.sparse is not None
    text = "If the implementation is hard to explain, it's a bad idea. Errors should never pass"
    reqs = [ll_req(text, " silently.")]
    a = base.loglikelihood(reqs, disable_tqdm=True)[0][0]
    b = sparse.loglikelihood(reqs, disable_tqdm=True)[0][0]
    assert abs(a - b) > 1e-3
    g = [gen_req(text, until=[], max_gen_toks=8)]
    assert base.generate_until(g, disable_tqdm=True) != sparse.generate_until(
        g, disable_tqdm=True)


def test_row_budgets_make_sparse_scores_independent_of_batch_mates():
    """With row_budgets=true a request scores the same alone and next to a longer one."""
    short = ll_req("Simple is better than complex.", " Flat")
    long_ = ll_req("If the implementation is hard to explain, it's a bad idea. Errors should "
                   "never pass silently. Unless explicitly silenced. In the face of ambiguity,"
                   " refuse", " the")
    kw = dict(attention="uniform", keep=0.25, block_size=2, skip=0.0, min_seq_len=0,
              sparse_kernel="gather", mc_num=4, mc_batch_size=4)
    scores = {}
    for rb in (False, True):
        lm = make(LLADA, row_budgets=rb, **kw)
        alone = lm.loglikelihood([short], disable_tqdm=True)[0][0]
        lm._batch_size = 2
        together = lm.loglikelihood([short, long_], disable_tqdm=True)[0][0]
        scores[rb] = (alone, together)
    assert scores[True][0] == pytest.approx(scores[True][1], abs=1e-5)
    assert abs(scores[False][0] - scores[False][1]) > 1e-3  # padded-length budgets differ
    with pytest.raises(ModelArgsError, match="row_budgets"):
        make(LLADA, row_budgets=True)  # a sparse-only argument without sparse attention


# ----------------------------------------------------------------------------- cache key


def test_fingerprint_tracks_semantic_args_only():
    a = parse_model_args({"pretrained": "x", "mc_num": 8}).fingerprint_items()
    b = parse_model_args({"pretrained": "x", "mc_num": 8, "batch_size": 16}).fingerprint_items()
    c = parse_model_args({"pretrained": "x", "mc_num": 9}).fingerprint_items()
    assert a == b and a != c


def test_response_cache_is_keyed_by_model_args(tmp_path, importance_file, monkeypatch):
    """Two configurations sharing one --use_cache path never see each other's answers;
    the same configuration reads its own."""
    from lm_eval.api.model import CachingLM

    reqs = [ll_req("Beautiful is better than", " ugly"), ll_req("Explicit is", " better")]
    db = str(tmp_path / "cache_rank0.db")

    def run(lm):
        calls = []
        orig = lm.score_tokens
        monkeypatch.setattr(lm, "score_tokens", lambda *a, **k: calls.append(1) or orig(*a, **k))
        out = CachingLM(lm, db).loglikelihood(reqs)
        monkeypatch.setattr(lm, "score_tokens", orig)
        return out, len(calls)

    base = make(LLADA, mc_num=8)
    pruned = make(LLADA, mc_num=8, importance=str(importance_file), prune="least", prune_k=2)
    first, n1 = run(base)
    other, n2 = run(pruned)
    again, n3 = run(make(LLADA, mc_num=8, batch_size=4))  # batch size is not semantic
    assert n1 == 1 and n2 == 1 and n3 == 0  # the pruned model was not served base answers
    assert [x[0] for x in first] != [x[0] for x in other]
    assert [tuple(x) for x in again] == [tuple(x) for x in first]
    tables = {r[0] for r in sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {f"headig_{base.fingerprint[:32]}", f"headig_{pruned.fingerprint[:32]}"} <= tables


def test_single_process_collectives_are_identity():
    lm = cached(LLADA)
    t = torch.tensor(3)
    assert lm.all_gather(t) is t and lm.gather_object({"a": 1}) == [{"a": 1}]
    assert lm.rank == 0 and lm.world_size == 1
    info = lm.get_model_info()
    assert info["headig_fingerprint"] == lm.fingerprint and info["headig_family"] == "llada"


def test_simple_evaluate_with_chat_template(monkeypatch):
    """lm-eval's --apply_chat_template path: prompts are templated by the model's tokenizer."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    root = fixture_path(DREAM).parents[2]
    monkeypatch.chdir(root)  # the local tasks' data_files are relative to the repository
    lm = cached(DREAM)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=["headig_gen"], limit=2, apply_chat_template=True, log_samples=True,
        task_manager=TaskManager(include_path=str(root / "tests/lmeval_tasks"),
                                 include_defaults=False))
    samples = out["samples"]["headig_gen"]
    assert len(samples) == 2
    ((context, gen_kwargs),) = samples[0]["arguments"]
    assert context.startswith("<|im_start|>") and context.rstrip().endswith("assistant")
    assert "<|im_start|>user\nBeautiful is<|im_end|>" in context
    expected = lm.generate_until([gen_req(context, **gen_kwargs)], disable_tqdm=True)
    assert samples[0]["resps"] == [expected]
