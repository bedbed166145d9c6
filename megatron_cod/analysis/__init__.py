"""Offline depth-utilization analysis: how much of its depth does a model use?

Modules, one job each:
- adapter: ``LayerStack``, the model seen as embed -> layers -> final norm -> unembedding, with the
  generic skip / replace / swap / start-from-cached-input / hook operations (``LayerStack.run``).
- hf_adapter: ``HFLayerStack`` for HF causal LMs with ``model.model.layers`` (Llama, Qwen2,
  Mixtral, OLMoE); loading: CLI model arguments -> ``LoadedModel`` (the megatron adapter plugs in there).
- evalset: ``EvalSet``, batches with their cached layer inputs h_0..h_L and baseline loss.
- data: seeded evaluation sequences from a Megatron indexed dataset or a text file + tokenizer.
- metrics, each ``<name>_scores(evalset, config, progress) -> result`` with ``global_metrics()``:
  jacobian (+ probe_estimators), usefulness, causal, permutation, similarity (Block Influence,
  angular distance, pruning curves), logit_lens, residual (``residual_profile``).
- suite, tables, plots, report, mlflow_log, cli: running several metrics, writing and logging them.
"""
