"""Layer-Jacobian cost: the paper's method vs our exact mode vs our randomized estimator.

On the same random-init Llama and the same tokens, for hidden sizes 256 and 1024:
- paper: one full model forward per layer, then one backward per output unit (the per-unit
  autograd loop of compute_jacobian.py, in fp32 here so the numbers are comparable);
- exact: the same per-unit VJPs, from layer inputs captured in one model forward;
- randomized: 16 Rademacher probes, one VJP each.
All three compute the paper's cross-token-summed Jacobian. Prints times, the exact mode's max
relative difference to the paper's method, and the estimator's relative error and reported
standard error on ||J - I||_F / d. One probe draw is one sample of a random error, so the
randomized mode runs with several probe seeds: the RESULT relerr is the root-mean-square relative
error over seeds and layers (the typical error); the largest and the share within 2% are printed
too. Speedup = paper time / mean randomized time.
Last line: RESULT jacobian_estimator_relerr_d1024=<value>.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from megatron_cod.analysis.evalset import EvalSet
from megatron_cod.analysis.hf_adapter import HFLayerStack
from megatron_cod.analysis.jacobian import JacobianConfig, jacobian_scores
from megatron_cod.analysis.probe_estimators import exact_identity_distance

# hidden -> (layers, ffn width, batch, seq); d=1024 uses fewer tokens so the per-unit loops stay minutes.
SETTINGS = {256: (4, 688, 4, 256), 1024: (2, 1024, 1, 128)}
NUM_PROBES = 16
PROBE_SEEDS = 8


def build(hidden: int, seed: int) -> tuple[HFLayerStack, torch.Tensor]:
    layers, ffn, batch, seq = SETTINGS[hidden]
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        vocab_size=1024,
    )
    stack = HFLayerStack(LlamaForCausalLM(config))
    return stack, torch.randint(0, 1024, (batch, seq))


def paper_method(stack: HFLayerStack, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer: a full forward keeping the graph, then d backward passes (one per output unit)."""
    d = stack.hidden_size
    jacobians = []
    for layer in range(stack.num_layers):
        ctx = stack.prepare(ids)
        captured = {}

        def keep(position: int, h_in: torch.Tensor, h_out: torch.Tensor, layer: int = layer) -> None:
            if position == layer:
                captured["x"], captured["y"] = h_in, h_out

        with torch.enable_grad():
            h0 = stack.embed(ids).requires_grad_(True)
            stack.head(stack.run(h0, ctx, hook=keep))
        x, y = captured["x"], captured["y"]
        jac = torch.zeros(d, d, dtype=torch.float64)
        for i in range(d):
            onehot = torch.zeros_like(y)
            onehot[..., i] = 1.0
            jac[i] = torch.autograd.grad(y, x, onehot, retain_graph=True)[0].mean(dim=(0, 1)).double()
        jacobians.append(jac)
    return jacobians


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(hidden: int, seed: int) -> dict[str, float]:
    stack, ids = build(hidden, seed)
    paper, t_paper = timed(lambda: paper_method(stack, ids))
    exact_config = JacobianConfig(mode="exact", variants=("cross",))
    exact, t_exact = timed(lambda: jacobian_scores(EvalSet(stack, ids, ids.shape[0]), exact_config))
    references = [exact_identity_distance(jac) for jac in paper]

    max_rel_diff = 0.0
    for ref, ours in zip(references, (entry.scores for entry in exact.layers)):
        for name in ("jacobian_norm", "off_diagonal_norm", "diagonal_mean", "diagonal_std", "frobenius_norm"):
            a, b = getattr(ours, name).value, getattr(ref, name).value
            max_rel_diff = max(max_rel_diff, abs(a - b) / abs(b))
        max_rel_diff = max(max_rel_diff, abs(ours.spectral_norm - ref.spectral_norm) / ref.spectral_norm)

    errors, std_errors, times = [], [], []
    for probe_seed in range(PROBE_SEEDS):
        config = JacobianConfig(mode="randomized", variants=("cross",), num_probes=NUM_PROBES, seed=probe_seed)
        rand, t_rand = timed(lambda: jacobian_scores(EvalSet(stack, ids, ids.shape[0]), config))
        times.append(t_rand)
        for ref, entry in zip(references, rand.layers):
            true = ref.jacobian_norm.value
            errors.append((entry.scores.jacobian_norm.value - true) / true)
            std_errors.append(entry.scores.jacobian_norm.stderr / true)
    t_rand = sum(times) / len(times)
    rms = math.sqrt(sum(e * e for e in errors) / len(errors))
    within = sum(abs(e) <= 0.02 for e in errors) / len(errors)

    layers, _, batch, seq = SETTINGS[hidden]
    print(f"d={hidden}: {layers} layers, {batch}x{seq} tokens, {NUM_PROBES} probes, {PROBE_SEEDS} probe seeds")
    print(f"  paper method (full forward per layer, per-unit loop): {t_paper:8.2f} s")
    print(f"  exact mode (one forward, per-unit loop):              {t_exact:8.2f} s  ({t_paper / t_exact:.1f}x)")
    print(f"  randomized mode (mean over seeds):                    {t_rand:8.2f} s  ({t_paper / t_rand:.1f}x)")
    print(f"  exact vs paper, max relative difference over all scores: {max_rel_diff:.2e}")
    print(f"  ||J-I||_F/d per layer (exact): {', '.join(f'{r.jacobian_norm.value:.5f}' for r in references)}")
    print(
        f"  estimator relative error over {len(errors)} (seed, layer) estimates: rms {rms:.4f}, "
        f"max {max(abs(e) for e in errors):.4f}, within 2%: {within:.0%}; "
        f"mean reported relative s.e. {sum(std_errors) / len(std_errors):.4f}"
    )
    print(f"  seed 0 errors by layer: {', '.join(f'{e:+.4f}' for e in errors[:layers])}")
    return {"speedup": t_paper / t_rand, "relerr": rms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {hidden: run(hidden, args.seed) for hidden in SETTINGS}
    for hidden, res in results.items():
        print(f"RESULT jacobian_estimator_speedup_d{hidden}={res['speedup']:.2f}")
        print(f"RESULT jacobian_estimator_relerr_d{hidden}={res['relerr']:.4f}")
    assert all(math.isfinite(r["relerr"]) for r in results.values())


if __name__ == "__main__":
    main()
