"""The optax interface: same iterates as the pure API, chaining, state reuse."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import trncg_jax
from tests.test_trust_region import rosenbrock


def run_optax(opt, loss, params, steps, **extra_args):
  value_and_grad = optax.value_and_grad_from_state(loss)

  @jax.jit
  def step(params, state):
    value, grad = value_and_grad(params, state=state, **extra_args)
    updates, state = opt.update(
      grad, state, params, value=value, grad=grad, value_fn=loss, **extra_args
    )
    return optax.apply_updates(params, updates), state

  state = opt.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


def test_same_iterates_as_pure_api_and_through_chain():
  x0 = jnp.array([-1.2, 1.0, 0.3])
  x_pure, state_pure = x0, trncg_jax.trncg_init(x0)
  update = jax.jit(trncg_jax.trncg_update, static_argnums=2)
  for _ in range(15):
    x_pure, state_pure = update(x_pure, state_pure, rosenbrock)
  x_opt, state_opt = run_optax(trncg_jax.trncg(), rosenbrock, x0, 15)
  np.testing.assert_array_equal(x_opt, x_pure)
  np.testing.assert_array_equal(state_opt.radius, state_pure.radius)
  # optax.chain: value_and_grad_from_state finds value/grad inside the chain.
  x_chain, chain_state = run_optax(
    optax.chain(trncg_jax.trncg(), optax.scale(1.0)), rosenbrock, x0, 15
  )
  np.testing.assert_array_equal(x_chain, x_pure)
  assert int(chain_state[0].count) == 15


def test_extra_args_are_forwarded_to_value_fn():
  def loss(x, target):
    return jnp.sum((x - target) ** 2) + jnp.sum(x**4)

  target = jnp.array([1.0, -2.0])
  x, _ = run_optax(trncg_jax.trncg(), loss, jnp.zeros(2), 12, target=target)
  # Stationarity of the loss: 2 (x - target) + 4 x^3 = 0.
  np.testing.assert_allclose(2 * (x - target) + 4 * x**3, 0.0, atol=1e-8)


def test_rejected_step_zero_updates_and_no_new_gradient():
  evaluations = []

  def loss(x):
    jax.debug.callback(lambda: evaluations.append(1))
    return jnp.sum(jnp.log(jnp.cosh(x - 3.0)))

  opt = trncg_jax.trncg(
    initial_radius=1000.0, max_radius=1000.0, hvp_mode="linearize"
  )
  value_and_grad = optax.value_and_grad_from_state(loss)
  x = jnp.zeros(2)
  state = opt.init(x)
  value, grad = value_and_grad(x, state=state)  # inf in state: evaluates
  updates, state = opt.update(
    grad, state, x, value=value, grad=grad, value_fn=loss
  )
  assert not bool(state.info.accepted)
  assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
  jax.effects_barrier()
  evaluations.clear()
  value2, grad2 = value_and_grad(x, state=state)
  jax.effects_barrier()
  assert evaluations == []  # reused from the state
  assert float(value2) == float(value)
  np.testing.assert_array_equal(grad2, grad)


def test_update_without_value_fn_is_a_clear_type_error():
  opt = trncg_jax.trncg()
  state = opt.init(jnp.zeros(2))
  with pytest.raises(TypeError, match="value_fn"):
    opt.update(jnp.zeros(2), state, jnp.zeros(2))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_flax_nnx_mlp_fits_a_1d_function(dtype):
  nnx = pytest.importorskip("flax.nnx")  # flax is a benchmark extra

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(1, 16, rngs=rngs, param_dtype=dtype, dtype=dtype)
      self.l2 = nnx.Linear(16, 1, rngs=rngs, param_dtype=dtype, dtype=dtype)

    def __call__(self, x):
      return self.l2(jnp.tanh(self.l1(x)))

  graphdef, params = nnx.split(MLP(nnx.Rngs(0)))
  x = jnp.linspace(-1.0, 1.0, 200, dtype=dtype)[:, None]
  y = jnp.sin(3.0 * x)

  def loss(params, x, y):
    return jnp.mean((nnx.merge(graphdef, params)(x) - y) ** 2)

  initial = float(loss(params, x, y))
  # 100 iterations: the default inexact CG takes fewer HVPs per iteration than
  # the paper's (it reached 1.5e-6 at 60, the paper's settings 8e-7).
  params, state = run_optax(trncg_jax.trncg(), loss, params, 100, x=x, y=y)
  final = float(loss(params, x, y))
  assert final < 1e-5 < initial
  assert isinstance(params, nnx.State)
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == dtype
  model = nnx.merge(graphdef, params)  # usable as a model again
  np.testing.assert_allclose(model(x), y, atol=1e-2)


def test_has_aux_and_subsampled_hessian_match_the_pure_api():
  from tests.test_trust_region import loss_with_components

  def loss(x, target):
    return loss_with_components(x, target)

  target, sub_target = jnp.array([3.0, -2.0, 0.5]), jnp.array([2.0, -1.0, 0.0])
  x0 = jnp.zeros(3)
  aux = jax.eval_shape(loss, x0, target)[1]
  opt = trncg_jax.trncg(has_aux=True)
  with pytest.raises(TypeError, match="needs an example"):
    opt.init(x0)
  state = opt.init(x0, aux=aux)
  x = x0
  x_pure, state_pure = x0, trncg_jax.trncg_init(x0, has_aux=True, aux=aux)
  value_and_grad = optax.value_and_grad_from_state(lambda p: loss(p, target)[0])
  for _ in range(8):
    value, grad = value_and_grad(x, state=state)
    updates, state = opt.update(
      grad,
      state,
      x,
      value=value,
      grad=grad,
      value_fn=loss,
      target=target,
      hvp_extra_args=dict(target=sub_target),
    )
    x = optax.apply_updates(x, updates)
    x_pure, state_pure = trncg_jax.trncg_update(
      x_pure, state_pure, loss, target, hvp_args=(sub_target,)
    )
    np.testing.assert_allclose(x, x_pure, rtol=1e-12)
    np.testing.assert_allclose(
      state.info.aux["fit"], loss(x, target)[1]["fit"], rtol=1e-12
    )


def test_inject_hyperparams_trains_and_changes_without_recompiling():
  """optax.inject_hyperparams sees every option (explicit signature); a new
  value in its state takes effect at the next update, with no retrace."""
  opt = optax.inject_hyperparams(trncg_jax.trncg)(eta=0.1)
  x = jnp.array([-1.2, 1.0])
  state = opt.init(x)
  assert float(state.hyperparams["eta"]) == pytest.approx(0.1)
  value_and_grad = optax.value_and_grad_from_state(rosenbrock)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(x, state):
    value, grad = value_and_grad(x, state=state)
    updates, state = opt.update(
      grad, state, x, value=value, grad=grad, value_fn=rosenbrock
    )
    return optax.apply_updates(x, updates), state

  def cg_steps(x, state, n):
    steps = []
    for _ in range(n):
      x, state = step(x, state)
      steps.append(int(state.inner_state.info.cg_steps))
    return x, state, max(steps)

  x, state, most = cg_steps(x, state, 10)
  assert most == 2  # Newton steps in 2 dimensions
  state.hyperparams["max_cg_steps"] = jnp.asarray(1)  # as init makes it
  x, state, most = cg_steps(x, state, 10)
  assert most == 1  # the injected value
  state.hyperparams["max_cg_steps"] = jnp.asarray(500)
  x, state, _ = cg_steps(x, state, 60)
  np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-4)


def test_misspelled_option_names_the_valid_ones():
  with pytest.raises(
    TypeError,
    match=r"'etta'. Did you mean 'eta'\?.*"
    r"Valid options: initial_radius",
  ):
    trncg_jax.trncg(etta=0.1)
  with pytest.raises(TypeError, match="Did you mean 'max_cg_steps'"):
    trncg_jax.trncg_init(jnp.zeros(2), max_cg_step=3)
  with pytest.raises(TypeError, match="Did you mean 'beta'"):
    trncg_jax.nonlinear_cg(bta="fletcher-reeves")
