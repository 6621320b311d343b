"""Measuring the training step: strategies, FLOPs, the benchmarked step, host memory."""
