"""The trust-region outer loop: test functions, SciPy, failure paths, costs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import trncg_jax
from trncg_jax import CGStatus, StepStatus


def rosenbrock(x):
  return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def beale(x):
  return (
    (1.5 - x[0] + x[0] * x[1]) ** 2
    + (2.25 - x[0] + x[0] * x[1] ** 2) ** 2
    + (2.625 - x[0] + x[0] * x[1] ** 3) ** 2
  )


def himmelblau(x):
  return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


# (function, start, known minimizer, minimum)
TEST_FUNCTIONS = {
  "rosenbrock2": (rosenbrock, [-1.2, 1.0], [1.0, 1.0]),
  "rosenbrock10": (rosenbrock, [-1.2, 1.0] * 5, [1.0] * 10),
  "beale": (beale, [1.0, 1.0], [3.0, 0.5]),
  "himmelblau": (himmelblau, [0.0, 0.0], [3.0, 2.0]),
}

SCIPY_SETTINGS = dict(
  initial_radius=1.0,
  max_radius=1000.0,
  eta=0.15,
  inexact_newton=True,
  forcing_power=0.5,
)

jit_update = jax.jit(trncg_jax.trncg_update, static_argnums=2)


def run_until(loss, x0, gtol, max_iter=1000, **hyperparams):
  """Iterates until ||g|| < gtol, like SciPy's loop; returns (x, state, its)."""
  x, state = x0, trncg_jax.trncg_init(x0, **hyperparams)
  for k in range(1, max_iter + 1):
    x, state = jit_update(x, state, loss)
    if float(state.info.grad_norm) < gtol:
      return x, state, k
  return x, state, max_iter


@pytest.mark.parametrize("name", TEST_FUNCTIONS)
def test_standard_functions_reach_known_minima_like_scipy(name):
  loss, x0, xstar = TEST_FUNCTIONS[name]
  x0 = jnp.asarray(x0)
  x, state, iterations = run_until(loss, x0, 1e-8, **SCIPY_SETTINGS)
  np.testing.assert_allclose(x, xstar, atol=1e-7)
  assert float(state.value) < 1e-14  # all four minima have value 0
  ref = scipy.optimize.minimize(
    lambda z: float(loss(jnp.asarray(z))),
    np.asarray(x0),
    jac=lambda z: np.asarray(jax.grad(loss)(jnp.asarray(z))),
    hessp=lambda z, p: np.asarray(
      jax.jvp(jax.grad(loss), (jnp.asarray(z),), (jnp.asarray(p),))[1]
    ),
    method="trust-ncg",
    options=dict(
      initial_trust_radius=1.0, max_trust_radius=1000.0, eta=0.15, gtol=1e-8
    ),
  )
  assert ref.success
  assert abs(iterations - ref.nit) <= 0.2 * ref.nit, (iterations, ref.nit)


def test_paper_preset_solves_rosenbrock():
  x, _, _ = run_until(
    rosenbrock, jnp.array([-1.2, 1.0]), 1e-8, **trncg_jax.PAPER_HYPERPARAMS
  )
  np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-7)


def test_spd_quadratic_one_newton_step():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
  A = jnp.asarray((q * np.linspace(1.0, 5.0, 6)) @ q.T)
  b = jnp.asarray(rng.standard_normal(6))
  loss = lambda x: 0.5 * x @ A @ x - b @ x
  state = trncg_jax.trncg_init(
    jnp.zeros(6), inexact_newton=False, cg_tol=1e-12, initial_radius=10.0
  )
  x, state = jit_update(jnp.zeros(6), state, loss)
  np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-9)
  assert bool(state.info.accepted)
  np.testing.assert_allclose(float(state.info.rho), 1.0, rtol=1e-9)
  assert int(state.info.cg_steps) <= 6


def test_rejected_step_keeps_params_and_shrinks_radius():
  # log cosh(x - 3) at 0 is nearly flat: the Newton step is ~100 per coordinate
  # and overshoots far into the linear tails, so it must be rejected.
  loss = lambda x: jnp.sum(jnp.log(jnp.cosh(x - 3.0)))
  x0 = jnp.zeros(2)
  state = trncg_jax.trncg_init(x0, initial_radius=1000.0, max_radius=1000.0)
  x, state = jit_update(x0, state, loss)
  assert StepStatus(int(state.info.status)) == StepStatus.REJECTED
  assert float(state.info.rho) < 1e-3
  np.testing.assert_array_equal(x, x0)
  assert float(state.radius) == 250.0


def test_nan_region_rejects_and_params_stay_finite():
  # The loss is undefined (NaN) outside the disc of radius 2 around 0; the
  # start (-1.2, 1) and the minimizer (1, 1) are inside, and the maximal
  # initial radius sends the first trials outside.
  def loss(x):
    return jnp.where(jnp.sum(x**2) < 2.0**2, rosenbrock(x), jnp.nan)

  x = jnp.array([-1.2, 1.0])
  state = trncg_jax.trncg_init(x, initial_radius=10.0)
  results = []
  for _ in range(60):
    x, state = jit_update(x, state, loss)
    assert bool(jnp.all(jnp.isfinite(x)))
    results.append(StepStatus(int(state.info.status)))
  assert StepStatus.NON_FINITE_TRIAL in results
  np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-6)


def test_non_finite_current_point_leaves_params():
  x0 = jnp.array([1.0, jnp.inf])
  x, state = jit_update(x0, trncg_jax.trncg_init(x0), rosenbrock)
  np.testing.assert_array_equal(x, x0)
  assert StepStatus(int(state.info.status)) == StepStatus.NON_FINITE_CURRENT
  assert float(state.radius) == float(state.hyperparams.initial_radius)
  assert "params are left unchanged" in StepStatus.NON_FINITE_CURRENT.message


def test_stationary_point_is_reported_and_radius_kept():
  x0 = jnp.array([1.0, 1.0])
  x, state = jit_update(x0, trncg_jax.trncg_init(x0), rosenbrock)
  assert StepStatus(int(state.info.status)) == StepStatus.STATIONARY
  np.testing.assert_array_equal(x, x0)
  assert float(state.radius) == float(state.hyperparams.initial_radius)
  assert int(state.info.cg_steps) == 0


@pytest.mark.parametrize(
  "name,value,allowed",
  [
    ("initial_radius", 0.0, "(0.0, inf)"),
    ("initial_radius", 2e10, "(0.0, 10000000000.0]"),
    ("max_radius", -1.0, "(0.0, inf)"),
    ("eta", 0.3, "[0.0, 0.25)"),
    ("eta", -0.1, "[0.0, 0.25)"),
    ("cg_tol", -1e-8, "[0.0, inf)"),
    ("max_cg_steps", 0, "[1, 2147483647]"),
    ("max_cg_steps", 2.5, "[1, 2147483647]"),
    ("shrink_factor", 1.0, "(0.0, 1.0)"),
    ("expand_factor", 1.0, "(1.0, inf)"),
    ("shrink_threshold", 0.0, "(0.0, 1.0)"),
    ("expand_threshold", 0.1, "[0.25, 1.0)"),
    ("initial_radius", float("nan"), "(0.0, inf)"),
    ("nystrom_rank", -1, "[0, 2147483647]"),
    ("nystrom_refresh", 0, "[1, 2147483647]"),
    ("nystrom_damping", 2.0, "[0.0, 1.0]"),
  ],
)
def test_bad_hyperparameters_raise_value_error(name, value, allowed):
  with pytest.raises(
    ValueError, match=f"{name} must be .* in {jnp.nan if 0 else ''}"
  ):
    trncg_jax.trncg_init(jnp.zeros(2), **{name: value})
  with pytest.raises(ValueError) as err:
    trncg_jax.trncg(**{name: value})
  assert name in str(err.value) and allowed in str(err.value)


def test_bad_hvp_mode_and_unknown_hyperparameter():
  with pytest.raises(ValueError, match="hvp_mode must be one of"):
    trncg_jax.trncg(hvp_mode="bfgs")
  with pytest.raises(TypeError, match="radius"):
    trncg_jax.trncg(radius=1.0)


def test_non_scalar_loss_and_bad_params_raise_type_error():
  x = jnp.zeros(3)
  with pytest.raises(TypeError, match="scalar"):
    jit_update(x, trncg_jax.trncg_init(x), lambda p: p**2)
  with pytest.raises(TypeError, match="returned a tuple.*has_aux=True"):
    jit_update(x, trncg_jax.trncg_init(x), lambda p: (jnp.sum(p), p))
  with pytest.raises(TypeError, match="must return a pair"):
    jit_update(x, trncg_jax.trncg_init(x, has_aux=True, aux=x), jnp.sum)
  with pytest.raises(TypeError, match=r"needs an example of the loss's aux"):
    trncg_jax.trncg_init(x, has_aux=True)
  with pytest.raises(TypeError, match="non-float dtype int"):
    trncg_jax.trncg_init(jnp.zeros(3, jnp.int32))
  with pytest.raises(TypeError, match="complex dtype"):
    trncg_jax.trncg_init({"a": jnp.zeros(3, jnp.complex64)})
  state = trncg_jax.trncg_init(x)
  with pytest.raises(TypeError, match=r"params leaf \['w'\] has non-float"):
    trncg_jax.trncg_update({"w": jnp.zeros(3, jnp.int32)}, state, jnp.sum)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtypes_preserved_through_pytree(dtype):
  params = {"a": jnp.full((2, 2), 0.5, dtype), "b": (jnp.zeros(3, dtype),)}
  loss = lambda p: (
    jnp.sum((p["a"] - 1.0) ** 2) + jnp.sum(jnp.cosh(p["b"][0] - 0.3))
  )
  state = trncg_jax.trncg_init(params)
  for _ in range(6):
    params, state = jit_update(params, state, loss)
  for leaf in jax.tree.leaves((params, state.grad)):
    assert leaf.dtype == dtype
  for leaf in (
    state.value,
    state.radius,
    state.info.rho,
    state.hyperparams.eta,
  ):
    assert leaf.dtype == dtype
  np.testing.assert_allclose(params["a"], 1.0, atol=1e-5)
  np.testing.assert_allclose(params["b"][0], 0.3, atol=1e-3)


def test_no_retracing_across_steps_and_hyperparameter_changes():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(x, state):
    return trncg_jax.trncg_update(x, state, rosenbrock)

  x = jnp.array([-1.2, 1.0])
  state = trncg_jax.trncg_init(x)
  for k in range(12):
    if k == 6:  # new hyperparameter values: arrays, so no retrace
      hp = state.hyperparams.replace(eta=0.1, max_cg_steps=7)
      assert float(hp.eta) == 0.1 and hp.eta.dtype == jnp.float64
      state = state._replace(hyperparams=hp)
    x, state = step(x, state)
  assert int(state.count) == 12
  with pytest.raises(ValueError, match="eta must be"):
    state.hyperparams.replace(eta=0.5)


@pytest.mark.parametrize(
  "mode,extra_per_iteration",
  [
    ("forward_over_reverse", "cg_steps"),  # the primal is re-run in each HVP
    ("linearize", 1),  # the primal is linearized once
  ],
)
def test_work_per_iteration(mode, extra_per_iteration):
  """Counts primal loss evaluations: one at the trial point, plus HVPs' share."""
  calls = []

  def loss(x):
    jax.debug.callback(lambda: calls.append(1))
    return rosenbrock(x)

  x = jnp.array([-1.2, 1.0, -0.5, 0.7])
  state = trncg_jax.trncg_init(x, hvp_mode=mode)
  update = jax.jit(trncg_jax.trncg_update, static_argnums=2)
  x, state = update(x, state, loss)
  jax.effects_barrier()
  first = len(calls)
  # First update: value-and-grad at x0 + HVP work + value-and-grad at trial.
  expected_hvp = (
    int(state.info.cg_steps) if mode == "forward_over_reverse" else 1
  )
  assert first == 1 + expected_hvp + 1
  for _ in range(8):
    calls.clear()
    x, state = update(x, state, loss)
    jax.effects_barrier()
    k = int(state.info.cg_steps)
    assert k >= 1
    expected_hvp = (
      k if extra_per_iteration == "cg_steps" else extra_per_iteration
    )
    assert len(calls) == expected_hvp + 1, (len(calls), k)


def test_hvp_count_equals_cg_steps(monkeypatch):
  """Each CG iteration makes exactly one HVP; the model costs none extra."""
  import trncg_jax.hvp as hvp_module

  counter = []
  original = hvp_module.make_hvp

  def counting_make_hvp(fun, params, mode):
    hvp = original(fun, params, mode)

    def counted(v):
      jax.debug.callback(lambda: counter.append(1))
      return hvp(v)

    return counted

  monkeypatch.setattr(hvp_module, "make_hvp", counting_make_hvp)
  x = jnp.array([-1.2, 1.0, -0.5, 0.7, 0.1])
  state = trncg_jax.trncg_init(x)
  update = jax.jit(trncg_jax.trncg_update, static_argnums=2)
  total_cg = 0
  for _ in range(10):
    x, state = update(x, state, rosenbrock)
    total_cg += int(state.info.cg_steps)
  jax.effects_barrier()
  assert len(counter) == total_cg > 10


def ill_conditioned_least_squares(n=200, top=50, seed=0):
  """Linear residuals A w - b whose Gauss-Newton matrix 2 A^T A has ``top``
  eigenvalues spread over 1e4 .. 1 and the rest in [0.25, 1]."""
  rng = np.random.default_rng(seed)
  q_left, _ = np.linalg.qr(rng.standard_normal((2 * n, n)))
  q_right, _ = np.linalg.qr(rng.standard_normal((n, n)))
  singular = np.concatenate(
    [np.logspace(2, 0, top), rng.uniform(0.5, 1.0, n - top)]
  ) / np.sqrt(2)
  A = (q_left * singular) @ q_right.T
  w_star = rng.standard_normal(n) / np.sqrt(n)
  b = A @ w_star
  return A, b, w_star


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_nystrom_preconditioning_cuts_cg_steps(dtype):
  A, b, w_star = ill_conditioned_least_squares()
  loss = trncg_jax.LeastSquares(lambda w, A, b: A @ w - b)
  A, b = jnp.asarray(A, dtype), jnp.asarray(b, dtype)
  tol = 1e-5 if dtype == jnp.float32 else 1e-10
  chex.clear_trace_counter()  # the counter is per function name: reset

  @jax.jit
  @chex.assert_max_traces(n=2)  # one trace per preconditioner setting
  def step(w, state):
    return trncg_jax.trncg_update(w, state, loss, A, b)

  totals = {}
  for rank in (0, 50):
    w = jnp.zeros(200, dtype)
    state = trncg_jax.trncg_init(
      w,
      hvp_mode="gauss_newton",
      nystrom_rank=rank,
      cg_tol=tol,
      inexact_newton=False,
      max_cg_steps=1000,
    )
    cg, hvps = [], []
    for _ in range(12):
      w, state = step(w, state)
      cg.append(int(state.info.cg_steps))
      hvps.append(int(state.info.hvps))
    assert w.dtype == dtype and state.value.dtype == dtype
    assert state.nystrom is None or state.nystrom.basis.dtype == dtype
    # Measured: 9e-7 / 3e-7 in float32, 3e-11 / 8e-12 in float64.
    np.testing.assert_allclose(np.asarray(w, float), w_star, atol=10 * tol)
    # The sketch's products are counted when it is rebuilt (count 0, 10).
    sketch = [rank if k % 10 == 0 else 0 for k in range(12)]
    assert hvps == [c + s for c, s in zip(cg, sketch)]
    totals[rank] = sum(cg)
  assert totals[50] < totals[0] / 2, totals


def test_nystrom_rebuild_rescales_the_radius_to_the_new_norm():
  """The radius is in the preconditioner's norm: each rebuild multiplies it
  by ||p||_new / ||p||_old of the last step p, computed here with M formed
  densely in NumPy; between rebuilds it follows N&W's rule alone."""

  def residuals(x):  # extended Rosenbrock: the curvature turns as x moves
    return jnp.concatenate([10 * (x[1::2] - x[::2] ** 2), 1 - x[::2]])

  def dense(factors):
    u = np.asarray(factors.basis, np.float64)
    return u @ np.diag(factors.inside) @ u.T + float(factors.outside) * (
      np.eye(len(u)) - u @ u.T
    )

  loss = trncg_jax.LeastSquares(residuals)
  x = jnp.tile(jnp.array([-1.2, 1.0]), 10)
  state = trncg_jax.trncg_init(
    x, hvp_mode="gauss_newton", nystrom_rank=4, nystrom_refresh=3
  )
  ratios = []
  for k in range(24):
    before = state
    x, state = jit_update(x, state, loss)
    p = np.asarray(before.last_step, np.float64)
    old, new = dense(before.nystrom), dense(state.nystrom)
    ratio = np.sqrt(p @ new @ p / (p @ old @ p)) if k % 3 == 0 and k else 1.0
    np.testing.assert_allclose(
      state.info.radius, before.radius * ratio, rtol=1e-10
    )
    ratios.append(ratio)
  assert max(abs(r - 1) for r in ratios) > 1e-2  # measured: 0.98 at k = 12


def test_nystrom_rank_above_param_count_or_without_gauss_newton_is_rejected():
  gn = dict(hvp_mode="gauss_newton")
  with pytest.raises(ValueError, match=r"nystrom_rank must be .* \[0, 3\]"):
    trncg_jax.trncg_init(jnp.zeros(3), nystrom_rank=4, **gn)
  with pytest.raises(ValueError, match="nystrom_rank"):
    trncg_jax.trncg(nystrom_rank=4, **gn).init(
      {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    )
  with pytest.raises(ValueError, match="nystrom_rank > 0 needs hvp_mode"):
    trncg_jax.trncg(nystrom_rank=2)


@pytest.mark.parametrize("solver", ["cg", "dense"])
def test_custom_vjp_loss_end_to_end(solver):
  """The Hessian's products (CG's, or the dense Newton solver's columns) use
  ``hvp_mode``, with its check."""
  from tests.test_hvp import softplus  # a jax.custom_vjp with no JVP rule

  def loss(x):
    return jnp.sum(softplus(x - 1.0) ** 2) + 0.5 * jnp.sum(x**2)

  x0 = jnp.array([2.0, -1.0])
  with pytest.raises(TypeError, match="hvp_mode='reverse_over_reverse'"):
    jit_update(x0, trncg_jax.trncg_init(x0, solver=solver), loss)
  x, state, _ = run_until(
    loss, x0, 1e-10, hvp_mode="reverse_over_reverse", solver=solver
  )
  # Stationarity: 2 softplus(x - 1) sigmoid(x - 1) + x = 0.
  np.testing.assert_allclose(
    2 * jax.nn.softplus(x - 1.0) * jax.nn.sigmoid(x - 1.0) + x, 0.0, atol=1e-10
  )


def loss_with_components(x, target):
  """A loss that reports its parts, as a PINN reports PDE, BC and IC terms."""
  fit = jnp.sum((x - target) ** 2)
  reg = jnp.sum(x**4)
  return fit + reg, {"fit": fit, "reg": reg}


def test_has_aux_keeps_the_accepted_points_aux_without_retracing():
  target = jnp.array([3.0, -2.0, 0.5])
  x0 = jnp.zeros(3)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(x, state):
    return trncg_jax.trncg_update(x, state, loss_with_components, target)

  aux_shape = jax.eval_shape(loss_with_components, x0, target)[1]
  # A large first radius makes early steps overshoot and be rejected.
  x, state = (
    x0,
    trncg_jax.trncg_init(x0, has_aux=True, aux=aux_shape, initial_radius=9.0),
  )
  x_plain, state_plain = x0, trncg_jax.trncg_init(x0, initial_radius=9.0)
  results = []
  for _ in range(15):
    x, state = step(x, state)
    x_plain, state_plain = jit_update(
      x_plain, state_plain, lambda p: loss_with_components(p, target)[0]
    )
    results.append(int(state.info.status))
    # The aux is that of the params returned, accepted step or not.
    _, expected = loss_with_components(x, target)
    for name in ("fit", "reg"):
      np.testing.assert_allclose(
        state.info.aux[name], expected[name], rtol=1e-14
      )
  assert StepStatus.REJECTED in results and StepStatus.ACCEPTED in results
  np.testing.assert_array_equal(x, x_plain)  # aux changes nothing else


def test_fresh_batch_evaluates_rho_on_one_batch():
  """rho compares f(x) and f(x + p) on the same batch when batches change."""

  def loss(w, xb, yb):
    return jnp.mean((jnp.tanh(xb @ w) - yb) ** 2)

  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  w_true = jax.random.normal(keys[0], (4,))
  xs = jax.random.normal(keys[1], (6, 32, 4))
  ys = jnp.tanh(xs @ w_true)  # every batch has the same minimizer, w_true
  update = jax.jit(
    trncg_jax.trncg_update, static_argnums=2, static_argnames="fresh_batch"
  )
  w, state = jnp.zeros(4), trncg_jax.trncg_init(jnp.zeros(4))
  for k in range(30):
    xb, yb = xs[k % 6], ys[k % 6]
    w_new, state = update(w, state, loss, xb, yb, fresh_batch=True)
    expected = loss(w, xb, yb) - loss(w_new, xb, yb)
    if bool(state.info.accepted):
      np.testing.assert_allclose(
        state.info.actual_reduction, expected, rtol=1e-9, atol=1e-15
      )
    w = w_new
  np.testing.assert_allclose(w, w_true, atol=1e-6)
  # Without fresh_batch the second call reuses f(x) from the first batch, so
  # its actual reduction mixes two batches: the check above tells them apart.
  w0, state = jnp.zeros(4), trncg_jax.trncg_init(jnp.zeros(4))
  w1, state = update(w0, state, loss, xs[0], ys[0])
  w2, state = update(w1, state, loss, xs[1], ys[1])
  same_batch = loss(w1, xs[1], ys[1]) - loss(w2, xs[1], ys[1])
  assert abs(float(state.info.actual_reduction - same_batch)) > 1e-6


def test_subsampled_hessian_uses_the_hvp_batch():
  """With hvp_args the model's Hessian is the sub-batch's (Byrd et al. 2011):
  an interior Newton step solves H_sub p = -g exactly (closed form)."""

  def loss(x, a, b):  # 1/2 x^T A x - b^T x, A = a^T a / n, a per-sample rows
    return 0.5 * jnp.mean((a @ x) ** 2) - b @ x

  a = jax.random.normal(jax.random.PRNGKey(1), (40, 5))
  b = jnp.arange(1.0, 6.0) / 10
  x0 = jnp.zeros(5)
  state = trncg_jax.trncg_init(
    x0, initial_radius=1e3, max_radius=1e4, inexact_newton=False, cg_tol=1e-12
  )
  x1, state = trncg_jax.trncg_update(
    x0, state, loss, a, b, hvp_args=(a[:10], b)
  )
  h_sub = np.asarray(a[:10]).T @ np.asarray(a[:10]) / 10
  step = np.linalg.solve(h_sub, np.asarray(b))
  assert int(state.info.cg_status) == trncg_jax.CGStatus.CONVERGED
  np.testing.assert_allclose(
    state.info.step_norm, np.linalg.norm(step), rtol=1e-8
  )
  np.testing.assert_allclose(
    state.info.predicted_reduction, 0.5 * np.asarray(b) @ step, rtol=1e-8
  )
  # rho uses the full batch: its actual reduction decides acceptance.
  actual = loss(x0, a, b) - loss(x0 + step, a, b)
  np.testing.assert_allclose(state.info.actual_reduction, actual, rtol=1e-8)
  accepted = actual / (0.5 * np.asarray(b) @ step) > 1e-3
  assert bool(state.info.accepted) == accepted
  np.testing.assert_allclose(x1, x0 + step if accepted else x0, rtol=1e-8)


def offset_quartic(x):
  """A large constant plus a convex quartic: near its minimizer x = 1 every
  reduction of the loss is below the round-off of f ~ 1e8 (ulp 1.5e-8)."""
  return 1e8 + 0.5 * jnp.sum((x - 1.0) ** 2) + 0.25 * jnp.sum((x - 1.0) ** 4)


def test_round_off_reductions_count_as_agreement():
  """f(x) and f(x + p) round to the same float, while the model predicts
  1.5e-12: plain rho would be 0 and reject the exact Newton step."""
  x = jnp.full(3, 1.0 + 1e-6)
  state = trncg_jax.trncg_init(x)
  x_new, state = jit_update(x, state, offset_quartic)
  assert float(state.info.actual_reduction) == 0.0  # lost in round-off
  assert 0 < float(state.info.predicted_reduction) < 1e-11
  assert bool(state.info.accepted) and float(state.info.rho) > 0.99
  np.testing.assert_allclose(x_new, 1.0, atol=1e-15)


@pytest.mark.parametrize("solver", ["cg", "dense"])
def test_least_squares_actual_reduction_keeps_the_digits_of_the_sums(solver):
  """Residuals (x - 1, 1000 constants of 1e3) in float32: f ~ 1e9 (ulp 64)
  at the minimum, and the exact Gauss-Newton step from x = 1.01 gains 4e-4,
  which the difference of the two sums loses entirely. Summed term by term
  it matches the float64 value of the same residuals."""
  offset = jnp.full(1000, 1e3, jnp.float32)
  loss = trncg_jax.LeastSquares(lambda x: (x - 1.0, offset))
  x = jnp.full(4, 1.01, jnp.float32)
  state = trncg_jax.trncg_init(x, hvp_mode="gauss_newton", solver=solver)
  x_new, state = jit_update(x, state, loss)
  assert bool(state.info.accepted)
  np.testing.assert_allclose(x_new, 1.0, atol=1e-6)
  before, after = (np.asarray(v, np.float64) - 1.0 for v in (x, x_new))
  reference = np.sum(before**2) - np.sum(after**2)  # the constants cancel
  np.testing.assert_allclose(state.info.actual_reduction, reference, rtol=1e-5)
  # The plain difference, what rho saw before: 0 or a multiple of 64.
  plain = float(loss(x) - loss(x_new))
  assert abs(plain - reference) > 0.5 * abs(reference)
  np.testing.assert_allclose(state.info.rho, 1.0, rtol=1e-4)


def test_converges_below_the_loss_resolution_and_stops():
  """Without the safeguard the radius collapsed to 0 and solve idled until
  max_steps (CUTEst LUKSAN15LS and others); now Newton converges on the
  gradient and the run stops within a few steps with a status that says why."""
  res = trncg_jax.solve(offset_quartic, jnp.zeros(3), max_steps=1000)
  assert res.status in (
    trncg_jax.SolveStatus.GRAD_TOL,
    trncg_jax.SolveStatus.PRECISION_LIMIT,
  ), res.status
  assert res.num_steps <= 20, res.num_steps
  np.testing.assert_allclose(res.params, 1.0, atol=1e-12)


def test_precision_limit_when_neither_f_nor_g_can_improve():
  """A gradient with noise above its true value near the minimizer: once the
  model's gain is below eps |f| and the gradient stops shrinking, the run
  stops with PRECISION_LIMIT in a bounded number of steps."""

  def noisy(x):
    # A ripple of size 1e-9 in the gradient, far below f's resolution.
    return offset_quartic(x) + 1e-18 * jnp.sum(jnp.sin(1e9 * x))

  res = trncg_jax.solve(noisy, jnp.zeros(3), max_steps=1000)
  assert res.status == trncg_jax.SolveStatus.PRECISION_LIMIT, res.status
  assert res.num_steps <= 30, res.num_steps
  np.testing.assert_allclose(res.params, 1.0, atol=1e-7)


@pytest.mark.parametrize(
  "ulps,expected", [(3, StepStatus.PRECISION_LIMIT), (8, StepStatus.ACCEPTED)]
)
def test_a_collapsed_region_stops_once_its_step_moves_params_by_ulps(
  ulps, expected
):
  """A step cut by the region that moves no coordinate by more than
  STEP_ULPS = 4 ulps ends the run: a loss whose round-off is far above
  eps |f| (a sum that cancels) accepted such steps for 900 iterations on
  CUTEst's PENALTY3. A step of 8 ulps is still taken."""
  from trncg_jax.trust_region import STEP_ULPS

  assert STEP_ULPS == 4.0
  eps = float(jnp.finfo(jnp.float64).eps)
  x = jnp.ones(2)  # the Newton step, +2 per coordinate, is far outside
  state = trncg_jax.trncg_init(x, initial_radius=ulps * eps * np.sqrt(2.0))
  loss = lambda x: jnp.sum((x - 3.0) ** 2)
  new_x, state = trncg_jax.trncg_update(x, state, loss)
  assert CGStatus(int(state.info.cg_status)) == CGStatus.HIT_BOUNDARY
  assert StepStatus(int(state.info.status)) == expected
  # Accepted either way (rho is 1); the status is what ends a run.
  np.testing.assert_array_equal(np.asarray(new_x) - 1.0, ulps * eps)


def test_paper_preset_holds_the_papers_hyperparameters():
  state = trncg_jax.trncg_init(jnp.zeros(2), **trncg_jax.PAPER_HYPERPARAMS)
  hp = state.hyperparams
  assert (
    float(hp.initial_radius),
    float(hp.max_radius),
    float(hp.eta),
    float(hp.cg_tol),
    bool(hp.inexact_newton),
    int(hp.max_cg_steps),
  ) == (2.0, 10.0, 1e-3, 1e-8, False, 500)
  default = trncg_jax.trncg_init(jnp.zeros(2)).hyperparams
  assert float(default.max_radius) == 1e10 and bool(default.inexact_newton)


def test_public_surface_is_small_and_every_status_says_what_to_do():
  assert 15 <= len(trncg_jax.__all__) <= 20
  for name in trncg_jax.__all__:
    assert hasattr(trncg_jax, name), name
  for enum_type in (
    trncg_jax.CGStatus,
    trncg_jax.StepStatus,
    trncg_jax.SolveStatus,
  ):
    for member in enum_type:
      assert isinstance(member.message, str) and len(member.message) > 10
      assert enum_type(int(member)) is member  # round-trips through int32
