"""Data pipeline: raw text -> sentences -> tokenizer -> Megatron indexed dataset, offline.

Public entry points (import the module you need; only ``indexed_output`` and ``gpt_datasets``
import megatron-core, and they hold every megatron-core import of this package):

- ``tokenizer``: ``load_tokenizer(path) -> CodTokenizer``, ``train_bpe_tokenizer``.
- ``pipeline``: ``preprocess(PreprocessConfig) -> PreprocessSummary``.
- ``builtin``: ``ensure_builtin_dataset()``, the default corpus built once into a user cache.
- ``gpt_datasets``: ``build_gpt_datasets(...)`` over megatron-core's GPTDataset and blends.
- ``cli``: the ``cod-preprocess`` console script (also ``tools/preprocess_data.py``).

Parts: ``inputs`` (files and records), ``sentences`` (Punkt, offline), ``encoding`` (workers),
``indexed_output`` (.bin/.idx), ``output_files`` (all-or-nothing outputs), ``progress``,
``shakespeare`` (the built-in corpus source), ``atomic``, ``errors``.
"""
