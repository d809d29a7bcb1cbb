"""The paper benchmark: problems, reference solution, sampling, and a fast run
of every path (the same code as `python -m benchmarks.paper`, tiny sizes)."""

import pytest

pytest.importorskip("flax")  # a benchmark extra: pip install -e '.[bench]'

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import paper
from benchmarks import problems as P
from benchmarks.common import work_counts

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_parameter_counts_match_the_paper():
  _, ne = P.init_mlp(P.N_E_SIZES, seed=0)
  _, npinn = P.init_mlp(P.N_P_SIZES, seed=0)
  assert P.count_params(ne) == 1_131
  assert P.count_params(npinn) == 2_521


def test_finite_differences_converge_to_the_exact_smooth_solution(tmp_path):
  errors = []
  for n in (17, 33, 65):
    grid, u = P.heat_fd_reference(
      1.0, n=n, dt=1e-2, smooth=True, cache_dir=tmp_path
    )
    exact = P.smooth_heat_exact(grid[:, None], grid[None, :], 1.0, xp=np)
    errors.append(P.relative_l2(u, exact))
  assert errors[-1] < 1e-3
  # Second order in h: halving h divides the error by about 4.
  assert 3.0 < errors[0] / errors[1] < 5.0 and 3.0 < errors[1] / errors[2] < 5.0
  # The cache returns the same array without recomputing.
  cached = list(tmp_path.glob("*.npz"))
  assert len(cached) == 3
  grid2, u2 = P.heat_fd_reference(
    1.0, n=65, dt=1e-2, smooth=True, cache_dir=tmp_path
  )
  np.testing.assert_array_equal(u2, u)


def test_paper_reference_respects_maximum_principle_and_boundaries(tmp_path):
  grid, u = P.heat_fd_reference(1.0, n=41, dt=1e-2, cache_dir=tmp_path)
  assert u.min() >= -1e-12 and u.max() <= 1 + 1e-12
  np.testing.assert_array_equal(u[0, 1:], 1.0)  # left edge
  np.testing.assert_array_equal(u[1:, -1], 1.0)  # top edge
  np.testing.assert_array_equal(u[-1, :-1], 0.0)  # right edge
  np.testing.assert_array_equal(u[1:, 0], 0.0)  # bottom edge
  # The reflection (x, y) -> (1 - y, 1 - x) maps the left edge to the top and
  # the bottom to the right, and keeps u(., 0) = 0: the solution is symmetric.
  inner = u[1:-1, 1:-1]
  np.testing.assert_allclose(inner, inner[::-1, ::-1].T, atol=1e-12)
  assert 0.2 < inner.mean() < 0.8  # heat has entered from the hot edges


def test_latin_hypercube_collocation():
  n = 1000
  data = P.heat_collocation(n, boundary_fraction=0.2, seed=3)
  n_bnd = len(data.boundary) + len(data.initial)
  assert n_bnd == 200 and len(data.interior) == 800
  t_end = P.HEAT_T_END
  pts = np.asarray(data.interior)
  assert (pts[:, :2] > 0).all() and (pts[:, :2] < 1).all()
  assert (pts[:, 2] > 0).all() and (pts[:, 2] < t_end).all()
  # Latin-hypercube property: each of the n strata of each axis holds one point.
  for axis, hi in ((0, 1.0), (1, 1.0), (2, t_end)):
    strata = np.floor(pts[:, axis] / hi * len(pts)).astype(int)
    assert sorted(strata) == list(range(len(pts)))
  b = np.asarray(data.boundary)
  on_edge = (b[:, 0] == 0) | (b[:, 0] == 1) | (b[:, 1] == 0) | (b[:, 1] == 1)
  assert on_edge.all()
  expected = ((b[:, 1] == 1) | (b[:, 0] == 0)).astype(float)
  np.testing.assert_array_equal(np.asarray(data.boundary_u), expected)
  assert (np.asarray(data.initial)[:, 2] == 0).all()
  np.testing.assert_array_equal(np.asarray(data.initial_u), 0.0)


def test_heat_residual_against_closed_forms():
  pts = jnp.asarray(P.latin_hypercube(50, [(0, 1), (0, 1), (0, 5)], 0))
  alpha = P.HEAT_ALPHA
  exact = lambda params, p: P.smooth_heat_exact(p[:, 0], p[:, 1], p[:, 2])[
    :, None
  ]
  np.testing.assert_allclose(
    P.heat_residual(exact, None, pts, alpha), 0.0, atol=1e-12
  )
  poly = lambda params, p: (
    p[:, 0] ** 2 * p[:, 1] + 3 * p[:, 2] * p[:, 1] ** 2
  )[:, None]
  # u_t = 3 y^2, u_xx = 2 y, u_yy = 6 t.
  expected = 3 * pts[:, 1] ** 2 - alpha * (2 * pts[:, 1] + 6 * pts[:, 2])
  np.testing.assert_allclose(
    P.heat_residual(poly, None, pts, alpha), expected, rtol=1e-12
  )


def test_residual_form_losses_equal_the_papers_formulas():
  """The losses are LeastSquares (for Gauss-Newton); their values must still be
  the paper's MSE and lambda (f_BC + f_IC) + (1 - lambda) f_PDE."""
  prob = P.elementary_problem("sin5", 64, 8, dtype=jnp.float64)
  x, y = prob.train
  mse = np.mean((np.asarray(prob.apply(prob.params, x)) - np.asarray(y)) ** 2)
  np.testing.assert_allclose(prob.loss(prob.params, x, y), mse, rtol=1e-12)
  apply, params = P.init_mlp(P.N_P_SIZES, 0, jnp.float64)
  data = P.heat_collocation(200, seed=0, dtype=jnp.float64)
  u = lambda pts: np.asarray(apply(params, pts)[:, 0])
  f_pde = np.mean(
    np.asarray(P.heat_residual(apply, params, data.interior, P.HEAT_ALPHA)) ** 2
  )
  f_bc = np.mean((u(data.boundary) - np.asarray(data.boundary_u)) ** 2)
  f_ic = np.mean((u(data.initial) - np.asarray(data.initial_u)) ** 2)
  lam = 0.3
  np.testing.assert_allclose(
    P.heat_loss_fn(apply, P.HEAT_ALPHA, lam)(params, data),
    lam * (f_bc + f_ic) + (1 - lam) * f_pde,
    rtol=1e-12,
  )


def test_every_optimizer_has_its_caps_chunk_and_colour():
  # A KeyError at the full size would only show after hours of other runs.
  from benchmarks import plots  # pylint: disable=g-import-not-at-top

  names = set(paper.make_optimizers())
  for size in (paper.TINY, paper.SMALL, paper.FULL):
    assert set(size.max_steps) == names
  assert set(paper.CHUNK_STEPS) == names
  assert names <= set(plots.COLORS)
  assert set(plots.BASELINES) <= names
  # The fast tiny run keeps trncg, which sets the heat problems' budget.
  assert set(paper.TINY_NOTEBOOK_OPTIMIZERS) < names
  assert "trncg" in FAST_OPTIMIZERS


def test_against_baselines_reports_ratios_and_the_best_baseline():
  def row(name, problem, **kw):
    return dict(problem=problem, optimizer=name, **kw)

  def elementary(name, its, secs, reached=True):
    return row(
      name,
      "sin5",
      iterations=its,
      wall_seconds=secs,
      reached_target=reached,
    )

  lines = paper.against_baselines(
    [
      elementary("trncg", 10, 0.5),
      elementary("adam", 2000, 4.0, reached=False),
      elementary("lbfgs", 40, 0.25),
      row("trncg_gn", "heat", relative_l2=1e-2, budget_seconds=3.0),
      row("adam", "heat", relative_l2=5e-2, budget_seconds=3.0),
      row("lbfgs", "heat", relative_l2=2e-2, budget_seconds=3.0),
    ]
  )
  assert lines == [
    "- sin5: trncg loss <= 1e-6; adam (never reached 1e-6) took 200.0x the"
    " iterations and 8.0x the time; lbfgs took 4.0x the iterations and 0.5x"
    " the time",
    "- heat: trncg_gn rel. L2 1.00e-02; best baseline lbfgs 2.00e-02,"
    " 3.0 s each",
  ]
  # Nothing is judged against an internal target.
  assert not any("MISS" in line or "met" in line.split() for line in lines)


def test_solution_figure_shows_the_best_of_ours_and_the_best_baseline():
  from benchmarks import plots  # pylint: disable=g-import-not-at-top

  errors = dict(trncg=0.3, trncg_gn=0.1, adam=0.2, lbfgs=0.08, nonlinear_cg=1)
  assert plots.best_of_each(errors) == ["trncg_gn", "lbfgs"]
  assert plots.best_of_each(dict(adam=0.2)) == ["adam"]


def test_run_for_chains_calls_into_one_run():
  """Three calls of 4 steps make the same run as one call of 12: the state
  carries over, and the merged history has one entry per step."""
  import trncg_jax  # pylint: disable=g-import-not-at-top
  from benchmarks.common import run_for  # pylint: disable=g-import-not-at-top

  def loss(x, c):  # Rosenbrock: the run takes more than 12 steps
    return jnp.sum(c * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

  x0, c = jnp.array([-1.2, 1.0, -1.2, 1.0]), 100.0
  opt = trncg_jax.trncg()
  one = trncg_jax.solve(loss, x0, c, optimizer=opt, max_steps=12, grad_tol=0)
  res, trace = run_for(
    float("inf"),
    loss,
    x0,
    (c,),
    opt,
    chunk=4,
    max_steps=12,
    callback=lambda x: float(x[0]),
    grad_tol=0,
  )
  assert res.num_steps == 12 and trace["steps"] == [0, 4, 8, 12]
  np.testing.assert_allclose(res.params, one.params, rtol=1e-6)
  np.testing.assert_allclose(
    res.history["loss"], one.history["loss"], rtol=1e-6
  )
  np.testing.assert_allclose(trace["callback"][-1], res.params[0], rtol=1e-6)
  assert trace["loss"][0] == pytest.approx(float(loss(x0, c)))
  # Without a chunk size, the first call is one step; then about `records`.
  _, trace = run_for(
    1e9, loss, x0, (c,), opt, records=3, max_steps=30, progress=True
  )
  assert trace["steps"][:2] == [0, 1] and trace["steps"][-1] == 30
  assert len(trace["steps"]) in (4, 5)


def test_the_last_calls_shrink_to_what_the_budget_holds(monkeypatch):
  """A call of 64 steps at 1 s a step with 10 s left would overrun by 54 s:
  it shrinks to 8 steps (the largest power of two that fits), never below 1,
  and stays 64 while the budget holds it. ``run_for`` sizes every call after
  the first by it, with a finite budget only."""
  import trncg_jax  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from benchmarks.common import steps_that_fit  # pylint: disable=g-import-not-at-top

  assert steps_that_fit(64, 100.0, 1.0) == 64
  assert steps_that_fit(64, 64.0, 1.0) == 64
  assert steps_that_fit(64, 10.0, 1.0) == 8
  assert steps_that_fit(64, 31.9, 1.0) == 16
  assert steps_that_fit(64, 0.5, 1.0) == 1
  assert steps_that_fit(64, -3.0, 1.0) == 1
  assert steps_that_fit(5, 4.5, 1.0) == 4
  loss = lambda x: jnp.sum((x - 1.0) ** 4)
  asked = []
  monkeypatch.setattr(
    common, "steps_that_fit", lambda n, left, per: asked.append(left) or 2
  )
  run = lambda seconds: common.run_for(
    seconds,
    loss,
    jnp.zeros(3),
    (),
    trncg_jax.trncg(),
    chunk=4,
    max_steps=12,
    grad_tol=0,
    loss_tol=0,
  )[1]["steps"]
  assert run(1e9) == [0, 4, 6, 8, 10, 12] and 0 < asked[0] < 1e9
  assert run(float("inf")) == [0, 4, 8, 12]


def test_report_header_names_date_machine_and_command():
  from benchmarks.common import header  # pylint: disable=g-import-not-at-top

  lines = header("Title", "paper", ["--tiny"], date="2026-01-02")
  assert lines[0] == "# Title"
  assert lines[2].startswith("Date: 2026-01-02. Machine: ")
  assert "cores, JAX" in lines[2]
  assert lines[3] == "Command: `python -m benchmarks.paper --tiny`."


def test_importing_the_benchmarks_changes_no_global_state():
  """A notebook that imports them keeps float32 and its plotting backend."""
  code = (
    "import sys, jax\n"
    "import benchmarks.paper, benchmarks.perf, benchmarks.pinn\n"
    "import benchmarks.hvp_modes, benchmarks.plots, benchmarks.report\n"
    "from benchmarks import plots\n"
    "fig, ax = plots.subplots()\n"
    "assert not jax.config.jax_enable_x64, 'x64 switched on'\n"
    "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
  )
  env = dict(os.environ, JAX_ENABLE_X64="0")
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True
  )
  assert proc.returncode == 0, proc.stderr.decode()[-2000:]


def test_work_counts():
  # HVPs are the whole count, the Nystrom sketch's included, not CG steps.
  hist = {"cg_steps": np.array([0, 3, 4, 5]), "hvps": np.array([0, 53, 4, 5])}
  assert work_counts(hist, 3) == (4, 62)
  steps = {"linesearch_steps": np.array([0, 2, 1])}
  assert work_counts(steps, 2) == (4, 0)
  assert work_counts({"loss": np.zeros(6)}, 5) == (6, 0)


# Compiling each optimizer for each heat problem takes most of the tiny
# run (7.7 of its 8.5 minutes on 2 cores). The default run keeps those that
# the first notebook leaves out, trncg and Adam; the notebook runs the other
# five on the same elementary problems (trncg_gn's CG path on a PINN is
# checked by the PINN suite's tests, the paper's TRNCG is trncg with other
# constants, the Nystrom preconditioner has its own tests, L-BFGS and
# nonlinear CG are baselines, as Adam is), and the slow run covers all seven.
FAST_OPTIMIZERS = tuple(
  n for n in paper.make_optimizers() if n not in paper.TINY_NOTEBOOK_OPTIMIZERS
)
# One xdist worker runs the tests of this group in turn, so that the later
# ones read the heat programs they share from the compilation cache.
paper_heat = pytest.mark.xdist_group("paper_heat")


@pytest.fixture(
  scope="module",
  params=[
    pytest.param(FAST_OPTIMIZERS, id="fast"),
    pytest.param(None, id="all", marks=pytest.mark.slow),
  ],
)
def tiny_run(request, tmp_path_factory):
  out = tmp_path_factory.mktemp("paper")
  chosen = ["--optimizers", *request.param] if request.param else []
  results = paper.main(["--tiny", "--out", str(out), "--no-progress", *chosen])
  return out, results, set(request.param or paper.make_optimizers())


@paper_heat
def test_tiny_run_covers_every_problem_and_optimizer(tiny_run):
  out, results, optimizers = tiny_run
  problems = set(paper.TINY.functions) | {"heat", "heat_smooth"}
  assert {(r["problem"], r["optimizer"]) for r in results} == {
    (p, o) for p in problems for o in optimizers
  }
  for r in results:
    saved = json.loads(
      (out / f"paper_{r['problem']}_{r['optimizer']}.json").read_text()
    )
    for key in (
      "iterations",
      "wall_seconds",
      "compile_seconds",
      "final_train_loss",
      "relative_l2",
      "gradients",
      "hvps",
      "history",
    ):
      assert key in saved, key
    assert len(saved["history"]["loss"]) == saved["iterations"] + 1
    assert np.isfinite(saved["relative_l2"])
    if r["optimizer"].startswith("trncg"):
      # CG's products, plus 50 per Nystrom sketch (iterations 0, 10, ...).
      sketches = (
        len(range(0, saved["iterations"], 10))
        if r["optimizer"] == "trncg_gn_nystrom"
        else 0
      )
      assert (
        saved["hvps"] == sum(saved["history"]["cg_steps"][1:]) + 50 * sketches
      )
      assert saved["hvps"] > 0
      assert saved["gradients"] == saved["iterations"] + 1
    else:
      assert saved["hvps"] == 0
    if r["problem"] in paper.TINY.functions:
      assert "test_loss" in saved and "reached_target" in saved
    else:
      assert saved["budget_seconds"] > 0
  report = (out / "paper.md").read_text()
  assert "| problem | optimizer |" in report and paper.PAPER_FINDINGS in report
  assert report.splitlines()[2].startswith("Date: ")
  for name in (
    "fig1_fit_errors",
    "fig2_loss_first500",
    "fig3_tr_diagnostics",
    "fig4_iterations_time",
    "fig5_pinn_loss",
    "fig6_heat_solution",
    "fig6_heat_smooth_solution",
  ):
    png = out / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert f"({name}.png)" in report


@paper_heat
def test_fixed_pinn_budget_and_chosen_optimizers(tmp_path):
  results = paper.main(
    [
      "--tiny",
      "--only",
      "heat",
      "--pinn-seconds",
      "0.2",
      "--optimizers",
      "adam",
      "--out",
      str(tmp_path),
      "--no-progress",
    ]
  )
  # No trncg to set the budget, and none needed with a fixed one. Adam's
  # heat program is the fast tiny run's, which the compilation cache holds.
  assert [r["optimizer"] for r in results] == ["adam"]
  assert all(r["budget_seconds"] == 0.2 for r in results)
  assert "--pinn-seconds 0.2" in (tmp_path / "paper.md").read_text()
  with pytest.raises(SystemExit):  # no trncg to set the budget
    paper.main(["--tiny", "--only", "heat", "--optimizers", "adam"])


@pytest.mark.parametrize(
  "notebook",
  [
    pytest.param(p, marks=paper_heat) if p.name == "02_heat_pinn.ipynb" else p
    for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
  ],
  ids=lambda p: p.name,
)
def test_notebook_runs_and_is_stripped(notebook, tmp_path):
  import nbformat
  from nbclient import NotebookClient

  nb = nbformat.read(notebook, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
  assert all(
    c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"
  )
  os.environ["TRNCG_NOTEBOOK_SIZE"] = "tiny"
  try:
    NotebookClient(
      nb,
      timeout=900,
      kernel_name="python3",
      resources={"metadata": {"path": str(ROOT)}},
    ).execute()
  finally:
    os.environ.pop("TRNCG_NOTEBOOK_SIZE")
  images = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.outputs
    if "image/png" in o.get("data", {})
  ]
  assert images, "the notebook shows no figures"
