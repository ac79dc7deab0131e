"""``nemo-resrl eval``: Avg@n, pass@k and maj@k of a model on local jsonl benchmarks (``runner.py``)."""
