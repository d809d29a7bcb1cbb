"""Status codes: ``first_true`` against ``jnp.select``, and the compiled loop
free of the reductions ``jnp.select`` brings."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

import trncg_jax
from trncg_jax.hvp import jaxprs_in
from trncg_jax.status import first_true


def test_first_true_matches_jnp_select_on_every_pattern():
  codes, default = [3, 1, 4], 7
  for pattern in itertools.product([False, True], repeat=3):
    conditions = [jnp.asarray(c) for c in pattern]
    expected = jnp.select(conditions, codes, default)
    got = first_true(conditions, codes, default)
    assert got.dtype == jnp.int32
    assert int(got) == int(expected), pattern


def test_first_true_broadcasts_like_jnp_select():
  rng = np.random.default_rng(0)
  conditions = [jnp.asarray(rng.random(5) < 0.4) for _ in range(3)]
  np.testing.assert_array_equal(
    first_true(conditions, [0, 1, 2], 9),
    jnp.select(conditions, [0, 1, 2], 9),
  )


def equations(jaxpr):
  """Every equation of ``jaxpr`` and of the jaxprs inside it (loops, conds)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in jaxprs_in(value):
        yield from equations(sub)


def test_the_compiled_solve_has_no_argmax():
  """A ``jnp.select`` (an ``argmax``) costs about 1 us per call of the
  compiled program on a CPU, run or not; the loop of ``solve`` has none."""

  def run(x0):
    res = trncg_jax.solve(lambda x: jnp.sum((x - 1.0) ** 2), x0, max_steps=5)
    return res.params, res.status

  names = {
    e.primitive.name for e in equations(jax.make_jaxpr(run)(jnp.zeros(3)).jaxpr)
  }
  assert "while" in names  # the walk reaches the loop
  assert not names & {"argmax", "argmin"}
