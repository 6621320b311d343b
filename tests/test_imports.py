"""The package's import graph: no cycle (module-level and function-level imports alike),
arrows that point the way docs/architecture.md draws them, no `*_lib` alias, ruff clean
(complexity at most 12), and no module over MAX_LINES lines."""
import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'classbias_jax'


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob('*.py')}
MAX_LINES = 400  # a module longer than this is split along a seam a reader would expect


def imports(path: pathlib.Path) -> list[tuple[str, ast.AST]]:
  """(module imported, node) for every import of the package in `path`, at any depth."""
  out = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out += [(a.name, node) for a in node.names if a.name.startswith('classbias_jax')]
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('classbias_jax'):
      for alias in node.names:  # `from pkg import module` imports the module
        sub = f'{node.module}.{alias.name}'
        out.append((sub if sub in MODULES else node.module, node))
  return out


def graph() -> dict[str, set[str]]:
  return {name: {target for target, _ in imports(path) if target != name}
          for name, path in MODULES.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  sys.setrecursionlimit(10_000)
  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycle():
  assert cycles(graph()) == []


def test_the_cycle_finder_finds_one():
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def reaches(edges, start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for w in edges.get(todo.pop(), ()):
      if w not in seen:
        seen.add(w)
        todo.append(w)
  return seen


def test_arrows_point_one_way():
  edges = graph()
  for name in MODULES:
    reached = reaches(edges, name)
    if name.startswith('classbias_jax.train'):  # training never reaches the audit or the fix
      assert not {m for m in reached if m.startswith(('classbias_jax.audit',
                                                      'classbias_jax.fix'))}, name
    if name.startswith('classbias_jax.audit'):  # the audit reads results files only
      assert not {m for m in reached if m.startswith(('classbias_jax.train',
                                                      'classbias_jax.models'))}, name
    assert 'classbias_jax.main' not in reached, name


def test_no_lib_aliases():
  for name, path in MODULES.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        assert not [a.asname for a in node.names if (a.asname or '').endswith('_lib')], name


def test_training_does_not_load_matplotlib():
  code = ('import sys; from classbias_jax import train; '
          'assert "matplotlib" not in sys.modules and "scipy.stats" not in sys.modules')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


@pytest.mark.skipif(shutil.which('ruff') is None and not (
    pathlib.Path(sys.executable).parent / 'ruff').exists(), reason='ruff not installed')
def test_ruff_clean():
  ruff = shutil.which('ruff') or str(pathlib.Path(sys.executable).parent / 'ruff')
  result = subprocess.run([ruff, 'check', '.'], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-3000:]


def long_modules(paths, limit: int = MAX_LINES) -> dict[str, int]:
  """{path: its number of lines} of the files in `paths` with more than `limit` lines."""
  counts = {str(p): len(pathlib.Path(p).read_text().splitlines()) for p in paths}
  return {p: n for p, n in counts.items() if n > limit}


def test_no_module_is_over_400_lines():
  assert long_modules(MODULES.values()) == {}


def test_the_line_count_finds_a_long_module(tmp_path):
  short, long = tmp_path / 'short.py', tmp_path / 'long.py'
  short.write_text('x = 1\n' * MAX_LINES)
  long.write_text('x = 1\n' * (MAX_LINES + 1))
  assert long_modules([short, long]) == {str(long): MAX_LINES + 1}

