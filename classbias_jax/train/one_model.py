"""The pure one-model training step and prediction: optimiser, learning-rate shape,
preprocessing (augmentation and normalisation) and loss.

Everything here is one model's computation on one batch; model_axis.py runs it over the
M models of a sweep. Per-model knobs arrive as traced values in `knobs` (short name ->
scalar, or a [C] per-class table), so one compiled program serves every sweep value.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from classbias_jax import augment, knob_table
from classbias_jax.train import class_weights
from classbias_jax.train import model_axis
from classbias_jax.train import prune


def hyperparameter(knobs, config, dotted: str):
  """A knob's per-model traced value when the plan carries it, else the config's value:
  a field becomes sweepable by adding its row to knob_table.KNOBS, with no change here."""
  short = knob_table.short_name(dotted)
  return knobs[short] if short in knobs else knob_table.get_field(config, dotted)


def make_optimizer(momentum, weight_decay, learning_rate) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay added to the gradient, as PyTorch's SGD. All
  three may be traced per-model values."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum),
                     optax.scale(-learning_rate))


def lr_shape(optim_config, steps_per_epoch: int, epochs: int) -> Callable:
  """Learning-rate multiplier in [0, 1] of the global step: linear warmup, then cosine."""
  warmup = int(round(optim_config.warmup_epochs * steps_per_epoch))
  total = epochs * steps_per_epoch
  return optax.warmup_cosine_decay_schedule(0.0, 1.0, max(warmup, 1), max(total, warmup + 1),
                                            end_value=0.0)


def init_state(model, image_shape, key, weighted_classes: int = 0,
               pruned: bool = False) -> dict[str, Any]:
  """One model's {'params', 'batch_stats', 'opt_state'}, plus the per-class loss weights
  of class_weights.py for `weighted_classes` classes when that is not 0, and the pruning
  masks of prune.py when `pruned`."""
  variables = model.init(key, jnp.zeros((1,) + tuple(image_shape)), train=False)
  opt_state = make_optimizer(0.0, 0.0, 0.0).init(variables['params'])
  state = {'params': variables['params'], 'batch_stats': variables['batch_stats'],
           'opt_state': opt_state}
  if pruned:
    state.update(prune.init(variables['params']))
  return {**state, **class_weights.init(weighted_classes)} if weighted_classes else state


def init_fn(plan, model) -> Callable:
  """init(key) -> one model's state for this plan (init_state with the plan's classes)."""
  weighted = plan.num_classes if plan.class_weights else 0
  return lambda key: init_state(model, plan.image_shape, key, weighted, plan.prune)


def make_preprocess(plan) -> Callable:
  """preprocess(key, images uint8 [B, H, W, C], labels [B], knobs) -> (float32 images
  [B, H, W, C], soft targets float32 [B, num_classes]): one model's batch through the
  plan's ops (augment.preprocess), normalised with the dataset's channel statistics."""
  mean, std = jnp.asarray(plan.mean), jnp.asarray(plan.std)
  static = knob_table.static_values(plan.config)

  def preprocess(key, images, labels, knobs):
    return augment.preprocess(key, images.astype(jnp.float32) / 255.0, labels, knobs, plan.ops,
                              num_classes=plan.num_classes, mean=mean, std=std, static=static)

  return preprocess


def epoch_permutations(data_keys, epoch, num_examples: int):
  """int32 [M, N]: each model's order of the training set in `epoch` (seed-determined)."""
  return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch),
                                                   num_examples))(data_keys)


class ModelInputs(NamedTuple):
  """What differs between the models, besides their state: leaves [M, ...] on the model
  axis, one model's slice inside the step."""
  knobs: dict  # short name -> float32 [M] (or [M, C] for a per-class table)
  aug_key: jax.Array  # [M] keys: each model's augmentation draws
  perm: jax.Array | None  # int32 [M, N]: each model's order of the resident training set;
  # None for streamed input, whose batches are already in the shared order


class Batch(NamedTuple):
  """What every model of a step shares."""
  images: jax.Array  # uint8 [N, H, W, C] resident (perm picks the batch) or [B, ...] streamed
  labels: jax.Array  # int32 [N] or [B]
  epoch: jax.Array  # int32 scalar, 0-based
  step: jax.Array  # int32 scalar, the step within the epoch


def make_train_step(plan, model) -> Callable:
  """The update of ONE model on one batch, as model_axis lifts it:

    train_step(state, inputs: ModelInputs, batch: Batch)
        -> (state, {'loss', 'accuracy', 'finite'})

  inputs.perm int32 [N]: the model's order of the resident training set, whose uint8
  images [N, H, W, C] and labels [N] are shared; perm None (streamed input): images
  [B, ...] and labels [B] are the batch itself. epoch and step are traced int32 scalars.
  When the plan prunes (prune.py), the gradient and the updated kernels are masked and
  the state carries the masks.
  """
  config = plan.config
  batch_size = config.train.batch_size
  shape = lr_shape(config.optim, plan.steps_per_epoch, config.train.epochs)
  preprocess = make_preprocess(plan)
  on_data_axis = model_axis.batch_constraint(plan.strategy)  # identity off a 2-D mesh
  weighted = plan.class_weights  # static: some model has per-class loss weights
  mask_gradients, finish_pruning = prune.step_hooks(plan)  # identities without pruning

  def train_step(state, inputs: ModelInputs, batch: Batch):
    knobs, aug_key, perm = inputs
    images, labels, epoch, step = batch
    if perm is None:
      x, y = images, labels
    else:
      idx = jax.lax.dynamic_slice_in_dim(perm, step * batch_size, batch_size)
      x, y = images[idx], labels[idx]
    x, y = on_data_axis(x), on_data_axis(y)
    key = jax.random.fold_in(jax.random.fold_in(aug_key, epoch), step)
    x, targets = preprocess(key, x, y, knobs)

    def loss_fn(params):
      logits, new_vars = model.apply({'params': params, 'batch_stats': state['batch_stats']},
                                     x, train=True, mutable=['batch_stats'])
      losses = optax.softmax_cross_entropy(logits, targets)  # soft: smoothed, mixed
      loss = class_weights.weighted_loss(losses, y, state) if weighted else losses.mean()
      return loss, (logits, new_vars['batch_stats'])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    grads = mask_gradients(grads, state)
    value = lambda dotted: hyperparameter(knobs, config, dotted)
    lr = value('optim.learning_rate') * shape(epoch * plan.steps_per_epoch + step)
    tx = make_optimizer(value('optim.momentum'), value('optim.weight_decay'), lr)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new_state = {'params': optax.apply_updates(state['params'], updates),
                 'batch_stats': batch_stats, 'opt_state': opt_state}
    new_state = finish_pruning(new_state, state, value('prune.sparsity'),
                               epoch * plan.steps_per_epoch + step + 1)
    correct = jnp.argmax(logits, -1) == y
    if weighted:
      new_state.update(class_weights.update(state, y, correct,
                                            value('loss.class_weight_rate'),
                                            step == plan.steps_per_epoch - 1))
    metrics = {'loss': loss, 'accuracy': jnp.mean(correct), 'finite': jnp.isfinite(loss)}
    return new_state, metrics

  return train_step


def make_predict(plan, model) -> Callable:
  """predict(variables, images uint8 [B, H, W, C]) -> int32 [B]: one model's classes."""
  mean, std = jnp.asarray(plan.mean), jnp.asarray(plan.std)

  def predict(variables, images):
    x = (images.astype(jnp.float32) / 255.0 - mean) / std
    return jnp.argmax(model.apply(variables, x, train=False), -1).astype(jnp.int32)

  return predict
