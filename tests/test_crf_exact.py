"""log Z (every method), its gradients, Viterbi and the energy are exact for all finite scores.

Property tests over score spans from 1 to 1e4 nats, in float32 and float64, for four families
of inputs: random scores; unary scores of any size next to small transitions; adversarial ones
(scores on a grid of multiples of the span); hard constraints (forbidden transitions at -span
that strong unary scores fight). References: brute-force enumeration of all L^n labellings,
scored by indexing and summed with torch.logsumexp in float64, and the float64 logsumexp
recursion for long sentences. "Exact" means within the rounding of adding up the scores in the
input's dtype (`rounding`); the issue-11 bugs were off by 6 and 61 nats. `TestRangeCheck` pins
the probability-space methods' range check at its boundary, with a worst case that is off by
22 nats (matmul) without it."""
from __future__ import annotations

import itertools

import pytest
import torch

import core.crf as crf_module
from core.crf import crf_log_partition, crf_score, crf_viterbi, exact_span

METHODS = ("matmul", "logsumexp", "scan")
DTYPES = (torch.float32, torch.float64)
SPANS = (1.0, 3.0, 10.0, 20.0, 30.0, 60.0, 100.0, 300.0, 1e3, 1e4)
KINDS = ("random", "adversarial", "hard", "wide_unary")
MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)


def make_case(kind: str, span: float, B: int, T: int, L: int, seed: int, dtype=torch.float64):
    """unary (B, T, L), transitions (L, L), start, end (L,): the transition and end scores span
    about `span` nats and the unary scores are of that size, except for "wide_unary", where only
    the unary scores are."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    if kind == "random":
        trans = (torch.rand(L, L, generator=g, dtype=f64) - 0.5) * span  # (L, L)
        unary = torch.randn(B, T, L, generator=g, dtype=f64) * span  # (B, T, L)
        start = torch.randn(L, generator=g, dtype=f64) * span  # (L,)
        end = (torch.rand(L, generator=g, dtype=f64) - 0.5) * span  # (L,)
    elif kind == "wide_unary":  # transitions of a trained CRF, unary scores of any size
        trans = torch.randn(L, L, generator=g, dtype=f64)  # (L, L)
        unary = torch.randn(B, T, L, generator=g, dtype=f64) * span  # (B, T, L)
        start = torch.randn(L, generator=g, dtype=f64)  # (L,)
        end = torch.randn(L, generator=g, dtype=f64)  # (L,)
    elif kind == "adversarial":
        trans = -span * torch.randint(0, 2, (L, L), generator=g).to(f64)  # (L, L): 0 or -span
        grid = torch.randint(-2, 3, (B, T, L), generator=g).to(f64)  # (B, T, L): -2..2
        unary = span * grid * torch.randint(0, 2, (B, T, L), generator=g).to(f64)  # (B, T, L)
        start = torch.randn(L, generator=g, dtype=f64)  # (L,)
        end = -span * torch.randint(0, 2, (L,), generator=g).to(f64)  # (L,)
    elif kind == "hard":
        trans = torch.randn(L, L, generator=g, dtype=f64)  # (L, L)
        trans[0, 1:] = -span  # label 0 may only be followed by itself
        trans[1:, 0] = -span  # ... and only be entered from the start
        unary = torch.randn(B, T, L, generator=g, dtype=f64) * 3  # (B, T, L)
        unary[:, :, 0] += span / 50  # label 0 is the best label everywhere ...
        unary[:, 1::2, 1:] += span / 25  # ... yet every other position wants a label it cannot reach
        start = torch.randn(L, generator=g, dtype=f64)  # (L,)
        end = torch.randn(L, generator=g, dtype=f64)  # (L,)
    else:
        raise ValueError(kind)
    return tuple(x.to(dtype) for x in (unary, trans, start, end))


def brute_force(unary, trans, start, end, mask):
    """Per sentence, in float64: (log Z, best score, scores of all labellings (P,), labellings (P, n))."""
    unary, trans, start, end = (x.double() for x in (unary, trans, start, end))
    B, T, L = unary.shape
    out = []
    for b in range(B):
        positions = mask[b].nonzero().flatten()  # (n,)
        n = len(positions)
        if n == 0:
            out.append((0.0, 0.0, None, None))
            continue
        paths = torch.tensor(list(itertools.product(range(L), repeat=n)))  # (P, n)
        scores = unary[b][positions.unsqueeze(0), paths].sum(dim=1)  # (P,)
        scores = scores + start[paths[:, 0]] + end[paths[:, -1]]  # (P,)
        scores = scores + trans[paths[:, :-1], paths[:, 1:]].sum(dim=1)  # (P,)
        out.append((float(torch.logsumexp(scores, dim=0)), float(scores.max()), scores, paths))
    return out


def rounding(dtype, unary, trans, start, end, mask) -> torch.Tensor:
    """(B,) the rounding error allowed for a sum of the n scores of a path and its log-sum-exp:
    16 eps (n (max|U| + max|W| + log L) + max|s| + max|e| + 1)."""
    eps = torch.finfo(dtype).eps
    n = mask.sum(dim=1).double()  # (B,)
    L = trans.shape[0]
    size = n * (unary.abs().max().double() + trans.abs().max().double() + torch.log(torch.tensor(float(L)))) \
        + start.abs().max().double() + end.abs().max().double() + 1
    return 16 * eps * size  # (B,)


class TestIssue11:
    """The two reports of issue 11, verbatim."""

    def test_matmul_with_a_60_nat_transition_span(self):
        # 2 labels, 2 steps, one emission of 50, transitions out of that label -60: log Z = log 2.
        unary = torch.tensor([[[0.0, 50.0], [0.0, 0.0]]])  # (1, 2, 2)
        trans = torch.tensor([[0.0, 0.0], [-60.0, -60.0]])  # (2, 2)
        zeros = torch.zeros(2)
        mask = torch.ones(1, 2, dtype=torch.bool)
        expected = brute_force(unary, trans, zeros, zeros, mask)[0][0]
        assert expected == pytest.approx(0.69319, abs=1e-5)
        for method in METHODS:  # matmul gave 7.03
            assert float(crf_log_partition(unary, trans, zeros, zeros, mask, method=method)) == pytest.approx(expected, abs=1e-5)

    def test_scan_with_minus_150_transitions_in_float32(self):
        unary = torch.zeros(1, 3, 2)  # (1, 3, 2)
        trans = torch.tensor([[-150.0, 0.0], [-150.0, -150.0]])  # (2, 2): every path pays -150 once
        zeros = torch.zeros(2)
        mask = torch.ones(1, 3, dtype=torch.bool)
        expected = brute_force(unary, trans, zeros, zeros, mask)[0][0]
        assert expected == pytest.approx(-148.6137, abs=1e-4)
        for method in METHODS:  # scan gave -87.34 (log of float32's tiny)
            assert float(crf_log_partition(unary, trans, zeros, zeros, mask, method=method)) == pytest.approx(expected, abs=1e-4)


class TestLogPartitionExact:
    @pytest.mark.parametrize("span", SPANS)
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
    @pytest.mark.parametrize("method", METHODS)
    def test_matches_brute_force(self, method, dtype, kind, span):
        for seed in range(3):
            unary, trans, start, end = make_case(kind, span, 4, 5, 3, seed=seed, dtype=dtype)
            got = crf_log_partition(unary, trans, start, end, MASK, method=method).double()
            expected = torch.tensor([r[0] for r in brute_force(unary, trans, start, end, MASK)], dtype=torch.float64)
            tol = rounding(dtype, unary, trans, start, end, MASK)
            assert ((got - expected).abs() <= tol).all(), (seed, got.tolist(), expected.tolist(), tol.tolist())

    @pytest.mark.parametrize("span", (1.0, 10.0, 20.0, 30.0, 100.0, 1e4))
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("method", ("matmul", "scan"))
    def test_long_float32_sentences_match_float64_logsumexp(self, method, kind, span):
        # Bench-sized: T = 30, L = 17, ragged lengths; the reference is the float64 recursion.
        unary, trans, start, end = make_case(kind, span, 5, 30, 17, seed=int(span), dtype=torch.float32)
        mask = torch.arange(30).unsqueeze(0) < torch.tensor([30, 1, 17, 29, 0]).unsqueeze(1)  # (B, T)
        expected = crf_log_partition(unary.double(), trans.double(), start.double(), end.double(), mask, "logsumexp")
        got = crf_log_partition(unary, trans, start, end, mask, method=method).double()
        tol = rounding(torch.float32, unary, trans, start, end, mask)
        assert ((got - expected).abs() <= tol).all(), (got.tolist(), expected.tolist(), tol.tolist())

    @pytest.mark.parametrize("span", (1.0, 20.0, 60.0, 1e4))
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
    @pytest.mark.parametrize("method", ("matmul", "scan"))
    def test_gradients_match_logsumexp(self, method, dtype, kind, span):
        # d log Z / d(U, W, s, e) are marginals and expected counts: the float64 logsumexp ones.
        def grads(dt, name):
            params = [p.to(dt).requires_grad_(True) for p in make_case(kind, span, 4, 5, 3, seed=7)]
            crf_log_partition(*params, MASK, method=name).sum().backward()
            return [p.grad.double() for p in params]

        expected = grads(torch.float64, "logsumexp")
        unary, trans, start, end = make_case(kind, span, 4, 5, 3, seed=7, dtype=dtype)
        tol = float(rounding(dtype, unary, trans, start, end, MASK).max()) * 5  # W's counts sum up to T - 1 = 4 terms
        for got, want in zip(grads(dtype, method), expected):
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want, rtol=0, atol=max(tol, 1e-12))


class TestRangeCheck:
    """The probability-space recursions run only within `exact_span`; at the boundary they are
    still exact, and just past it the logsumexp recursion takes over."""

    @pytest.fixture
    def fallbacks(self, monkeypatch):
        calls = []
        original = crf_module._forward_logsumexp

        def counting(*args):
            calls.append(args[0].dtype)
            return original(*args)

        monkeypatch.setattr(crf_module, "_forward_logsumexp", counting)
        return calls

    @staticmethod
    def worst_case(span, dtype, B=64, T=5, L=3, seed=0):
        """W and e span `span` (in every column): leaving label 0 costs `span`, leaving label 1 is
        free, and the unary scores of labels 1, 2 sit 0, span/2, ..., 2 span below label 0's. The
        mass collects on label 0 and shrinks by exp(-span) per step, while label 1's share, which
        pays back exp(span) later, sinks below float32's tiny from ~40 nats on (without the check:
        22 nats off at 45, NaN from ~60 on)."""
        g = torch.Generator().manual_seed(seed)
        trans = -span * torch.rand(L, L, generator=g, dtype=torch.float64)  # (L, L): in [-span, 0]
        trans[0, :], trans[1, :] = -span, 0.0
        end = -span * torch.rand(L, generator=g, dtype=torch.float64)  # (L,)
        end[0], end[1] = -span, 0.0
        unary = torch.zeros(B, T, L, dtype=torch.float64)  # (B, T, L)
        unary[:, :, 1:] = -span * torch.randint(0, 5, (B, T, L - 1), generator=g).double() / 2
        start = torch.zeros(L, dtype=torch.float64)  # (L,)
        return tuple(x.to(dtype) for x in (unary, trans, start, end))

    @pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
    @pytest.mark.parametrize("method, steps", [("matmul", 2), ("scan", 0)])
    def test_exact_at_the_boundary_and_fallback_past_it(self, method, steps, dtype, fallbacks):
        B, T, L = 64, 5, 3
        limit = exact_span(dtype, T, L, steps_per_rescale=steps)
        mask = torch.ones(B, T, dtype=torch.bool)
        for factor, falls_back in ((0.999, False), (1.001, True)):
            fallbacks.clear()
            unary, trans, start, end = self.worst_case(limit * factor, dtype)
            got = crf_log_partition(unary, trans, start, end, mask, method=method).double()
            assert fallbacks == ([dtype] if falls_back else []), factor
            expected = crf_log_partition(unary.double(), trans.double(), start.double(), end.double(), mask, "logsumexp")
            tol = rounding(dtype, unary, trans, start, end, mask)
            assert ((got - expected).abs() <= tol).all(), factor

    def test_limits(self):
        # The figures the docstrings quote; float64's range is ~11x float32's.
        assert exact_span(torch.float32, 30, 17, 2) == pytest.approx(20.3, abs=0.05)
        assert exact_span(torch.float32, 30, 400, 2) == pytest.approx(18.2, abs=0.05)
        assert exact_span(torch.float32, 30, 17, 0) == pytest.approx(60.9, abs=0.05)
        assert 215 < exact_span(torch.float64, 30, 17, 2) < 225

    @pytest.mark.parametrize("method", ("matmul", "scan"))
    def test_the_range_check_is_what_makes_it_exact(self, method, monkeypatch):
        # Without the check the worst case is off by nats (or NaN): the tests above can fail.
        monkeypatch.setattr(crf_module, "exact_span", lambda *args, **kwargs: float("inf"))
        span = {"matmul": 45.0, "scan": 100.0}[method]
        unary, trans, start, end = self.worst_case(span, torch.float32)
        mask = torch.ones(64, 5, dtype=torch.bool)
        got = crf_log_partition(unary, trans, start, end, mask, method=method).double()
        expected = crf_log_partition(unary.double(), trans.double(), start.double(), end.double(), mask, "logsumexp")
        assert (got - expected).abs().max() > 5.0

    @pytest.mark.parametrize("method", METHODS)
    def test_non_finite_scores(self, method):
        # -inf transitions (forbidden outright) are exact through the fallback; NaN stays NaN.
        unary, trans, start, end = make_case("hard", 10.0, 4, 5, 3, seed=2)
        trans[0, 1:] = float("-inf")
        trans[1:, 0] = float("-inf")
        got = crf_log_partition(unary, trans, start, end, MASK, method=method)
        expected = torch.tensor([r[0] for r in brute_force(unary, trans, start, end, MASK)], dtype=torch.float64)
        torch.testing.assert_close(got, expected)
        trans[1, 1] = float("nan")
        assert torch.isnan(crf_log_partition(unary, trans, start, end, MASK, method=method)[:3]).all()

    @pytest.mark.parametrize("method", METHODS)
    def test_gradients_finite_with_a_forbidden_column(self, method):
        # Label 0 can never be entered (a whole column at -inf): its marginals after the first
        # position and the forbidden transitions' expected counts are 0, not NaN.
        unary, trans, start, end = make_case("random", 3.0, 4, 5, 3, seed=4)
        trans[:, 0] = float("-inf")
        params = [p.requires_grad_(True) for p in (unary, trans, start, end)]
        crf_log_partition(*params, MASK, method=method).sum().backward()
        for p in params:
            assert torch.isfinite(p.grad).all()
        torch.testing.assert_close(unary.grad.sum(-1), MASK.double())  # marginals sum to one
        assert (trans.grad[:, 0] == 0).all() and (unary.grad[MASK.cumsum(1) > 1][:, 0] == 0).all()


class TestViterbiAndEnergyExact:
    @pytest.mark.parametrize("span", SPANS)
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
    def test_viterbi_matches_brute_force(self, dtype, kind, span):
        for seed in range(3):
            unary, trans, start, end = make_case(kind, span, 4, 5, 3, seed=seed, dtype=dtype)
            result = crf_viterbi(unary, trans, start, end, MASK)
            tol = rounding(dtype, unary, trans, start, end, MASK)
            # The path's exact (float64) score is the best one, up to the rounding of the sums.
            exact = crf_score(unary.double(), trans.double(), start.double(), end.double(), result.labels, MASK)
            best = torch.tensor([r[1] for r in brute_force(unary, trans, start, end, MASK)], dtype=torch.float64)
            assert (best - exact <= 2 * tol).all() and (exact <= best + 1e-9 * best.abs().clamp_min(1)).all()
            assert ((result.scores.double() - best).abs() <= tol).all()
            assert (result.labels[~MASK] == 0).all()

    @pytest.mark.parametrize("span", (1.0, 100.0, 1e4))
    @pytest.mark.parametrize("kind", KINDS)
    def test_float32_energy_matches_float64(self, kind, span):
        unary, trans, start, end = make_case(kind, span, 4, 5, 3, seed=3, dtype=torch.float32)
        labels = torch.randint(0, 3, (4, 5), generator=torch.Generator().manual_seed(0))
        relaxed = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1)).softmax(-1)  # (B, T, L)
        tol = rounding(torch.float32, unary, trans, start, end, MASK)
        for y, y64 in ((labels, labels), (relaxed, relaxed.double())):
            got = crf_score(unary, trans, start, end, y, MASK).double()
            want = crf_score(unary.double(), trans.double(), start.double(), end.double(), y64, MASK)
            assert ((got - want).abs() <= tol).all()
        # The discrete score is the formula, path by path.
        paths = {tuple(p.tolist()): float(s) for p, s in zip(brute_force(unary, trans, start, end, MASK)[0][3],
                                                            brute_force(unary, trans, start, end, MASK)[0][2])}
        assert float(crf_score(unary, trans, start, end, labels, MASK)[0]) == pytest.approx(
            paths[tuple(labels[0].tolist())], abs=float(tol[0]))
