"""Every metric against a naive reference: explicit python loops in float64 over the same values."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_cod.telemetry import metrics as M

DTYPES = [torch.float32, torch.bfloat16]


def _tol(dtype: torch.dtype) -> dict:
    # The metric runs in fp32 on the (possibly bf16) input; the reference runs in float64 on the
    # same input values, so both dtypes only see fp32 rounding.
    return {"rel": 2e-5, "abs": 2e-6}


def _rows(h: torch.Tensor) -> list[list[float]]:
    return h.double().reshape(-1, h.shape[-1]).tolist()


def _var(v: list[float], unbiased: bool = True) -> float:
    m = sum(v) / len(v)
    return sum((x - m) ** 2 for x in v) / (len(v) - (1 if unbiased else 0))


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_metrics_match_loops(dtype):
    g = torch.Generator().manual_seed(0)
    h_in = (torch.randn(3, 2, 16, generator=g) * 2 + 0.5).to(dtype)
    h_out = (h_in.float() + torch.randn(3, 2, 16, generator=g)).to(dtype)
    xs, ys = _rows(h_in), _rows(h_out)
    var = [_var(y) for y in ys]
    rms = [math.sqrt(sum(v * v for v in y) / len(y)) for y in ys]
    upd = [_norm([b - a for a, b in zip(x, y)]) for x, y in zip(xs, ys)]
    rel = [u / _norm(x) for u, x in zip(upd, xs)]
    cos = [sum(a * b for a, b in zip(x, y)) / (_norm(x) * _norm(y)) for x, y in zip(xs, ys)]
    ang = [math.acos(max(-1.0, min(1.0, c))) / math.pi for c in cos]
    tol = _tol(dtype)
    assert M.per_token_variance(h_out).flatten().tolist() == pytest.approx(var, **tol)
    assert M.per_token_variance(h_out, unbiased=False).flatten().tolist() == pytest.approx(
        [_var(y, unbiased=False) for y in ys], **tol)
    assert M.per_token_rms(h_out).flatten().tolist() == pytest.approx(rms, **tol)
    assert M.per_token_norm(h_in).flatten().tolist() == pytest.approx([_norm(x) for x in xs], **tol)
    assert M.per_token_update_norm(h_in, h_out).flatten().tolist() == pytest.approx(upd, **tol)
    assert M.per_token_relative_update(h_in, h_out).flatten().tolist() == pytest.approx(rel, **tol)
    assert M.per_token_cosine(h_in, h_out).flatten().tolist() == pytest.approx(cos, **tol)
    assert M.per_token_angular_distance(h_in, h_out).flatten().tolist() == pytest.approx(ang, abs=1e-4)
    assert M.block_influence(h_in, h_out).item() == pytest.approx(1 - sum(cos) / len(cos), **tol)
    assert M.residual_variance(h_out).item() == pytest.approx(sum(var) / len(var), **tol)
    fused = M.layer_output_terms(h_in, h_out)
    assert fused.shape == (5, 3, 2)
    for got, want in zip(fused, (var, rms, upd, rel, cos)):
        assert got.flatten().tolist() == pytest.approx(want, **tol)
    branch = M.branch_output_terms(h_out)
    assert branch[0].flatten().tolist() == pytest.approx(var, **tol)
    assert branch[1].flatten().tolist() == pytest.approx([_norm(y) for y in ys], **tol)


def _naive_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> list[list[list[float]]]:
    """[heads][rows][keys] causal softmax; the q rows are the last positions of the k context."""
    nq, heads, d = q.shape
    nk, groups, _ = k.shape
    qd, kd = q.double().tolist(), k.double().tolist()
    out = []
    for h in range(heads):
        g = h // (heads // groups)
        rows = []
        for r in range(nq):
            visible = nk - nq + r + 1
            s = [sum(qd[r][h][i] * kd[j][g][i] for i in range(d)) * scale for j in range(visible)]
            m = max(s)
            e = [math.exp(x - m) for x in s]
            z = sum(e)
            rows.append([x / z for x in e] + [0.0] * (nk - visible))
        out.append(rows)
    return out


def _naive_entropy_topk(probs: list[list[list[float]]], nk: int, k: int):
    ent, top = [], []
    for rows in probs:
        nq = len(rows)
        e_vals, t_vals = [], []
        for r, row in enumerate(rows):
            visible = nk - nq + r + 1
            if visible > 1:
                e_vals.append(-sum(p * math.log(p) for p in row if p > 0) / math.log(visible))
            if visible > k:
                t_vals.append(sum(sorted(row, reverse=True)[:k]))
        ent.append(sum(e_vals) / len(e_vals))
        top.append(sum(t_vals) / len(t_vals))
    return ent, top


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nq,nk,heads,groups", [(6, 6, 4, 4), (3, 7, 4, 2), (5, 5, 2, 1)])
def test_attention_metrics_match_loops(dtype, nq, nk, heads, groups):
    g = torch.Generator().manual_seed(nq * 100 + nk)
    q = (torch.randn(nq, heads, 8, generator=g) * 2).to(dtype)
    k = (torch.randn(nk, groups, 8, generator=g) * 2).to(dtype)
    scale = 8 ** -0.5
    want = _naive_probs(q, k, scale)
    probs = M.causal_attention_probs(q, k, scale)
    assert probs.shape == (heads, nq, nk)
    assert probs.flatten().tolist() == pytest.approx([p for h in want for r in h for p in r], abs=1e-6)
    ent, top = _naive_entropy_topk(want, nk, k=2)
    assert M.attention_normalized_entropy(probs).tolist() == pytest.approx(ent, rel=1e-5)
    assert M.attention_topk_mass(probs, 2).tolist() == pytest.approx(top, rel=1e-5)
    assert M.attention_valid_rows(nq, nk, 1) == sum(nk - nq + r + 1 > 1 for r in range(nq))
    assert M.attention_valid_rows(nq, nk, 2) == sum(nk - nq + r + 1 > 2 for r in range(nq))


def test_attention_entropy_extremes():
    # Uniform over the visible keys: normalised entropy 1; one-hot rows: 0; top-1 mass of one-hot: 1.
    n = 5
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    assert M.attention_normalized_entropy(uniform[None]).item() == pytest.approx(1.0)
    onehot = torch.zeros(1, n, n)
    onehot[0, :, 0] = 1.0
    assert M.attention_normalized_entropy(onehot).item() == pytest.approx(0.0, abs=1e-7)
    assert M.attention_topk_mass(onehot, 1).item() == pytest.approx(1.0)
    assert M.attention_topk_mass(uniform[None], 1).item() == pytest.approx(
        sum(1 / v for v in range(2, n + 1)) / (n - 1))
    # A single-row, single-key block has no row that can be measured.
    assert math.isnan(M.attention_normalized_entropy(torch.ones(1, 1, 1)).item())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_weight_metrics_match_loops(dtype, eps):
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(12, 9, generator=g) * torch.rand(12, 9, generator=g)).to(dtype)
    vals = w.double().flatten().tolist()
    n = len(vals)
    rms = math.sqrt(sum(v * v for v in vals) / n)
    frac = sum(abs(v) < eps * rms for v in vals) / n
    l1, l2 = sum(abs(v) for v in vals), math.sqrt(sum(v * v for v in vals))
    hoyer = (math.sqrt(n) - l1 / l2) / (math.sqrt(n) - 1)
    assert M.weight_rms(w).item() == pytest.approx(rms, rel=1e-5)
    assert M.weight_sparsity(w, eps).item() == pytest.approx(frac)
    assert M.hoyer_sparsity(w).item() == pytest.approx(hoyer, rel=1e-5)
    # Split into shards and recombined from sums: the same numbers.
    shards = w.chunk(3, dim=0)
    l1s = sum(s.float().abs().sum() for s in shards)
    l2s = math.sqrt(sum(s.float().pow(2).sum().item() for s in shards))
    assert M.hoyer_from_norms(l1s, torch.tensor(l2s), n).item() == pytest.approx(hoyer, rel=1e-5)
    below = sum(M.count_small_weights(s, eps * rms).item() for s in shards)
    assert below / n == pytest.approx(frac)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk", [7, 2**22])
def test_abs_sums_and_small_counts_match_loops(dtype, chunk):
    """The fused |w|-sum and small-count pass, chunked or not, over matrices of different sizes."""
    g = torch.Generator().manual_seed(4)
    ws = [(torch.randn(*shape, generator=g) * 0.1).to(dtype) for shape in [(5, 3), (12, 9), (1, 4)]]
    ws[1][0, :4] = torch.tensor([0.05, -0.05, 0.0, 0.0499])  # entries at, on and below the threshold
    thresholds = torch.tensor([0.07, 0.05, 0.2], dtype=torch.float64)
    l1, small = M.abs_sums_and_small_counts(ws, thresholds, chunk=chunk)
    for i, w in enumerate(ws):
        vals = w.double().flatten().tolist()
        limit = float(torch.tensor(thresholds[i].item(), dtype=torch.float32))
        assert l1[i].item() == pytest.approx(sum(abs(v) for v in vals), rel=1e-6)
        assert small[i].item() == sum(abs(v) < limit for v in vals)
    assert [x.numel() for x in M.abs_sums_and_small_counts([], torch.zeros(0))] == [0, 0]


def test_hoyer_extremes():
    assert M.hoyer_sparsity(torch.ones(10)).item() == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.zeros(10)
    one_hot[3] = -2.0
    assert M.hoyer_sparsity(one_hot).item() == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_moe_metrics_match_loops(dtype):
    g = torch.Generator().manual_seed(5)
    tokens, experts, topk = 20, 6, 2
    logits = (torch.randn(tokens, experts, generator=g) * 2).to(dtype)
    top = logits.float().topk(topk, dim=-1).indices
    routing = torch.zeros(tokens, experts, dtype=torch.bool).scatter_(1, top, True)
    routing[:, 5] = False  # expert 5 never chosen: dead
    counts = [sum(int(routing[t, e]) for t in range(tokens)) for e in range(experts)]
    assert M.tokens_per_expert(routing).tolist() == counts
    assert M.load_imbalance(M.tokens_per_expert(routing)).item() == pytest.approx(
        max(counts) / (sum(counts) / experts))
    assert M.dead_experts(M.tokens_per_expert(routing)).item() == counts.count(0) == 1
    rows = torch.tensor([counts, [3] * experts, [0] * (experts - 1) + [6]])  # one layer per row
    assert M.load_imbalance(rows).tolist() == pytest.approx([max(counts) / (sum(counts) / experts), 1.0, experts])
    assert M.dead_experts(rows).tolist() == [1, 0, experts - 1]
    ents = []
    for row in logits.double().tolist():
        m = max(row)
        z = sum(math.exp(x - m) for x in row)
        p = [math.exp(x - m) / z for x in row]
        ents.append(-sum(q * math.log(q) for q in p))
    assert M.per_token_router_entropy(logits).tolist() == pytest.approx(ents, rel=1e-5)
    assert M.router_entropy(logits).item() == pytest.approx(sum(ents) / tokens, rel=1e-5)
    uniform = torch.zeros(4, experts)
    assert M.router_entropy(uniform).item() == pytest.approx(math.log(experts))


def test_router_entropy_is_stable_for_large_and_peaked_logits():
    """Logits far beyond exp's fp32 range, and a router almost sure of one expert (entropy ~3e-20):
    the reductions' form must neither overflow nor lose the small entropy to cancellation."""
    logits = torch.tensor([[1000.0, 999.0, 990.0, -1000.0], [50.0, 0.0, 0.0, 0.0], [3.0, -2.0, 0.5, 0.5]])
    want = []
    for row in logits.double().tolist():
        m = max(row)
        z = math.fsum(math.exp(x - m) for x in row)
        p = [math.exp(x - m) / z for x in row]
        want.append(-math.fsum(q * math.log(q) for q in p if q > 0))
    got = M.per_token_router_entropy(logits).tolist()
    assert got == pytest.approx(want, rel=1e-5, abs=1e-30)
    assert got[1] > 0
    # experts on an outer dim (telemetry's layout): the same numbers
    assert M.per_token_router_entropy(logits.t().contiguous(), dim=-2).tolist() == pytest.approx(
        want, rel=1e-5, abs=1e-30
    )
