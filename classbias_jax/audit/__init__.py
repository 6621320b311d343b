"""The audit: statistics, analysis, figures and the report's text, read from results files
(numpy, scipy and matplotlib; never JAX training code)."""
