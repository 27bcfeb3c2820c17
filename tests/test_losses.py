"""Parity first: the sparse losses against direct dense computations written here."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from logitcache.teachers.targets import sample_targets
from logitcache.training.losses import dense_kl, sampled_kl, sparse_kl

torch.manual_seed(0)


def teacher(B=2, T=3, V=11, temperature=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(B, T, V, generator=g) * 2 / temperature, -1)


def test_sparse_kl_with_k_equal_vocab_is_dense_kl():
    p = teacher()
    student = torch.randn(2, 3, 11)
    probs, ids = p.sort(-1, descending=True)
    for reduction in ("token", "paper"):
        sparse = sparse_kl(student, ids, probs, 2.0, "bucket", reduction)
        dense = dense_kl(student, p, 2.0, reduction)
        assert torch.allclose(sparse, dense, atol=1e-5), (sparse, dense)


def test_bucket_tail_matches_direct_computation():
    p = teacher()
    student = torch.randn(2, 3, 11)
    k = 4
    probs, ids = p.topk(k, -1)
    q = torch.softmax(student / 2.0, -1)
    q_k = q.gather(-1, ids)
    p_tail, q_tail = 1 - probs.sum(-1), 1 - q_k.sum(-1)
    direct = (probs * (probs.log() - q_k.log())).sum(-1) + p_tail * (p_tail.log() - q_tail.log())
    assert torch.allclose(sparse_kl(student, ids, probs, 2.0, "bucket"), 4.0 * direct.mean(), atol=1e-5)


def test_renormalize_matches_direct_computation():
    p = teacher()
    student = torch.randn(2, 3, 11)
    probs, ids = p.topk(5, -1)
    p_n = probs / probs.sum(-1, keepdim=True)
    q_n = torch.softmax((student / 2.0).gather(-1, ids), -1)  # student renormalised over the kept ids
    direct = (p_n * (p_n.log() - q_n.log())).sum(-1)
    assert torch.allclose(sparse_kl(student, ids, probs, 2.0, "renormalize"), 4.0 * direct.mean(), atol=1e-5)


def test_paper_reduction_is_kldivloss_batchmean():
    """The paper's code: KLDivLoss(batchmean)(log_softmax(s/T), p) * T^2 over (B, T, V)."""
    p = teacher(B=3, T=4)
    student = torch.randn(3, 4, 11)
    reference = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(student / 2.0, -1), p) * 4.0
    probs, ids = p.sort(-1, descending=True)
    assert torch.allclose(sparse_kl(student, ids, probs, 2.0, "bucket", "paper"), reference, atol=1e-5)
    assert torch.allclose(dense_kl(student, p, 2.0, "paper"), reference, atol=1e-5)


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_sparse_gradient_matches_dense_autograd(tail):
    p = teacher(V=13)
    probs, ids = p.topk(6, -1)
    student = torch.randn(2, 3, 13, requires_grad=True)
    sparse_kl(student, ids, probs, 2.0, tail).backward()
    grad_sparse = student.grad.clone()
    # dense reference: the target as a full distribution over the coarsened space, by autograd
    s2 = student.detach().clone().requires_grad_(True)
    q = torch.softmax(s2 / 2.0, -1)
    q_k = q.gather(-1, ids)
    if tail == "bucket":
        p_tail, q_tail = 1 - probs.sum(-1), 1 - q_k.sum(-1)
        kl = (probs * (probs.log() - q_k.log())).sum(-1) + p_tail * (p_tail.log() - q_tail.log())
    else:
        p_n, q_n = probs / probs.sum(-1, keepdim=True), q_k / q_k.sum(-1, keepdim=True)
        kl = (p_n * (p_n.log() - q_n.log())).sum(-1)
    (4.0 * kl.mean()).backward()
    assert torch.allclose(grad_sparse, s2.grad, atol=1e-6)


def test_sampled_targets_are_unbiased():
    """Mean over many seeded draws of the sparse weighted target converges to the full distribution."""
    p = teacher(B=1, T=2, V=9, temperature=1.0)
    for proposal_temperature in (1.0, 2.0):
        total = torch.zeros_like(p)
        draws = 4000
        generator = torch.Generator().manual_seed(123)
        for _ in range(draws):
            ids, _, weights = sample_targets(p, 8, proposal_temperature, generator)
            total.scatter_add_(-1, ids, weights)
        estimate = total / draws
        # standard error per entry is below ~0.01 here; a 5-sigma band
        assert torch.allclose(estimate, p, atol=0.02), (estimate - p).abs().max()


def test_sampled_loss_gradient_is_unbiased():
    p = teacher(B=1, T=2, V=7, temperature=1.0)
    student = torch.randn(1, 2, 7)
    s_full = student.clone().requires_grad_(True)
    dense_kl(s_full, p, 1.0).backward()
    total = torch.zeros_like(student)
    generator = torch.Generator().manual_seed(7)
    runs = 3000
    for _ in range(runs):
        ids, probs, weights = sample_targets(p, 6, 1.5, generator)
        s = student.clone().requires_grad_(True)
        sampled_kl(s, ids, probs, weights, 1.0).backward()
        total += s.grad
    assert torch.allclose(total / runs, s_full.grad, atol=0.01), (total / runs - s_full.grad).abs().max()


def test_sampled_weights_with_q_equal_p_are_counts_over_n():
    p = teacher(B=1, T=1, V=5, temperature=1.0)
    ids, probs, weights = sample_targets(p, 10, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(weights.sum(-1), torch.ones(1, 1))
    assert torch.allclose(weights * 10, (weights * 10).round(), atol=1e-5)
    assert torch.allclose(probs[weights > 0], p.gather(-1, ids)[weights > 0])


@settings(max_examples=200, deadline=None)
@given(
    v=st.integers(2, 12), k=st.integers(1, 12), temperature=st.floats(0.3, 4.0), seed=st.integers(0, 10_000),
    zero_frac=st.floats(0.0, 0.9), tail=st.sampled_from(["bucket", "renormalize"]), all_tail=st.booleans(),
)
def test_kl_is_finite_and_non_negative(v, k, temperature, seed, zero_frac, tail, all_tail):
    k = min(k, v)
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(v, 0.3))
    p[rng.random(v) < zero_frac] = 0.0  # zero probabilities
    if p.sum() == 0:
        p[0] = 1.0
    p = p / p.sum()
    ids = np.argsort(-p)[:k]
    probs = p[ids] * (0.0 if all_tail and tail == "bucket" else 1.0)  # all mass in the tail
    student = torch.tensor(rng.normal(size=(1, 1, v)) * 5, dtype=torch.float32, requires_grad=True)
    loss = sparse_kl(student, torch.tensor(ids).view(1, 1, k), torch.tensor(probs, dtype=torch.float32).view(1, 1, k),
                     temperature, tail)
    assert torch.isfinite(loss) and loss.item() >= -1e-5
    loss.backward()
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7, 3.0, 6.0])
@pytest.mark.parametrize("reduction", ["token", "paper"])
@pytest.mark.parametrize("alpha,accum,chunk", [(0.5, 1, None), (0.5, 4, None), (0.0, 1, None), (0.5, 1, 240), (0.3, 2, 500)])
def test_fused_loss_equals_autograd_reference(temperature, reduction, alpha, accum, chunk, monkeypatch):
    """The training path (gradient built in the forward) against sparse_kl + next-token CE through
    autograd: sqrt route (T = 2), pow route (0.7, 3), own softmax (6), gradient accumulation, and
    row slices of 1 and 2 rows (`chunk` entries) against the whole batch at once."""
    from logitcache.training import losses
    from logitcache.training.losses import fused_distill_loss

    if chunk:
        monkeypatch.setitem(losses.CHUNK_ELEMENTS, "cpu", chunk)
    from logitcache.training.loop import next_token_ce

    g = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 6, 40, generator=g) * 3
    probs, ids = torch.softmax(torch.randn(3, 6, 40, generator=g) * 2, -1).topk(7, -1)
    tokens = torch.randint(0, 40, (3, 6), generator=g)
    ref = logits.clone().requires_grad_(True)
    ref_kl = sparse_kl(ref, ids, probs, temperature, "bucket", reduction)
    ref_ce = next_token_ce(ref, tokens)
    ((alpha * ref_ce + (1 - alpha) * ref_kl) / accum).backward()
    fused = logits.clone().requires_grad_(True)
    loss, kl, ce = fused_distill_loss(fused, ids, probs, tokens, temperature, alpha, reduction)
    (loss / accum).backward()  # with gradient accumulation the saved gradient is scaled
    assert not kl.requires_grad and not ce.requires_grad
    assert torch.allclose(kl, ref_kl.detach(), atol=1e-5) and torch.allclose(ce, ref_ce.detach(), atol=1e-5)
    assert torch.allclose(loss, alpha * ce + (1 - alpha) * kl, atol=1e-6)
    assert torch.allclose(fused.grad, ref.grad, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_next_token_ce_equals_cross_entropy(dtype):
    """The training CE (gradient built in the forward) against F.cross_entropy through autograd."""
    from logitcache.training.losses import fused_next_token_ce
    from logitcache.training.loop import next_token_ce

    g = torch.Generator().manual_seed(12)
    logits = (torch.randn(4, 9, 50, generator=g) * 4).to(dtype)
    tokens = torch.randint(0, 50, (4, 9), generator=g)
    ref = logits.clone().requires_grad_(True)
    next_token_ce(ref, tokens).backward()
    fused = logits.clone().requires_grad_(True)
    ce = fused_next_token_ce(fused, tokens)
    ce.backward()
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert fused.grad.dtype == dtype
    assert torch.allclose(ce, next_token_ce(logits, tokens), atol=tol * 10)
    assert torch.allclose(fused.grad.float(), ref.grad.float(), atol=tol)
    assert fused.grad[:, -1].abs().max() == 0  # the last position predicts nothing


def test_reused_gradient_buffer_is_never_shared_by_two_live_losses():
    """The fused losses reuse one (B, T, V) buffer across steps; two losses alive at once (both
    forwards before either backward) must still get their own gradients."""
    from logitcache.training.losses import fused_distill_loss, fused_next_token_ce
    from logitcache.training.loop import next_token_ce

    g = torch.Generator().manual_seed(13)
    head = torch.nn.Linear(8, 30)
    hidden = [torch.randn(2, 5, 8, generator=g) for _ in range(3)]
    tokens = torch.randint(0, 30, (2, 5), generator=g)
    probs, ids = torch.softmax(torch.randn(2, 5, 30, generator=g), -1).topk(4, -1)

    def reference(h):
        head.zero_grad()
        logits = head(h)
        (0.5 * next_token_ce(logits, tokens) + 0.5 * sparse_kl(logits, ids, probs, 2.0)).backward()
        return head.weight.grad.clone()

    expected = [reference(h) for h in hidden]
    for _ in range(2):  # one loss at a time, twice over (the second pass reuses the buffer)
        for h, want in zip(hidden, expected):
            head.zero_grad()
            fused_distill_loss(head(h), ids, probs, tokens, 2.0, 0.5)[0].backward()
            assert torch.allclose(head.weight.grad, want, atol=1e-6)
    head.zero_grad()
    first = fused_distill_loss(head(hidden[0]), ids, probs, tokens, 2.0, 0.5)[0]
    second = fused_distill_loss(head(hidden[1]), ids, probs, tokens, 2.0, 0.5)[0]
    second.backward()
    first.backward()
    assert torch.allclose(head.weight.grad, expected[0] + expected[1], atol=1e-6)
    head.zero_grad()
    first, second = fused_next_token_ce(head(hidden[0]), tokens), fused_next_token_ce(head(hidden[2]), tokens)
    (first + second).backward()
    head_ref = [None, None]
    for i, h in enumerate((hidden[0], hidden[2])):
        logits = head(h)
        head_ref[i] = torch.autograd.grad(next_token_ce(logits, tokens), head.weight)[0]
    assert torch.allclose(head.weight.grad, head_ref[0] + head_ref[1], atol=1e-6)


def sampled_batch(B=3, T=4, V=30, n_samples=6, seed=5):
    p = teacher(B=B, T=T, V=V, temperature=1.0, seed=seed)
    ids, probs, weights = sample_targets(p, n_samples, 1.0, torch.Generator().manual_seed(seed))
    return p, ids, probs, weights


@pytest.mark.parametrize("reduction", ["token", "paper"])
def test_sampled_renormalize_matches_direct_computation(reduction):
    """--tail renormalize on sampled targets: teacher and student renormalised over each position's
    drawn ids (padding slots excluded), computed here one position at a time."""
    from logitcache.training.losses import sampled_renormalized_kl

    _, ids, probs, weights = sampled_batch()
    assert (weights == 0).any()  # some positions drew fewer unique ids than slots: padding is exercised
    student = torch.randn(3, 4, 30, generator=torch.Generator().manual_seed(1)) * 2
    total = 0.0
    for b in range(3):
        for t in range(4):
            drawn = weights[b, t] > 0
            i, pi = ids[b, t][drawn], probs[b, t][drawn]
            q = torch.softmax(student[b, t] / 2.0, -1)[i]
            pn, qn = pi / pi.sum(), q / q.sum()
            total += float((pn * (pn.log() - qn.log())).sum())
    count = 3 if reduction == "paper" else 12
    got = sampled_renormalized_kl(student, ids, probs, weights, 2.0, reduction)
    assert got.item() == pytest.approx(4.0 * total / count, rel=1e-5)
    s = student.clone().requires_grad_(True)
    sampled_renormalized_kl(s, ids, probs, weights, 2.0, reduction).backward()
    assert torch.isfinite(s.grad).all()
    undrawn = torch.ones_like(s.grad, dtype=torch.bool).scatter_(-1, ids, False)
    assert s.grad[undrawn].abs().max() == 0  # the rest of the vocabulary is dropped


def test_sampled_kl_counts_ids_the_code_rounded_to_zero_as_zero():
    """The sampled KL (the loss and the logged value) against the full-vocabulary KL(p || s) computed
    densely: with a teacher whose tail entries round to 0 under sqrt-u7 and carry 3% of the mass, the
    mean estimate over many positions stays within a few hundredths of the exact KL; a log(1e-30)
    stand-in for log 0 would put it ~1.6 nats below."""
    from logitcache.store.codecs import prob_code

    g = torch.Generator().manual_seed(3)
    B, T, V, head = 64, 16, 2000, 20
    head_p = torch.softmax(torch.randn(B, T, head, generator=g), -1) * 0.97
    tail_p = torch.full((B, T, V - head), 0.03 / (V - head))  # 1.5e-5 each: below sqrt-u7's smallest step
    p = torch.cat([head_p, tail_p], -1)  # (B, T, V)
    log_s = torch.log(p) + torch.randn(B, T, V, generator=g) * 0.3  # a student near the teacher
    student = log_s  # logits; the KL uses its softmax at T = 1
    exact = dense_kl(student, p, 1.0).item()
    ids, probs, weights = sample_targets(p, 64, 1.0, torch.Generator().manual_seed(4))
    code = prob_code("sqrt-u7")
    decoded = torch.from_numpy(code.decode(code.encode(probs.numpy())).astype(np.float32))
    rounded = (decoded == 0) & (weights > 0)
    assert rounded.any() and (decoded[weights > 0] > 0).any()
    estimate = sampled_kl(student, ids, decoded, weights, 1.0).item()
    assert estimate == pytest.approx(exact, abs=0.01), (estimate, exact)
