"""Test set-up: float64 by default, since most checks compare to 1e-10.

float32 behaviour is tested with explicitly float32 arrays. The README and the
doctests run in subprocesses (see test_docs.py), so they see JAX's defaults.

One persistent XLA compilation cache serves the whole run: this process, the
processes it starts (notebooks, docs examples), and pytest-xdist's workers,
which inherit its directory. Tests that build the same problem again read
their programs from it (the PINN suite's `--update` rerun; the paper run at
a fixed PINN budget after the tiny one, 38 s before, 14 s after): on 2
workers and 2 cores the default run took 20.1 min without it in-process and
15.5 min with it, the same tests.

Each test module's compiled programs are released when it ends. The session
kept every executable loaded, each with its memory mappings, and once the
Newton branch had grown the dense Gauss-Newton programs it passed the
kernel's limit of 65,530 (``vm.max_map_count``) in test_pinn_benchmark:
jaxlib crashed there, reading the cache twice and compiling once.
"""

import atexit
import gc
import os
import shutil
import tempfile

_cache = tempfile.mkdtemp(prefix="trncg-jax-xla-cache-")
atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# Read by JAX at import, here and in the subprocesses, which inherit them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import importlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
# The module, not the function that trncg_jax exports under its name.
solve_module = importlib.import_module("trncg_jax.solve")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  yield
  # solve keeps its compiled loops too (64 of them, each with its data).
  solve_module._COMPILED.clear()
  solve_module._build_run.cache_clear()
  jax.clear_caches()
  gc.collect()
