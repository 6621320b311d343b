"""Training: the study's design and plan, the one-model step, the model axis, the epoch
loop, checkpoints, the workdir and several processes. `train.run(config, workdir)` trains a
study and writes results.npz (trainer.py)."""
from classbias_jax.train.trainer import Interrupted, run  # noqa: F401
