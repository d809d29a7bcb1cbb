"""The README's, the docs' and the docstrings' examples run as written.

Both run in a fresh interpreter, with JAX's defaults (float32), as a user
would run them.
"""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = [
  "trncg_jax.hvp",
  "trncg_jax.least_squares",
  "trncg_jax.preconditioner",
  "trncg_jax.steihaug",
  "trncg_jax.trust_region",
  "trncg_jax.transform",
  "trncg_jax.nonlinear_cg",
  "trncg_jax.solve",
]


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def code_blocks():
  """``(page, code)`` for every Python block of the README and docs/."""
  blocks = {}  # a block shown on two pages runs once
  for page in DOCS:
    if "results" not in page.parts:
      text = page.read_text()
      for code in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        blocks.setdefault(code, str(page.relative_to(ROOT)))
  return [(page, code) for code, page in blocks.items()]


def run_python(code):
  return subprocess.run(
    [sys.executable, "-c", code],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_readme_is_short_and_has_an_example_per_interface():
  text = (ROOT / "README.md").read_text()
  assert len(text.splitlines()) <= 150
  readme = [code for page, code in code_blocks() if page == "README.md"]
  for interface in ("trncg_update", "opt.update", "solve("):
    assert any(interface in code for code in readme), interface


@pytest.mark.parametrize(
  "page,code", code_blocks(), ids=[page for page, _ in code_blocks()]
)
def test_docs_example_runs(page, code):
  proc = run_python(code)
  assert proc.returncode == 0, f"{page}:\n{proc.stderr[-3000:]}"


def test_options_page_lists_every_option():
  import inspect

  import trncg_jax

  text = (ROOT / "docs" / "options.md").read_text()
  for fn in (
    trncg_jax.trncg,
    trncg_jax.trncg_init,
    trncg_jax.nonlinear_cg,
    trncg_jax.solve,
  ):
    for name, p in inspect.signature(fn).parameters.items():
      if p.kind == inspect.Parameter.KEYWORD_ONLY:
        assert f"| `{name}` |" in text, (fn.__name__, name)


def test_core_tests_need_no_benchmark_extras():
  """With flax and tqdm unimportable, the optimizer's tests still collect
  (the benchmark modules skip themselves). The CUTEst module is left out: it
  needs sif2jax, not flax, and collecting its problems alone takes 30 s."""
  code = (
    "import sys; sys.modules['flax'] = sys.modules['tqdm'] = None\n"
    "import pytest\n"
    "sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider',"
    " 'tests', '--ignore=tests/test_cutest.py']))\n"
  )
  proc = run_python(code)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  collected = proc.stdout
  for module in (
    "test_trust_region",
    "test_steihaug",
    "test_solve",
    "test_transform",
    "test_nonlinear_cg",
    "test_dense",
  ):
    assert f"tests/{module}.py::" in collected, module


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module):
  code = (
    f"import doctest, importlib, sys\n"
    f"m = importlib.import_module({module!r})\n"
    f"r = doctest.testmod(m, optionflags=doctest.NORMALIZE_WHITESPACE)\n"
    f"print(r)\nsys.exit(1 if r.failed or not r.attempted else 0)\n"
  )
  proc = run_python(code)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_public_names_are_exported():
  import trncg_jax

  for name in trncg_jax.__all__:
    assert hasattr(trncg_jax, name), name
  public = {
    n
    for n in dir(trncg_jax)
    if not n.startswith("_") and callable(getattr(trncg_jax, n))
  }
  assert public <= set(trncg_jax.__all__), public - set(trncg_jax.__all__)
