"""Every row of docs/bad_inputs.md: a bad input to a command-line tool ends in one line on stderr naming
the flag, file or key, exit 2 (usage) or 1 (run-time failure), and no traceback.

Rows run in-process (main(argv) with capsys); the few that need a real process (cod-train past the
flags, torchrun) run as subprocesses.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from megatron_cod.analysis.cli import main as analyze
from megatron_cod.compare.cli import main as compare
from megatron_cod.data.cli import main as preprocess
from megatron_cod.evaluation.cli import main as evaluate
from megatron_cod.export.cli import export_main, import_main
from megatron_cod.sweep.cli import main as sweep
from megatron_cod.training.cli import main as train

MAINS: dict[str, Callable[[list[str]], int]] = {
    "cod-train": train,
    "cod-preprocess": preprocess,
    "cod-analyze": analyze,
    "cod-compare": compare,
    "cod-sweep": sweep,
    "cod-export": export_main,
    "cod-import": import_main,
    "cod-eval": evaluate,
}
PREFIX = {"cod-train": "", "cod-compare": "", "cod-sweep": ""}  # these always printed a bare "error: "


class Payload:
    def __reduce__(self):
        return (os.mkdir, ("/tmp/cod-bad-inputs-pwned",))


@dataclass(frozen=True)
class Row:
    cli: str
    what: str
    argv: Callable[[Path, Path], list[str]]  # (tmp dir, checkpoint fixture) -> argv
    code: int
    expect: str  # a piece of the message; {tmp} and {ckpt} are filled in


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


def _yaml(tmp: Path, text: str) -> list[str]:
    return ["--config", str(_write(tmp / "c.yaml", text))]


def _corrupt_copy(ckpt: Path, tmp: Path, how: str) -> Path:
    import shutil

    root = Path(shutil.copytree(ckpt, tmp / "ckpt"))
    it = root / "iter_0000001"
    if how == "tracker":
        (root / "latest_checkpointed_iteration.txt").write_text("\x00garbage")
        shutil.rmtree(it)
    elif how == "meta":
        (it / "cod_checkpoint.json").write_text('{"iteration": 1, "cons')
        (root / "latest_checkpointed_iteration.txt").unlink()
        return it
    elif how == "shards":
        for shard in it.glob("*.distcp"):
            shard.write_bytes(shard.read_bytes()[:64])
    elif how == "index":
        (it / ".metadata").write_bytes(pickle.dumps(Payload()))
    elif how == "tokenizer":
        (it / "tokenizer" / "tokenizer.json").write_text("{not json")
    elif how == "pickled-tokenizer":
        (it / "tokenizer" / "tokenizer.json").write_bytes(pickle.dumps(Payload()))
    return root


def _hf_dir(tmp: Path, config: str | None) -> str:
    d = tmp / "hf"
    d.mkdir()
    if config is not None:
        _write(d / "config.json", config)
    return str(d)


ROWS = [
    # cod-train: flags and YAML (usage, exit 2)
    Row(
        "cod-train",
        "non-integer flag value",
        lambda t, c: ["--num-layers", "x"],
        2,
        "argument --num-layers: num-layers must be an integer, got 'x'",
    ),
    Row(
        "cod-train",
        "unknown flag",
        lambda t, c: ["--num-layerz", "4"],
        2,
        "unrecognized arguments: --num-layerz",
    ),
    Row("cod-train", "out-of-range flag", lambda t, c: ["--lr", "-1"], 2, "lr"),
    Row(
        "cod-train",
        "incompatible flags",
        lambda t, c: ["--num-experts", "6", "--expert-model-parallel-size", "4"],
        2,
        "num-experts (6) is not divisible by expert-model-parallel-size (4)",
    ),
    Row(
        "cod-train",
        "min-lr above lr",
        lambda t, c: ["--lr", "1e-4", "--min-lr", "1e-3"],
        2,
        "min-lr (0.001) must not exceed lr (0.0001)",
    ),
    Row("cod-train", "unknown preset", lambda t, c: ["--preset", "nope"], 2, "unknown preset 'nope'"),
    Row(
        "cod-train",
        "missing YAML file",
        lambda t, c: ["--config", str(t / "none.yaml")],
        2,
        "cannot read config file {tmp}/none.yaml",
    ),
    Row(
        "cod-train",
        "unreadable YAML (a directory)",
        lambda t, c: ["--config", str(t)],
        2,
        "cannot read config file {tmp}",
    ),
    Row(
        "cod-train",
        "YAML syntax error",
        lambda t, c: _yaml(t, "model: [1, 2\n"),
        2,
        "cannot parse {tmp}/c.yaml",
    ),
    Row(
        "cod-train",
        "YAML that is not a mapping",
        lambda t, c: _yaml(t, "- 1\n- 2\n"),
        2,
        "{tmp}/c.yaml must hold a mapping of sections",
    ),
    Row(
        "cod-train",
        "wrong-type YAML value",
        lambda t, c: _yaml(t, "model:\n  num_layers: deep\n"),
        2,
        "num-layers must be an integer, got 'deep' (in section 'model' of {tmp}/c.yaml)",
    ),
    Row("cod-train", "unknown YAML key", lambda t, c: _yaml(t, "model:\n  num_layer: 4\n"), 2, "num_layer"),
    Row("cod-train", "YAML section of the wrong type", lambda t, c: _yaml(t, "model: 3\n"), 2, "model"),
    # cod-preprocess
    Row(
        "cod-preprocess",
        "both input sources",
        lambda t, c: ["--input", "a.txt", "--builtin", "shakespeare"],
        2,
        "give --input or --builtin, not both",
    ),
    Row("cod-preprocess", "no input", lambda t, c: ["--output-prefix", str(t / "o")], 2, "no input given"),
    Row(
        "cod-preprocess",
        "bad choice",
        lambda t, c: ["--builtin", "wiki"],
        2,
        "argument --builtin: invalid choice",
    ),
    Row(
        "cod-preprocess",
        "corrupt tokenizer file",
        lambda t, c: [
            "--input",
            str(_write(t / "a.txt", "hello")),
            "--output-prefix",
            str(t / "o"),
            "--tokenizer",
            str(_write(t / "tok" / "tokenizer.json", "{not json")),
        ],
        1,
        "{tmp}/tok/tokenizer.json: not a tokenizer",
    ),
    Row(
        "cod-preprocess",
        "pickled Punkt parameters",
        lambda t, c: [
            "--input",
            str(_write(t / "a.txt", "hello")),
            "--output-prefix",
            str(t / "o"),
            "--train-tokenizer",
            "--vocab-size",
            "300",
            "--split-sentences",
            "--punkt",
            str(_write(t / "punkt.json", pickle.dumps(Payload()))),
        ],
        1,
        "{tmp}/punkt.json: not a sentence-splitter file",
    ),
    Row(
        "cod-preprocess",
        "missing input file",
        lambda t, c: [
            "--input",
            str(t / "none.jsonl"),
            "--output-prefix",
            str(t / "o"),
            "--train-tokenizer",
            "--vocab-size",
            "300",
        ],
        1,
        "{tmp}/none.jsonl",
    ),
    # cod-analyze
    Row(
        "cod-analyze",
        "no model",
        lambda t, c: ["variance"],
        2,
        "one of the arguments --hf-model --checkpoint is required",
    ),
    Row(
        "cod-analyze",
        "non-positive count",
        lambda t, c: ["variance", "--checkpoint", "x", "--num-samples", "0"],
        2,
        "argument --num-samples: expected a positive integer, got 0",
    ),
    Row(
        "cod-analyze",
        "missing checkpoint",
        lambda t, c: [
            "variance",
            "--checkpoint",
            str(t / "none"),
            "--no-mlflow",
            "--output-dir",
            str(t / "r"),
        ],
        1,
        "--checkpoint {tmp}/none",
    ),
    Row(
        "cod-analyze",
        "corrupt tracker, no complete checkpoint",
        lambda t, c: [
            "variance",
            "--checkpoint",
            str(_corrupt_copy(c, t, "tracker")),
            "--no-mlflow",
            "--output-dir",
            str(t / "r"),
        ],
        1,
        "{tmp}/ckpt/latest_checkpointed_iteration.txt: expected an iteration number",
    ),
    Row(
        "cod-analyze",
        "HF directory without config.json",
        lambda t, c: [
            "variance",
            "--hf-model",
            _hf_dir(t, None),
            "--no-mlflow",
            "--output-dir",
            str(t / "r"),
        ],
        1,
        "{tmp}/hf",
    ),
    # cod-compare
    Row("cod-compare", "nothing to compare", lambda t, c: ["--output-dir", str(t / "o")], 2, "name the runs"),
    Row(
        "cod-compare",
        "run directory without config",
        lambda t, c: ["--run-dirs", str(t), "--output-dir", str(t / "o")],
        2,
        "--run-dirs {tmp}: no config.yaml",
    ),
    Row(
        "cod-compare",
        "non-integer --at-tokens",
        lambda t, c: ["--run-dirs", str(t), "--at-tokens", "many"],
        2,
        "argument --at-tokens: invalid int value",
    ),
    # cod-sweep
    Row(
        "cod-sweep", "zero seeds", lambda t, c: ["cpu_smoke", "--seeds", "0"], 2, "--seeds must be at least 1"
    ),
    Row(
        "cod-sweep",
        "malformed --set",
        lambda t, c: ["cpu_smoke", "--set", "nolayers"],
        2,
        "--set must be KEY=VALUE",
    ),
    Row("cod-sweep", "unknown sweep", lambda t, c: ["cpu_smok"], 2, "did you mean 'cpu_smoke'"),
    Row(
        "cod-sweep",
        "wrong-type value in --set",
        lambda t, c: ["cpu_smoke", "--set", "model.num_layers=deep"],
        2,
        "num-layers must be an integer, got 'deep'",
    ),
    # cod-export / cod-import on real and corrupted checkpoints
    Row(
        "cod-export",
        "bad --dtype",
        lambda t, c: ["--checkpoint", str(c), "--output", str(t / "o"), "--dtype", "fp64"],
        2,
        "argument --dtype: invalid choice: 'fp64'",
    ),
    Row(
        "cod-export",
        "non-positive --max-shard-size",
        lambda t, c: [
            "--checkpoint",
            str(c),
            "--output",
            str(t / "o"),
            "--max-shard-size",
            "0",
            "--no-mlflow",
        ],
        2,
        "--max-shard-size must be positive, got 0",
    ),
    Row(
        "cod-export",
        "not a checkpoint",
        lambda t, c: ["--checkpoint", str(t), "--output", str(t / "o"), "--no-mlflow"],
        1,
        "--checkpoint {tmp}: {tmp}: not a megatron_cod checkpoint",
    ),
    Row(
        "cod-export",
        "truncated metadata file",
        lambda t, c: [
            "--checkpoint",
            str(_corrupt_copy(c, t, "meta")),
            "--output",
            str(t / "o"),
            "--no-mlflow",
        ],
        1,
        "{tmp}/ckpt/iter_0000001/cod_checkpoint.json: corrupt checkpoint metadata",
    ),
    Row(
        "cod-export",
        "truncated shards",
        lambda t, c: [
            "--checkpoint",
            str(_corrupt_copy(c, t, "shards")),
            "--output",
            str(t / "o"),
            "--no-mlflow",
        ],
        1,
        "{tmp}/ckpt/iter_0000001: cannot load the checkpoint",
    ),
    Row(
        "cod-export",
        "pickle payload in the shard index",
        lambda t, c: [
            "--checkpoint",
            str(_corrupt_copy(c, t, "index")),
            "--output",
            str(t / "o"),
            "--no-mlflow",
        ],
        1,
        "{tmp}/ckpt/iter_0000001/.metadata: not a torch checkpoint index (refused to load posix.mkdir)",
    ),
    Row(
        "cod-export",
        "corrupt tokenizer in the checkpoint",
        lambda t, c: [
            "--checkpoint",
            str(_corrupt_copy(c, t, "tokenizer")),
            "--output",
            str(t / "o"),
            "--no-mlflow",
        ],
        1,
        "{tmp}/ckpt/iter_0000001/tokenizer/tokenizer.json: not a tokenizer",
    ),
    Row(
        "cod-export",
        "pickled tokenizer in the checkpoint",
        lambda t, c: [
            "--checkpoint",
            str(_corrupt_copy(c, t, "pickled-tokenizer")),
            "--output",
            str(t / "o"),
            "--no-mlflow",
        ],
        1,
        "{tmp}/ckpt/iter_0000001/tokenizer/tokenizer.json: not a tokenizer",
    ),
    Row(
        "cod-import",
        "missing --output",
        lambda t, c: ["--hf-model", str(t)],
        2,
        "the following arguments are required: --output",
    ),
    Row(
        "cod-import",
        "HF directory without config.json",
        lambda t, c: ["--hf-model", _hf_dir(t, None), "--output", str(t / "o")],
        1,
        "{tmp}/hf",
    ),
    Row(
        "cod-import",
        "corrupt config.json",
        lambda t, c: ["--hf-model", _hf_dir(t, "{not json"), "--output", str(t / "o")],
        1,
        "{tmp}/hf",
    ),
    # cod-eval
    Row(
        "cod-eval",
        "non-integer --limit",
        lambda t, c: ["--hf-model", str(t), "--output-dir", str(t / "o"), "--limit", "x"],
        2,
        "argument --limit: invalid int value",
    ),
    Row(
        "cod-eval",
        "both models",
        lambda t, c: ["--hf-model", str(t), "--checkpoint", str(t), "--output-dir", str(t / "o")],
        2,
        "not allowed with argument",
    ),
    Row(
        "cod-eval",
        "HF directory without config.json",
        lambda t, c: ["--hf-model", _hf_dir(t, None), "--output-dir", str(t / "o"), "--no-mlflow"],
        1,
        "--hf-model {tmp}/hf: no config.json",
    ),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real one-iteration checkpoint of a tiny Llama-like model (config, tokenizer, weights)."""
    from megatron_cod import platform
    from megatron_cod.config import ExperimentConfig, ParallelConfig
    from megatron_cod.data.tokenizer import train_bpe_tokenizer
    from megatron_cod.models import build_gpt_model
    from megatron_cod.training.checkpoint import save_checkpoint

    platform.initialize(seed=1)
    cfg = ExperimentConfig.from_dict(
        {
            "model": {
                "num_layers": 2,
                "hidden_size": 32,
                "num_attention_heads": 4,
                "ffn_hidden_size": 64,
                "seq_length": 16,
            }
        }
    )
    tokenizer = train_bpe_tokenizer(["to be or not to be, that is the question"] * 20, 300)
    model = build_gpt_model(cfg.model, tokenizer.vocab_size, ParallelConfig())
    root = tmp_path_factory.mktemp("bad_inputs") / "ckpt"
    layout = {"world_size": 1, "tp": 1, "pp": 1, "ep": 1, "distributed_optimizer": 0}
    save_checkpoint(
        root, 1, [model], None, None, {"train": 0}, yaml.safe_dump(cfg.to_dict()), layout, tokenizer=tokenizer
    )
    yield root
    platform.teardown()


def _needs_checkpoint(row: Row) -> bool:
    return row.cli in ("cod-export",) or "tracker" in row.what


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.cli}:{r.what}" for r in ROWS])
def test_bad_input_is_one_line_naming_it(row, tmp_path, capsys, request, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COD_DEBUG", raising=False)
    ckpt = request.getfixturevalue("checkpoint") if _needs_checkpoint(row) else tmp_path / "no-checkpoint"
    work = tmp_path / "w"
    work.mkdir()
    code = MAINS[row.cli](row.argv(work, ckpt))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(PREFIX.get(row.cli, f"{row.cli}: ") + "error: "), err
    assert row.expect.format(tmp=work, ckpt=ckpt) in lines[0], err
    assert code == row.code, err
    assert not Path("/tmp/cod-bad-inputs-pwned").exists()  # no pickled payload ran


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from megatron_cod.config import ConfigError

    with pytest.raises(ConfigError):
        train(["--preset", "nope", "--debug"])
    monkeypatch.setenv("COD_DEBUG", "1")
    with pytest.raises(ConfigError):
        train(["--preset", "nope"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY = [
    "--num-layers",
    "2",
    "--hidden-size",
    "32",
    "--num-attention-heads",
    "4",
    "--ffn-hidden-size",
    "64",
    "--seq-length",
    "16",
    "--micro-batch-size",
    "1",
    "--global-batch-size",
    "2",
    "--no-telemetry",
    "--no-mlflow",
    "--train-iters",
    "1",
    "--eval-iters",
    "0",
    "--lr-warmup-iters",
    "0",
]


def _cod_train(tmp: Path, args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = (
        ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(_free_port())]
        if nproc > 1
        else []
    )
    return subprocess.run(
        [
            sys.executable,
            *launcher,
            "-m",
            "megatron_cod.training",
            *TINY,
            *args,
            "--output-dir",
            str(tmp / "runs"),
        ],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_cod_train_with_a_corrupt_load_checkpoint(tmp_path, checkpoint):
    """A real cod-train process: --load of a checkpoint whose shard index carries a pickle payload."""
    ckpt = _corrupt_copy(checkpoint, tmp_path, "index")
    proc = _cod_train(tmp_path, ["--load", str(ckpt), "--no-load-optim"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: {ckpt}/iter_0000001/.metadata: not a torch checkpoint index")


def test_under_torchrun_only_rank_0_prints_and_every_rank_exits(tmp_path):
    """Both ranks fail (the --load directory is not a checkpoint); one line from rank 0, none from rank 1."""
    (tmp_path / "empty").mkdir()
    proc = _cod_train(tmp_path, ["--load", str(tmp_path / "empty")], nproc=2)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(ours) == 1, proc.stderr[-3000:]
    assert f"{tmp_path / 'empty'}: not a megatron_cod checkpoint" in ours[0]
    assert "[rank0]" not in proc.stderr and "[rank1]" not in proc.stderr  # no worker traceback


def test_the_documented_table_lists_every_row():
    table = (Path(__file__).resolve().parents[2] / "docs" / "bad_inputs.md").read_text()
    for row in ROWS:
        assert f"| {row.cli} | {row.what} |" in table, row.what
