"""Finding input files and reading records from them."""

from __future__ import annotations

import gzip

import pytest

from megatron_cod.data.errors import DataError
from megatron_cod.data.inputs import InputReader, expand_inputs, normalize_text, total_input_bytes


def test_normalize_text():
    assert normalize_text("  a\r\nb\rc\n\n") == "a\nb\nc"
    assert normalize_text(" \t\n") == ""


def test_expand_files_directories_and_globs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.jsonl", "d/sub/a.txt.gz", "d/notes.md", "c.json", "z.txt"):
        (tmp_path / name).write_bytes(b"")
    found = expand_inputs([str(tmp_path / "z.txt"), str(tmp_path / "d"),
                           str(tmp_path / "*.json"), str(tmp_path / "z.txt")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "z.txt", "d/b.jsonl", "d/sub/a.txt.gz", "c.json"]


@pytest.mark.parametrize("spec,message", [
    ("missing.jsonl", "no such file or directory"),
    ("*.nothing", "files match"),
    ("notes.md", "unsupported input type"),
    ("empty_dir", "directory holds no"),
])
def test_expand_errors(tmp_path, spec, message):
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=message) as caught:
        expand_inputs([str(tmp_path / spec)])
    assert str(caught.value).startswith(str(tmp_path / spec))


def test_txt_units_and_line_numbers(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("para one\nstill one\n\n\npara two\n\nthree\n")
    records = {unit: [(r.line, r.texts[0]) for r in InputReader([path], txt_unit=unit)]
               for unit in ("file", "paragraph", "line")}
    assert records["file"] == [(1, "para one\nstill one\n\n\npara two\n\nthree")]
    assert records["paragraph"] == [(1, "para one\nstill one"), (5, "para two"), (7, "three")]
    assert records["line"] == [(1, "para one"), (2, "still one"), (5, "para two"), (7, "three")]


def test_gzip_and_byte_count(tmp_path):
    raw = b'{"text": "one"}\n{"text": "two"}\n'
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(raw)
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(raw))
    reader = InputReader([plain, packed])
    assert [r.texts for r in reader] == [("one",), ("two",), ("one",), ("two",)]
    assert reader.bytes_read == 2 * len(raw)
    assert total_input_bytes([plain]) == len(raw)
    assert total_input_bytes([plain, packed]) is None


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=f"{path}: not a valid gzip file"):
        list(InputReader([path]))


def test_byte_order_mark_and_non_string_values(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "bom"}\n{"text": 3}\n')
    reader = iter(InputReader([path]))
    assert next(reader).texts == ("bom",)
    with pytest.raises(DataError, match=f"{path}:2: key 'text' holds int, not a string"):
        next(reader)


def test_several_keys_need_jsonl(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("x")
    with pytest.raises(DataError, match="more than one --json-keys needs .jsonl inputs"):
        InputReader([path], json_keys=("text", "title"))
