"""One tokenizer for preprocessing, training and export: an HF ``tokenizers.Tokenizer`` adapted to
megatron-core's legacy tokenizer interface (the one ``GPTDatasetConfig.tokenizer`` is used through).

Sources: a ``tokenizer.json`` (or a directory holding one), Megatron GPT-2 ``vocab.json`` +
``merges.txt``, or a byte-level BPE trained here. Saved as a directory with ``tokenizer.json``
and ``cod_tokenizer.json`` (which names the end-of-document and pad tokens), so checkpoints and
HF exports carry the exact tokenizer the data was made with.

The class implements the legacy interface by duck typing rather than by subclassing it: the
abstract base moved between megatron-core releases and logs a deprecation warning on every
construction, while the dataset code only reads these attributes.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from megatron_cod.data.atomic import write_text_atomic
from megatron_cod.data.errors import DataError

TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "cod_tokenizer.json"
METADATA_FORMAT = "megatron_cod.tokenizer/1"
DEFAULT_EOD = "<|endoftext|>"
DEFAULT_PAD = "<|pad|>"
MIN_BPE_VOCAB = 256 + 2
"""A byte-level BPE holds the 256 byte tokens plus the end-of-document and pad tokens."""

_EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
_PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", "<|padding|>")


class CodTokenizer:
    """Megatron-compatible view of an HF tokenizer with explicit end-of-document and pad tokens.

    ``tokenize`` treats special-token strings found in raw text as plain text, so a document that
    happens to contain "<|endoftext|>" cannot inject a document boundary. When the tokenizer has no
    pad token, ``pad_token`` is added as a new special token (one more id) rather than aliasing the
    end-of-document id, which megatron would then refuse to mask.
    """

    def __init__(self, hf_tokenizer: Tokenizer, eod_token: str, pad_token: str, source: str = "") -> None:
        name = source or "tokenizer"
        if hf_tokenizer.token_to_id(eod_token) is None:
            raise DataError(f"{name}: end-of-document token {eod_token!r} is not in the vocabulary")
        if eod_token == pad_token:
            raise DataError(f"{name}: the pad token must differ from the end-of-document token")
        hf_tokenizer.add_special_tokens([eod_token])
        if pad_token not in _special_contents(hf_tokenizer):
            hf_tokenizer.add_special_tokens([pad_token])
        hf_tokenizer.encode_special_tokens = True
        self._hf = hf_tokenizer
        self.eod_token = eod_token
        self.pad_token = pad_token
        self.source = source
        # both are in the vocabulary: eod checked above, pad added above when missing
        self._eod = cast(int, hf_tokenizer.token_to_id(eod_token))
        self._pad = cast(int, hf_tokenizer.token_to_id(pad_token))
        self.sha256 = hashlib.sha256(hf_tokenizer.to_str().encode("utf-8")).hexdigest()
        self.unique_identifiers = OrderedDict(
            [
                ("class", type(self).__name__),
                ("tokenizer_sha256", self.sha256),
                ("eod_token", eod_token),
                ("pad_token", pad_token),
            ]
        )
        self.unique_description = json.dumps(self.unique_identifiers, indent=4)

    def __getstate__(self) -> dict:
        return {
            "json": self._hf.to_str(),
            "eod_token": self.eod_token,
            "pad_token": self.pad_token,
            "source": self.source,
        }

    def __setstate__(self, state: dict) -> None:
        hf = Tokenizer.from_str(state["json"])
        type(self).__init__(self, hf, state["eod_token"], state["pad_token"], state["source"])

    @property
    def hf_tokenizer(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._hf

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added special tokens included."""
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self._hf.get_vocab(with_added_tokens=True)

    @property
    def inv_vocab(self) -> dict[int, str]:
        return {i: t for t, i in self.vocab.items()}

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def eos(self) -> int:
        return self._eod

    @property
    def pad(self) -> int:
        return self._pad

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``; no special token is added."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens are kept as their text."""
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``cod_tokenizer.json`` into ``directory``; return it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": METADATA_FORMAT,
            "eod_token": self.eod_token,
            "pad_token": self.pad_token,
            "vocab_size": self.vocab_size,
            "tokenizer_sha256": self.sha256,
        }
        write_text_atomic(directory / TOKENIZER_FILE, self._hf.to_str(pretty=True))
        write_text_atomic(directory / METADATA_FILE, json.dumps(metadata, indent=2) + "\n")
        return directory


def load_tokenizer(path: str | Path) -> CodTokenizer:
    """Load a tokenizer from a ``tokenizer.json``, a directory holding one (saved by
    :meth:`CodTokenizer.save` or by HF), or Megatron GPT-2 ``vocab.json`` + ``merges.txt``
    (the directory or the ``vocab.json`` path). Anything else raises :class:`DataError`.
    """
    file, merges = _resolve(Path(path))
    if merges is not None:
        hf = _read_gpt2(file, merges)
        if hf.token_to_id(DEFAULT_EOD) is None:
            raise DataError(f"{file}: GPT-2 vocabulary has no {DEFAULT_EOD} token")
        return CodTokenizer(hf, DEFAULT_EOD, DEFAULT_PAD, source=str(file))
    hf = _read_tokenizer_json(file)
    eod, pad = _special_tokens_for(file, hf)
    return CodTokenizer(hf, eod, pad, source=str(file))


def load_hf_tokenizer(path: str | Path) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` that :func:`load_tokenizer` reads, as it is: no end-of-document or
    pad token required or added (for tokenizing text a model reads, e.g. analysis data)."""
    file, merges = _resolve(Path(path))
    return _read_tokenizer_json(file) if merges is None else _read_gpt2(file, merges)


def _resolve(path: Path) -> tuple[Path, Path | None]:
    """(tokenizer.json, None) or (vocab.json, merges.txt) for a tokenizer file or directory."""
    if path.is_dir():
        if (path / TOKENIZER_FILE).is_file():
            return path / TOKENIZER_FILE, None
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return path / "vocab.json", path / "merges.txt"
        raise DataError(
            f"{path}: not a tokenizer directory (no {TOKENIZER_FILE}, nor vocab.json + merges.txt)"
        )
    if path.is_file():
        if path.name == "vocab.json" and (path.parent / "merges.txt").is_file():
            return path, path.parent / "merges.txt"
        return path, None
    raise DataError(f"{path}: no such tokenizer file or directory")


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    eod_token: str = DEFAULT_EOD,
    pad_token: str = DEFAULT_PAD,
) -> CodTokenizer:
    """Train a byte-level BPE (GPT-2 style) on ``texts``; ids 0 and 1 are EOD and pad.

    The result may hold fewer tokens than asked when the text offers fewer merges.
    """
    if vocab_size < MIN_BPE_VOCAB:
        raise DataError(
            f"--vocab-size {vocab_size} is too small to train: a byte-level BPE needs at least "
            f"{MIN_BPE_VOCAB} (256 byte tokens + end-of-document + pad)"
        )
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[eod_token, pad_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return CodTokenizer(hf, eod_token, pad_token, source="trained byte-level BPE")


def _special_contents(hf: Tokenizer) -> set[str]:
    return {tok.content for tok in hf.get_added_tokens_decoder().values() if tok.special}


def _read_tokenizer_json(file: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for any unreadable file
        raise DataError(f"{file}: not a tokenizer ({_first_line(exc)})") from None


def _special_tokens_for(file: Path, hf: Tokenizer) -> tuple[str, str]:
    """EOD and pad token names: from our metadata, else HF's config, else well-known names."""
    metadata = file.parent / METADATA_FILE
    if file.name == TOKENIZER_FILE and metadata.is_file():
        data = _read_json(metadata)
        if data.get("format") != METADATA_FORMAT:
            raise DataError(f"{metadata}: not a megatron_cod tokenizer metadata file")
        return data["eod_token"], data["pad_token"]
    config_file = file.parent / "tokenizer_config.json"
    config = _read_json(config_file) if config_file.is_file() else {}
    eod = _token_name(config.get("eos_token")) or _first_known(hf, _EOD_CANDIDATES)
    if eod is None or hf.token_to_id(eod) is None:
        raise DataError(
            f"{file}: tokenizer has no end-of-document token (looked for {', '.join(_EOD_CANDIDATES)})"
        )
    pad = _token_name(config.get("pad_token")) or _first_known(hf, _PAD_CANDIDATES) or DEFAULT_PAD
    if pad == eod:
        pad = DEFAULT_PAD
    return eod, pad


def _read_gpt2(vocab: Path, merges: Path) -> Tokenizer:
    try:
        model = models.BPE.from_file(str(vocab), str(merges))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise DataError(f"{vocab}: not a GPT-2 vocab.json + merges.txt pair ({_first_line(exc)})") from None
    hf = Tokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _first_known(hf: Tokenizer, names: Iterable[str]) -> str | None:
    return next((name for name in names if hf.token_to_id(name) is not None), None)


def _token_name(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data
