"""The defects found by fuzzing (issue 14), one test or more each.

Each test reproduces the issue's minimal case and checks the right answer, a
clear error, or a bounded stop with a status that says why.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import trncg_jax
from tests.test_transform import run_optax
from trncg_jax import SolveStatus
from trncg_jax.nonlinear_cg import MAX_REJECTIONS


def quartic(x):
  return jnp.sum((x - jnp.array([1.0, -0.5])) ** 2) + 0.1 * jnp.sum(x**4)


# 1. A transformation after trncg in optax.chain.
@pytest.mark.parametrize(
  "after", [optax.scale(0.5), optax.clip_by_global_norm(0.1)]
)
def test_chained_transformation_after_trncg_does_not_stall(after):
  reference = trncg_jax.solve(quartic, jnp.zeros(2), grad_tol=1e-12)
  x, state = run_optax(
    optax.chain(trncg_jax.trncg(), after), quartic, jnp.zeros(2), 60
  )
  # Before the fix: stuck at [0.5, -0.25], loss 0.319 (state said 0.106).
  np.testing.assert_allclose(x, reference.params, atol=1e-8)
  tr_state = state[0]
  # The state's value belongs to the point it names.
  np.testing.assert_allclose(
    tr_state.value, quartic(tr_state.point), rtol=1e-14
  )


def test_solve_with_a_chain_records_the_true_loss():
  opt = optax.chain(trncg_jax.trncg(), optax.scale(0.5))
  res = trncg_jax.solve(quartic, jnp.zeros(2), optimizer=opt, max_steps=8)
  # Before the fix the history kept the value at trncg's own point.
  np.testing.assert_allclose(
    res.history["loss"][-1], quartic(res.params), rtol=1e-14
  )
  assert res.history["loss"][-1] < 0.1


# 2. Donation.
def test_states_can_be_donated():
  loss = lambda z: jnp.sum((z - 1.0) ** 2) + jnp.sum(z**4)
  update = jax.jit(
    trncg_jax.trncg_update, static_argnums=2, donate_argnums=(0, 1)
  )
  x, state = jnp.zeros(3), trncg_jax.trncg_init(jnp.zeros(3))
  for _ in range(3):  # outputs are donated again on the next call
    x, state = update(x, state, loss)
  assert int(state.count) == 3

  for opt in (trncg_jax.trncg(), trncg_jax.nonlinear_cg()):

    @jax.jit
    def step(x, state, opt=opt):
      value, grad = optax.value_and_grad_from_state(loss)(x, state=state)
      updates, state = opt.update(
        grad, state, x, value=value, grad=grad, value_fn=loss
      )
      return optax.apply_updates(x, updates), state

    donated = jax.jit(step, donate_argnums=(0, 1))
    x = jnp.zeros(3)
    state = opt.init(x)
    for _ in range(3):
      x, state = donated(x, state)
    assert bool(jnp.all(jnp.isfinite(x)))


# 3. Mixed float32 / float64 params.
def test_mixed_precision_params_get_a_type_error_naming_the_leaves():
  params = {"a": jnp.zeros(2, jnp.float32), "b": jnp.zeros(2, jnp.float64)}
  loss = lambda p: jnp.sum((p["a"] - 1) ** 2) + jnp.sum((p["b"] - 1) ** 2)
  pattern = r"mix floating-point dtypes \(float32: \['a'\]; float64: \['b'\]\)"
  with pytest.raises(TypeError, match=pattern):
    trncg_jax.solve(loss, params)
  with pytest.raises(TypeError, match=pattern):
    trncg_jax.trncg_init(params)
  with pytest.raises(TypeError, match=pattern):
    trncg_jax.nonlinear_cg().init(params)
  with pytest.raises(TypeError, match=pattern):
    trncg_jax.trncg(hvp_mode="gauss_newton").init(params)
  # Python scalars beside arrays take the arrays' dtype: no error.
  trncg_jax.trncg_init({"a": jnp.zeros(2, jnp.float32), "b": 0.5})


# 4. A loss that returns a Python float.
def test_a_constant_python_float_loss_stops_at_once():
  res = trncg_jax.solve(lambda x: 1.0, jnp.zeros(3))
  assert res.status == SolveStatus.GRAD_TOL and res.num_steps == 0
  assert float(res.history["loss"][0]) == 1.0


# 5. Norms that overflow or underflow.
@pytest.mark.parametrize(
  "scale,dtype",
  [
    (1e30, jnp.float32),
    (1e-30, jnp.float32),
    (1e20, jnp.float32),
    (1e200, jnp.float64),
    (1e-200, jnp.float64),
  ],
)
def test_badly_scaled_quadratic_is_solved(scale, dtype):
  loss = lambda x: scale * jnp.sum((x - 1.0) ** 2)
  res = trncg_jax.solve(loss, jnp.zeros(3, dtype), max_steps=50)
  assert res.status in (SolveStatus.GRAD_TOL, SolveStatus.PRECISION_LIMIT)
  assert res.num_steps <= 5, res.num_steps
  np.testing.assert_allclose(res.params, 1.0, rtol=10 * jnp.finfo(dtype).eps)
  # ||g|| at the start is 2 sqrt(3) scale, neither inf nor 0.
  np.testing.assert_allclose(
    res.history["grad_norm"][0], 2 * np.sqrt(3.0) * scale, rtol=1e-6
  )


def test_safe_norm_matches_numpy_over_the_whole_range():
  from trncg_jax._checks import safe_norm

  # Normal float32 entries (XLA on CPU flushes subnormals to zero).
  for scale in (1e-35, 1e-30, 1.0, 1e19, 1e30, 1e37):
    tree = {
      "a": jnp.array([3.0, -4.0], jnp.float32) * jnp.float32(scale),
      "b": jnp.array([[12.0]], jnp.float32) * jnp.float32(scale),
    }
    expected = 13.0 * np.float64(np.float32(scale))
    np.testing.assert_allclose(float(safe_norm(tree)), expected, rtol=1e-6)
  assert float(safe_norm(jnp.zeros(3))) == 0.0
  assert not np.isfinite(float(safe_norm(jnp.array([1.0, jnp.nan]))))
  assert float(safe_norm(jnp.array([1.0, jnp.inf]))) == np.inf


def test_tree_reductions_combine_leaves_and_keep_the_dtype():
  from trncg_jax._checks import all_finite, tree_equal, tree_max_abs

  tree = {
    "a": jnp.array([3.0, -4.0], jnp.float32),
    "b": jnp.array([[-12.0]], jnp.float32),
    "c": jnp.array(0.5, jnp.float32),
  }
  assert tree_max_abs(tree).dtype == jnp.float32
  assert float(tree_max_abs(tree)) == 12.0
  assert bool(all_finite(tree))
  assert bool(tree_equal(tree, dict(tree)))
  for leaf in ("a", "b", "c"):
    bad = dict(tree, **{leaf: tree[leaf] * jnp.nan})
    assert not bool(all_finite(bad)), leaf
    assert not np.isfinite(float(tree_max_abs(bad))), leaf
    assert not bool(tree_equal(tree, dict(tree, **{leaf: tree[leaf] + 1}))), (
      leaf
    )
  assert float(tree_max_abs({})) == 0.0 and bool(all_finite({}))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scale_tree_is_an_exact_power_of_two_at_any_exponent(dtype):
  from trncg_jax._checks import norm_exponent, pow2, scale_tree

  info = np.finfo(dtype)
  every = np.arange(info.minexp, info.maxexp)
  got = jax.jit(pow2, static_argnums=1)(jnp.asarray(every), dtype)
  assert got.dtype == dtype
  np.testing.assert_array_equal(got, np.ldexp(dtype(1), every))
  rng = np.random.default_rng(0)
  mantissa = (rng.uniform(0.5, 1.0, 200) * rng.choice([-1, 1], 200)).astype(
    dtype
  )
  scaled = jax.jit(scale_tree)
  # Normal inputs and outputs, at exponents up to the documented 2 |minexp|
  # (252 in float32): most of these 2^e are not floats themselves.
  span = -2 * info.minexp
  for e in (-span, -span // 2, -1, 0, 1, span // 2, span):
    k = info.minexp + 1 if e > 0 else info.maxexp
    x = np.ldexp(mantissa, k).astype(dtype)
    got = scaled({"a": jnp.asarray(x)}, jnp.int32(e))["a"]
    assert got.dtype == dtype
    want = np.ldexp(mantissa.astype(np.float64), k + e).astype(dtype)
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=str(e))
  # A gradient of 1e30 x entries in float32 scales to O(1) and back exactly.
  g = jnp.asarray(mantissa * dtype(1e30 if dtype == np.float32 else 1e300))
  e = norm_exponent(g)
  assert 0.5 <= float(jnp.max(jnp.abs(scaled(g, -e)))) < 1.0
  np.testing.assert_array_equal(scaled(scaled(g, -e), e), g)


# 6. Hyperparameters that the cast to the params' dtype turns to 0 or inf.
@pytest.mark.parametrize(
  "name,value,becomes",
  [("initial_radius", 1e-300, "0.0"), ("max_radius", 1e300, "inf")],
)
def test_hyperparameters_out_of_the_params_dtype_range(name, value, becomes):
  with pytest.raises(ValueError, match=f"{name}=.* is {becomes} in float32"):
    trncg_jax.trncg_init(jnp.zeros(2, jnp.float32), **{name: value})
  with pytest.raises(ValueError, match=name):
    trncg_jax.trncg(**{name: value}).init(jnp.zeros(2, jnp.float32))
  trncg_jax.trncg_init(jnp.zeros(2, jnp.float64), **{name: value})  # fine


# 7. nonlinear_cg.
def test_nonlinear_cg_takes_python_scalar_params():
  res = trncg_jax.solve(
    lambda x: (x - 1.0) ** 2,
    0.0,
    optimizer=trncg_jax.nonlinear_cg(),
    grad_tol=1e-10,
  )
  assert res.status == SolveStatus.GRAD_TOL
  np.testing.assert_allclose(res.params, 1.0, atol=1e-10)


def test_nonlinear_cg_steps_out_of_a_minus_inf_region():
  # The quadratic's minimizer (3, 3) lies in a region where the loss is -inf.
  loss = lambda x: jnp.where(x[0] > 1, -jnp.inf, jnp.sum((x - 3.0) ** 2))
  res = trncg_jax.solve(
    loss, jnp.zeros(2), optimizer=trncg_jax.nonlinear_cg(), max_steps=30
  )
  assert np.all(np.isfinite(res.history["loss"]))
  # Before the fix every step was the same rejected one, params stayed at 0.
  assert res.history["accepted"][1:].sum() >= 10
  assert res.history["loss"][-1] < 0.6 * res.history["loss"][0]


def test_nonlinear_cg_stops_when_no_step_is_possible():
  # -inf everywhere but at the start: every line search fails.
  loss = lambda x: jnp.where(jnp.sum(x**2) > 0, -jnp.inf, 0.0) + jnp.sum(x)
  res = trncg_jax.solve(
    loss, jnp.zeros(2), optimizer=trncg_jax.nonlinear_cg(), max_steps=1000
  )
  assert res.status == SolveStatus.STAGNATION
  assert res.num_steps == MAX_REJECTIONS
  np.testing.assert_array_equal(res.params, 0.0)


def test_trncg_stops_when_every_trial_is_non_finite():
  loss = lambda x: jnp.where(jnp.sum(x**2) > 0, -jnp.inf, 0.0) + jnp.sum(x)
  res = trncg_jax.solve(loss, jnp.zeros(2), max_steps=5000)
  assert res.status == SolveStatus.PRECISION_LIMIT
  assert res.num_steps < 600  # the radius shrinks 4x per rejection
  np.testing.assert_array_equal(res.params, 0.0)


@pytest.mark.parametrize(
  "options,match",
  [
    (dict(powell_nu="0.2"), "powell_nu must be a real number"),
    (dict(restart_every="5"), "restart_every must be an integer"),
    (
      dict(linesearch=optax.adam(1e-3)),
      "linesearch must be .* stores value and grad",
    ),
    (dict(linesearch="zoom"), "linesearch must be"),
  ],
)
def test_nonlinear_cg_options_are_checked_at_construction(options, match):
  with pytest.raises(ValueError, match=match):
    trncg_jax.nonlinear_cg(**options)
  # A line search that does store them is accepted.
  trncg_jax.nonlinear_cg(
    linesearch=optax.scale_by_backtracking_linesearch(
      max_backtracking_steps=20, store_grad=True
    )
  )


# 8. Clear errors.
def test_a_state_of_another_optimizer_or_other_params_is_named():
  x = jnp.zeros(2)
  with pytest.raises(
    TypeError, match="state is a NonlinearCGState, not a TRNCGState"
  ):
    trncg_jax.trncg_update(x, trncg_jax.nonlinear_cg_init(x), jnp.sum)
  with pytest.raises(
    TypeError, match="state is a TRNCGState, not a NonlinearCGState"
  ):
    trncg_jax.nonlinear_cg_update(x, trncg_jax.trncg_init(x), jnp.sum)
  with pytest.raises(TypeError, match="state is a ScaleByAdamState"):
    trncg_jax.trncg().update(x, optax.adam(1.0).init(x)[0], x, value_fn=jnp.sum)
  with pytest.raises(
    TypeError,
    match=r"made for params float64\[2\], but "
    r"params are float64\[3\]",
  ):
    trncg_jax.trncg_update(
      jnp.zeros(3), trncg_jax.trncg_init(x), lambda p: jnp.sum(p**2)
    )
  with pytest.raises(TypeError, match="made for params"):
    opt = trncg_jax.nonlinear_cg()
    opt.update(x, opt.init(jnp.zeros(3)), x, value_fn=jnp.sum)


@pytest.mark.parametrize("name", ["loss_tol", "grad_tol", "min_radius"])
def test_solve_tolerances_are_checked(name):
  with pytest.raises(ValueError, match=f"{name} must be a real number"):
    trncg_jax.solve(lambda x: jnp.sum(x**2), jnp.ones(2), **{name: None})
  with pytest.raises(ValueError, match=f"{name} must be"):
    trncg_jax.solve(lambda x: jnp.sum(x**2), jnp.ones(2), **{name: "1e-6"})


def test_has_aux_with_an_empty_aux_is_named():
  with pytest.raises(TypeError, match=r"aux \(None\) holds no arrays"):
    trncg_jax.solve(lambda x: (jnp.sum(x**2), None), jnp.ones(2), has_aux=True)


def test_inexact_newton_must_be_one_bool():
  with pytest.raises(ValueError, match="inexact_newton must be a bool"):
    trncg_jax.trncg(inexact_newton=jnp.array([True, False]))
  with pytest.raises(ValueError, match="inexact_newton must be a bool"):
    trncg_jax.trncg(inexact_newton="yes")
  trncg_jax.trncg(inexact_newton=jnp.array(False))


def test_non_scalar_value_in_the_optax_update_is_named():
  x = jnp.ones(2)
  for opt in (trncg_jax.trncg(), trncg_jax.nonlinear_cg()):
    with pytest.raises(
      TypeError,
      match=r"value must be the loss at params, a "
      r"scalar; got shape \(2,\)",
    ):
      opt.update(
        x,
        opt.init(x),
        x,
        value=jnp.ones(2),
        grad=x,
        value_fn=lambda z: jnp.sum(z**2),
      )


def test_an_optimizer_factory_not_called_is_named():
  with pytest.raises(TypeError, match=r"Did you mean trncg\(\)\?"):
    trncg_jax.solve(
      lambda x: jnp.sum(x**2), jnp.ones(2), optimizer=trncg_jax.trncg
    )


# 9. The history's memory is bounded.
def test_history_is_bounded_for_huge_max_steps():
  res = trncg_jax.solve(
    lambda x: jnp.sum((x - 1.0) ** 2),
    jnp.zeros(3),
    max_steps=10**7,
    grad_tol=1e-12,
  )
  assert res.num_steps <= 3
  # Recorded every 1,000 steps: the final step's slot, not 10**7 + 1 entries.
  assert len(res.history["loss"]) == 2
  np.testing.assert_array_equal(res.history["step"], [0, res.num_steps])
  np.testing.assert_allclose(res.history["loss"][-1], 0.0, atol=1e-24)


def test_history_every_records_every_kth_step_and_the_last():
  loss = lambda x: jnp.sum((x - 1.0) ** 2)
  res = trncg_jax.solve(
    loss, jnp.zeros(2), optimizer=optax.sgd(1e-4), max_steps=30_001
  )
  assert res.num_steps == 30_001
  # Default: ceil(30_001 / 10_000) = 4.
  np.testing.assert_array_equal(res.history["step"][:4], [0, 4, 8, 12])
  assert res.history["step"][-1] == 30_001 and res.history["step"][-2] == 30_000
  assert len(res.history["loss"]) == 7_502
  full = trncg_jax.solve(
    loss,
    jnp.zeros(2),
    optimizer=optax.sgd(1e-4),
    max_steps=30_001,
    history_every=1,
  )
  np.testing.assert_array_equal(
    full.history["loss"][res.history["step"]], res.history["loss"]
  )


def test_init_under_jit():
  """optax users often build the state inside jit: the dtype-range check of
  the hyperparameters must not need concrete values there."""
  for opt in (trncg_jax.trncg(), trncg_jax.nonlinear_cg()):
    state = jax.jit(opt.init)(jnp.zeros(3))
    assert int(optax.tree.get(state, "count")) == 0
