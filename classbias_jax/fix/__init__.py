"""The fix: per-class policies chosen on a sweep's validation split (policy.py, the
`python -m classbias_jax.fix` CLI) and the report of the arms a fix study trains."""
