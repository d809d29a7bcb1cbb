"""Hessian-vector products against the explicit Hessian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trncg_jax
import trncg_jax.hvp
from trncg_jax.hvp import make_hvp


def mlp_loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((h @ params["w2"] - y) ** 2) + 0.1 * jnp.sum(
    params["b1"] ** 4
  )


def _setup():
  rng = np.random.default_rng(0)
  params = {
    "w1": jnp.asarray(rng.standard_normal((2, 3))),
    "b1": jnp.asarray(rng.standard_normal(3)),
    "w2": jnp.asarray(rng.standard_normal((3,))),
  }
  x = jnp.asarray(rng.standard_normal((8, 2)))
  y = jnp.asarray(rng.standard_normal(8))
  v = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params)
  return params, x, y, v


@pytest.mark.parametrize("mode", trncg_jax.hvp.HESSIAN_MODES)
def test_hvp_equals_explicit_hessian(mode):
  params, x, y, v = _setup()
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  hessian = jax.hessian(lambda f: mlp_loss(unravel(f), x, y))(flat)
  expected = hessian @ jax.flatten_util.ravel_pytree(v)[0]
  out = jax.jit(lambda p, v: make_hvp(lambda q: mlp_loss(q, x, y), p, mode)(v))(
    params, v
  )
  assert jax.tree.structure(out) == jax.tree.structure(params)
  np.testing.assert_allclose(
    jax.flatten_util.ravel_pytree(out)[0], expected, rtol=1e-10, atol=1e-12
  )


@jax.custom_vjp
def softplus(x):
  return jnp.logaddexp(x, 0.0)


softplus.defvjp(
  lambda x: (softplus(x), x), lambda x, g: (g * jax.nn.sigmoid(x),)
)


def test_custom_vjp_needs_reverse_over_reverse():
  x = jnp.array([0.3, -1.2])
  loss = lambda p: jnp.sum(softplus(p) ** 2)
  for mode in ("forward_over_reverse", "linearize"):
    with pytest.raises(TypeError, match="hvp_mode='reverse_over_reverse'"):
      make_hvp(loss, x, mode)(jnp.ones(2))
  hv = make_hvp(loss, x, "reverse_over_reverse")(jnp.ones(2))
  # d2/dx2 softplus(x)^2 = 2 s'(x)^2 + 2 s(x) s''(x), s' = sigmoid.
  s, sp = jax.nn.softplus(x), jax.nn.sigmoid(x)
  np.testing.assert_allclose(hv, 2 * sp**2 + 2 * s * sp * (1 - sp), rtol=1e-12)


def test_custom_vjp_found_inside_nested_jit_at_trace_time():
  loss = lambda p: jnp.sum(jax.jit(lambda q: softplus(q) * 2.0)(p))
  for mode in ("forward_over_reverse", "linearize"):
    with pytest.raises(TypeError, match="hvp_mode='reverse_over_reverse'"):
      trncg_jax.hvp.check_hvp_mode(loss, jnp.ones(2), mode)
  trncg_jax.hvp.check_hvp_mode(loss, jnp.ones(2), "reverse_over_reverse")
  trncg_jax.hvp.check_hvp_mode(jnp.sum, jnp.ones(2), "forward_over_reverse")


def test_unknown_mode():
  with pytest.raises(ValueError, match="hvp_mode"):
    make_hvp(jnp.sum, jnp.ones(2), "finite_differences")
