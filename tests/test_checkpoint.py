"""Checkpoints: save params and optimizer state with orbax mid-run, restore
them in a new process, and continue exactly as the uninterrupted run
(bitwise, float64, CPU)."""

import subprocess
import sys
import textwrap

import pytest

from tests.test_docs import ROOT

COMMON = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import orbax.checkpoint as ocp
    import trncg_jax

    def loss(params, x, y):
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        return jnp.mean((h @ params["w2"] - y) ** 2)

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params0 = {"w1": jax.random.normal(k1, (1, 16)), "b1": jnp.zeros(16),
               "w2": jax.random.normal(k2, (16,)) / 4}
    x = jnp.linspace(-1, 1, 200)[:, None]
    y = jnp.sin(4 * x[:, 0])
    OPTIMIZERS = {"trncg": trncg_jax.trncg(),
                  "nonlinear_cg": trncg_jax.nonlinear_cg()}
    name, directory = sys.argv[1], sys.argv[2]
    optimizer = OPTIMIZERS[name]
""")

# First process: the uninterrupted run, and a run saved at step 15.
SAVE = COMMON + textwrap.dedent("""
    whole = trncg_jax.solve(loss, params0, x, y, optimizer=optimizer,
                            max_steps=30)
    np.savez(directory + "/whole.npz", **whole.params,
             loss=whole.history["loss"])
    first = trncg_jax.solve(loss, params0, x, y, optimizer=optimizer,
                            max_steps=15)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory + "/step15",
                          {"params": first.params, "opt_state": first.state})
    print("saved", float(first.history["loss"][-1]))
""")

# Second process: restore into the structure of a fresh state, continue.
RESTORE = COMMON + textwrap.dedent("""
    template = {"params": params0, "opt_state": optimizer.init(params0)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory + "/step15", abstract)
    assert int(optax_count := restored["opt_state"].count) == 15, optax_count
    second = trncg_jax.solve(loss, restored["params"], x, y,
                             optimizer=optimizer, max_steps=15,
                             state=restored["opt_state"])
    whole = np.load(directory + "/whole.npz")
    for key in params0:
        np.testing.assert_array_equal(second.params[key], whole[key])
    np.testing.assert_array_equal(second.history["loss"], whole["loss"][15:])
    assert whole["loss"][-1] < whole["loss"][15] < whole["loss"][0]
    print("ok", float(second.history["loss"][-1]))
""")


def run(script, *argv):
  proc = subprocess.run(
    [sys.executable, "-c", script, *argv],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc.stdout


@pytest.mark.parametrize("name", ["trncg", "nonlinear_cg"])
def test_restore_in_a_new_process_continues_bitwise(name, tmp_path):
  assert run(SAVE, name, str(tmp_path)).startswith("saved")
  assert run(RESTORE, name, str(tmp_path)).startswith("ok")
