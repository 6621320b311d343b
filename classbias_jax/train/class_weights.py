"""Per-class loss weights updated from each class's training accuracy: the multiplicative
weights of CLAM (CLAss-dependent Multiplicative weights, TMLR 2025), as one model's state.

Each model keeps weights w [C] (1 at the start), and over an epoch the hits and images of
each class in its training batches. At the epoch's last step:

    d_c = exp(-rate * a_c),  d <- d / mean(d),  w <- clip(w * d, LOW, HIGH),  w <- w / mean(w)

with a_c the class's accuracy on the epoch's (augmented) training batches; the loss of an
image of class c is multiplied by w_c. rate = 1 is CLAM's rule, rate = 0 leaves w at 1.
CLAM measures a_c in a separate pass over the training set in evaluation mode; here it is
the running accuracy of the epoch's own batches, which costs nothing extra.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

LOW, HIGH = 0.5, 2.0  # CLAM's clip of a weight
KEYS = ('class_weights', 'class_hits', 'class_seen')


def init(num_classes: int) -> dict[str, jax.Array]:
  """The state a weighted model adds: weights [C] = 1, and empty epoch counts."""
  zeros = jnp.zeros(num_classes, jnp.float32)
  return {'class_weights': jnp.ones(num_classes, jnp.float32), 'class_hits': zeros,
          'class_seen': zeros}


def weighted_loss(losses: jax.Array, labels: jax.Array, state) -> jax.Array:
  """Mean over the batch of each image's loss times its class's weight."""
  return jnp.mean(state['class_weights'][labels] * losses)


def update(state, labels: jax.Array, correct: jax.Array, rate, epoch_end) -> dict:
  """The weights and counts after one step: counts grow by the batch, and at the epoch's
  end (a traced bool) the weights take the multiplicative step and the counts restart."""
  num_classes = state['class_weights'].shape[0]
  hits = state['class_hits'] + jax.ops.segment_sum(correct.astype(jnp.float32), labels,
                                                   num_classes)
  seen = state['class_seen'] + jax.ops.segment_sum(jnp.ones_like(labels, jnp.float32),
                                                   labels, num_classes)
  accuracy = hits / jnp.maximum(seen, 1.0)
  # A class absent from the epoch's batches takes the mean accuracy: no push either way.
  mean = jnp.sum(hits) / jnp.maximum(jnp.sum(seen), 1.0)
  accuracy = jnp.where(seen > 0, accuracy, mean)
  step = jnp.exp(-rate * accuracy)
  weights = jnp.clip(state['class_weights'] * step / jnp.mean(step), LOW, HIGH)
  weights = weights / jnp.mean(weights)
  return {'class_weights': jnp.where(epoch_end, weights, state['class_weights']),
          'class_hits': jnp.where(epoch_end, 0.0, hits),
          'class_seen': jnp.where(epoch_end, 0.0, seen)}
