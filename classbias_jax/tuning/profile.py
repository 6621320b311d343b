"""Where a compiled training step's time goes: its trace grouped by the HLO op each
kernel comes from (the benchmark's --profile)."""
from __future__ import annotations

import json
import os
import re


# ----------------------------------------------------------------------------------------
# Op-level profile: a jax.profiler trace, each executed HLO instruction matched to the
# compiled program's text to name what it does.
# ----------------------------------------------------------------------------------------
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = .+? ([a-z][\w\-]*)\((.*)$')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%([\w.\-]+) .*\{$')


def hlo_instructions(hlo: str) -> dict[str, dict[str, str]]:
  """name -> {'category', 'op'} for every instruction of the compiled HLO text; a fusion
  is categorised by the root of the computation it calls."""
  roots, parsed, current = {}, {}, None
  for line in hlo.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, opcode, rest = m.groups()
    calls = re.search(r'calls=%([\w.\-]+)', rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    target = re.search(r'custom_call_target="([^"]*)"', rest)
    if target:  # GPU: cuDNN convolutions and cuBLAS matmuls are custom calls
      opcode = 'custom-call:' + target.group(1)
    parsed[name] = (opcode, calls.group(1) if calls else None,
                    op_name.group(1) if op_name else '')
    if line.lstrip().startswith('ROOT'):
      roots[current] = opcode
  return {name: {'category': _category(name, roots.get(called, opcode) if called else opcode),
                 'op': op_name} for name, (opcode, called, op_name) in parsed.items()}


def _category(name: str, root: str) -> str:
  if root.startswith('custom-call:'):
    target = root.lower()
    if 'conv' in target:
      return 'convolution (cuDNN)'
    if 'gemm' in target or 'blas' in target or 'matmul' in target:
      return 'matmul'
    return 'custom call'
  if root.startswith('convolution'):
    return 'convolution (YNNPACK)' if name.startswith('ynn') else 'convolution (XLA)'
  if root == 'dot':
    return 'matmul'
  if root in ('copy', 'transpose'):
    return 'transpose/copy'
  if root in ('reduce', 'reduce-window'):
    return 'reduce'
  if root in ('gather', 'scatter', 'dynamic-slice', 'dynamic-update-slice', 'while'):
    return 'gather/scatter/loops'
  return 'elementwise'


def op_profile(step, calls: int, top: int = 12) -> dict:
  """Milliseconds per step spent in each op category and in the `top` slowest ops (summed
  over threads, so they can exceed the wall time when ops overlap)."""
  import glob
  import gzip
  import tempfile
  import time
  import jax
  info = hlo_instructions(step.compiled.as_text())
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    t0 = time.perf_counter()
    for _ in range(calls):
      step.run()
    wall = time.perf_counter() - t0
    jax.profiler.stop_trace()
    path, = glob.glob(os.path.join(tmp, '**', 'perfetto_trace.json.gz'), recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)['traceEvents']
  return summarize_trace(events, info, calls * step.steps_per_call, wall, top)


def summarize_trace(events: list, info: dict, steps: int, wall: float, top: int = 12) -> dict:
  """Milliseconds per step by op category and the `top` slowest ops, from a trace's events
  (chrome trace format) and `hlo_instructions` of the program: on CPU the events are the
  ops themselves; on an accelerator only its kernels count (host events would count the
  same work twice), matched to ops by name or by their 'hlo_op' argument."""
  # Accelerator events are kernels, named by the kernel; their args name the HLO op.
  device_pids = {e.get('pid') for e in events if e.get('ph') == 'M' and
                 e.get('name') == 'process_name' and
                 re.search(r'/device:(GPU|TPU)', str(e.get('args', {}).get('name', '')))}
  per_op: dict[str, float] = {}
  unmatched: dict[str, float] = {}
  device_busy_ms = 0.0
  for e in events:
    if e.get('ph') != 'X' or (device_pids and e.get('pid') not in device_pids):
      continue  # on an accelerator, only its kernels: host events would count twice
    ms = e.get('dur', 0) / 1e3 / steps
    args = e.get('args') or {}
    name = next((n for n in (e.get('name'), args.get('hlo_op'), args.get('long_name'))
                 if n in info), None)
    if device_pids:
      device_busy_ms += ms
    if name is not None:
      per_op[name] = per_op.get(name, 0.0) + ms
    elif device_pids:
      unmatched[e.get('name', '?')] = unmatched.get(e.get('name', '?'), 0.0) + ms
  by_category: dict[str, float] = {}
  for name, ms in per_op.items():
    by_category[info[name]['category']] = by_category.get(info[name]['category'], 0.0) + ms
  slowest = sorted(per_op, key=per_op.get, reverse=True)[:top]
  if unmatched:
    by_category['kernels not matched to an op'] = sum(unmatched.values())
  out = {'wall_ms_per_step': 1e3 * wall / steps, 'op_ms_per_step': sum(by_category.values()),
         'category_ms': dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
         'top_ops': [{'name': n, 'ms': per_op[n], **info[n]} for n in slowest]}
  if device_pids:  # an accelerator: how busy it was, and what could not be named
    out['device_busy_ms_per_step'] = device_busy_ms
    out['top_unmatched'] = sorted(unmatched.items(), key=lambda kv: -kv[1])[:top]
  return out
