"""Cost of one Hessian-vector product per mode, over the cost of one gradient.

    python -m benchmarks.hvp_modes [--points 10000] [--reps 20]

For each HVP mode, ``k`` products run inside one jitted ``lax.fori_loop``, as
in CG (the ``linearize`` mode linearizes once, outside the loop), on the
paper's N_e fit and the heat-PINN loss of N_p. Each figure is a ratio of times
taken side by side in the same run. Writes ``results/hvp_modes.json`` and
``results/hvp_modes.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp

import trncg_jax
from benchmarks import problems as P
from benchmarks.common import header, machine


def time_call(fn, *args, reps):
  """Best-of-three mean seconds per call of ``fn(*args)``, compile excluded."""
  jax.block_until_ready(fn(*args))  # compile and warm up
  best = float("inf")
  for _ in range(3):  # best of three batches: robust to a noisy machine
    start = time.perf_counter()
    for _ in range(reps):
      jax.block_until_ready(fn(*args))
    best = min(best, (time.perf_counter() - start) / reps)
  return best


def hvp_loop(fun, k, mode=trncg_jax.hvp.FORWARD_OVER_REVERSE, scale=1e-3):
  """A jitted ``(params, v) -> (scale H)^k v``: ``k`` products in one
  ``lax.fori_loop``, as in CG (``linearize`` linearizes once, outside it).
  The default ``scale`` keeps repeated products finite; ``None`` skips it."""

  def product(hvp, w):
    w = hvp(w)
    return w if scale is None else jax.tree.map(lambda a: scale * a, w)

  def run(p, v):
    hvp = trncg_jax.hvp.make_hvp(fun, p, mode)
    return jax.lax.fori_loop(0, k, lambda i, w: product(hvp, w), v)

  return jax.jit(run)


def measure(fun, params, ks=(1, 20), reps=10):
  """{mode: {k: HVP time / gradient time}} for ``fun(params)``."""
  grad_time = time_call(jax.jit(jax.grad(fun)), params, reps=reps)
  v = jax.tree.map(jnp.ones_like, params)
  out = {}
  for mode in trncg_jax.hvp.HESSIAN_MODES:
    out[mode] = {
      k: time_call(hvp_loop(fun, k, mode), params, v, reps=reps) / k / grad_time
      for k in ks
    }
  return out, grad_time


def main(argv=None):
  jax.config.update("jax_enable_x64", True)  # as the paper benchmark runs
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--points", type=int, default=10_000)
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument(
    "--out",
    default="results/latest/hvp_modes",
    help="output folder (git ignores the default)",
  )
  args = parser.parse_args(argv)
  elem = P.elementary_problem("sin10", n_train=args.points)
  apply, params = P.init_mlp(P.N_P_SIZES, seed=0)
  data = P.heat_collocation(args.points)
  heat_loss = P.heat_loss_fn(apply)
  cases = {
    "N_e fit (1,131 params)": (
      lambda p: elem.loss(p, *elem.train),
      elem.params,
    ),
    "heat PINN N_p (2,521 params)": (lambda p: heat_loss(p, data), params),
  }
  results = {"machine": machine(), "points": args.points, "cases": {}}
  lines = [
    *header(
      f"HVP cost / gradient cost, {args.points} points", "hvp_modes", argv
    ),
    "",
    "| loss | gradient (ms) | mode | k=1 | k=20 (per HVP) |",
    "| --- | --- | --- | --- | --- |",
  ]
  for name, (fun, p) in cases.items():
    ratios, grad_time = measure(fun, p, reps=args.reps)
    results["cases"][name] = {"grad_ms": 1e3 * grad_time, "ratios": ratios}
    for mode, by_k in ratios.items():
      lines.append(
        f"| {name} | {1e3 * grad_time:.2f} | {mode} | "
        f"{by_k[1]:.2f} | {by_k[20]:.2f} |"
      )
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "hvp_modes.json").write_text(json.dumps(results, indent=1))
  (out / "hvp_modes.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return results


if __name__ == "__main__":
  main()
