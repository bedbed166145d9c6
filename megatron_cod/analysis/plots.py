"""One PNG figure per metric (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from megatron_cod.analysis.causal import CausalResult  # noqa: E402
from megatron_cod.analysis.jacobian import JacobianResult  # noqa: E402
from megatron_cod.analysis.logit_lens import LogitLensResult  # noqa: E402
from megatron_cod.analysis.permutation import PermutationResult  # noqa: E402
from megatron_cod.analysis.residual import ResidualResult  # noqa: E402
from megatron_cod.analysis.similarity import SimilarityResult  # noqa: E402
from megatron_cod.analysis.usefulness import UsefulnessResult  # noqa: E402

_DPI = 150


def _save(fig: plt.Figure, path: Path) -> None:
    for ax in fig.axes:
        if ax.get_label() != "<colorbar>":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def plot_jacobian(result: JacobianResult, out: Path) -> list[str]:
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [
        ("jacobian_norm", "||J - I||_F / d"),
        ("off_diagonal_norm", "off-diagonal norm / sqrt(d^2 - d)"),
        ("diagonal_mean", "diagonal mean (+- diagonal std)"),
    ]
    for ax, (name, title) in zip(axes.flat, panels):
        for variant in dict.fromkeys(e.variant for e in result.layers):
            rows = result.for_variant(variant)
            layers = [r.layer for r in rows]
            values = [getattr(r.scores, name).value for r in rows]
            errors = [getattr(r.scores, name).stderr for r in rows]
            if name == "diagonal_mean":
                errors = [r.scores.diagonal_std.value for r in rows]
            ax.errorbar(layers, values, yerr=errors, marker="o", capsize=3, label=variant)
        if name == "diagonal_mean":
            ax.axhline(1.0, color="gray", ls="--", lw=1, label="identity")
            ax.axhline(0.5, color="red", ls=":", lw=1, label="threshold 0.5")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.legend()
    ax = axes.flat[3]
    spectral = [
        (r.layer, r.scores.spectral_norm, r.variant)
        for r in result.layers
        if r.scores.spectral_norm is not None
    ]
    if spectral:
        for variant in dict.fromkeys(v for _, _, v in spectral):
            pts = [(l, s) for l, s, v in spectral if v == variant]
            ax.plot(*zip(*pts), marker="o", label=variant)
        ax.legend()
        ax.set_title("spectral norm of J")
    else:
        ax.text(0.5, 0.5, "spectral norm: exact mode only", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_xlabel("layer")
    mode = (
        result.mode
        if result.num_probes is None
        else f"{result.mode}, {result.num_probes} probes (bars: 1 s.e.)"
    )
    fig.suptitle(f"Layer Jacobians ({mode}, {result.num_tokens} tokens)")
    _save(fig, out / "jacobian.png")
    return ["jacobian.png"]


def plot_usefulness(result: UsefulnessResult, out: Path) -> list[str]:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    layers = [r.layer for r in result.layers]
    colors = ["tab:green" if r.useful else "tab:gray" for r in result.layers]
    ax.bar(
        layers,
        [r.loss_ratio for r in result.layers],
        yerr=[2 * r.loss_ratio_stderr for r in result.layers],
        color=colors,
        capsize=3,
    )
    ax.axhline(result.threshold, color="red", ls="--", label=f"threshold {result.threshold}")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("layer replaced by its affine fit")
    ax.set_ylabel("loss ratio L_l / L_0")
    ax.set_yscale("log")
    ax.set_title(
        f"Usefulness score {result.score:.3f} (held-out fit: {result.held_out_fit}; "
        f"{result.eval_sequences} sequences, bars: 2 s.e.)"
    )
    ax.legend()
    _save(fig, out / "usefulness.png")
    return ["usefulness.png"]


def _heatmap(
    ax: plt.Axes, matrix: np.ndarray, title: str, xlabel: str, ylabel: str, cmap: str, first_row: int = 0
) -> None:
    rows, cols = matrix.shape
    extent = (-0.5, cols - 0.5, first_row + rows - 0.5, first_row - 0.5)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, aspect="auto", extent=extent)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    plt.colorbar(image, ax=ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def plot_causal(result: CausalResult, out: Path) -> list[str]:
    n = result.matrix.shape[0]
    shown = np.where(np.triu(np.ones((n, n)), k=1) > 0, result.matrix, np.nan)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    title = f"Causal effect C[s, l] (score {result.score:.3f})"
    _heatmap(ax, shown, title, "affected layer l", "skipped layer s", "viridis")
    _save(fig, out / "causal_matrix.png")
    skips = result.skips
    _kl_with_agreement(
        [s.layer for s in skips],
        [s.kl for s in skips],
        [s.top1_agreement for s in skips],
        kl_stderr=[s.kl_stderr for s in skips],
        bars=True,
        kl_label="KL(p_base || p_skip)",
        xlabel="skipped layer",
        ylabel="KL (nats)",
        title="Output change when one layer is skipped",
        legend_loc="upper right",
        path=out / "causal_output_change.png",
    )
    return ["causal_matrix.png", "causal_output_change.png"]


def _kl_with_agreement(
    x: list,
    kl: list[float],
    agreement: list[float],
    *,
    kl_stderr: list[float],
    bars: bool,
    kl_label: str,
    xlabel: str,
    ylabel: str,
    title: str,
    legend_loc: str,
    path: Path,
) -> None:
    """KL (error bars: 2 s.e.) on the left axis, top-1 agreement (0..1) on the right: the causal and
    logit-lens views."""
    fig, ax1 = plt.subplots(figsize=(9, 4.5))
    errors = [2 * e for e in kl_stderr]
    if bars:
        ax1.bar(x, kl, yerr=errors, capsize=3, color="tab:blue", label=kl_label)
    else:
        ax1.errorbar(x, kl, yerr=errors, capsize=3, marker="o", color="tab:blue", label=kl_label)
    ax1.set_xlabel(xlabel)
    ax1.set_ylabel(ylabel)
    ax2 = ax1.twinx()
    ax2.plot(x, agreement, color="tab:orange", marker="o" if bars else "s", label="top-1 agreement")
    ax2.set_ylabel("top-1 agreement")
    ax2.set_ylim(0, 1.05)
    fig.legend(loc=legend_loc)  # type: ignore[call-overload]  # matplotlib's stubs omit loc alone
    ax1.set_title(title)
    _save(fig, path)


def plot_permutation(result: PermutationResult, out: Path) -> list[str]:
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    score = result.global_metrics()["permutation_score_mean"]
    _heatmap(ax, result.matrix(), f"Permutation score P(l1, l2) (mean {score:.3f})", "l2", "l1", "RdYlGn_r")
    _save(fig, out / "permutation.png")
    return ["permutation.png"]


def plot_similarity(result: SimilarityResult, out: Path) -> list[str]:
    files = []
    fig, ax = plt.subplots(figsize=(9, 4.5))
    layers = np.arange(len(result.block_influence))
    bi_err = [2 * e for e in result.block_influence_stderr] or None
    last_err = [2 * e for e in result.block_influence_last_stderr] or None
    ax.errorbar(layers, result.block_influence, yerr=bi_err, capsize=3, marker="o", label="all tokens")
    ax.errorbar(layers, result.block_influence_last, yerr=last_err, capsize=3, marker="s", label="last token")
    ax.set_xlabel("layer")
    ax.set_ylabel("1 - cos(h_l, h_{l+1})")
    ax.set_title(f"Block Influence ({result.num_sequences or 'all'} sequences, bars: 2 s.e.)")
    ax.legend()
    _save(fig, out / "block_influence.png")
    files.append("block_influence.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    panels = ((axes[0], result.angular_last, "last token"), (axes[1], result.angular_all, "all tokens"))
    for ax, matrix, title in panels:
        _heatmap(
            ax, matrix.T, f"Angular distance d(l, n), {title}", "start layer l", "block size n", "viridis", 1
        )
    _save(fig, out / "angular_distance.png")
    files.append("angular_distance.png")

    if result.pruning_bi:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        curves = (
            (result.pruning_bi, "Block-Influence order", "o-"),
            (result.pruning_angular, "angular block", "s--"),
        )
        for steps, label, style in curves:
            # error bars: 2 s.e. of the loss, carried to perplexity (d ppl = ppl d loss)
            ax.errorbar(
                [s.num_removed for s in steps],
                [s.perplexity for s in steps],
                yerr=[2 * s.perplexity * s.loss_stderr for s in steps],
                fmt=style,
                capsize=3,
                label=label,
            )
        ax.set_yscale("log")
        ax.set_xlabel("layers removed")
        ax.set_ylabel("perplexity")
        ax.set_title("Pruning curves")
        ax.legend()
        _save(fig, out / "pruning_curves.png")
        files.append("pruning_curves.png")
    return files


def plot_logit_lens(result: LogitLensResult, out: Path) -> list[str]:
    states = result.states
    _kl_with_agreement(
        [s.state for s in states],
        [s.kl_to_final for s in states],
        [s.top1_agreement for s in states],
        kl_stderr=[s.kl_stderr for s in states],
        bars=False,
        kl_label="KL to final",
        xlabel="residual state (0 = embeddings, l + 1 = after layer l)",
        ylabel="KL(p_final || p_l) (nats)",
        title="Logit lens",
        legend_loc="center right",
        path=out / "logit_lens.png",
    )
    return ["logit_lens.png"]


def plot_residual(result: ResidualResult, out: Path) -> list[str]:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    states = np.arange(len(result.variance))
    axes[0].plot(states, result.variance, marker="o")
    axes[0].set_yscale("log")
    axes[0].set_title("per-token variance of h_l")
    axes[1].plot(states, result.norm, marker="o")
    axes[1].set_title("per-token norm of h_l")
    layers = np.arange(len(result.update_norm))
    axes[2].plot(layers, result.relative_update, marker="o")
    axes[2].set_title("relative update ||f_l|| / ||h_l||")
    axes[0].set_xlabel("residual state l")
    axes[1].set_xlabel("residual state l")
    axes[2].set_xlabel("layer")
    _save(fig, out / "residual_profile.png")
    return ["residual_profile.png"]


PLOTS: dict[str, Callable[..., list[str]]] = {
    "jacobian": plot_jacobian,
    "usefulness": plot_usefulness,
    "causal": plot_causal,
    "permutation": plot_permutation,
    "similarity": plot_similarity,
    "logit-lens": plot_logit_lens,
    "variance": plot_residual,
}
