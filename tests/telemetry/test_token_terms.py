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


@pytest.mark.parametrize("flush_every", [1, 2, 3, 100])
def test_batched_terms_equal_each_hooks_own_sums(flush_every):
    g = torch.Generator().manual_seed(0)
    pending = PendingSums()
    terms = TokenTerms(pending, flush_every)
    expected = torch.zeros(40, dtype=torch.float64)
    position = 0
    for tokens, d in [(6, 8), (6, 8), (4, 8), (6, 16), (6, 8)]:
        h_in = torch.randn(tokens, d, generator=g)
        h_out = h_in + 0.3 * torch.randn(tokens, d, generator=g)
        branch = torch.randn(tokens, d, generator=g)
        layer_pos, branch_pos = list(range(position, position + 5)), list(range(position + 5, position + 7))
        position += 7
        terms.add(M.layer_terms_from_reductions, d, M.layer_output_reductions(h_in, h_out), layer_pos)
        terms.add(M.branch_terms_from_reductions, d, M.branch_output_reductions(branch), branch_pos)
        expected[layer_pos] += M.layer_output_terms(h_in, h_out).sum(dim=1, dtype=torch.float64)
        expected[branch_pos] += M.branch_output_terms(branch).sum(dim=1, dtype=torch.float64)
    terms.flush()
    got = _Flat(40)
    pending.flush_into(got)
    assert torch.allclose(got.flat, expected, rtol=1e-6, atol=1e-9)
    assert got.flat[:position].abs().min() > 0  # every position was written


def test_known_input_norm_gives_the_same_reductions():
    g = torch.Generator().manual_seed(1)
    h_in, h_out = torch.randn(5, 2, 16, generator=g), torch.randn(5, 2, 16, generator=g)
    given = M.layer_output_reductions(h_in, h_out, torch.linalg.vector_norm(h_in, dim=-1))
    assert torch.equal(given, M.layer_output_reductions(h_in, h_out))
