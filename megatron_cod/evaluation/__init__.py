"""Downstream evaluation (cod-eval): lm-eval on exported models, with local tasks over held-out text."""
