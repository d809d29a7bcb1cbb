"""Data-parallel trncg on 8 simulated CPU devices with jax.sharding.

Params are replicated and the data points are sharded along one mesh axis;
``jit`` partitions the loss, its gradient and every HVP, and inserts the
reductions. The results must match a single-device run to float tolerance:
every quantity of one iteration on a network loss (value, gradient, HVP, the
step), and a whole jitted solve on a convex loss. (On a nonconvex loss a long
run is not comparable: sharded sums round differently, and trajectories that
agree to 1e-14 for a few steps drift apart, as on one device under any change
of summation order.) It runs in a subprocess because the device count is
fixed when JAX starts.
"""

import subprocess
import sys
import textwrap

from tests.test_docs import ROOT

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import trncg_jax

    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("data",))
    replicated = NamedSharding(mesh, P())
    by_point = NamedSharding(mesh, P("data"))

    def mlp_loss(params, x, y):  # a PINN or regression network
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        return jnp.mean((h @ params["w2"] - y) ** 2)

    def logistic_loss(params, x, y):  # convex: rounding is not amplified
        logits = x @ params["w"] + params["b"]
        return (jnp.mean(jnp.logaddexp(0.0, logits) - y * logits)
                + 1e-3 * jnp.sum(params["w"] ** 2))

    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.uniform(k3, (4096, 2), minval=-1, maxval=1)
    mlp = {"w1": jax.random.normal(k1, (2, 32)), "b1": jnp.zeros(32),
           "w2": jax.random.normal(k2, (32,)) / 6}
    y_mlp = jnp.sin(3 * x[:, 0]) * jnp.cos(2 * x[:, 1])
    features = jax.random.normal(k4, (4096, 8))
    y_class = (features @ jnp.arange(1.0, 9.0) > 0.5).astype(features.dtype)
    linear = {"w": jnp.zeros(8), "b": jnp.zeros(())}

    def shard(params, *data):
        assert all(len(d) % 8 == 0 for d in data)
        return (jax.device_put(params, replicated),
                *(jax.device_put(d, by_point) for d in data))

    # Every function a trncg iteration evaluates, on the same point.
    mlp_r, x_s, y_s = shard(mlp, x, y_mlp)
    assert len(x_s.addressable_shards) == 8
    assert x_s.addressable_shards[0].data.shape == (512, 2)
    value_and_grad = jax.jit(jax.value_and_grad(mlp_loss))
    (v1, g1), (v2, g2) = value_and_grad(mlp_r, x_s, y_s), value_and_grad(mlp, x, y_mlp)
    np.testing.assert_allclose(v1, v2, rtol=1e-13)
    for name in mlp:
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-11, atol=1e-15)
    hvp = jax.jit(lambda p, v, *data: trncg_jax.hvp.make_hvp(
        lambda q: mlp_loss(q, *data), p)(v))
    h1, h2 = hvp(mlp_r, g1, x_s, y_s), hvp(mlp, g2, x, y_mlp)
    for name in mlp:
        np.testing.assert_allclose(h1[name], h2[name], rtol=1e-9, atol=1e-12)
    update = jax.jit(trncg_jax.trncg_update, static_argnums=2)
    p1, s1 = update(mlp_r, trncg_jax.trncg_init(mlp_r), mlp_loss, x_s, y_s)
    p2, s2 = update(mlp, trncg_jax.trncg_init(mlp), mlp_loss, x, y_mlp)
    assert int(s1.info.cg_steps) == int(s2.info.cg_steps) > 0
    for name in mlp:
        assert len(p1[name].sharding.device_set) == 8
        assert p1[name].sharding.is_fully_replicated
        np.testing.assert_allclose(p1[name], p2[name], rtol=1e-10, atol=1e-13)

    # A whole jitted solve: the same iterates, sharded or not. 8 steps reach
    # ||g|| ~ 1e-13; after that the gradient is round-off, which differs with
    # the order of the sums, and so does the step at which each run stops
    # with PRECISION_LIMIT (checked below).
    single = trncg_jax.solve(logistic_loss, linear, features, y_class,
                             max_steps=8)
    assert single.params["w"].sharding.device_set == {jax.devices()[0]}
    sharded = trncg_jax.solve(logistic_loss, *shard(linear, features, y_class),
                              max_steps=8)
    for leaf in jax.tree.leaves(sharded.params):
        assert len(leaf.sharding.device_set) == 8, leaf.sharding
    assert sharded.num_steps == single.num_steps
    np.testing.assert_allclose(sharded.history["loss"], single.history["loss"],
                               rtol=1e-12)
    np.testing.assert_array_equal(sharded.history["cg_steps"],
                                  single.history["cg_steps"])
    for name in linear:
        np.testing.assert_allclose(sharded.params[name], single.params[name],
                                   rtol=1e-10)
    assert single.history["grad_norm"][-1] < 1e-8  # it did converge
    longer = trncg_jax.solve(logistic_loss, *shard(linear, features, y_class),
                             max_steps=100)
    assert longer.status == trncg_jax.SolveStatus.PRECISION_LIMIT
    assert longer.num_steps < 30, longer.num_steps
    print("ok", sharded.num_steps, float(sharded.history["loss"][-1]))
""")


def test_sharded_data_matches_single_device():
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert proc.stdout.startswith("ok"), proc.stdout
