"""Items of the local lm-eval tasks, built from held-out text (by default the built-in corpus's test split).

Text is cut into paragraphs (blank lines), speaker headings (upper-case lines) and stage directions
([...]) are dropped, and each paragraph is split into sentences by the project's Punkt splitter.

- cloze (LAMBADA-style): a sentence (plus the one before it, when there is one) without its last
  word; the target is that word;
- next sentence (HellaSwag-style): a sentence; the choices are the sentence that follows it and
  three sentences drawn from elsewhere, shuffled; the label is the real one's index.

Contexts end without a space and continuations start with one, so lm-eval's requests are exactly
(context, continuation). Items longer than the model's context are left out. Deterministic: a
fixed seed draws the distractors and the order.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from megatron_cod.export.errors import ExportError

NUM_CHOICES = 4
_WORD_END = re.compile(r"^(.*\S)\s+([A-Za-z][a-z']{2,})[.!?;:,]*$")


@dataclass(frozen=True)
class TaskItems:
    cloze: list[dict]
    next_sentence: list[dict]


def held_out_texts(builtin: str = "shakespeare") -> list[str]:
    """The test-split documents of a built-in corpus (never trained on, never validated on)."""
    from megatron_cod.data.builtin import ensure_builtin_corpus

    corpus = ensure_builtin_corpus(builtin, show_progress=False)
    with open(corpus.path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [row["text"] for row in rows if row.get("split") == "test"]


def read_texts(path: str | Path) -> list[str]:
    """Documents of a jsonl file with a "text" field (--eval-data)."""
    path = Path(path)
    try:
        texts = [
            json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f'--eval-data {path}: expected jsonl with a "text" field ({exc})') from None
    if not texts:
        raise ExportError(f"--eval-data {path}: no documents")
    return texts


def _paragraphs(text: str) -> Iterable[str]:
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines()]
        kept = [ln for ln in lines if ln and not ln.isupper() and not ln.startswith("[")]
        if kept:
            yield re.sub(r"\s+", " ", " ".join(kept))


def sentences_by_paragraph(texts: list[str]) -> list[list[str]]:
    from megatron_cod.data.sentences import SentenceSplitter, installed_punkt_params, train_punkt

    splitter = SentenceSplitter(installed_punkt_params() or train_punkt(texts))
    out = []
    for text in texts:
        for paragraph in _paragraphs(text):
            sentences = [s.strip() for s in splitter.split(paragraph)]
            sentences = [s for s in sentences if len(s.split()) >= 4]
            if sentences:
                out.append(sentences)
    return out


def build_items(
    texts: list[str], num_tokens: Callable[[str], int], max_tokens: int, max_items: int, seed: int = 1234
) -> TaskItems:
    """At most ``max_items`` items per task whose context + continuation fit ``max_tokens``."""
    paragraphs = sentences_by_paragraph(texts)
    pool = [s for p in paragraphs for s in p]
    rng = random.Random(seed)
    cloze, choice = [], []
    for sentences in paragraphs:
        for i, sentence in enumerate(sentences):
            match = _WORD_END.match(sentence)
            if match and len(sentence.split()) >= 6:
                context = (sentences[i - 1] + " " if i else "") + match.group(1)
                item = {"context": context, "target": " " + match.group(2)}
                if num_tokens(context + item["target"]) <= max_tokens:
                    cloze.append(item)
            if i + 1 < len(sentences):
                others = rng.sample([s for s in pool if s != sentences[i + 1]], NUM_CHOICES - 1)
                choices = [" " + s for s in [sentences[i + 1], *others]]
                rng.shuffle(choices)
                if all(num_tokens(sentence + c) <= max_tokens for c in choices):
                    choice.append(
                        {
                            "context": sentence,
                            "choices": choices,
                            "label": choices.index(" " + sentences[i + 1]),
                        }
                    )
    rng.shuffle(cloze)
    rng.shuffle(choice)
    return TaskItems(cloze[:max_items], choice[:max_items])


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path
