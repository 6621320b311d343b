"""Gradual magnitude pruning (Zhu & Gupta 2017) of one model's convolution and dense
kernels, with the masks as that model's state.

Prunable weights: every leaf of the params named 'kernel' (convolutions and the dense
layer; biases and BatchNorm's scale and bias are not pruned). A model keeps one bool mask
per kernel, all True at the start. Counting d = steps done over the run, the model's
sparsity after step d is

    s(d) = s_f (1 - (1 - t)^3),  t = clip((d - d0) / (d1 - d0), 0, 1)

with s_f its target (`prune.sparsity`, traced per model: a sparsity sweep is one program),
d0 = round(prune.start_epoch * steps per epoch), d1 = round(prune.end_epoch * steps per
epoch) (d1 = d0: one-shot, s(d) = s_f from d0 on). The masks are recomputed after the
steps d0, d0 + k, d0 + 2k, ... (k = prune.every_steps) and after step d1, and held fixed
after d1 (d1 is at least 1). Recomputing ranks all n prunable weights of the model
together (global magnitude pruning) with one sort, and keeps those whose magnitude is at
least the (p + 1)-th smallest, p = round(s(d) n): the p smallest go (exactly p unless
magnitudes tie there; at most n - 1). A pruned weight stays pruned and at zero: its
gradient is masked before the update and the kernels after it, so weight decay and
momentum cannot revive it.

Zhu & Gupta prune each layer to the same sparsity; here the ranking is over the whole
model, as in the global magnitude pruning of Blalock et al. 2020, so layers with small
weights lose more of them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

MASKS = 'prune_masks'  # the state's key of the masks (a tree like the params' kernels)
PRUNABLE = 'kernel'  # the name of a prunable params leaf


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When masks change, in steps done over the run (module docstring)."""
  start: int  # d0
  end: int  # d1 >= d0
  every: int  # k >= 1

  def sparsity(self, target, done):
    """s(d): float32 scalar, for a target (traced) after `done` (traced int) steps."""
    if self.end == self.start:
      t = jnp.asarray(done >= self.start, jnp.float32)
    else:
      t = jnp.clip((done - self.start) / (self.end - self.start), 0.0, 1.0)
    return target * (1.0 - (1.0 - t) ** 3)

  def due(self, done):
    """Whether the masks are recomputed after `done` steps: a bool every model shares."""
    on_grid = (done - self.start) % self.every == 0
    return (done >= self.start) & (done <= self.end) & (on_grid | (done == self.end))


def schedule(prune_config, steps_per_epoch: int) -> Schedule:
  """The Schedule of the `prune` config fields (epochs may be fractions) for this many
  steps per epoch; d1 is at least 1 (no step prunes before the first)."""
  start = int(round(prune_config.start_epoch * steps_per_epoch))
  end = max(int(round(prune_config.end_epoch * steps_per_epoch)), start, 1)
  return Schedule(start, end, int(prune_config.every_steps))


def kernels(params) -> dict[str, Any]:
  """The prunable leaves of a params tree, as a tree of the same nesting (dicts only)."""
  out = {}
  for name, value in params.items():
    if isinstance(value, dict):
      sub = kernels(value)
      if sub:
        out[name] = sub
    elif name == PRUNABLE:
      out[name] = value
  return out


def init(params) -> dict[str, Any]:
  """The state a pruned model adds: {MASKS: a True mask per kernel}."""
  return {MASKS: jax.tree.map(lambda k: jnp.ones(k.shape, bool), kernels(params))}


def apply(tree, masks):
  """A params-shaped tree (params, gradients) with the masked kernel entries set to 0."""
  def visit(node, mask):
    if not isinstance(mask, dict):
      return jnp.where(mask, node, jnp.zeros_like(node))
    return {name: visit(value, mask[name]) if name in mask else value
            for name, value in node.items()}
  return visit(tree, masks)


def new_masks(params, masks, sparsity):
  """The masks that keep the largest magnitudes of all kernels together at `sparsity`
  (a traced scalar in [0, 1)); a weight pruned before stays pruned."""
  leaves = jax.tree.leaves(kernels(params))
  magnitudes = jnp.sort(jnp.concatenate([jnp.abs(k).ravel() for k in leaves]))
  n = magnitudes.shape[0]
  pruned = jnp.clip(jnp.round(sparsity * n).astype(jnp.int32), 0, n - 1)
  threshold = magnitudes[pruned]  # the smallest magnitude kept
  return jax.tree.map(lambda k, m: m & (jnp.abs(k) >= threshold), kernels(params), masks)


def after_update(params, masks, target, done, plan_schedule: Schedule):
  """(params, masks) after an optimiser update: the kernels masked, and, when `done`
  steps is a mask step, the masks recomputed at s(done) and applied. `done` is shared
  by all models, so under the model axis the recomputation (a sort) runs only at mask
  steps (lax.cond on a value the model axis does not batch)."""
  params = apply(params, masks)
  masks = jax.lax.cond(
      plan_schedule.due(done),
      lambda: new_masks(params, masks, plan_schedule.sparsity(target, done)),
      lambda: masks)
  return apply(params, masks), masks


def measured_sparsity(params) -> jax.Array:
  """float32 scalar: the fraction of one model's prunable weights that are exactly 0."""
  leaves = jax.tree.leaves(kernels(params))
  zeros = sum(jnp.sum(k == 0) for k in leaves)
  return zeros.astype(jnp.float32) / sum(k.size for k in leaves)


def step_hooks(plan) -> tuple[Callable, Callable]:
  """The one-model step's two hooks for this plan, identities when no model prunes:

    mask_gradients(grads, state) -> grads with the pruned kernel entries 0
    finish(new_state, state, target, done) -> new_state with the kernels masked and
        the masks recomputed when `done` (steps done, traced int) is a mask step
  """
  if not plan.prune:
    return (lambda grads, state: grads), (lambda new_state, state, target, done: new_state)
  plan_schedule = schedule(plan.config.prune, plan.steps_per_epoch)

  def finish(new_state, state, target, done):
    params, masks = after_update(new_state['params'], state[MASKS], target, done,
                                 plan_schedule)
    return {**new_state, 'params': params, MASKS: masks}

  return (lambda grads, state: apply(grads, state[MASKS])), finish
