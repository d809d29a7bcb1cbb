"""The paper's problems as importable code: networks, data and losses.

Elementary functions (Boyd & Tanadi 2025, "Networks and Data"): the network
N_e is a tanh MLP 1 -> 10 -> (10 hidden-to-hidden layers of 10) -> 1, with
1,131 parameters, trained with MSE on 10,000 points x ~ U(-1.1, 1.1) and tested
on 10,000 points of linspace(-1, 1).

Heat PINN: u_t = alpha (u_xx + u_yy) on (0,1)^2 x (0,5), u = 0 on the bottom
and right edges, u = 1 on the top and left edges, u(., 0) = 0. The network N_p
is a tanh MLP 3 -> 24 -> (4 hidden-to-hidden layers of 24) -> 1, 2,521
parameters.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ELEMENTARY_FUNCTIONS: dict[str, Callable] = {
    "linear": lambda x: 5 * x + 3,
    "quadratic": lambda x: (x - 0.5) ** 2,
    "exponential": lambda x: jnp.exp(-x),
    "sin_shift": lambda x: jnp.sin(x - jnp.pi),
    "sin5": lambda x: jnp.sin(5 * x),
    "sin10": lambda x: jnp.sin(10 * x),
}

ELEMENTARY_LABELS = {
    "linear": "5x+3", "quadratic": "(x-1/2)^2", "exponential": "exp(-x)",
    "sin_shift": "sin(x-pi)", "sin5": "sin(5x)", "sin10": "sin(10x)",
}


class MLP(nnx.Module):
  """A tanh multilayer perceptron with a linear output layer."""

  def __init__(self, sizes: Sequence[int], *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    self.layers = nnx.List([
        nnx.Linear(a, b, rngs=rngs, param_dtype=dtype, dtype=dtype)
        for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x):
    for layer in self.layers[:-1]:
      x = jnp.tanh(layer(x))
    return self.layers[-1](x)


N_E_SIZES = (1,) + (10,) * 11 + (1,)
N_P_SIZES = (3,) + (24,) * 5 + (1,)


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def init_mlp(sizes, seed: int, dtype=jnp.float32):
  """Returns ``(apply, params)``: ``apply(params, x)`` and an nnx.State."""
  graphdef, params = nnx.split(MLP(sizes, rngs=nnx.Rngs(seed), dtype=dtype))

  def apply(params, x):
    return nnx.merge(graphdef, params)(x)

  return apply, params


class Problem(NamedTuple):
  """A training problem: ``loss(params, *train)``, plus its test data."""

  name: str
  apply: Callable
  params: object
  loss: Callable
  train: tuple
  test: tuple


def elementary_problem(name: str, n_train: int = 10_000, n_test: int = 10_000,
                       seed: int = 0, dtype=jnp.float32) -> Problem:
  """An elementary-function fit with network N_e and an MSE loss."""
  f = ELEMENTARY_FUNCTIONS[name]
  rng = np.random.default_rng(seed)
  x_train = rng.uniform(-1.1, 1.1, (n_train, 1))
  x_test = np.linspace(-1.0, 1.0, n_test)[:, None]
  x_train, x_test = jnp.asarray(x_train, dtype), jnp.asarray(x_test, dtype)
  apply, params = init_mlp(N_E_SIZES, seed, dtype)

  def loss(params, x, y):
    return jnp.mean((apply(params, x) - y) ** 2)

  return Problem(name, apply, params, loss, (x_train, f(x_train)),
                 (x_test, f(x_test)))
