"""Dict, YAML and flat-dict conversion of ExperimentConfig."""

import dataclasses
import re

import pytest
import yaml

from megatron_cod.config import ConfigError, ExperimentConfig
from megatron_cod.config.experiment import SECTIONS


def _custom_config():
    return ExperimentConfig.from_dict(
        {
            "model": {
                "num_layers": 4,
                "group_query_attention": True,
                "num_query_groups": 2,
                "num_experts": 4,
                "moe_z_loss_coeff": None,
                "layernorm_scaling": True,
            },
            "optim": {"lr": 1e-3, "min_lr": 1e-4, "weight_decay": 0.3},
            "data": {"data_path": ["0.7", "/data/a", "0.3", "/data/b"], "tokenizer": "/tok"},
            "logging": {"mlflow_run_name": "r1"},
            "telemetry": {"interval": 0},
        }
    )


def test_yaml_round_trip_is_exact(tmp_path):
    cfg = _custom_config()
    path = tmp_path / "sub" / "cfg.yaml"
    cfg.to_yaml(path)
    assert ExperimentConfig.from_yaml(path) == cfg
    assert yaml.safe_load(path.read_text()) == cfg.to_dict()
    assert sorted(p.name for p in path.parent.iterdir()) == ["cfg.yaml"]


def test_to_yaml_replaces_an_existing_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("stale")
    ExperimentConfig().to_yaml(path)
    assert ExperimentConfig.from_yaml(path) == ExperimentConfig()


def test_dict_round_trip_and_layout():
    cfg = _custom_config()
    data = cfg.to_dict()
    assert list(data) == list(SECTIONS)
    assert data["model"]["num_query_groups"] == 2 and data["data"]["data_path"][1] == "/data/a"
    assert ExperimentConfig.from_dict(data) == cfg


def test_flat_dict_has_one_scalar_per_field():
    cfg = _custom_config()
    flat = cfg.to_flat_dict()
    expected_keys = {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert set(flat) == expected_keys
    assert all(type(v) in (str, int, float, bool) for v in flat.values())
    assert flat["model.num_layers"] == 4 and flat["optim.lr"] == 1e-3 and flat["model.layernorm_scaling"] is True
    assert flat["model.moe_z_loss_coeff"] == "None" and flat["model.vocab_size"] == "None"
    assert flat["data.data_path"] == "0.7,/data/a,0.3,/data/b"


def test_yaml_numbers_in_exponent_form_are_read_as_numbers(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  lr: 3e-3\n  min_lr: 1e-4\ntrain:\n  train_iters: 1e3\n")
    assert yaml.safe_load(path.read_text())["optim"]["lr"] == "3e-3"  # PyYAML's YAML 1.1 reading
    cfg = ExperimentConfig.from_yaml(path)
    assert cfg.optim.lr == pytest.approx(3e-3) and cfg.optim.min_lr == pytest.approx(1e-4)
    assert cfg.train.train_iters == 1000 and isinstance(cfg.train.train_iters, int)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model:\n  num_layer: 4\n",
            "unknown key 'num_layer' in section 'model' of {path} (did you mean 'num_layers'?)",
        ),
        ("modle:\n  num_layers: 4\n", "unknown section 'modle' in {path} (did you mean 'model'?)"),
        ("model:\n  num_layers: many\n", "num-layers must be an integer, got 'many' (in section 'model' of {path})"),
        ("model: 4\n", "section 'model' in {path} must be a mapping, got int"),
        ("- 1\n- 2\n", "{path} must hold a mapping of sections, got list"),
        ("model: [1\n", "cannot parse {path} at line 2"),
    ],
)
def test_bad_yaml_names_the_key_and_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="^" + re.escape(message.format(path=path))):
        ExperimentConfig.from_yaml(path)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.yaml"):
        ExperimentConfig.from_yaml(tmp_path / "nope.yaml")


def test_with_overrides_returns_a_validated_copy():
    cfg = ExperimentConfig()
    sized = cfg.with_overrides({"model.vocab_size": 50304, "train.train_iters": 20})
    assert (sized.model.vocab_size, sized.train.train_iters) == (50304, 20)
    assert cfg.model.vocab_size is None
    with pytest.raises(ConfigError, match=re.escape("lr-warmup-iters (10) must be smaller than train-iters (5)")):
        cfg.with_overrides({"train.train_iters": 5})
    with pytest.raises(ConfigError, match=re.escape("unknown config key 'model.depth'")):
        cfg.with_overrides({"model.depth": 3})
