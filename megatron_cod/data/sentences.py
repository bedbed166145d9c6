"""Sentence splitting with nltk's Punkt that works offline and on nltk >= 3.9.

nltk 3.9 renamed the ``punkt`` pickles to ``punkt_tab`` text tables and refuses pickles, which
breaks Megatron-LM's ``--split-sentences``. Here the parameters come from, in this order:
a JSON file saved by an earlier run, the installed ``punkt_tab`` English model (read by nltk's
table loader), or Punkt trained unsupervised on a sample of the input itself. Nothing is ever
unpickled, and nothing is downloaded.

Splitting is lossless: a sentence keeps the whitespace that follows it, so joining the
sentences of a text gives the text back exactly.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTrainer

from megatron_cod.data.atomic import write_text_atomic
from megatron_cod.data.errors import DataError

PUNKT_FORMAT = "megatron_cod.punkt/1"

DEFAULT_SAMPLE_CHARS = 2_000_000
"""Characters of input text Punkt trains on (about 4 s on one core)."""

SEED_ABBREVIATIONS = (
    "dr",
    "mr",
    "mrs",
    "ms",
    "messrs",
    "prof",
    "rev",
    "hon",
    "st",
    "mt",
    "jr",
    "sr",
    "gen",
    "col",
    "capt",
    "lt",
    "sgt",
    "vs",
    "cf",
    "viz",
    "e.g",
    "i.e",
    "a.m",
    "p.m",
    "u.s",
)
"""Abbreviations added to every trained model.

Unsupervised Punkt learns only abbreviations its training text uses often. Older English
literature (the built-in Shakespeare corpus among it) never writes "Dr." or "p.m.", so without
these seeds "Dr. Smith went to Washington." would be cut after "Dr.". The list holds titles and
Latin/time abbreviations that are almost never sentence-final; "etc" and "no" are left out
because they often end a sentence.
"""


def installed_punkt_params() -> PunktParameters | None:
    """Parameters of the installed ``punkt_tab`` English model, or None when it is absent."""
    from nltk.data import find
    from nltk.tokenize.punkt import load_punkt_params

    try:
        return load_punkt_params(find("tokenizers/punkt_tab/english/"))
    except LookupError:
        return None


def train_punkt(
    texts: Iterable[str],
    max_chars: int = DEFAULT_SAMPLE_CHARS,
    seed_abbreviations: Iterable[str] = SEED_ABBREVIATIONS,
) -> PunktParameters:
    """Train Punkt unsupervised on the first ``max_chars`` characters of ``texts``.

    Documents are fed whole until the budget is used, then the seeded abbreviations are added.
    """
    trainer = PunktTrainer()
    used = 0
    for text in texts:
        if used >= max_chars:
            break
        piece = text[: max_chars - used]
        trainer.train(piece, finalize=False)
        used += len(piece)
    if used == 0:
        raise DataError("no text to train the sentence splitter on")
    trainer.finalize_training()
    params = trainer.get_params()
    params.abbrev_types.update(a.lower() for a in seed_abbreviations)
    return params


def params_to_json(params: PunktParameters) -> dict:
    """A JSON-ready dict holding everything Punkt needs to split."""
    return {
        "format": PUNKT_FORMAT,
        "abbrev_types": sorted(params.abbrev_types),
        "collocations": sorted([a, b] for a, b in params.collocations),
        "sent_starters": sorted(params.sent_starters),
        "ortho_context": dict(sorted(params.ortho_context.items())),
    }


def params_from_json(data: dict, source: str = "<punkt>") -> PunktParameters:
    """Inverse of :func:`params_to_json`; a wrong file raises :class:`DataError`."""
    if not isinstance(data, dict) or data.get("format") != PUNKT_FORMAT:
        raise DataError(f"{source}: not a sentence-splitter file (expected {PUNKT_FORMAT})")
    params = PunktParameters()
    params.abbrev_types = set(data["abbrev_types"])
    params.collocations = {(a, b) for a, b in data["collocations"]}
    params.sent_starters = set(data["sent_starters"])
    params.ortho_context = defaultdict(int, {k: int(v) for k, v in data["ortho_context"].items()})
    return params


def save_params(params: PunktParameters, path: str | Path) -> Path:
    """Write ``params`` as JSON to ``path`` (through a temporary file, then renamed)."""
    return write_text_atomic(path, json.dumps(params_to_json(params)))


def load_params(path: str | Path) -> PunktParameters:
    """Read parameters saved by :func:`save_params`."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: not a sentence-splitter file (not JSON)") from None
    try:
        return params_from_json(data, str(path))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DataError(f"{path}: not a sentence-splitter file (fields missing)") from None


class SentenceSplitter:
    """Lossless Punkt splitting: ``"".join(splitter.split(text)) == text``."""

    def __init__(self, params: PunktParameters) -> None:
        self._punkt = PunktSentenceTokenizer(params)

    def split(self, text: str) -> list[str]:
        """Sentences of ``text``, each carrying the whitespace that follows it."""
        starts = [start for start, _ in self._punkt.span_tokenize(text)]
        if not starts:
            return [text] if text else []
        cuts = [0, *starts[1:], len(text)]
        return [text[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
