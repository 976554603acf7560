"""The masked-diffusion core: hand-computed cases, and bit-identity with the formulas
that the objective, validation, likelihood, toy tasks and tiny-model training used
before they shared this code (copied here verbatim as references)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from headig.diffusion import (
    align_logits,
    collapse_variants,
    gather_aligned,
    has_preceding_row,
    masked_row_loss,
    sample_variant_masks,
    seed_from,
    source_rows,
    sum_by_row,
    token_ce,
)

# ----------------------------------------------------------------------------- alignment


def test_align_logits_by_hand():
    raw = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)  # row r of batch b: 4b + r
    assert torch.equal(align_logits(raw, 0), raw)
    got = align_logits(raw, 1)[..., 0]
    # Dream: position i reads raw row i-1, position 0 reads row 0
    assert got.tolist() == [[0, 0, 1, 2], [4, 4, 5, 6]]
    with pytest.raises(ValueError):
        align_logits(raw, 2)
    with pytest.raises(ValueError):
        align_logits(raw, -1)


def test_source_rows_by_hand():
    pos = torch.tensor([[False, False, True, True, False],
                        [True, True, False, False, True]])
    assert torch.equal(source_rows(pos, 0), pos)
    src = source_rows(pos, 1)
    assert src.int().tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 1, 0]]
    # the objective's old rule (no position 0 selected) is the same selection
    ok = pos.clone()
    ok[:, 0] = False
    assert torch.equal(source_rows(ok, 1), F.pad(ok[:, 1:], (0, 1)))
    assert has_preceding_row(ok, 1) and not has_preceding_row(pos, 1)
    assert has_preceding_row(pos, 0)


@pytest.mark.parametrize("shift", [0, 1])
def test_gather_aligned_equals_full_alignment(shift):
    """Scoring only the source rows gives the same rows as aligning full logits, also when
    positions 0 and 1 share row 0."""
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(3, 6, 5, generator=gen)
    pos = torch.rand(3, 6, generator=gen) < 0.5
    pos[1, :2] = True  # positions 0 and 1 of row 1: one source row under shift 1
    src = source_rows(pos, shift)
    got = gather_aligned(raw[src], pos, src, shift)
    assert torch.equal(got, align_logits(raw, shift)[pos])


def test_alignment_matches_the_sampler_and_task_code():
    """Same numbers as generation.shift_logits and the task evaluator's torch.cat."""
    from headig import generation

    raw = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(1))
    for shift in (0, 1):
        assert torch.equal(align_logits(raw, shift), generation.shift_logits(raw, shift))
    old_tasks = torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
    assert torch.equal(align_logits(raw, 1), old_tasks)


# ----------------------------------------------------------------------------- loss


def test_token_ce_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    targets = torch.tensor([0, 0])
    ce, hits = token_ce(logits, targets, with_hits=True)
    assert ce.dtype == torch.float32
    assert ce.tolist() == pytest.approx([math.log(2.0), math.log(4 / 3)], abs=1e-7)
    assert hits.tolist() == [True, True]  # ties pick the first index
    assert token_ce(logits, torch.tensor([1, 1])).tolist() == pytest.approx(
        [math.log(2.0), math.log(4.0)], abs=1e-6)
    with pytest.raises(ValueError):
        token_ce(logits[None], targets)


def test_masked_row_loss_by_hand():
    masked = torch.tensor([[False, True, True], [True, False, False], [False, False, False]])
    ce = torch.tensor([1.0, 2.0, 4.0])  # row 0: 1 + 2, row 1: 4, row 2: nothing masked
    assert masked_row_loss(ce, masked, "sum").tolist() == [3.0, 4.0, 0.0]
    assert masked_row_loss(ce, masked, "mean_masked").tolist() == [1.5, 4.0, 0.0]
    two = torch.stack([ce, 10 * ce], 1)  # two configurations per position
    assert masked_row_loss(two, masked).tolist() == [[1.5, 15.0], [4.0, 40.0], [0.0, 0.0]]
    assert sum_by_row(ce, torch.tensor([2, 0, 2]), 3).tolist() == [2.0, 0.0, 5.0]
    with pytest.raises(ValueError):
        masked_row_loss(ce, masked, "mean")


def _case(seed: int = 0, b: int = 4, t: int = 9, v: int = 11, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    raw = (3 * torch.randn(b, t, v, generator=gen)).to(dtype)
    targets = torch.randint(v, (b, t), generator=gen)
    masked = torch.rand(b, t, generator=gen) < 0.5
    masked[:, 0] = False
    masked[:, 1] = True
    return raw, targets, masked


@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("normalize", ["mean_masked", "sum"])
def test_bit_identical_to_objective_row_losses(shift, normalize):
    raw, targets, masked = _case()
    # reference: objective.row_losses before the move
    select = masked if shift == 0 else F.pad(masked[:, shift:], (0, shift))
    ce = F.cross_entropy(raw[select].float(), targets[masked], reduction="none")
    rows = masked.nonzero()[:, 0]
    ref = torch.zeros(raw.shape[0], dtype=ce.dtype).index_add(0, rows, ce)
    if normalize == "mean_masked":
        ref = ref / masked.sum(1).clamp_min(1).to(ref.dtype)
    src = source_rows(masked, shift)
    got = masked_row_loss(token_ce(raw[src], targets[masked]), masked, normalize)
    assert torch.equal(got, ref)


def test_bit_identical_to_validation_coalitions():
    """validate._coalitions_native: [N, C, V] logits, targets repeated per configuration."""
    gen = torch.Generator().manual_seed(3)
    _, targets, masked = _case(3)
    n_cfg, n = 5, int(masked.sum())
    logits = 2 * torch.randn(n, n_cfg, 11, generator=gen)
    tgt = targets[masked]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.repeat_interleave(n_cfg),
                         reduction="none")
    ref = torch.zeros(masked.shape[0], n_cfg, dtype=torch.float32)
    ref.index_add_(0, masked.nonzero()[:, 0], ce.view(-1, n_cfg))
    ref = ref / masked.sum(1, keepdim=True).clamp_min(1)
    mine = token_ce(logits.reshape(-1, logits.shape[-1]), tgt.repeat_interleave(n_cfg))
    assert torch.equal(masked_row_loss(mine.view(-1, n_cfg), masked), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bit_identical_to_likelihood_chunks(dtype):
    """likelihood._ce_and_hits: 2048-row float32 chunks, float64 on the CPU."""
    gen = torch.Generator().manual_seed(4)
    logits = (4 * torch.randn(5000, 13, generator=gen)).to(dtype)
    targets = torch.randint(13, (5000,), generator=gen)
    ref_ce, ref_hits = [], []
    for start in range(0, logits.shape[0], 2048):
        part = logits[start:start + 2048].float()
        tgt = targets[start:start + 2048]
        ref_ce.append(F.cross_entropy(part, tgt, reduction="none").double().cpu())
        ref_hits.append((part.argmax(-1) == tgt).cpu())
    ce, hits = token_ce(logits, targets, chunk_rows=2048, with_hits=True)
    assert torch.equal(ce.double(), torch.cat(ref_ce))
    assert torch.equal(hits, torch.cat(ref_hits))
    # chunking never changes a row
    assert torch.equal(token_ce(logits, targets), ce)
    empty, no_hits = token_ce(logits[:0], targets[:0], chunk_rows=8, with_hits=True)
    assert empty.shape == (0,) and no_hits.shape == (0,)


def test_bit_identical_to_task_loss_and_training_loss():
    raw, clean, flags = _case(5)
    for shift in (0, 1):
        # tasks.completion_loss: aligned full logits, sums / flags.sum(-1)
        logits = align_logits(raw, shift).float()
        ce = F.cross_entropy(logits[flags], clean[flags], reduction="none")
        sums = torch.zeros(raw.shape[0]).index_add_(0, flags.nonzero()[:, 0], ce)
        ref = sums / flags.sum(-1)
        got = masked_row_loss(token_ce(align_logits(raw, shift)[flags], clean[flags]), flags)
        assert torch.equal(got, ref)
    # train_tiny.diffusion_loss: CE on logits[masked].float()
    ref = F.cross_entropy(raw[flags].float(), clean[flags], reduction="none")
    assert torch.equal(token_ce(raw[flags], clean[flags]), ref)


# ----------------------------------------------------------------------------- masking


def test_seed_from_is_stable():
    assert seed_from(0, "ex", 3) == seed_from(0, "ex", 3)
    assert seed_from(0, "ex", 3) != seed_from(0, "ex", 4)
    assert 0 <= seed_from("anything") < 2 ** 63
    # fixed value: masks must not change between releases
    assert seed_from(0, "a", 0) == int.from_bytes(
        __import__("hashlib").sha256(b"0\x1fa\x1f0").digest()[:8], "little") & (2 ** 63 - 1)


def test_variant_masks_rules():
    comp = torch.tensor([False, False, False, True, True, True, True])
    masks = sample_variant_masks(comp, example_id="x", seed=7, mask_probs=(0.01, 0.5, 1.0),
                                 samples_per_prob=3)
    assert masks.shape == (9, 7)
    assert not bool(masks[:, :3].any())  # the prompt is never masked
    assert bool(masks.any(-1).all())  # at least one token each
    assert bool(masks[6:, 3:].all())  # p = 1 masks the whole completion
    again = sample_variant_masks(comp, example_id="x", seed=7, mask_probs=(0.01, 0.5, 1.0),
                                 samples_per_prob=3)
    assert torch.equal(masks, again)
    other = sample_variant_masks(comp, example_id="y", seed=7, mask_probs=(0.01, 0.5, 1.0),
                                 samples_per_prob=3)
    assert not torch.equal(masks, other)
    with pytest.raises(ValueError):
        sample_variant_masks(torch.zeros(4, dtype=torch.bool), example_id="z")


def test_variant_masks_bit_identical_to_objective_sampler():
    """The objective's sampler before the move, copied verbatim."""
    comp = torch.tensor([False] * 4 + [True] * 6)
    probs, samples, seed, ex = (0.15, 0.3, 0.5, 0.7, 0.9), 2, 11, "item-3"
    positions = comp.nonzero().flatten()
    draws, v = [], 0
    for p in probs:
        for _ in range(samples):
            gen = torch.Generator().manual_seed(seed_from(seed, ex, v))
            pick = torch.rand(positions.numel(), generator=gen) < p
            if not bool(pick.any()):
                pick[torch.randint(positions.numel(), (1,), generator=gen)] = True
            m = torch.zeros(comp.numel(), dtype=torch.bool)
            m[positions[pick]] = True
            draws.append(m)
            v += 1
    ref = torch.stack(draws)
    got = sample_variant_masks(comp, example_id=ex, seed=seed, mask_probs=probs,
                               samples_per_prob=samples)
    assert torch.equal(got, ref)
    unique, counts = torch.unique(ref, dim=0, return_counts=True)
    u, w = collapse_variants(got)
    assert torch.equal(u, unique)
    assert torch.equal(w, counts.to(torch.float64) / counts.sum())
    assert float(w.sum()) == pytest.approx(1.0)


def test_collapse_variants_by_hand():
    m = torch.tensor([[True, False], [False, True], [True, False], [True, False]])
    u, w = collapse_variants(m)
    assert u.tolist() == [[False, True], [True, False]]
    assert w.tolist() == [0.25, 0.75]
