"""The dense Gauss-Newton subproblem against NumPy closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import trncg_jax
from trncg_jax import dense, trust_region
from trncg_jax.hvp import make_hvp
from trncg_jax.least_squares import DENSE_MAX_ENTRIES
from trncg_jax.status import CGStatus
from trncg_jax.trust_region import (
  DENSE_MAX_FLOPS,
  DENSE_MAX_PARAMS,
  TRNCGHyperparams,
  uses_dense_solver,
)


def _linear_problem(n=12, p=5, seed=0, dtype=np.float64, jacobian=False):
  rng = np.random.default_rng(seed)
  jac, y = rng.normal(size=(n, p)), rng.normal(size=n)
  loss = trncg_jax.LeastSquares(
    lambda x: jnp.asarray(jac, dtype) @ x - jnp.asarray(y, dtype),
    (lambda x: jnp.asarray(jac, dtype)) if jacobian else None,
  )
  return jac, y, loss


def _reference(jac, y, x, radius, damping_rel):
  """The A-norm subproblem solved in NumPy from its definition."""
  r = jac @ x - y
  g, b = 2 * jac.T @ r, 2 * jac.T @ jac
  mu = max(
    damping_rel * np.trace(b) / len(x),
    dense.DAMPING_FLOOR_ULPS * np.finfo(float).eps * np.trace(b),
  )
  a = b + mu * np.eye(len(x))
  d = -np.linalg.solve(a, g)
  d_norm = np.sqrt(d @ a @ d)
  p = min(1.0, radius / d_norm) * d
  return p, -(g @ p + 0.5 * p @ b @ p), np.sqrt(p @ a @ p)


@pytest.mark.parametrize("radius", [1e3, 0.3])
@pytest.mark.parametrize(
  "n, p, jacobian, damping",
  [
    (12, 5, False, 0.0),
    (12, 5, False, 1e-2),
    (12, 5, True, 0.0),
    (5, 12, False, 1e-2),  # N < P: A is singular to 1e-15 at mu's floor,
    (5, 12, True, 1e-2),  # which the next test covers
  ],
  ids=["P", "P-damped", "P-jacobian_fn", "N-damped", "N-jacobian_fn"],
)
def test_matches_numpy_reference(radius, n, p, jacobian, damping):
  """Both systems (P x P, and N x N when N < P), J from JVPs or from
  ``jacobian_fn``, against the P x P system solved in NumPy."""
  jac, y, loss = _linear_problem(n, p, jacobian=jacobian)
  x = jnp.asarray(np.linspace(-1, 1, p))
  grad = jax.grad(loss)(x)
  res = dense.dense_gauss_newton(loss, x, grad, jnp.asarray(radius), damping)
  step, pred, norm = _reference(jac, y, np.asarray(x), radius, damping)
  np.testing.assert_allclose(res.step, step, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(res.predicted_reduction, pred, rtol=1e-9)
  np.testing.assert_allclose(res.step_norm, norm, rtol=1e-9)
  assert int(res.steps) == p  # the Jacobian's JVPs
  expected = CGStatus.CONVERGED if radius > 10 else CGStatus.HIT_BOUNDARY
  assert CGStatus(int(res.status)) == expected


@pytest.mark.parametrize("jacobian", [False, True])
def test_fewer_residuals_than_params_give_the_minimum_norm_step(jacobian):
  """N < P, mu at its floor: the full step is J's minimum-norm solution of
  J d = -r (NumPy's lstsq), which the P x P system cannot resolve."""
  jac, y, loss = _linear_problem(6, 40, seed=2, jacobian=jacobian)
  x = jnp.asarray(np.linspace(-1, 1, 40))
  res = dense.dense_gauss_newton(
    loss, x, jax.grad(loss)(x), jnp.asarray(1e6), 0.0
  )
  r = jac @ np.asarray(x) - y
  np.testing.assert_allclose(
    res.step, np.linalg.lstsq(jac, -r)[0], rtol=1e-10, atol=1e-12
  )
  assert CGStatus(int(res.status)) == CGStatus.CONVERGED


def _damped_reference(jac, y, x, radius):
  """The Levenberg-Marquardt point ``-(B + lam I)^-1 g`` whose norm in
  ``A = B + mu I`` is ``radius``, with ``lam`` by SciPy's ``brentq``."""
  r = jac @ x - y
  g, b = 2 * jac.T @ r, 2 * jac.T @ jac
  mu = dense.DAMPING_FLOOR_ULPS * np.finfo(float).eps * np.trace(b)
  a, eye = b + mu * np.eye(len(x)), np.eye(len(x))
  point = lambda log_lam: -np.linalg.solve(b + np.exp(log_lam) * eye, g)
  excess = lambda log_lam: np.sqrt(point(log_lam) @ a @ point(log_lam)) - radius
  p = point(scipy.optimize.brentq(excess, np.log(mu), np.log(mu) + 200))
  return p, -(g @ p + 0.5 * p @ b @ p)


def _searched(candidate, jac, y, x, radius):
  """Of ``candidate(r)`` over ``r`` in ``radius * dense.SEARCH_SCALES``, the
  one with the lowest loss ``||J (x + p) - y||^2`` (NumPy), and its radius;
  while the longest ``r`` is the best, the radii move up by the grid's span
  (16), at most ``dense.SEARCH_EXTENSIONS`` times. On a linear problem the
  loss falls along both the damped curve and the Gauss-Newton step, so one
  family decides when to move as both do."""
  loss = lambda p: np.sum((jac @ (x + p) - y) ** 2)
  radii = [radius * s for s in dense.SEARCH_SCALES]
  for moves in range(dense.SEARCH_EXTENSIONS + 1):
    best = min(radii, key=lambda r: loss(candidate(jac, y, x, r)[0]))
    if best != radii[-1] or moves == dense.SEARCH_EXTENSIONS:
      break
    radii = [r * radii[-1] / radii[0] for r in radii]
  return candidate(jac, y, x, best), best


@pytest.mark.parametrize("extensions", [0, 3])
@pytest.mark.parametrize("n, p", [(12, 5), (5, 12)], ids=["P", "N"])
def test_tiny_cut_takes_the_levenberg_marquardt_point(
  n, p, extensions, monkeypatch
):
  """The region cuts the Gauss-Newton step below DAMPED_BELOW of its length:
  the step is the damped point on the boundary (both systems), at the radius
  of SEARCH_SCALES that gives the lowest loss; where the longest is the
  best, the search goes on to longer radii (``SEARCH_EXTENSIONS``)."""
  monkeypatch.setattr(dense, "SEARCH_EXTENSIONS", extensions)
  jac, y, loss = _linear_problem(n, p, seed=4)
  x = jnp.asarray(np.linspace(-1, 1, p))
  grad = jax.grad(loss)(x)
  full = dense.dense_gauss_newton(loss, x, grad, jnp.asarray(1e6), 0.0)
  radius = 0.1 * dense.DAMPED_BELOW * float(full.step_norm)
  res = dense.dense_gauss_newton(loss, x, grad, jnp.asarray(radius), 0.0)
  (step, predicted), best = _searched(
    _damped_reference, jac, y, np.asarray(x), radius
  )
  assert CGStatus(int(res.status)) == CGStatus.DAMPED
  np.testing.assert_allclose(res.step, step, rtol=1e-7)
  np.testing.assert_allclose(res.predicted_reduction, predicted, rtol=1e-7)
  np.testing.assert_allclose(res.step_norm, best, rtol=1e-12)
  # Each longer step lowers a linear problem's loss: the search takes the
  # longest radius it may reach.
  np.testing.assert_allclose(best, radius * 4 * 16**extensions, rtol=1e-12)
  if not extensions:
    # This small, the damped point is along -g, and the cut step is not.
    cosine = lambda u: -(u @ grad) / np.linalg.norm(u) / np.linalg.norm(grad)
    assert cosine(res.step) > 0.9999 > 0.99 > cosine(np.asarray(full.step))


@pytest.mark.parametrize("extensions", [0, 3])
def test_damped_mode_keeps_the_gauss_newton_step_when_it_is_better(
  extensions, monkeypatch
):
  """After a damped step, the Gauss-Newton step cut to ``tau >=
  DAMPED_BELOW`` is kept when it lowers the loss more, at its best radius of
  SEARCH_SCALES: on a linear least squares problem it minimizes the loss
  over the region, so it always is; with the search moved up while its
  longest step is the best, it reaches the full step. Without a damped step
  before, the step is cut to the radius itself."""
  monkeypatch.setattr(dense, "SEARCH_EXTENSIONS", extensions)
  jac, y, loss = _linear_problem(12, 5, seed=5)
  x = jnp.asarray(np.linspace(-1, 1, 5))
  grad = jax.grad(loss)(x)
  radius = jnp.asarray(0.1)
  reference = lambda jac, y, x, r: _reference(jac, y, x, r, 0.0)
  undamped = dense.dense_gauss_newton(loss, x, grad, radius, 0.0)
  np.testing.assert_allclose(
    undamped.step, reference(jac, y, np.asarray(x), 0.1)[0], rtol=1e-9
  )
  res = dense.dense_gauss_newton(loss, x, grad, radius, 0.0, True)
  (step, _, norm), best = _searched(reference, jac, y, np.asarray(x), 0.1)
  full = dense.dense_gauss_newton(loss, x, grad, jnp.asarray(1e6), 0.0)
  np.testing.assert_allclose(res.step, step, rtol=1e-9)
  np.testing.assert_allclose(res.step_norm, norm, rtol=1e-9)
  if extensions:  # the full step, at the first radius past its length
    assert CGStatus(int(res.status)) == CGStatus.CONVERGED
    np.testing.assert_allclose(res.step, full.step, rtol=1e-12)
    assert 0.1 * 16 < float(full.step_norm) < best
  else:
    assert CGStatus(int(res.status)) == CGStatus.HIT_BOUNDARY
    assert 0.1 < best < float(full.step_norm)  # past the radius, still cut


def test_damped_steps_leave_a_start_where_the_gauss_newton_step_stalls(
  monkeypatch,
):
  """The PINN guide's 2-16-1 Poisson example, whose Gauss-Newton direction
  is poor at the start: with the damped step switched off, the loss stays
  above half its initial value for 300 iterations."""
  rng = np.random.default_rng(0)
  interior = jnp.asarray(rng.uniform(0, 1, (200, 2)))
  s = rng.uniform(0, 1, 40)
  zeros, ones = np.zeros(10), np.ones(10)
  boundary = jnp.asarray(
    np.stack([np.r_[s[:20], zeros, ones], np.r_[zeros, ones, s[20:]]], 1)
  )
  keys = jax.random.split(jax.random.key(0), 2)
  params = {
    "w": jax.random.normal(keys[0], (2, 16)),
    "b": jnp.zeros(16),
    "v": jax.random.normal(keys[1], (16,)) / 4,
  }
  net = lambda q, z: jnp.tanh(z @ q["w"] + q["b"]) @ q["v"]
  source = lambda z: 2 * jnp.pi**2 * jnp.prod(jnp.sin(jnp.pi * z), -1)

  def residuals(q):
    laplacian = jax.vmap(lambda z: jnp.trace(jax.hessian(net, 1)(q, z)))
    return (
      (laplacian(interior) + source(interior)) / np.sqrt(len(interior)),
      net(q, boundary) / np.sqrt(len(boundary)),
    )

  loss = trncg_jax.LeastSquares(residuals)
  run = lambda: trncg_jax.solve(
    loss,
    params,
    max_steps=300,
    optimizer=trncg_jax.trncg(hvp_mode="gauss_newton"),
  )
  initial = float(loss(params))
  assert float(run().history["loss"][-1]) < 0.1 * initial
  monkeypatch.setattr(dense, "DAMPED_BELOW", 0.0)
  # Retried within the iteration, the slivers still gain 10% (0.90 of the
  # initial loss after 300 iterations).
  assert float(run().history["loss"][-1]) > 0.5 * initial


def test_jacobian_fn_in_the_layout_of_jacrev_for_pytrees():
  """Dict params and tuple residuals: ``jacobian_fn = jax.jacrev`` gives the
  JVPs' matrix; a per-point ``jax.vmap(jax.grad(...))`` block does too."""

  def residuals(p, t):
    u = jnp.tanh(jnp.outer(p["w"], t) + p["b"][:, None]).sum(0)
    return (u - jnp.sin(t), 0.1 * p["b"])

  def per_point(p, t):  # the first block row by row, as a PINN's would be
    point = lambda q, s: residuals(q, s[None])[0][0]
    rows = jax.vmap(jax.grad(point), (None, 0))(p, t)
    return rows, jax.jacrev(lambda q: residuals(q, t)[1])(p)

  params = {"w": jnp.linspace(-1, 1, 3), "b": jnp.linspace(0, 0.5, 3)}
  t = jnp.linspace(0, 1, 7)
  by_jvps = dense.residual_jacobian(
    trncg_jax.LeastSquares(residuals).bind(t), params
  )
  for jacobian_fn in (jax.jacrev(residuals), per_point):
    loss = trncg_jax.LeastSquares(residuals, jacobian_fn).bind(t)
    np.testing.assert_allclose(
      dense.residual_jacobian(loss, params), by_jvps, rtol=1e-12, atol=1e-15
    )


def test_jacobian_fn_in_another_layout_is_a_type_error():
  loss = trncg_jax.LeastSquares(
    lambda x: jnp.sin(x), lambda x: jnp.diag(jnp.cos(x))[:, :2]
  )
  with pytest.raises(TypeError, match="jacobian_fn must return the layout"):
    dense.residual_jacobian(loss, jnp.ones(3))


def test_trncg_solves_linear_least_squares_like_lstsq():
  jac, y, loss = _linear_problem(n=30, p=6, seed=1)
  res = trncg_jax.solve(
    loss,
    jnp.zeros(6),
    grad_tol=1e-10,
    max_steps=50,
    optimizer=trncg_jax.trncg(hvp_mode="gauss_newton"),
  )
  np.testing.assert_allclose(
    res.params, np.linalg.lstsq(jac, y)[0], rtol=1e-8, atol=1e-10
  )
  # Each iteration forms J by P = 6 JVPs: the work counter says so.
  assert set(res.history["hvps"][1 : res.num_steps + 1].tolist()) == {6}


def test_many_params_few_residuals_reach_the_minimum_norm_solution():
  """P > DENSE_MAX_PARAMS with a jacobian_fn: "auto" takes the dense step in
  the residual space; from zero every step lies in J's row space, so the run
  ends at the minimum-norm solution (NumPy's lstsq)."""
  p = DENSE_MAX_PARAMS + 52
  jac, y, loss = _linear_problem(n=30, p=p, seed=3, jacobian=True)
  res = trncg_jax.solve(
    loss,
    jnp.zeros(p),
    grad_tol=1e-10,
    max_steps=50,
    optimizer=trncg_jax.trncg(hvp_mode="gauss_newton"),
  )
  np.testing.assert_allclose(
    res.params, np.linalg.lstsq(jac, y)[0], rtol=1e-8, atol=1e-10
  )
  assert set(res.history["hvps"][1 : res.num_steps + 1].tolist()) == {p}


def test_pytree_params_float32_and_scaling():
  """Dict params in float32; residuals scaled by 2^60 give the same step
  (the system is scaled by a power of two, exactly)."""

  def residuals(p, scale):
    return scale * jnp.concatenate(
      [p["w"] @ jnp.ones(3) - 1.0, p["b"] - jnp.arange(2.0)]
    )

  params = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros(2, jnp.float32)}
  steps = []
  for scale in (1.0, 2.0**60):
    loss = trncg_jax.LeastSquares(
      lambda p, s=scale: residuals(p, jnp.float32(s))
    )
    grad = jax.grad(loss)(params)
    res = dense.dense_gauss_newton(
      loss, params, grad, jnp.float32(1e30), jnp.float32(0.0)
    )
    assert res.step["w"].dtype == jnp.float32
    assert np.all(np.isfinite(res.step["w"]))
    steps.append(res.step)
  np.testing.assert_allclose(steps[0]["w"], steps[1]["w"], rtol=1e-5)
  np.testing.assert_allclose(steps[0]["b"], steps[1]["b"], rtol=1e-5)


def test_non_finite_jacobian_gives_zero_step():
  loss = trncg_jax.LeastSquares(jnp.sqrt)  # J = 1 / (2 sqrt(x)): NaN at x < 0
  x = jnp.array([-1.0, 2.0])
  res = dense.dense_gauss_newton(loss, x, jnp.ones(2), jnp.asarray(1.0), 0.0)
  assert CGStatus(int(res.status)) == CGStatus.NON_FINITE
  np.testing.assert_array_equal(res.step, 0.0)


def test_batched_jacobian_matches_jacfwd(monkeypatch):
  loss = trncg_jax.LeastSquares(lambda x: jnp.sin(jnp.outer(x, x)).ravel())
  x = jnp.linspace(0.1, 1.0, 7)
  full = dense.residual_jacobian(loss, x)
  jaxpr = jax.make_jaxpr(jax.linearize(loss.residual_fn, x)[1])(x).jaxpr
  one_jvp = dense.intermediate_bytes(jaxpr)
  assert one_jvp >= 49 * x.dtype.itemsize  # at least its output, 49 residuals
  monkeypatch.setattr(dense, "JACOBIAN_BATCH_BYTES", 2 * one_jvp)
  batched = dense.residual_jacobian(loss, x)  # batches of 2 JVPs
  np.testing.assert_allclose(full, batched, rtol=1e-12)
  np.testing.assert_allclose(
    full.T, jax.jacfwd(loss.residual_fn)(x), rtol=1e-12
  )


def test_auto_selects_dense_for_small_gauss_newton_only():
  small, big = jnp.zeros(10), jnp.zeros(DENSE_MAX_PARAMS + 1)
  gn = TRNCGHyperparams(hvp_mode="gauss_newton")
  assert uses_dense_solver(gn, small)
  assert not uses_dense_solver(gn, big)
  assert not uses_dense_solver(TRNCGHyperparams(), small)
  assert not uses_dense_solver(
    TRNCGHyperparams(hvp_mode="gauss_newton", nystrom_rank=2), small
  )
  assert uses_dense_solver(
    TRNCGHyperparams(hvp_mode="gauss_newton", solver="dense"), big
  )
  assert not uses_dense_solver(
    TRNCGHyperparams(hvp_mode="gauss_newton", solver="cg"), small
  )


def test_auto_selects_dense_when_j_is_cheap_and_small():
  """With a ``jacobian_fn``, dense while forming ``2 J^T J`` (or ``2 J J^T``)
  costs at most DENSE_MAX_FLOPS, at any P; without one, only up to
  DENSE_MAX_PARAMS; never beyond DENSE_MAX_ENTRIES entries of J."""
  gn = TRNCGHyperparams(hvp_mode="gauss_newton")
  residuals = lambda n: lambda x: jnp.resize(x, n)
  jacobian = lambda n: lambda x: jnp.eye(n, x.size)
  dense_for = lambda n, p, jac=True: uses_dense_solver(
    gn,
    jnp.zeros(p),
    trncg_jax.LeastSquares(residuals(n), jacobian(n) if jac else None),
  )
  many = DENSE_MAX_PARAMS + 1
  assert dense_for(100, many) and not dense_for(100, many, jac=False)
  assert dense_for(100, 10, jac=False)
  # The heat PINN at 10,000 points: 2,521 params, 6.4e10 multiply-adds.
  assert dense_for(10_000, 2_521) and not dense_for(10_000, 2_521, jac=False)
  side = int(round(DENSE_MAX_FLOPS ** (1 / 3)))  # N = P = m at the bound
  assert dense_for(side, side) and not dense_for(side + 1, side + 1)
  few = 10
  assert not dense_for(few, DENSE_MAX_ENTRIES // few + 1)
  assert not dense_for(DENSE_MAX_ENTRIES // few + 1, few, jac=False)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(solver="qr"), "solver must be one of"),
    (dict(solver="dense", nystrom_rank=2), "nystrom_rank=0"),
    (
      dict(solver="dense", hvp_mode="gauss_newton", nystrom_rank=2),
      "nystrom_rank=0",
    ),
    (dict(dense_damping=-1.0), "dense_damping"),
    (dict(newton_finish="yes"), "newton_finish must be a bool"),
  ],
)
def test_invalid_solver_configuration(kwargs, match):
  with pytest.raises(ValueError, match=match):
    trncg_jax.trncg(**kwargs)


def test_dense_needs_least_squares_loss():
  with pytest.raises(TypeError, match="LeastSquares"):
    trncg_jax.solve(
      lambda x: jnp.sum(x**2),
      jnp.ones(2),
      max_steps=2,
      optimizer=trncg_jax.trncg(hvp_mode="gauss_newton", solver="dense"),
    )


@pytest.mark.parametrize("extensions", [0, 3])
def test_the_region_follows_the_searched_radius(extensions, monkeypatch):
  """A damped step taken at ``4 Delta`` (the best of SEARCH_SCALES on a linear
  problem, where rho = 1) expands the region from ``4 Delta``, not from
  ``Delta``: 8 Delta next; with the search moved up by its span (16) three
  times, from ``4 * 16^3 Delta`` within the one iteration."""
  monkeypatch.setattr(dense, "SEARCH_EXTENSIONS", extensions)
  _, _, loss = _linear_problem(12, 5, seed=6)
  x = jnp.asarray(np.linspace(-1, 1, 5))
  full = dense.dense_gauss_newton(
    loss, x, jax.grad(loss)(x), jnp.asarray(1e6), 0.0
  )
  radius = 1e-7 * float(full.step_norm)
  state = trncg_jax.trncg_init(
    x, hvp_mode="gauss_newton", solver="dense", initial_radius=radius
  )
  x, state = trncg_jax.trncg_update(x, state, loss)
  assert CGStatus(int(state.info.cg_status)) == CGStatus.DAMPED
  assert bool(state.info.accepted)
  np.testing.assert_allclose(state.info.rho, 1.0, rtol=1e-6)
  reached = 4 * 16**extensions * radius
  np.testing.assert_allclose(state.info.radius, reached, rtol=1e-12)
  np.testing.assert_allclose(state.radius, 2 * reached, rtol=1e-12)


def test_a_rejected_step_is_retried_within_the_iteration(monkeypatch):
  """Rosenbrock as least squares from (-1.2, 1), where the full Gauss-Newton
  step is rejected: the accepted points are those of one try per iteration
  (``DENSE_TRIALS = 1``, each rejection an iteration of its own), and
  ``info.trials`` counts the iterations that the retries replace."""
  loss = trncg_jax.LeastSquares(
    lambda x: jnp.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])
  )
  start = jnp.asarray([-1.2, 1.0])

  def accepted_points(iterations):
    x = start
    state = trncg_jax.trncg_init(
      x, hvp_mode="gauss_newton", solver="dense", initial_radius=1e3
    )
    # Traced afresh for each DENSE_TRIALS (a new function: JAX caches traces
    # by function); eager calls would compile every loop and branch again
    # on each call.
    update = jax.jit(lambda x, state: trncg_jax.trncg_update(x, state, loss))
    points, trials = [], 0
    for _ in range(iterations):
      x, state = update(x, state)
      trials += int(state.info.trials)
      if bool(state.info.accepted):
        points.append(np.asarray(x))
    return np.array(points), trials

  retried, trials = accepted_points(6)
  assert trials > 6  # some iterations retried a rejected step
  monkeypatch.setattr(trust_region, "DENSE_TRIALS", 1)
  single, iterations = accepted_points(trials)
  assert iterations == trials
  np.testing.assert_allclose(single[: len(retried)], retried, rtol=1e-12)


def test_the_damped_search_compares_values_of_the_loss_not_of_the_hvp_batch(
  monkeypatch,
):
  """With ``hvp_args`` the curvature comes from a sub-batch, but the damped
  search's candidates are compared on the loss the region minimizes (all
  rows), as rho is."""
  rng = np.random.default_rng(3)
  a, y = jnp.asarray(rng.normal(size=(30, 4))), jnp.asarray(rng.normal(size=30))
  loss = trncg_jax.LeastSquares(lambda x, a, y: a @ x - y)
  compared, values_at = [], dense.values_at

  def spy(fun, params, unravel, steps):
    compared.append(fun)
    return values_at(fun, params, unravel, steps)

  monkeypatch.setattr(dense, "values_at", spy)
  x0 = jnp.zeros(4)
  # A region far inside the Gauss-Newton step's length: the damped search.
  state = trncg_jax.trncg_init(
    x0, hvp_mode="gauss_newton", solver="dense", initial_radius=1e-12
  )
  _, state = trncg_jax.trncg_update(
    x0, state, loss, a, y, hvp_args=(a[:10], y[:10])
  )
  assert CGStatus(int(state.info.cg_status)) == CGStatus.DAMPED
  assert compared  # traced once per attempt: the first and the retries'
  for fun in compared:
    np.testing.assert_allclose(fun(x0), loss(x0, a, y), rtol=1e-12)
    assert abs(float(fun(x0) - loss(x0, a[:10], y[:10]))) > 1e-3


def _exact_subproblem(h_matrix, g, radius):
  """The exact trust-region step from the book (N&W Theorem 4.1), in NumPy:
  the eigendecomposition, and the secular equation by SciPy's brentq."""
  from scipy.optimize import brentq

  h, v = np.linalg.eigh(h_matrix)
  c = v.T @ g
  step = lambda lam: -v @ (c / (h + lam))
  if h[0] > 0 and np.linalg.norm(step(0.0)) <= radius:
    return step(0.0)
  low = max(0.0, -h[0])
  if np.linalg.norm(step(low + 1e-9)) < radius:  # the hard case
    p = -v[:, 1:] @ (c[1:] / (h[1:] - h[0]))
    return p + np.sqrt(radius**2 - p @ p) * v[:, 0] * -np.sign(c[0] or 1.0)
  lam = brentq(
    lambda s: np.linalg.norm(step(low + s)) - radius,
    1e-12,
    np.linalg.norm(g) / radius + 1.0,
    xtol=1e-15,
    rtol=1e-14,
  )
  return step(low + lam)


@pytest.mark.parametrize(
  "case, radius",
  [
    ("convex", 10.0),  # the Newton step, inside
    ("convex", 0.05),
    ("indefinite", 0.5),
    ("hard", 3.0),  # g orthogonal to the lowest eigenvector
  ],
)
def test_newton_solver_matches_the_exact_subproblem(case, radius):
  rng = np.random.default_rng(7)
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  h = np.array([0.5, 1.0, 2.0, 3.0, 4.0])
  if case != "convex":
    h[0] = -1.5
  h_matrix = q @ np.diag(h) @ q.T
  g = rng.normal(size=5)
  if case == "hard":
    g -= (q[:, 0] @ g) * q[:, 0]
  loss = lambda x: g @ x + 0.5 * x @ jnp.asarray(h_matrix) @ x
  x0 = jnp.zeros(5)
  solve = dense.newton_solver(make_hvp(loss, x0), x0, jnp.asarray(g))
  res = solve(jnp.asarray(radius), None)
  expected = _exact_subproblem(h_matrix, g, radius)
  if case == "hard":  # either sign of the eigenvector is a solution
    flip = expected - 2 * (q[:, 0] @ expected) * q[:, 0]
    if np.linalg.norm(res.step - flip) < np.linalg.norm(res.step - expected):
      expected = flip
  # The hard case is taken at a shift of sqrt(eps) |H| past -h_min.
  rtol = 1e-6 if case == "hard" else 1e-8
  np.testing.assert_allclose(res.step, expected, rtol=rtol, atol=1e-10)
  np.testing.assert_allclose(
    res.predicted_reduction,
    -(g @ expected + 0.5 * expected @ h_matrix @ expected),
    rtol=rtol,
  )
  status = CGStatus(int(res.status))
  if case == "convex":
    inside = radius > np.linalg.norm(expected) + 1e-9
    assert status == (CGStatus.CONVERGED if inside else CGStatus.HIT_BOUNDARY)
  else:
    assert status == CGStatus.NEGATIVE_CURVATURE
    np.testing.assert_allclose(res.step_norm, radius, rtol=1e-10)
  assert int(res.steps) == 5  # one HVP per param


@pytest.mark.parametrize("name", ["rosenbrock", "beale"])
def test_dense_newton_solves_test_functions_like_scipy_trust_exact(name):
  """``solver="dense"`` with the exact Hessian reaches the known minimum of
  the test function, in at most SciPy's trust-exact iterations plus 50%."""
  from scipy.optimize import minimize

  if name == "rosenbrock":
    fun = lambda x: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    x0, minimum = np.array([-1.2, 1.0]), np.array([1.0, 1.0])
  else:
    fun = lambda x: (
      (1.5 - x[0] + x[0] * x[1]) ** 2
      + (2.25 - x[0] + x[0] * x[1] ** 2) ** 2
      + (2.625 - x[0] + x[0] * x[1] ** 3) ** 2
    )
    x0, minimum = np.array([1.0, 1.0]), np.array([3.0, 0.5])
  reference = minimize(
    fun,
    x0,
    method="trust-exact",
    jac=jax.grad(fun),
    hess=jax.hessian(fun),
    options=dict(gtol=1e-10),
  )
  res = trncg_jax.solve(
    fun,
    jnp.asarray(x0),
    max_steps=200,
    grad_tol=1e-10,
    optimizer=trncg_jax.trncg(solver="dense"),
  )
  np.testing.assert_allclose(res.params, minimum, atol=1e-8)
  np.testing.assert_allclose(reference.x, minimum, atol=1e-6)
  assert res.num_steps <= 1.5 * reference.nit


def _clock(gains):
  """``slow_steps`` after each step of relative gain ``gains[k]``, from the
  initial state's clock."""
  state = trncg_jax.trncg_init(jnp.zeros(2, jnp.float64))
  gain, slow, out = state.gain, state.slow_steps, []
  for g in gains:
    gain, slow = trust_region.newton_clock(gain, slow, jnp.asarray(g))
    out.append(int(slow))
  return np.array(out)


def test_the_newton_switch_waits_for_a_slow_phase_after_fast_progress():
  after = trust_region.NEWTON_AFTER
  plateau, fast, slow = [1e-5] * 300, [0.4] * 40, [0.02] * 60
  assert (_clock(plateau) == -1).all()  # no progress yet: no count
  # A fast descent into a plateau: gains below the slow band reset it.
  assert _clock(fast + plateau).max() < after
  assert _clock(fast + [0.2] * 300).max() < after  # still fast
  steps = _clock(plateau + fast + slow)
  first = int(np.argmax(steps >= after))
  assert steps[first] == after and 340 + after <= first < 340 + after + 20
  # A brief fast spell within a plateau is not the descent (the average
  # starts at the floor and needs a run of fast steps to pass 0.1).
  assert (_clock([0.4] * 3 + plateau) == -1).all()
  # Once switched, it stays: fast steps, rejections (0) and nan alike.
  late = _clock(plateau + fast + slow + [0.5] * 20 + [0.0, float("nan")])
  assert (late[first:] >= after).all()


def _curved_least_squares():
  """Rosenbrock as residuals, whose Gauss-Newton and Newton steps differ."""
  residuals = lambda x: jnp.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])
  return trncg_jax.LeastSquares(residuals), jnp.array([-1.2, 1.0])


@pytest.mark.parametrize("radius", [10.0, 0.1])
def test_after_the_switch_the_step_is_the_exact_newton_step(radius):
  """A switched state takes ``trncg(solver="dense")``'s step (the exact
  Hessian's trust-region step, tested against N&W above); one not yet
  switched takes the Gauss-Newton step, which differs."""
  loss, x0 = _curved_least_squares()
  update = jax.jit(trncg_jax.trncg_update, static_argnums=2)

  def step(slow_steps, **kwargs):
    state = trncg_jax.trncg_init(x0, initial_radius=radius, **kwargs)
    state = state._replace(slow_steps=jnp.asarray(slow_steps, jnp.int32))
    return update(x0, state, loss)

  x_newton, newton = step(0, solver="dense")  # hvp_mode: the exact Hessian
  after = trust_region.NEWTON_AFTER
  x_switched, switched = step(after, hvp_mode="gauss_newton")
  x_before, before = step(after - 1, hvp_mode="gauss_newton")
  assert bool(switched.info.newton) and not bool(before.info.newton)
  assert not bool(newton.info.newton)  # no switch without Gauss-Newton
  np.testing.assert_allclose(x_switched, x_newton, rtol=1e-12)
  assert np.abs(x_before - x_newton).max() > 1e-3
  assert int(switched.info.hvps) == x0.size  # H from P products


def test_the_switching_iteration_restarts_the_radius_for_newton():
  """The Gauss-Newton region is not Newton's: the iteration that completes
  the count hands Newton the initial radius."""
  loss, x0 = _curved_least_squares()
  state = trncg_jax.trncg_init(x0, hvp_mode="gauss_newton", initial_radius=3.0)
  # One step short, with the average in the slow band (log10 0.01).
  state = state._replace(
    slow_steps=jnp.asarray(trust_region.NEWTON_AFTER - 1, jnp.int32),
    gain=jnp.asarray(-2.0),
    radius=jnp.asarray(1e-3),
  )
  _, state = trncg_jax.trncg_update(x0, state, loss)
  assert int(state.slow_steps) == trust_region.NEWTON_AFTER
  assert float(state.radius) == 3.0 and not bool(state.info.newton)


def test_newton_finish_applies_to_small_dense_gauss_newton_only():
  from tests.test_hvp import softplus  # a jax.custom_vjp with no JVP rule

  loss, x0 = _curved_least_squares()
  mode = lambda x, fn=loss, **kw: trust_region.newton_mode(
    TRNCGHyperparams(**{"hvp_mode": "gauss_newton", **kw}), x, fn
  )
  assert mode(x0) == "forward_over_reverse"
  assert mode(x0, newton_finish=False) is None
  assert mode(x0, solver="cg") is None
  assert mode(x0, hvp_mode="forward_over_reverse") is None
  # Too many params for P HVPs, though a jacobian_fn makes J cheap.
  many = jnp.zeros(DENSE_MAX_PARAMS + 1)
  wide = trncg_jax.LeastSquares(
    lambda x: x[:3], lambda x: jnp.eye(3, many.size)
  )
  assert uses_dense_solver(
    TRNCGHyperparams(hvp_mode="gauss_newton"), many, wide
  )
  assert mode(many, wide) is None
  # No forward-mode Hessian through a custom_vjp: Gauss-Newton goes on.
  custom = trncg_jax.LeastSquares(
    lambda x: softplus(x), lambda x: jnp.diag(jax.nn.sigmoid(x))
  )
  assert mode(x0, custom) is None


def test_low_precision_forms_the_model_in_float32_and_judges_in_float64():
  """``low_precision``: B, its factor and its eigenpairs in float32 (mu
  floored at float32's ulps), so the step agrees with the float64 one to
  float32's accuracy and no further; the predicted reduction is still the
  float64 model's value at the step taken, and float32 params are unchanged
  by the flag."""
  jac, y, loss = _linear_problem(40, 6, seed=7)
  x = jnp.asarray(np.linspace(-1, 1, 6))
  grad = jax.grad(loss)(x)
  for radius, damped in ((1e3, False), (1e-3, True)):
    exact = dense.dense_solver(loss, x, grad, 0.0)(radius, damped)
    low = dense.dense_solver(loss, x, grad, 0.0, low_precision=True)(
      radius, damped
    )
    assert low.step.dtype == jnp.float64
    error = np.abs(low.step - exact.step).max() / np.abs(exact.step).max()
    assert 1e-12 < error < 1e-4
    # The model judged in float64 at the step taken (the reference's B).
    p, r = np.asarray(low.step), jac @ np.asarray(x) - y
    predicted = -(2 * r @ jac @ p + p @ jac.T @ jac @ p)
    np.testing.assert_allclose(low.predicted_reduction, predicted, rtol=1e-12)
  x32 = x.astype(jnp.float32)
  loss32 = _linear_problem(40, 6, seed=7, dtype=np.float32)[2]
  grad32 = jax.grad(loss32)(x32)
  steps = [
    dense.dense_solver(loss32, x32, grad32, 0.0, low_precision=flag)(
      jnp.float32(1e3), False
    ).step
    for flag in (False, True)
  ]
  np.testing.assert_array_equal(steps[0], steps[1])
