"""The CUTEst benchmark: its scoring against hand-made tables, and a fast run
of `python -m benchmarks.cutest` on the problems trncg used to fail."""

import importlib.util

import pytest

# Found, not imported: sif2jax's top-level import builds every problem (88 s
# on 2 cores), which benchmarks.cutest skips (see its load_problems).
if importlib.util.find_spec("sif2jax") is None:
  pytest.skip(
    "needs the cutest extra: pip install -e '.[cutest]'",
    allow_module_level=True,
  )

import csv
import math

import numpy as np
import pytest

from benchmarks import cutest


def outcome(problem, solver, f, grad_norm, seconds, evaluations=10):
  return cutest.Outcome(
    problem, 2, solver, f, grad_norm, 5, evaluations, 0, 0.1, seconds, ""
  )


def test_solved_needs_a_small_gradient_and_the_best_value():
  rows = [
    outcome("P", "a", 1.0, 1e-7, 1.0),
    outcome("P", "b", 1.0 + 2e-6, 1e-8, 1.0),  # f too high
    outcome("P", "c", 0.5, 1e-3, 1.0),  # best f, gradient too big
    outcome("Q", "a", math.nan, math.nan, 1.0),  # an error
    outcome("Q", "b", -3.0, 1e-9, 1.0),
  ]
  solved = cutest.solved_flags(rows)
  # f_best of P is 0.5 (c's, although c did not converge).
  assert solved == {
    ("P", "a"): False,
    ("P", "b"): False,
    ("P", "c"): False,
    ("Q", "a"): False,
    ("Q", "b"): True,
  }
  rows[2] = outcome("P", "c", 1.0 - 5e-7, 1e-3, 1.0)
  solved = cutest.solved_flags(rows)
  assert solved["P", "a"] and not solved["P", "b"] and not solved["P", "c"]


def test_performance_ratios_are_relative_to_the_fastest_solver():
  rows = [
    outcome("P", "a", 0.0, 0.0, 2.0),
    outcome("P", "b", 0.0, 0.0, 1.0),
    outcome("Q", "a", 0.0, 0.0, 3.0),
    outcome("Q", "b", 0.0, 1.0, 1.0),
    outcome("R", "a", 0.0, 1.0, 3.0),
    outcome("R", "b", 0.0, 1.0, 1.0),
  ]
  solved = cutest.solved_flags(rows)
  ratios = cutest.profile(rows, solved, "run_seconds", ("a", "b"))
  # R is solved by neither and left out; b did not solve Q.
  assert ratios == {"a": [2.0, 1.0], "b": [1.0, math.inf]}


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("cutest")
  cutest.main(
    [
      "--problems",
      "BROWNBS",
      "LUKSAN15LS",
      "KIRBY2LS",
      "--solvers",
      "trncg",
      "scipy-trust-ncg",
      "--out",
      str(out),
    ]
  )
  with open(out / "cutest.csv") as f:
    return out, list(csv.DictReader(f))


@pytest.mark.xdist_group("cutest_fast_run")
def test_trncg_defaults_solve_the_problems_they_used_to_fail(fast_run):
  """BROWNBS (its minimizer 1e6 from the start: max_radius 10 could not get
  there in 1000 steps) and LUKSAN15LS, KIRBY2LS (the radius collapsed at the
  loss's round-off) are solved: ||g|| <= 1e-6, in far fewer steps."""
  _, rows = fast_run
  ours = {r["problem"]: r for r in rows if r["solver"] == "trncg"}
  assert set(ours) == {"BROWNBS", "LUKSAN15LS", "KIRBY2LS"}
  for name, row in ours.items():
    assert float(row["grad_norm"]) <= cutest.GTOL, (name, row)
    assert int(row["iterations"]) < 200, (name, row)
    assert row["status"] == "GRAD_TOL", (name, row)
    # Evaluations: one gradient per iteration and the start, plus the HVPs.
    assert int(row["evaluations"]) == (
      int(row["iterations"]) + 1 + int(row["hvps"])
    )


@pytest.mark.xdist_group("cutest_fast_run")
def test_outputs_are_written(fast_run):
  out, rows = fast_run
  assert len(rows) == 6
  text = (out / "cutest.md").read_text()
  assert "| trncg | 3 | 100 % |" in text
  png = (out / "cutest_profile.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
  scipy_rows = [r for r in rows if r["solver"] == "scipy-trust-ncg"]
  assert all(np.isfinite(float(r["f"])) for r in scipy_rows)
