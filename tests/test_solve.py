"""The jitted driver: same iterates as a Python loop, stopping rules, logging."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import trncg_jax
from tests.test_trust_region import rosenbrock
from trncg_jax import SolveStatus


def test_trncg_matches_python_loop_and_records_history():
  x0 = jnp.array([-1.2, 1.0, 0.5])
  res = trncg_jax.solve(rosenbrock, x0, max_steps=25)
  assert res.status == SolveStatus.MAX_STEPS and res.num_steps == 25
  x, state = x0, trncg_jax.trncg_init(x0)
  losses, cg_steps = [float(rosenbrock(x0))], []
  update = jax.jit(trncg_jax.trncg_update, static_argnums=2)
  for _ in range(25):
    x, state = update(x, state, rosenbrock)
    losses.append(float(state.value))
    cg_steps.append(int(state.info.cg_steps))
  np.testing.assert_array_equal(res.params, x)
  np.testing.assert_allclose(
    res.history["loss"], losses, rtol=1e-14
  )  # [0]: eager vs jit
  np.testing.assert_array_equal(res.history["cg_steps"][1:], cg_steps)
  assert res.history["radius"].shape == (26,)
  assert res.compile_seconds > 0 and res.run_seconds > 0


@pytest.mark.parametrize("optimizer", [None, optax.adam(1e-2)])
def test_continuing_from_a_state_matches_one_run(optimizer):
  x0 = jnp.array([-1.2, 1.0, 0.5])
  whole = trncg_jax.solve(rosenbrock, x0, optimizer=optimizer, max_steps=20)
  first = trncg_jax.solve(rosenbrock, x0, optimizer=optimizer, max_steps=10)
  second = trncg_jax.solve(
    rosenbrock,
    first.params,
    optimizer=optimizer,
    max_steps=10,
    state=first.state,
  )
  np.testing.assert_array_equal(second.params, whole.params)
  np.testing.assert_array_equal(
    np.concatenate([first.history["loss"], second.history["loss"][1:]]),
    whole.history["loss"],
  )


def test_continuing_with_the_default_optimizer_reuses_the_compiled_loop():
  from trncg_jax.solve import _build_run  # pylint: disable=g-import-not-at-top

  x0 = jnp.array([-1.2, 1.0, 0.25])
  res = trncg_jax.solve(rosenbrock, x0, max_steps=3)
  misses = _build_run.cache_info().misses
  for _ in range(3):
    res = trncg_jax.solve(rosenbrock, res.params, max_steps=3, state=res.state)
  # No new jitted loop, so no recompilation (a fresh trncg() per call missed).
  assert _build_run.cache_info().misses == misses


def test_runs_of_other_lengths_share_one_compiled_loop():
  # The module, not the function that trncg_jax exports under its name.
  solve_module = importlib.import_module("trncg_jax.solve")
  x0 = jnp.array([-1.2, 1.0, 0.75])
  optimizer = optax.adam(1e-2)
  run = lambda n: trncg_jax.solve(
    rosenbrock, x0, optimizer=optimizer, max_steps=n
  )
  whole = run(13)
  compiled = len(solve_module._COMPILED)
  # Up to 15 steps need at most 16 history entries: one loop of 16 slots.
  short = run(2)
  assert len(solve_module._COMPILED) == compiled
  assert short.num_steps == 2 and short.history["loss"].shape == (3,)
  # Adam's steps do not depend on the run's length: the same first 2.
  np.testing.assert_array_equal(
    short.history["loss"], whole.history["loss"][:3]
  )
  # Traced (here under vmap), the history has the documented length too.
  batched = jax.vmap(
    lambda x: trncg_jax.solve(rosenbrock, x, optimizer=optimizer, max_steps=2)
  )(x0[None])
  assert batched.history["loss"].shape == (1, 3)
  np.testing.assert_allclose(batched.params[0], short.params, rtol=1e-12)
  run(17)  # 18 entries: the next power of two, a new loop
  assert len(solve_module._COMPILED) == compiled + 1


def test_stopping_rules():
  x0 = jnp.array([-1.2, 1.0])
  res = trncg_jax.solve(rosenbrock, x0, loss_tol=1e-3, max_steps=500)
  assert res.status == SolveStatus.LOSS_TOL
  assert res.history["loss"][-1] <= 1e-3 < res.history["loss"][-2]
  res = trncg_jax.solve(rosenbrock, x0, grad_tol=1e-6, max_steps=500)
  assert res.status == SolveStatus.GRAD_TOL
  assert res.history["grad_norm"][-1] <= 1e-6 < res.history["grad_norm"][-2]
  np.testing.assert_allclose(res.params, [1.0, 1.0], atol=1e-6)
  # The radius starts at 2, below a minimum of 3: stagnation at once.
  res = trncg_jax.solve(rosenbrock, x0, min_radius=3.0, max_steps=500)
  assert res.status == SolveStatus.STAGNATION and res.num_steps == 0
  res = trncg_jax.solve(rosenbrock, jnp.array([jnp.nan, 1.0]), max_steps=5)
  assert res.status == SolveStatus.NON_FINITE and res.num_steps == 0


def test_stops_at_a_point_stationary_to_the_cg_tolerance():
  # On a quadratic, the first step solves to |g| <= cg_tol; the next CG call
  # then makes no step, and the run must stop rather than idle to max_steps.
  scales = jnp.array([1.0, 3.0, 10.0])
  quadratic = lambda x: 0.5 * jnp.sum(scales * (x - 1.0) ** 2)
  optimizer = trncg_jax.trncg(
    cg_tol=1e-3, inexact_newton=False, initial_radius=10.0
  )
  res = trncg_jax.solve(
    quadratic, jnp.zeros(3), optimizer=optimizer, max_steps=100
  )
  assert res.status == SolveStatus.STATIONARY and res.num_steps == 2
  assert res.history["grad_norm"][1] <= 1e-3
  assert res.history["status"][-1] == trncg_jax.StepStatus.STATIONARY
  np.testing.assert_array_equal(res.history["loss"][-1], res.history["loss"][1])


@pytest.mark.parametrize(
  "name,optimizer,steps",
  [
    ("adam", optax.adam(5e-2), 3000),
    ("lbfgs", optax.lbfgs(), 200),
    ("nonlinear_cg", trncg_jax.nonlinear_cg(), 300),
  ],
)
def test_other_optimizers(name, optimizer, steps):
  res = trncg_jax.solve(
    rosenbrock,
    jnp.array([-1.2, 1.0]),
    optimizer=optimizer,
    max_steps=steps,
    grad_tol=1e-5,
  )
  assert res.history["loss"][-1] < 1e-6, name
  if name == "nonlinear_cg":
    assert "beta" in res.history and "linesearch_steps" in res.history
  if name == "lbfgs":
    assert res.history["num_linesearch_steps"][1:].min() >= 1


def test_log_fn_called_every_n_steps():
  calls = []
  trncg_jax.solve(
    rosenbrock,
    jnp.array([-1.2, 1.0]),
    max_steps=20,
    progress_every=5,
    log_fn=lambda *a: calls.append(a),
  )
  assert [c[0] for c in calls] == [5, 10, 15, 20]
  assert all(np.isfinite(c[1]) for c in calls)


def test_progress_bar_ends_at_the_last_step(capsys):
  pytest.importorskip("tqdm")  # a benchmark extra
  res = trncg_jax.solve(
    rosenbrock,
    jnp.array([-1.2, 1.0]),
    max_steps=40,
    grad_tol=1e-5,
    progress=True,
    progress_every=5,
    desc="rosen-bar",
  )
  err = capsys.readouterr().err
  assert res.status == SolveStatus.GRAD_TOL and res.num_steps % 5 != 0
  assert "rosen-bar" in err and "loss=" in err
  assert f"{res.num_steps}/40" in err.replace("\r", "\n").splitlines()[-1]


def test_bad_arguments():
  with pytest.raises(ValueError, match="max_steps"):
    trncg_jax.solve(rosenbrock, jnp.zeros(2), max_steps=0)
  with pytest.raises(TypeError, match="scalar"):
    trncg_jax.solve(lambda x: x, jnp.zeros(2))


@pytest.mark.parametrize(
  "optimizer",
  [
    None,
    trncg_jax.trncg(),
    optax.adam(1e-1),
    optax.lbfgs(),
    trncg_jax.nonlinear_cg(),
  ],
)
def test_has_aux_history_holds_the_components(optimizer):
  from tests.test_trust_region import loss_with_components

  target = jnp.array([3.0, -2.0, 0.5])
  res = trncg_jax.solve(
    loss_with_components,
    jnp.zeros(3),
    target,
    optimizer=optimizer,
    max_steps=15,
    has_aux=True,
  )
  aux = res.history["aux"]
  # trncg may stop early, at a point stationary to its CG tolerance.
  assert 1 <= res.num_steps <= 15
  assert aux["fit"].shape == aux["reg"].shape == (res.num_steps + 1,)
  np.testing.assert_allclose(
    aux["fit"] + aux["reg"], res.history["loss"], rtol=1e-12
  )
  final = loss_with_components(res.params, target)[1]
  np.testing.assert_allclose(aux["fit"][-1], final["fit"], rtol=1e-12)
  if optimizer is None:
    assert res.state.info.aux is not None  # kept by trncg(has_aux=True)


def _quartic(x, c):
  """A strictly convex loss with a known minimizer equation:
  2 (x - c) + x^3 = 0 per entry, so dx*/dc = 2 / (2 + 3 x*^2)."""
  return jnp.sum((x - c) ** 2 + x**4 / 4)


def test_vmap_over_data_and_starts_equals_separate_runs():
  cs = jnp.array([[0.5, -1.0], [2.0, 3.0], [-0.3, 0.1]])
  x0s = jnp.array([[0.0, 0.0], [5.0, -5.0], [1.0, 1.0]])

  def run(x0, c):
    res = trncg_jax.solve(_quartic, x0, c, grad_tol=1e-10, max_steps=50)
    return res.params, res.num_steps, res.status

  params, steps, status = jax.vmap(run)(x0s, cs)
  for i in range(3):
    alone = trncg_jax.solve(
      _quartic, x0s[i], cs[i], grad_tol=1e-10, max_steps=50
    )
    np.testing.assert_allclose(params[i], alone.params, rtol=1e-12)
    assert int(steps[i]) == alone.num_steps
    assert SolveStatus(int(status[i])) == alone.status == SolveStatus.GRAD_TOL
  assert len(set(np.asarray(steps).tolist())) > 1  # each stopped on its own


def test_solve_under_jit_returns_arrays():
  res = jax.jit(
    lambda c: trncg_jax.solve(_quartic, jnp.zeros(2), c, grad_tol=1e-10)
  )(jnp.array([1.0, 2.0]))
  assert SolveStatus(int(res.status)) == SolveStatus.GRAD_TOL
  assert res.history["loss"].shape == (1001,)  # not trimmed under a trace
  np.testing.assert_allclose(
    2 * (res.params - jnp.array([1.0, 2.0])) + res.params**3, 0.0, atol=1e-9
  )


def test_grad_of_solution_matches_ridge_regression_closed_form():
  """w* = (X^T X + lam I)^{-1} X^T y, so for L = a^T w*: dL/dy = X A^{-1} a
  and dL/dlam = -a^T A^{-1} w* with A = X^T X + lam I. The int argument
  gets no cotangent and does not break the transformation."""
  rng = np.random.default_rng(0)
  X = jnp.asarray(rng.standard_normal((20, 4)))
  y = jnp.asarray(rng.standard_normal(20))
  a = jnp.asarray(rng.standard_normal(4))

  def loss(w, X, y, lam, power):
    return 0.5 * jnp.sum((X @ w - y) ** power) + 0.5 * lam * jnp.sum(w**2)

  def objective(y, lam):
    w = trncg_jax.solve(loss, jnp.zeros(4), X, y, lam, 2, grad_tol=1e-12).params
    return a @ w

  lam = 0.7
  A = np.asarray(X.T @ X) + lam * np.eye(4)
  w_star = np.linalg.solve(A, np.asarray(X.T @ y))
  dy, dlam = jax.grad(objective, argnums=(0, 1))(y, lam)
  np.testing.assert_allclose(
    dy, np.asarray(X) @ np.linalg.solve(A, a), rtol=1e-8
  )
  np.testing.assert_allclose(dlam, -a @ np.linalg.solve(A, w_star), rtol=1e-8)


def test_grad_of_solution_matches_finite_differences_on_a_pytree():
  def loss(params, data):
    return (
      jnp.sum((params["w"] - data["t"]) ** 2 + params["w"] ** 4)
      + (params["b"] - jnp.sum(data["t"] * params["w"])) ** 2
      + 0.1 * params["b"] ** 4
    )

  def objective(data):
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    res = trncg_jax.solve(loss, params, data, grad_tol=1e-13)
    return jnp.sum(jnp.sin(res.params["w"])) + res.params["b"] ** 2

  data = {"t": jnp.array([0.3, -1.2, 2.0])}
  grad = jax.grad(objective)(data)["t"]
  h = 1e-5
  fd = [
    (
      objective({"t": data["t"].at[i].add(h)})
      - objective({"t": data["t"].at[i].add(-h)})
    )
    / (2 * h)
    for i in range(3)
  ]
  np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_unrolled_forward_mode_agrees_with_implicit():
  def x_star(c, differentiate):
    return trncg_jax.solve(
      _quartic, jnp.zeros(2), c, grad_tol=1e-12, differentiate=differentiate
    ).params

  c = jnp.array([0.5, 2.0])
  implicit = jax.jacrev(lambda c: x_star(c, "implicit"))(c)
  unrolled = jax.jacfwd(lambda c: x_star(c, "unrolled"))(c)
  x = x_star(c, "implicit")
  np.testing.assert_allclose(
    implicit, np.diag(2 / (2 + 3 * x**2)), rtol=1e-9, atol=1e-10
  )
  np.testing.assert_allclose(unrolled, implicit, rtol=1e-6, atol=1e-10)
  with pytest.raises(ValueError, match="differentiate must be"):
    trncg_jax.solve(_quartic, jnp.zeros(2), c, differentiate="adjoint")


def test_two_runs_at_once_keep_their_own_progress():
  import threading

  logs = {0: [], 1: []}

  def run(i):
    trncg_jax.solve(
      rosenbrock,
      jnp.array([-1.2, 1.0 + i]),
      max_steps=40,
      progress_every=1,
      loss_tol=-1.0,
      log_fn=lambda step, loss, g: logs[i].append(step),
    )

  threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  for i in (0, 1):
    assert logs[i] == sorted(logs[i]) and len(set(logs[i])) == len(logs[i])
    assert logs[i][-1] == len(logs[i])  # every step of its own run, once
