"""TokenTerms: per-token terms computed for many hooks at once equal each hook's own terms summed over
its tokens, whatever the flush boundaries and however the hooks' kinds and token counts mix."""

import pytest
import torch

from megatron_cod.telemetry import metrics as M
from megatron_cod.telemetry.accumulator import PendingSums, TokenTerms


class _Flat:
    """The one attribute PendingSums.flush_into uses."""

    def __init__(self, n: int) -> None:
        self.flat = torch.zeros(n, dtype=torch.float64)


def _feed(terms: TokenTerms, expected: torch.Tensor) -> int:
    """Layer, branch and router hooks of several shapes; returns the number of positions used."""
    g = torch.Generator().manual_seed(0)
    position = 0
    for tokens, d, experts in [(6, 8, 4), (6, 8, 4), (4, 8, 4), (6, 16, 3), (6, 8, 4)]:
        h_in = torch.randn(tokens, d, generator=g)
        h_out = h_in + 0.3 * torch.randn(tokens, d, generator=g)
        branch = torch.randn(tokens, d, generator=g)
        logits = 3 * torch.randn(tokens, experts, generator=g)
        layer_pos, branch_pos = list(range(position, position + 5)), list(range(position + 5, position + 7))
        router_pos = [position + 7]
        position += 8
        terms.add(M.layer_terms_from_reductions, d, M.layer_output_reductions(h_in, h_out), layer_pos)
        terms.add(M.branch_terms_from_reductions, d, M.branch_output_reductions(branch), branch_pos)
        terms.add(M.router_entropy_terms, experts, (logits.t(),), router_pos)
        expected[layer_pos] += M.layer_output_terms(h_in, h_out).sum(dim=1, dtype=torch.float64)
        expected[branch_pos] += M.branch_output_terms(branch).sum(dim=1, dtype=torch.float64)
        expected[router_pos] += M.per_token_router_entropy(logits).sum(dtype=torch.float64)
    return position


@pytest.mark.parametrize("flush_every", [1, 2, 3, 100])
def test_batched_terms_equal_each_hooks_own_sums(flush_every):
    pending = PendingSums()
    terms = TokenTerms(pending, flush_every)
    expected = torch.zeros(48, dtype=torch.float64)
    position = _feed(terms, expected)
    terms.flush()
    got = _Flat(48)
    pending.flush_into(got)
    assert torch.allclose(got.flat, expected, rtol=1e-6, atol=1e-9)
    assert got.flat[:position].abs().min() > 0  # every position was written


def test_held_values_are_bounded_in_bytes():
    """A cap below one hook's values flushes at every add: nothing is left to the explicit flush."""
    pending = PendingSums()
    terms = TokenTerms(pending, flush_every=100, max_bytes=1)
    expected = torch.zeros(48, dtype=torch.float64)
    _feed(terms, expected)
    got = _Flat(48)
    pending.flush_into(got)  # before any flush() of the terms
    assert torch.allclose(got.flat, expected, rtol=1e-6, atol=1e-9)


def test_known_input_norm_gives_the_same_reductions():
    g = torch.Generator().manual_seed(1)
    h_in, h_out = torch.randn(5, 2, 16, generator=g), torch.randn(5, 2, 16, generator=g)
    given = M.layer_output_reductions(h_in, h_out, torch.linalg.vector_norm(h_in, dim=-1))
    assert torch.equal(torch.stack(given), torch.stack(M.layer_output_reductions(h_in, h_out)))
