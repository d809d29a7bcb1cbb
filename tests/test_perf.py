"""benchmarks/perf.py: its baselines do the work they claim. No timings are
asserted here; they live in the benchmark's output."""

import pytest

pytest.importorskip("flax")  # a benchmark extra: pip install -e '.[bench]'

import json

import jax.numpy as jnp
import numpy as np
import pytest

import trncg_jax
from benchmarks import perf
from benchmarks import problems as P


def test_cg_loop_measurement_runs_all_its_steps():
  """Part (b) shifts the Hessian to be positive definite so that CG makes
  exactly K steps (no early negative-curvature exit); check the count and
  that a CG iteration is timed per step."""
  prob = P.elementary_problem("sin10", 64, 64)
  out = perf.part_b(lambda p: prob.loss(p, *prob.train), prob.params, reps=1)
  assert out["cg_steps"] == perf.K
  assert out["cg_iteration_ms"] > 0 and out["hvp_ms"] > 0


def test_outer_iteration_reference_uses_its_own_cg_steps():
  prob = P.elementary_problem("sin5", 64, 64)
  fun = lambda p: prob.loss(p, *prob.train)
  out = perf.part_c(fun, prob.params, reps=1, warmup_steps=3)
  assert out["k"] >= 1 and out["k_hvps_ms"] > 0
  # k is the CG step count of the timed iteration: the fourth update.
  params, state = (
    prob.params,
    trncg_jax.trncg_init(prob.params, inexact_newton=True),
  )
  for _ in range(4):
    params, state = trncg_jax.trncg_update(params, state, fun)
  assert out["k"] == int(state.info.cg_steps)


def test_scipy_baseline_makes_trncgs_iterations():
  """SciPy's trust-ncg with the same hyperparameters takes the same path as
  trncg(inexact_newton=True, forcing_power=0.5): the same iterations to the
  loss target."""
  prob = P.elementary_problem("exponential", 128, 128, dtype=jnp.float64)
  hyper = dict(initial_radius=2.0, max_radius=10.0, eta=1e-3)
  scipy_run = perf.scipy_trust_ncg(prob, 500, 60.0, **hyper)
  ours = trncg_jax.solve(
    prob.loss,
    prob.params,
    *prob.train,
    max_steps=500,
    loss_tol=perf.LOSS_TARGET,
    optimizer=trncg_jax.trncg(inexact_newton=True, forcing_power=0.5, **hyper),
  )
  assert scipy_run["reached_target"]
  assert ours.status == trncg_jax.SolveStatus.LOSS_TOL
  assert abs(scipy_run["iterations"] - ours.num_steps) <= max(
    2, 0.05 * ours.num_steps
  )
  # SciPy evaluates the model m(p) with one more hessp per iteration; trncg
  # takes m(0) - m(p) from CG's recurrences.
  ours_hvps = int(ours.history["cg_steps"].sum())
  assert abs(scipy_run["hvps"] - (ours_hvps + scipy_run["iterations"])) <= max(
    10, 0.05 * scipy_run["hvps"]
  )


def test_pytorch_reimplementation_follows_the_same_iterates():
  pytest.importorskip("torch")
  from benchmarks import torch_trncg

  prob = P.elementary_problem("sin5", 256, 256)
  ours = trncg_jax.solve(
    prob.loss,
    prob.params,
    *prob.train,
    max_steps=8,
    optimizer=trncg_jax.trncg(**trncg_jax.PAPER_HYPERPARAMS),
  )
  theirs = torch_trncg.run(prob.params, *prob.train, iterations=8)
  np.testing.assert_allclose(theirs["losses"], ours.history["loss"], rtol=1e-3)
  assert abs(theirs["hvps"] - int(ours.history["cg_steps"].sum())) <= 8


def test_report_flag_rewrites_the_report_from_json(tmp_path):
  """`--report` runs nothing: perf.md comes from perf.json, with the date and
  command of the run that measured it."""
  results = {
    "machine": "a CPU",
    "date": "2026-01-02",
    "argv": ["--only", "b"],
    "b": dict(
      cg_steps=20,
      cg_iteration_ms=1.0,
      hvp_ms=2.0,
      ratio_vs_bare_hvp=0.5,
      hvp_in_loop_ms=0.9,
      ratio_vs_hvp_in_loop=1.11,
    ),
  }
  (tmp_path / "perf.json").write_text(json.dumps(results))
  perf.main(["--out", str(tmp_path), "--report"])
  text = (tmp_path / "perf.md").read_text()
  assert "Date: 2026-01-02. Machine: a CPU." in text
  assert "`python -m benchmarks.perf --only b`" in text
  assert "ratio **0.50**" in text and "ratio 1.11" in text
