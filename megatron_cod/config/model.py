"""Model architecture section: GPT decoder shape, attention, normalization, MoE, recompute."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from megatron_cod.config.errors import ConfigError
from megatron_cod.config.fields import NON_NEGATIVE, POSITIVE, option, validate_fields

SWIGLU_FFN_MULTIPLE = 64
NORM_PLACEMENTS = ("pre", "post", "peri", "mix")


@dataclass(frozen=True)
class ModelConfig:
    num_layers: int = option(16, help="number of transformer blocks", bound=POSITIVE)
    hidden_size: int = option(128, help="model width d", bound=POSITIVE)
    ffn_hidden_size: int | None = option(
        None,
        help="dense FFN inner width (None: 8/3*hidden rounded up to a multiple of 64 with SwiGLU, else 4*hidden)",
        bound=POSITIVE,
    )
    num_attention_heads: int = option(8, help="query heads", bound=POSITIVE)
    group_query_attention: bool = option(False, help="use grouped-query attention (needs --num-query-groups)")
    num_query_groups: int | None = option(
        None, help="key/value heads for GQA (None: one per query head)", bound=POSITIVE
    )
    seq_length: int = option(256, help="training sequence length in tokens", bound=POSITIVE)
    max_position_embeddings: int | None = option(
        None, help="position table size (None: seq-length)", bound=POSITIVE
    )
    vocab_size: int | None = option(
        None, help="vocabulary size (None: taken from the tokenizer)", bound=POSITIVE
    )
    normalization: str = option("RMSNorm", help="norm type", choices=("RMSNorm", "LayerNorm"))
    swiglu: bool = option(True, help="SwiGLU FFN (gated linear unit with SiLU)")
    position_embedding_type: str = option(
        "rope", help="position embedding", choices=("rope", "learned_absolute", "none")
    )
    rotary_base: int = option(10000, help="RoPE base theta", bound=POSITIVE)
    untie_embeddings_and_output_weights: bool = option(True, help="separate input embedding and LM head")
    layernorm_epsilon: float = option(1e-5, help="norm epsilon", bound=POSITIVE)
    init_method_std: float = option(0.02, help="std of the normal weight init", bound=POSITIVE)
    hidden_dropout: float = option(0.0, help="dropout on residual branches")
    attention_dropout: float = option(0.0, help="dropout on attention probabilities")
    layernorm_scaling: bool = option(
        False, help="LayerNorm Scaling: scale norm outputs by 1/sqrt(layer_number)"
    )
    norm_placement: str = option(
        "pre",
        help="where the norms sit: pre (Pre-LN), post (Post-LN, h+F(h) then norm), peri (Peri-LN, norm on "
        "each sublayer's input and output), mix (Mix-LN: Post-LN in the first floor(mix-ln-alpha x num-layers) "
        "layers, Pre-LN after)",
        choices=NORM_PLACEMENTS,
    )
    mix_ln_alpha: float = option(
        0.25, help="Mix-LN: fraction of the layers, from the bottom, that are Post-LN"
    )
    peri_ln_embedding_norm: bool = option(False, help="Peri-LN: also normalise the embedding output")
    num_experts: int | None = option(None, help="experts per MoE layer (None: dense model)", bound=POSITIVE)
    moe_router_topk: int = option(2, help="experts per token", bound=POSITIVE)
    moe_ffn_hidden_size: int | None = option(
        None, help="expert inner width (None: ffn-hidden-size)", bound=POSITIVE
    )
    moe_aux_loss_coeff: float = option(0.01, help="load-balancing loss coefficient", bound=NON_NEGATIVE)
    moe_z_loss_coeff: float | None = option(
        0.001, help="router z-loss coefficient (None: off)", bound=NON_NEGATIVE
    )
    moe_shared_expert_intermediate_size: int | None = option(
        None, help="shared expert inner width (None: no shared expert)", bound=POSITIVE
    )
    moe_token_dispatcher_type: str = option(
        "alltoall", help="MoE token dispatcher", choices=("alltoall", "allgather")
    )
    moe_router_pre_softmax: bool = option(
        True, help="softmax over all experts before top-k (no renormalisation)"
    )
    moe_layer_freq: int = option(1, help="every N-th layer is MoE (1: all layers)", bound=POSITIVE)
    recompute_granularity: str | None = option(
        None, help="activation recompute", choices=("full", "selective")
    )
    recompute_method: str | None = option(None, help="full recompute method", choices=("uniform", "block"))
    recompute_num_layers: int | None = option(None, help="layers per full-recompute unit", bound=POSITIVE)
    transformer_impl: str = option(
        "local", help="megatron layer spec", choices=("local", "transformer_engine")
    )
    bf16: bool = option(False, help="bf16 mixed precision")

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.hidden_size % self.num_attention_heads:
            heads = self.num_attention_heads
            raise ConfigError(
                f"hidden-size ({self.hidden_size}) must be divisible by num-attention-heads ({heads})"
            )
        self._check_query_groups()
        if self.seq_length > self.effective_max_position_embeddings:
            raise ConfigError(
                f"seq-length ({self.seq_length}) exceeds max-position-embeddings ({self.max_position_embeddings})"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        self._check_moe()
        self._check_recompute()
        self._check_norm_placement()

    def _check_query_groups(self) -> None:
        heads, groups = self.num_attention_heads, self.num_query_groups
        if not self.group_query_attention:
            if groups is not None and groups != heads:
                raise ConfigError(
                    f"num-query-groups ({groups}) differs from num-attention-heads ({heads}): "
                    "add --group-query-attention"
                )
            return
        if groups is None:
            raise ConfigError("--group-query-attention needs --num-query-groups")
        if heads % groups:
            raise ConfigError(f"num-query-groups ({groups}) must divide num-attention-heads ({heads})")

    def _check_moe(self) -> None:
        if not self.is_moe:
            if self.moe_shared_expert_intermediate_size is not None:
                raise ConfigError("moe-shared-expert-intermediate-size needs --num-experts")
            return
        assert self.num_experts is not None  # is_moe
        if self.moe_router_topk > self.num_experts:
            raise ConfigError(
                f"moe-router-topk ({self.moe_router_topk}) exceeds num-experts ({self.num_experts})"
            )

    def _check_recompute(self) -> None:
        granularity, method, layers = (
            self.recompute_granularity,
            self.recompute_method,
            self.recompute_num_layers,
        )
        if granularity is None:
            if method is not None or layers is not None:
                raise ConfigError(
                    "--recompute-method and --recompute-num-layers need --recompute-granularity full"
                )
        elif granularity == "full":
            if method is None:
                raise ConfigError("--recompute-granularity full needs --recompute-method (uniform or block)")
            if layers is None:
                raise ConfigError("--recompute-granularity full needs --recompute-num-layers")
        elif method is not None or layers is not None:
            raise ConfigError(
                "--recompute-method and --recompute-num-layers apply only to --recompute-granularity full"
            )

    def _check_norm_placement(self) -> None:
        placement = self.norm_placement
        if not 0.0 < self.mix_ln_alpha < 1.0:
            raise ConfigError(f"mix-ln-alpha must be in (0, 1), got {self.mix_ln_alpha}")
        if placement == "mix" and self.mix_ln_post_layers == 0:
            raise ConfigError(
                f"--norm-placement mix with mix-ln-alpha {self.mix_ln_alpha} and num-layers {self.num_layers} "
                "has no Post-LN layer (floor(alpha x num-layers) = 0): raise --mix-ln-alpha or use pre"
            )
        if self.peri_ln_embedding_norm and placement != "peri":
            raise ConfigError(f"--peri-ln-embedding-norm needs --norm-placement peri (got {placement})")
        # Sun et al. define LNS on the normalised input of a Pre-LN sublayer: Post-LN has no such norm,
        # and Peri-LN's output norm rescales the branch again, undoing the 1/sqrt(l) input scale.
        if self.layernorm_scaling and placement in ("post", "peri"):
            raise ConfigError(
                f"--layernorm-scaling with --norm-placement {placement} is not meaningful: LayerNorm Scaling "
                "scales the input norm of Pre-LN sublayers (use it with pre or mix)"
            )

    @property
    def mix_ln_post_layers(self) -> int:
        """Mix-LN's Post-LN layer count floor(alpha x L), exact for the decimal alpha as written (0.29 x 100 = 29)."""
        return int(Fraction(repr(self.mix_ln_alpha)) * self.num_layers)

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def effective_num_query_groups(self) -> int:
        return self.num_query_groups if self.num_query_groups is not None else self.num_attention_heads

    @property
    def effective_ffn_hidden_size(self) -> int:
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        if not self.swiglu:
            return 4 * self.hidden_size
        # 8/3*d keeps a SwiGLU FFN at the parameter count of a 4*d GELU FFN; 64 keeps GEMMs aligned.
        width = 8 * self.hidden_size // 3
        return -(-width // SWIGLU_FFN_MULTIPLE) * SWIGLU_FFN_MULTIPLE

    @property
    def effective_moe_ffn_hidden_size(self) -> int:
        return (
            self.moe_ffn_hidden_size
            if self.moe_ffn_hidden_size is not None
            else self.effective_ffn_hidden_size
        )

    @property
    def effective_max_position_embeddings(self) -> int:
        return self.max_position_embeddings if self.max_position_embeddings is not None else self.seq_length
