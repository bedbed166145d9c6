"""Bad input: a one-line error naming the file (and line), a non-zero exit, no traceback, and no
``.bin/.idx`` pair (nor partial file) left behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from megatron_cod.data.cli import main

TOOL = Path(__file__).resolve().parents[2] / "tools" / "preprocess_data.py"


def run_failing(capsys, argv: list[str]) -> str:
    """Run the CLI expecting failure; return its single stderr line."""
    code = main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cod-preprocess: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


def args(source: Path, out: Path, tokenizer_dir: Path) -> list[str]:
    return ["--input", str(source), "--output-prefix", str(out / "corpus"), "--tokenizer", str(tokenizer_dir)]


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.txt"])
@pytest.mark.parametrize("mode", ["tokenize", "split sentences", "train tokenizer"])
def test_empty_input(tmp_path, out, capsys, tokenizer_dir, leftovers, name, mode):
    source = tmp_path / name
    source.write_text("\n\n" if name.endswith(".jsonl") else "")
    argv = args(source, out, tokenizer_dir)
    if mode == "split sentences":
        argv.append("--split-sentences")
    elif mode == "train tokenizer":
        argv = argv[:-2] + ["--train-tokenizer", "--vocab-size", "300"]
    line = run_failing(capsys, argv)
    assert line == f"cod-preprocess: error: {source}: input is empty (no non-empty records)"
    assert leftovers(out) == []


def test_line_that_is_not_json(tmp_path, out, capsys, tokenizer_dir, leftovers):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "fine"}\n{"text": "fine too"}\n{"text": broken\n')
    line = run_failing(capsys, args(source, out, tokenizer_dir))
    assert line.startswith(f"cod-preprocess: error: {source}:3: not valid JSON")
    assert leftovers(out) == []


def test_record_without_the_key(tmp_path, out, capsys, tokenizer_dir, leftovers):
    source = tmp_path / "nokey.jsonl"
    source.write_text('{"text": "fine"}\n{"body": "no text here"}\n')
    line = run_failing(capsys, args(source, out, tokenizer_dir))
    assert line.startswith(f"cod-preprocess: error: {source}:2: record has no key 'text'")
    assert "'body'" in line and "--json-keys" in line
    assert leftovers(out) == []


@pytest.mark.parametrize("name", ["latin1.jsonl", "latin1.txt"])
def test_non_utf8_bytes(tmp_path, out, capsys, tokenizer_dir, leftovers, name):
    source = tmp_path / name
    second = b'{"text": "caf\xe9"}\n' if name.endswith(".jsonl") else b"caf\xe9\n"
    source.write_bytes((b'{"text": "ok"}\n' if name.endswith(".jsonl") else b"ok\n") + second)
    line = run_failing(capsys, args(source, out, tokenizer_dir))
    assert line.startswith(f"cod-preprocess: error: {source}:2: not valid UTF-8 (byte 0xe9")
    assert "--errors replace" in line
    assert leftovers(out) == []


def test_output_under_a_regular_file(tmp_path, capsys, tokenizer_dir, write_jsonl, leftovers):
    source = write_jsonl(tmp_path / "in.jsonl", ["text"])
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = run_failing(capsys, args(source, blocker / "sub", tokenizer_dir))
    assert line.startswith(f"cod-preprocess: error: {blocker / 'sub'}: cannot create")
    assert leftovers(tmp_path) == []


def test_output_in_a_read_only_directory(tmp_path, capsys, tokenizer_dir, write_jsonl, leftovers):
    source = write_jsonl(tmp_path / "in.jsonl", ["text"])
    if os.geteuid() == 0:
        # root ignores permission bits; sysfs refuses new entries even to root.
        read_only = Path("/sys/megatron_cod_test_output")
        if not Path("/sys").is_dir():
            pytest.skip("no read-only location for root on this machine")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        read_only = locked
    line = run_failing(capsys, args(source, read_only, tokenizer_dir))
    assert line.startswith(f"cod-preprocess: error: {read_only}")
    assert "not writable" in line or "cannot create" in line
    assert not read_only.exists() or leftovers(read_only) == []


def test_existing_output_is_refused_and_kept(tmp_path, out, capsys, tokenizer_dir, write_jsonl):
    source = write_jsonl(tmp_path / "in.jsonl", ["first run"])
    assert main(args(source, out, tokenizer_dir) + ["--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = run_failing(capsys, args(write_jsonl(tmp_path / "b.jsonl", ["second"]), out, tokenizer_dir))
    assert "output exists (pass --overwrite to replace it)" in line
    assert str(out / "corpus_") in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def big_vocab_tokenizer(directory: Path, size: int) -> Path:
    vocab = {f"w{i}": i for i in range(size)}
    vocab["<|endoftext|>"] = size
    vocab["[UNK]"] = size + 1
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    directory.mkdir()
    hf.save(str(directory / "tokenizer.json"))
    return directory


def test_vocabulary_that_does_not_fit_the_dtype(tmp_path, out, capsys, write_jsonl, leftovers):
    tokenizer = big_vocab_tokenizer(tmp_path / "big", 70_000)
    source = write_jsonl(tmp_path / "in.jsonl", ["w1 w69999 w5"])
    line = run_failing(capsys, args(source, out, tokenizer) + ["--dtype", "uint16"])
    # 70,000 words + end-of-document + [UNK] + the added pad token
    assert line == (
        f"cod-preprocess: error: {tokenizer}: vocabulary of 70003 ids does not fit "
        "uint16 (at most 65536 ids); use --dtype auto"
    )
    assert leftovers(out) == []

    assert main(args(source, out, tokenizer) + ["--quiet"]) == 0
    raw = numpy.fromfile(out / "corpus_text_document.bin", dtype=numpy.int32)
    assert raw.tolist() == [1, 69999, 5, 70_000]


def test_vocab_size_too_small_to_train(tmp_path, out, capsys, write_jsonl, leftovers):
    source = write_jsonl(tmp_path / "in.jsonl", ["some text to train on"])
    line = run_failing(
        capsys,
        [
            "--input",
            str(source),
            "--output-prefix",
            str(out / "c"),
            "--train-tokenizer",
            "--vocab-size",
            "100",
        ],
    )
    assert line == (
        "cod-preprocess: error: --vocab-size 100 is too small to train: a byte-level "
        "BPE needs at least 258 (256 byte tokens + end-of-document + pad)"
    )
    assert leftovers(out) == []


@pytest.mark.parametrize("kind", ["text file", "json file", "empty directory", "missing"])
def test_tokenizer_path_that_is_not_a_tokenizer(tmp_path, out, capsys, write_jsonl, leftovers, kind):
    source = write_jsonl(tmp_path / "in.jsonl", ["text"])
    if kind == "text file":
        path = tmp_path / "notes.txt"
        path.write_text("just some notes\n")
        expected = f"{path}: not a tokenizer ("
    elif kind == "json file":
        path = tmp_path / "config.json"
        path.write_text(json.dumps({"hidden_size": 64}))
        expected = f"{path}: not a tokenizer ("
    elif kind == "empty directory":
        path = tmp_path / "empty_dir"
        path.mkdir()
        expected = f"{path}: not a tokenizer directory (no tokenizer.json, nor vocab.json"
    else:
        path = tmp_path / "nowhere"
        expected = f"{path}: no such tokenizer file or directory"
    line = run_failing(capsys, args(source, out, path))
    assert line.startswith(f"cod-preprocess: error: {expected}")
    assert leftovers(out) == []


def test_ctrl_c_mid_run_leaves_nothing(tmp_path, out, tokenizer_dir, leftovers):
    """The input is a pipe the test feeds, so the interrupt lands while the run is underway:
    the output files are open, two workers are running, and input is still arriving."""
    fifo = tmp_path / "stream.jsonl"
    os.mkfifo(fifo)
    command = [
        sys.executable,
        str(TOOL),
        "--input",
        str(fifo),
        "--output-prefix",
        str(out / "corpus"),
        "--tokenizer",
        str(tokenizer_dir),
        "--workers",
        "2",
    ]
    # a terminal's Ctrl-C reaches a tool whose SIGINT is at its default; an ignored SIGINT would be
    # inherited through exec from this process, where an earlier test may have left it ignored
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        writer = _open_fifo_writer(fifo, proc, timeout=120)
        os.write(writer, "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(50)).encode())
        assert any("partial" in name for name in leftovers(out)), "run has not started writing"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=120)
        os.close(writer)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "cod-preprocess: interrupted; no output was written"
    assert leftovers(out) == []


def _open_fifo_writer(fifo: Path, proc: subprocess.Popen, timeout: float) -> int:
    """Open the pipe for writing once the tool has opened it for reading."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        if proc.poll() is not None:
            pytest.fail(f"tool exited early: {proc.communicate()[1]}")
        time.sleep(0.05)
    pytest.fail("tool never opened its input")
