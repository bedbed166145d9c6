"""The depth-mitigation presets are their base preset plus exactly the placement settings."""

import pytest

from megatron_cod.config import parse_config

VARIANTS = {
    "lns": {"model.layernorm_scaling": True},
    "peri": {"model.norm_placement": "peri", "model.peri_ln_embedding_norm": True},
    "mix": {"model.norm_placement": "mix"},  # with the default mix-ln-alpha, 0.25 (checked below)
}
BASES = {"cpu_dense": "cpu_dense_deep", "paper_dense_l32": "paper_dense_l32_baseline"}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("prefix", list(BASES))
def test_placement_preset_is_base_plus_placement(prefix, variant):
    base = parse_config(["--preset", BASES[prefix]]).to_flat_dict()
    preset = parse_config(["--preset", f"{prefix}_{variant}"]).to_flat_dict()
    assert {k: v for k, v in preset.items() if base[k] != v} == VARIANTS[variant]
    assert parse_config(["--preset", f"{prefix}_{variant}"]).model.mix_ln_alpha == 0.25
