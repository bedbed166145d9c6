"""cod-export refuses, before loading weights or writing anything, every model no stock class expresses
exactly, with one line naming the feature; bad flags get one line naming the flag."""

import dataclasses
import json

import pytest
import yaml

from megatron_cod.config import ExperimentConfig, ModelConfig
from megatron_cod.export.cli import export_main
from megatron_cod.training.checkpoint import META_FILE, TRACKER_FILE

REFUSED = {
    "learned_absolute": ({"position_embedding_type": "learned_absolute"}, "learned absolute positions"),
    "nope": ({"position_embedding_type": "none"}, "position embedding 'none'"),
    "layernorm": ({"normalization": "LayerNorm"}, "LayerNorm normalization"),
    "gelu": ({"swiglu": False}, "non-gated GELU MLP"),
}
if any(f.name == "norm_placement" for f in dataclasses.fields(ModelConfig)):
    REFUSED["post_ln"] = ({"norm_placement": "post"}, "norm placement 'post'")


def _weightless_checkpoint(root, model_overrides, tokenizer):
    """A checkpoint directory with config, metadata and tokenizer but no weights: a refusal must come
    from the config alone (loading would fail here)."""
    it = root / "iter_0000003"
    it.mkdir(parents=True)
    cfg = ExperimentConfig.from_dict(
        {"model": {"num_layers": 2, "hidden_size": 48, "num_attention_heads": 6, **model_overrides}}
    )
    (it / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (it / META_FILE).write_text(json.dumps({"iteration": 3}))
    tokenizer.save(it / "tokenizer")
    (root / TRACKER_FILE).write_text("3\n")
    return root


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_inexpressible_models_are_refused_before_anything_is_written(case, tokenizer, tmp_path, capsys):
    overrides, feature = REFUSED[case]
    ckpt = _weightless_checkpoint(tmp_path / "ckpt", overrides, tokenizer)
    out = tmp_path / "out" / "hf"
    assert export_main(["--checkpoint", str(ckpt), "--output", str(out), "--no-mlflow"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cod-export: error: ") and err.count("\n") == 1 and feature in err
    assert not (tmp_path / "out").exists()


def test_bad_flags_name_the_flag(tokenizer, tmp_path, capsys):
    ckpt = _weightless_checkpoint(tmp_path / "ckpt", {}, tokenizer)
    assert (
        export_main(
            ["--checkpoint", str(ckpt), "--iteration", "7", "--output", str(tmp_path / "o"), "--no-mlflow"]
        )
        == 1
    )
    assert "--iteration 7" in capsys.readouterr().err
    assert export_main(["--checkpoint", str(tmp_path), "--output", str(tmp_path / "o"), "--no-mlflow"]) == 1
    assert "--checkpoint" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert export_main(["--checkpoint", str(ckpt), "--output", str(tmp_path / "file"), "--no-mlflow"]) == 1
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"
    assert not (tmp_path / "o").exists()
