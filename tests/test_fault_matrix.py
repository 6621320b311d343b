"""The fault matrix: every file the tool reads x every kind of damage ends in one line (a
UserError of one line; exit 1 from the CLIs), with nothing half-written, or recovers
where the file is a log (metrics.jsonl). READ_SITES lists each module that reads a file,
and a test keeps it equal to the reads found in the package, so a new input cannot skip
the matrix. Also here: a read-only workdir and a device out of memory."""
import ast
import errno
import gzip
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, tiny_config, tiny_plan
from PIL import Image

from classbias_jax import configs, data, files, report, results, versions
from classbias_jax.errors import DeviceOutOfMemory, UserError, WriteError
from classbias_jax.fix import policy as fix_policy
from classbias_jax.train import arms, checkpoint, device_memory, epochs, model_axis, study_dir
from classbias_jax.train import trainer

# Each module that reads a file the user or a run leaves on disk -> what reads it here.
READ_SITES = {
    'classbias_jax/results.py': 'results.npz: the report and the fix CLI (RESULTS_DAMAGE)',
    'classbias_jax/report.py': 'config.json beside results.npz (CONFIG_DAMAGE)',
    'classbias_jax/fix/policy.py': "the sweep's config.json (CONFIG_DAMAGE)",
    'classbias_jax/train/arms.py': 'policy.json and its sweep\'s config.json (POLICY_DAMAGE)',
    'classbias_jax/train/study_dir.py': 'config.json of finished results, the lock\'s holder',
    'classbias_jax/train/epochs.py': 'metrics.jsonl on resume (METRICS_DAMAGE)',
    'classbias_jax/data/idx.py': 'IDX files (IDX_DAMAGE)',
    'classbias_jax/data/folder.py': 'image files (IMAGE_DAMAGE)',
    'classbias_jax/data/class_words.py': 'a words file of class names (WORDS_DAMAGE)',
    'classbias_jax/versions.py': 'requirements.lock (test_a_damaged_lock_file)',
    # Not inputs: JSON the process made itself, or measuring tools' own files.
    'classbias_jax/train/checkpoint.py': 'a JSON round trip of the config in memory (damaged '
                                         'checkpoints: tests/test_checkpoint.py)',
    'classbias_jax/tuning/baselines.py': "its own child process's output",
    'classbias_jax/tuning/hostmem.py': '/proc (the allocator in effect)',
    'classbias_jax/tuning/profile.py': "the profiler's trace it just wrote",
    'classbias_jax/tuning/strategy.py': "the measurement's own output",
}
READS = ('json.load', 'json.loads', 'np.load', 'Image.open', 'gzip.open', 'np.fromfile')


def read_sites() -> set[str]:
  """Modules of the package that call a file reader (or `open` in a reading mode)."""
  found = set()
  for path in sorted(pathlib.Path(ROOT, 'classbias_jax').rglob('*.py')):
    for node in ast.walk(ast.parse(path.read_text())):
      if not isinstance(node, ast.Call):
        continue
      name = ast.unparse(node.func)
      mode = node.args[1] if name == 'open' and len(node.args) > 1 else None
      reading = name == 'open' and not (isinstance(mode, ast.Constant) and 'r' not in mode.value)
      if name in READS or reading:
        found.add(str(path.relative_to(ROOT)))
  return found


def test_every_module_that_reads_a_file_is_in_the_matrix():
  assert read_sites() == set(READ_SITES)


# ---------------------------------------------------------------------------------------
# What a case asserts.
# ---------------------------------------------------------------------------------------
def snapshot(folder) -> dict:
  """Every file under `folder`: its size and modification time."""
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      info = os.stat(os.path.join(root, name))
      out[os.path.relpath(os.path.join(root, name), folder)] = (info.st_size, info.st_mtime_ns)
  return out


def one_line_and_nothing_written(read, folder, names) -> str:
  """read() raises a UserError of one line naming one of `names`; `folder` unchanged."""
  before = snapshot(folder)
  with pytest.raises(UserError) as error:
    read()
  text = str(error.value)
  assert '\n' not in text and any(name in text for name in names), text
  assert snapshot(folder) == before
  return text


# Generic damage to any file.
def missing(path):
  os.remove(path)


def empty(path):
  open(path, 'w').close()


def truncated(path):
  content = open(path, 'rb').read()
  open(path, 'wb').write(content[:len(content) // 2])


def garbage(path):
  open(path, 'wb').write(np.random.default_rng(0).bytes(300))


GENERIC = {'missing': missing, 'empty': empty, 'truncated': truncated, 'garbage': garbage}


def edit_json(change):
  def damage(path):
    obj = json.load(open(path))
    obj = change(obj)
    json.dump(obj, open(path, 'w'))
  return damage


def set_field(dotted, value):
  def change(obj):
    node = obj
    *parents, last = dotted.split('.')
    for p in parents:
      node = node[p]
    node[last] = value(node[last]) if callable(value) else value
    return obj
  return edit_json(change)


# ---------------------------------------------------------------------------------------
# A finished sweep: results.npz, config.json and policy.json as the tool writes them.
# ---------------------------------------------------------------------------------------
NAMES = ('a', 'b', 'c')
VALUES = (0.1, 0.35, 1.0)


def sweep_config():
  return tiny_config(**{'sweep__name': 'aug.crop_scale_min', 'sweep__values': VALUES,
                        'seeds': 4})


def sweep_arrays(seeds=4, per_class=40):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(len(NAMES)), per_class).astype(np.int32)
  correct = rng.random((len(VALUES), seeds, labels.size)) < 0.8
  predictions = np.where(correct, labels, (labels + 1) % len(NAMES)).astype(np.int32)
  acc = results.class_accuracy(predictions == labels, labels, len(NAMES)).astype(np.float32)
  return {'sweep_name': np.asarray('aug.crop_scale_min'), 'sweep_values': np.asarray(VALUES),
          'seeds': np.arange(seeds), 'class_names': np.asarray(NAMES),
          'test_labels': labels, 'test_predictions': predictions, 'per_class_accuracy': acc,
          'mean_accuracy': acc.mean(-1), 'val_labels': labels, 'val_predictions': predictions}


@pytest.fixture
def sweep(tmp_path):
  folder = str(tmp_path / 'sweep')
  os.makedirs(folder)
  results.save_results(folder, sweep_arrays())
  config = dict(checkpoint.config_json(sweep_config()), resolved={'class_names': list(NAMES)})
  files.write_json(os.path.join(folder, 'config.json'), config)
  fix_policy.write_policy(folder)
  return folder


def fix_study(folder):
  c = tiny_config(**{'sweep__name': configs.ARM_SWEEP, 'sweep__values': (0.0, 1.0, 2.0, 3.0),
                     'seeds': 4})
  c.fix = configs.ml_collections.ConfigDict({'policy_from': folder, 'class_weight_rate': 1.0})
  return c


def test_the_undamaged_sweep_reads_back(sweep):
  policy, _ = arms.read_policy(sweep)
  plan = tiny_plan(fix_study(sweep), num_classes=len(NAMES))
  table = plan.knobs['crop_scale_min']  # [M, C]: the distinct arms x 4 seeds
  assert table.shape[1] == 3 and table.shape[0] % 4 == 0 and policy['knob'] == 'aug.crop_scale_min'
  assert report.write(sweep, num_bootstrap=20)['report'].endswith('report.md')


def save_raw(folder, **changes):
  """results.npz with `changes` to the sweep's arrays, written without validation."""
  arrays = dict(sweep_arrays(), **changes)
  with open(os.path.join(folder, results.RESULTS_FILE), 'wb') as f:
    np.savez(f, **{k: v for k, v in arrays.items() if v is not None})


def without_test_images_of_c():
  labels = sweep_arrays()['test_labels']
  return np.where(labels == 2, 0, labels).astype(np.int32)


RESULTS_DAMAGE = dict(GENERIC, **{
    'an array missing': lambda p: save_raw(os.path.dirname(p), class_names=None),
    'a wrong shape': lambda p: save_raw(os.path.dirname(p), mean_accuracy=np.zeros((3, 1))),
    'text for numbers': lambda p: save_raw(os.path.dirname(p), sweep_values=np.asarray(['x'] * 3)),
    'a label outside the classes': lambda p: save_raw(
        os.path.dirname(p), test_labels=np.full(120, 7, np.int32)),
    'a class without test images': lambda p: save_raw(
        os.path.dirname(p), test_labels=without_test_images_of_c()),
    'one class': lambda p: save_raw(
        os.path.dirname(p), class_names=np.asarray(['a']), test_labels=np.zeros(120, np.int32),
        test_predictions=np.zeros((3, 4, 120), np.int32), val_labels=np.zeros(120, np.int32),
        val_predictions=np.zeros((3, 4, 120), np.int32),
        per_class_accuracy=np.ones((3, 4, 1), np.float32)),
    'a pickled object': lambda p: save_raw(
        os.path.dirname(p), seeds=np.asarray([object()] * 4, dtype=object)),
})


@pytest.mark.parametrize('damage', RESULTS_DAMAGE)
def test_damaged_results(sweep, damage):
  os.remove(os.path.join(sweep, configs.POLICY_FILE))  # the fix CLI would write it
  RESULTS_DAMAGE[damage](os.path.join(sweep, results.RESULTS_FILE))
  for read in (lambda: report.write(sweep, num_bootstrap=20),
               lambda: fix_policy.write_policy(sweep)):
    one_line_and_nothing_written(read, sweep, ['results.npz'])


CONFIG_DAMAGE = dict(GENERIC, **{
    'not an object': lambda p: json.dump([1, 2], open(p, 'w')),
    'a section not an object': set_field('sweep', 'crop'),
    "another sweep's": set_field('sweep.name', 'optim.weight_decay'),
})


@pytest.mark.parametrize('damage', CONFIG_DAMAGE)
def test_a_damaged_config_json(sweep, damage):
  CONFIG_DAMAGE[damage](os.path.join(sweep, 'config.json'))
  readers = [lambda: arms.read_policy(sweep), lambda: fix_policy.write_policy(sweep)]
  if damage != 'missing':  # results saved from a notebook have none: the report goes on
    readers.append(lambda: report.write(sweep, num_bootstrap=20))
  for read in readers:
    one_line_and_nothing_written(read, sweep, ['config.json', 'policy.json'])


def test_an_unreadable_config_json_of_finished_results_is_refused(sweep):
  truncated(os.path.join(sweep, 'config.json'))
  one_line_and_nothing_written(
      lambda: study_dir.guard_results(sweep, sweep_config(), overwrite=False), sweep,
      ['unreadable config.json'])


POLICY_DAMAGE = dict(GENERIC, **{
    'not an object': lambda p: json.dump('policy', open(p, 'w')),
    'a field missing': edit_json(lambda o: {k: v for k, v in o.items() if k != 'policies'}),
    'a short table': set_field('policies.per_class', lambda t: t[:-1]),
    'a value outside the range': set_field('policies.per_class', lambda t: [5.0] + t[1:]),
    'NaN': set_field('policies.protect', lambda t: [float('nan')] + t[1:]),
    'text for a value': set_field('policies.per_class', lambda t: ['big'] + t[1:]),
    'a table not a list': set_field('policies.per_class', 0.5),
    'other class names': set_field('class_names', lambda n: n[::-1]),
    'another knob': set_field('knob', 'aug.color_strength'),
    'a knob that is not per class': set_field('knob', 'optim.weight_decay'),
    'other sweep values': set_field('sweep_values', [0.1, 1.0]),
    'another fingerprint': set_field('sweep_fingerprint', '0' * 16),
    'a uniform value not swept': set_field('uniform', 0.2),
    'a uniform value not a number': set_field('uniform', True),
    'a wrong off value': set_field('off', 0.5),
    'an unknown recommended policy': set_field('policy', 'magic'),
    'a knob not text': set_field('knob', ['aug', 'crop_scale_min']),
    'a recommended policy not text': set_field('policy', ['per_class']),
    'policies not an object': set_field('policies', [[0.1, 0.1, 0.1]]),
})


@pytest.mark.parametrize('damage', POLICY_DAMAGE)
def test_a_damaged_policy_json(sweep, damage):
  POLICY_DAMAGE[damage](os.path.join(sweep, configs.POLICY_FILE))
  text = one_line_and_nothing_written(lambda: arms.read_policy(sweep), sweep, ['policy.json'])
  if damage == 'missing':
    assert 'python -m classbias_jax.fix' in text


def test_a_retrained_sweep_voids_its_policy(sweep):
  """The sweep trained again with another config (without --overwrite, which deletes
  policy.json): its fingerprint no longer matches."""
  set_field('optim.momentum', 0.5)(os.path.join(sweep, 'config.json'))
  text = one_line_and_nothing_written(lambda: arms.read_policy(sweep), sweep, ['policy.json'])
  assert 'trained again with another config' in text


def test_a_policy_table_against_the_fixed_end_of_its_range(sweep):
  """A sweep of crop minima under a fixed maximum of 0.3: the off arm (minimum 1) and any
  table above 0.3 would train an empty range."""
  set_field('aug.crop_scale_max', 0.3)(os.path.join(sweep, 'config.json'))
  fix_policy.write_policy(sweep)
  config = fix_study(sweep)
  config.aug.crop_scale_max = 0.3
  with pytest.raises(UserError, match=r'aug.crop_scale_min (1|0.35) exceeds '
                                      r'aug.crop_scale_max 0.3 in the \w+ arm'):
    tiny_plan(config, num_classes=len(NAMES))


# ---------------------------------------------------------------------------------------
# metrics.jsonl: a log, read on resume; a line cut short by a crash is dropped.
# ---------------------------------------------------------------------------------------
METRICS_DAMAGE = {
    'a line cut short': lambda f: f.write('{"epoch": 2, "train_lo'),
    'garbage': lambda f: f.write('\x00\xff garbage\n'),
    'a record without its epoch': lambda f: f.write('{"train_loss": [1.0]}\n'),
    'not a record': lambda f: f.write('[1, 2]\n'),
}


@pytest.mark.parametrize('damage', METRICS_DAMAGE)
def test_a_damaged_metrics_log_is_cut_back_to_its_good_records(tmp_path, damage, capsys):
  path = str(tmp_path / 'metrics.jsonl')
  with open(path, 'w') as f:
    for epoch in range(3):
      f.write(json.dumps({'epoch': epoch, 'train_loss': [1.0]}) + '\n')
    METRICS_DAMAGE[damage](f)
  epochs.truncate_metrics(path, 1)
  assert [json.loads(line)['epoch'] for line in open(path)] == [0, 1]
  assert capsys.readouterr().err.strip() == f'{path}: dropped 1 damaged line'


# ---------------------------------------------------------------------------------------
# Dataset files: IDX and images.
# ---------------------------------------------------------------------------------------
def write_idx(path, array):
  code = {np.dtype(np.uint8): 0x08}[array.dtype]
  header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, '>i4').tobytes()
  with open(path, 'wb') as f:
    f.write(gzip.compress(header + array.tobytes()))


def idx_set(folder):
  rng = np.random.default_rng(0)
  for prefix, n in (('train', 30), ('t10k', 10)):
    write_idx(os.path.join(folder, f'{prefix}-images-idx3-ubyte.gz'),
              rng.integers(0, 256, (n, 6, 6), dtype=np.uint8))
    write_idx(os.path.join(folder, f'{prefix}-labels-idx1-ubyte.gz'),
              (np.arange(n) % 2).astype(np.uint8))


IDX_DAMAGE = dict(GENERIC, **{
    'a wrong magic number': lambda p: open(p, 'wb').write(gzip.compress(b'\x01\x02\x08\x01')),
    'a header longer than its data': lambda p: open(p, 'wb').write(gzip.compress(
        bytes([0, 0, 8, 3]) + np.asarray((30, 6, 6), '>i4').tobytes() + bytes(100))),
})


@pytest.mark.parametrize('damage', IDX_DAMAGE)
@pytest.mark.parametrize('name', ['train-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'])
def test_a_damaged_idx_file(tmp_path, damage, name):
  idx_set(tmp_path)
  cfg = configs.base_config().data
  cfg.name = f'idx:{tmp_path}'
  assert data.load(cfg).num_classes == 2
  IDX_DAMAGE[damage](str(tmp_path / name))
  one_line_and_nothing_written(lambda: data.load(cfg), tmp_path, [name, 'idx:'])


IMAGE_DAMAGE = dict(GENERIC, **{
    'a PNG cut after its header': lambda p: open(p, 'r+b').truncate(60),
})


@pytest.mark.parametrize('damage', IMAGE_DAMAGE)
def test_a_damaged_image_file(tmp_path, damage):
  rng = np.random.default_rng(0)
  for c in range(2):
    os.makedirs(tmp_path / f'class_{c}')
    for i in range(6):
      Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
          tmp_path / f'class_{c}' / f'{i}.png')
  cfg = configs.base_config().data
  cfg.name = f'folder:{tmp_path}'
  IMAGE_DAMAGE[damage](str(tmp_path / 'class_1' / '3.png'))
  if damage == 'missing':  # one image fewer is still a dataset
    assert data.load(cfg).num_classes == 2
    return
  one_line_and_nothing_written(lambda: data.load(cfg), tmp_path, ['3.png'])


WORDS_DAMAGE = dict(GENERIC, **{
    'no "id words" line': lambda p: open(p, 'w').write('n01\nn02\n'),
    'a folder': lambda p: (os.remove(p), os.makedirs(p)),
})


@pytest.mark.parametrize('damage', WORDS_DAMAGE)
def test_a_damaged_words_file(tmp_path, damage):
  idx_set(tmp_path)
  cfg = configs.base_config().data
  cfg.name, cfg.class_words = f'idx:{tmp_path}', str(tmp_path / 'words.txt')
  open(cfg.class_words, 'w').write('0 zero, nought\n1\tone\n')
  assert data.load(cfg).class_names == ('zero', 'one')
  WORDS_DAMAGE[damage](cfg.class_words)
  if damage == 'truncated':  # the lines left name their classes; an id missing stays an id
    assert data.load(cfg).class_names == ('zero', '1')
    return
  one_line_and_nothing_written(lambda: data.load(cfg), tmp_path, ['words.txt'])


@pytest.mark.parametrize('damage', GENERIC)
def test_a_damaged_lock_file(tmp_path, damage):
  path = str(tmp_path / 'requirements.lock')
  with open(os.path.join(ROOT, 'requirements.lock')) as f:
    open(path, 'w').write(f.read())
  GENERIC[damage](path)
  one_line_and_nothing_written(lambda: versions.check_lock(path), tmp_path, [path])


# ---------------------------------------------------------------------------------------
# The command lines: one line on stderr, exit 1, nothing written.
# ---------------------------------------------------------------------------------------
def one_error_line(command, folder) -> str:
  before = snapshot(folder)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  done = subprocess.run([sys.executable, '-m', *command], cwd=ROOT, env=env, text=True,
                        capture_output=True, timeout=300)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith('error: '), done.stderr
  assert snapshot(folder) == before
  return lines[0]


def test_the_report_and_fix_commands_say_one_line(sweep):
  truncated(os.path.join(sweep, results.RESULTS_FILE))
  assert 'results.npz' in one_error_line(['classbias_jax.report', f'--workdir={sweep}'], sweep)
  assert 'results.npz' in one_error_line(['classbias_jax.fix', f'--workdir={sweep}'], sweep)


# ---------------------------------------------------------------------------------------
# A read-only workdir.
# ---------------------------------------------------------------------------------------
def read_only(monkeypatch, folder) -> None:
  """Every attempt to create or write a file or folder under `folder` fails as on a
  read-only file system."""
  folder = os.path.abspath(folder)
  inside = lambda p: os.path.abspath(os.fsdecode(p)).startswith(folder)  # noqa: E731
  real_open, real_mkdir = os.open, os.mkdir
  writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

  def guarded_open(path, flags, *args, **kwargs):
    if inside(path) and flags & writing:
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return real_open(path, flags, *args, **kwargs)

  def guarded_mkdir(path, *args, **kwargs):
    if inside(path):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return real_mkdir(path, *args, **kwargs)
  monkeypatch.setattr(os, 'open', guarded_open)
  monkeypatch.setattr(os, 'mkdir', guarded_mkdir)


def test_a_read_only_workdir_is_one_line_for_training_and_the_report(sweep, monkeypatch):
  read_only(monkeypatch, sweep)
  text = one_line_and_nothing_written(lambda: report.write(sweep, num_bootstrap=20), sweep,
                                      [sweep])
  assert 'read-only file system' in text
  config = tiny_config(seeds=1, train__epochs=1)
  with pytest.raises(WriteError, match='cannot create the workdir .*: read-only file system'):
    trainer.run(config, os.path.join(sweep, 'run'))
  with pytest.raises(WriteError, match='cannot write in the workdir .*: read-only file system'):
    trainer.run(config, sweep)
  assert not os.path.exists(os.path.join(sweep, 'run'))


# ---------------------------------------------------------------------------------------
# A device out of memory.
# ---------------------------------------------------------------------------------------
OOM = 'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.00GiB.'


def test_xlas_own_out_of_memory_error_is_recognised():
  plan = tiny_plan(tiny_config(), strategy='vmap')
  with pytest.raises(DeviceOutOfMemory) as error:
    with device_memory.guard(plan, 'training', 'resident'):
      jax.block_until_ready(jax.jit(lambda: jnp.ones((1 << 22, 1 << 22)))())  # 64 TiB
  assert str(error.value) == (
      'the device ran out of memory training 4 models (M) of tiny (width 1, float32) at '
      'train.batch_size 64, strategy vmap: lower train.batch_size (now 64), or run fewer '
      'models at once (train.strategy=chunked with a small train.chunk_size, or '
      'sequential), or keep the images off the device (data.input_mode=streamed), or '
      'train a smaller model (model.width, model.name)')
  with pytest.raises(RuntimeError, match='another failure'):  # any other error as it was
    with device_memory.guard(plan, 'training', 'resident'):
      raise RuntimeError('another failure')


def raises_out_of_memory(*args, **kwargs):
  def step(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(OOM)
  return step


def test_out_of_memory_at_the_first_step_leaves_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(trainer, 'make_train_epoch', raises_out_of_memory)
  config = tiny_config(seeds=1, train__epochs=1, train__strategy='chunked')
  workdir = str(tmp_path / 'run')
  with pytest.raises(DeviceOutOfMemory) as error:
    trainer.run(config, workdir)
  assert '\n' not in str(error.value)
  assert 'training 2 models (M) of tiny' in str(error.value)
  assert 'lower train.batch_size (now 64), or lower train.chunk_size (now 4)' in str(error.value)
  assert not os.path.exists(workdir)  # no config.json, no empty metrics.jsonl, no folder
  os.makedirs(workdir)
  with pytest.raises(DeviceOutOfMemory):
    trainer.run(config, workdir)
  assert os.listdir(workdir) == []


def test_out_of_memory_while_evaluating_names_the_evaluation_batch(tmp_path, monkeypatch):
  monkeypatch.setattr(model_axis, 'lift_predict', raises_out_of_memory)
  config = tiny_config(seeds=1, train__epochs=1, train__eval_every=0)
  with pytest.raises(DeviceOutOfMemory, match=r'evaluating 2 models \(M\) of tiny .*lower '
                                              r'train.eval_batch_size \(now 500\)'):
    trainer.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / results.RESULTS_FILE)
  assert len(open(tmp_path / 'metrics.jsonl').readlines()) == 1  # it trained: the log stays
