"""Performance of trncg_jax, measured side by side with what users would pick.

    python -m benchmarks.perf [--quick] [--only a b c d e f] [--out DIR]
    python -m benchmarks.perf --out results --report   # rewrite the report

Every figure is a ratio of times taken in the same run, on the machine that
is printed with it:

(a) one HVP over one gradient, per HVP mode, on N_e, the heat-PINN loss of
    N_p and a wide MLP (4 x 256 on 10,000 points);
(b) one CG iteration inside the ``while_loop`` over one bare jitted HVP;
(c) one TR outer iteration over (one value-and-gradient + its k HVPs);
(d) time per HVP and XLA's peak-memory estimate against the number of params
    and the batch size, with log-log slopes;
(e) time to loss <= 1e-6 on the six elementary functions: trncg against
    ``optax.adam(1e-3)``, ``optax.lbfgs()``, SciPy's ``trust-ncg`` driven by
    jitted JAX functions, and (with the ``[torch]`` extra) the paper's method
    re-implemented in PyTorch, compared per iteration;
(f) sin(10x): HVPs to the target for each CG strategy.

Writes ``perf.json``, ``perf.md`` and ``perf_*.png`` under ``--out`` (default
``results/latest/perf``, which git ignores; the committed figures are in
``results/``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

import trncg_jax
from benchmarks import hvp_modes, paper
from benchmarks import problems as P
from benchmarks.common import header, machine, run_for, work_counts
from benchmarks.hvp_modes import hvp_loop, time_call

LOSS_TARGET = paper.LOSS_TARGET
K = 20  # HVPs per measurement: the CG steps of a typical outer iteration


def wide_mlp_problem(n_points: int = 10_000, width: int = 256, depth: int = 4):
  """A wider MLP fit (1 -> width x depth -> 1) on ``n_points`` points."""
  sizes = (1,) + (width,) * depth + (1,)
  apply, params = P.init_mlp(sizes, seed=0)
  x = jnp.linspace(-1, 1, n_points)[:, None]
  y = jnp.sin(10 * x)
  return (lambda p: jnp.mean((apply(p, x) - y) ** 2)), params


def cases(n_points: int):
  """The losses of part (a), as ``{name: (fun, params)}``."""
  elem = P.elementary_problem("sin10", n_train=n_points)
  apply, params = P.init_mlp(P.N_P_SIZES, seed=0)
  data = P.heat_collocation(n_points)
  heat_loss = P.heat_loss_fn(apply)
  wide_fun, wide_params = wide_mlp_problem(n_points)
  return {
    f"N_e fit ({P.count_params(elem.params):,} params)": (
      lambda p: elem.loss(p, *elem.train),
      elem.params,
    ),
    f"heat PINN N_p ({P.count_params(params):,} params)": (
      lambda p: heat_loss(p, data),
      params,
    ),
    f"MLP 4x256 ({P.count_params(wide_params):,} params)": (
      wide_fun,
      wide_params,
    ),
  }


def part_a(losses, reps):
  """HVP time over gradient time, for each mode, k = 1 and k = K."""
  rows = {}
  for name, (fun, params) in losses.items():
    ratios, grad_time = hvp_modes.measure(fun, params, ks=(1, K), reps=reps)
    ratios = {
      mode: {str(k): r for k, r in by_k.items()}  # as in the JSON
      for mode, by_k in ratios.items()
    }
    rows[name] = {
      "grad_ms": 1e3 * grad_time,
      "ratios": ratios,
      "best": min(r[str(K)] for r in ratios.values()),
    }
  return rows


def _positive_definite(fun, params):
  """``fun`` plus ``mu/2 ||p||^2`` with ``mu`` above the Hessian's spectral
  radius (power iteration), so CG runs all its steps without meeting negative
  curvature. The extra term costs one axpy per product: the same work."""
  hvp = jax.jit(lambda v: trncg_jax.hvp.make_hvp(fun, params)(v))
  v = jax.tree.map(jnp.ones_like, params)
  for _ in range(20):
    w = hvp(v)
    mu = float(optax.tree.norm(w) / optax.tree.norm(v))
    v = jax.tree.map(lambda a: a / mu, w)  # noqa: B023 (used at once)
  mu = 2.0 * mu
  return lambda p: fun(p) + 0.5 * mu * optax.tree.norm(p, squared=True)


def part_b(fun, params, reps):
  """One CG iteration in the while_loop over one bare jitted HVP."""
  fun = _positive_definite(fun, params)
  grad = jax.grad(fun)(params)
  bare = jax.jit(lambda p, v: trncg_jax.hvp.make_hvp(fun, p)(v))
  t_bare = time_call(bare, params, grad, reps=reps)

  # The same K products in a fori_loop: no CG algebra.
  t_loop = time_call(hvp_loop(fun, K, scale=None), params, grad, reps=reps) / K
  cg = jax.jit(
    lambda p, g: trncg_jax.steihaug.cg_steihaug(
      g, trncg_jax.hvp.make_hvp(fun, p), 1e30, 0.0, K
    )
  )
  steps = int(cg(params, grad).steps)
  t_cg = time_call(cg, params, grad, reps=reps) / steps
  return {
    "cg_steps": steps,
    "hvp_ms": 1e3 * t_bare,
    "hvp_in_loop_ms": 1e3 * t_loop,
    "cg_iteration_ms": 1e3 * t_cg,
    "ratio_vs_bare_hvp": t_cg / t_bare,
    "ratio_vs_hvp_in_loop": t_cg / t_loop,
  }


def part_c(fun, params, reps, warmup_steps=10):
  """One trncg outer iteration over one value-and-gradient + its k HVPs."""
  loss = lambda p: fun(p)
  state = trncg_jax.trncg_init(params, inexact_newton=True)
  update = jax.jit(trncg_jax.trncg_update, static_argnums=2)
  for _ in range(warmup_steps):  # a typical mid-run state, value stored
    params, state = update(params, state, loss)
  _, after = update(params, state, loss)
  k = int(after.info.cg_steps)
  t_iter = time_call(lambda p, s: update(p, s, loss), params, state, reps=reps)
  t_vg = time_call(jax.jit(jax.value_and_grad(loss)), params, reps=reps)

  grad = jax.grad(loss)(params)
  t_hvps = (
    time_call(hvp_loop(loss, k, scale=None), params, grad, reps=reps)
    if k
    else 0.0
  )
  return {
    "k": k,
    "iteration_ms": 1e3 * t_iter,
    "value_and_grad_ms": 1e3 * t_vg,
    "k_hvps_ms": 1e3 * t_hvps,
    "ratio": t_iter / (t_vg + t_hvps),
  }


def _hvp_time_and_memory(fun, params, reps, k=5):
  """Seconds per HVP (in a loop of ``k``) and the bytes one HVP needs:
  XLA's compiled buffer sizes (arguments + outputs + temporaries). On CPU
  ``peak_memory_in_bytes`` leaves the temporaries out, so it is not used."""
  v = jax.tree.map(jnp.ones_like, params)
  one = jax.jit(lambda p, v: trncg_jax.hvp.make_hvp(fun, p)(v))
  memory = one.lower(params, v).compile().memory_analysis()
  peak = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    + memory.temp_size_in_bytes
  )
  return time_call(hvp_loop(fun, k), params, v, reps=reps) / k, int(peak)


def part_d(widths, batches, reps):
  """Time per HVP and peak memory against params (fixed batch) and batch
  (fixed network), with the fitted log-log slopes."""
  out = {"params": [], "batch": []}
  for width in widths:
    fun, params = wide_mlp_problem(n_points=1_000, width=width, depth=3)
    seconds, peak = _hvp_time_and_memory(fun, params, reps)
    out["params"].append(
      dict(
        n=P.count_params(params), seconds=seconds, peak_bytes=peak, width=width
      )
    )
    print(
      f"  params {out['params'][-1]['n']:>9,}: {1e3 * seconds:8.2f} ms/HVP "
      f"{peak / 2**20:8.1f} MiB",
      flush=True,
    )
  for batch in batches:
    fun, params = wide_mlp_problem(n_points=batch, width=64, depth=3)
    seconds, peak = _hvp_time_and_memory(fun, params, reps)
    out["batch"].append(dict(n=batch, seconds=seconds, peak_bytes=peak))
    print(
      f"  batch  {batch:>9,}: {1e3 * seconds:8.2f} ms/HVP "
      f"{peak / 2**20:8.1f} MiB",
      flush=True,
    )
  for axis in ("params", "batch"):
    n = np.log([r["n"] for r in out[axis]])
    # Fit the upper half: small sizes are dominated by fixed overheads.
    upper = slice(len(n) // 2, None)
    out[f"{axis}_time_slope"] = float(
      np.polyfit(n[upper], np.log([r["seconds"] for r in out[axis]])[upper], 1)[
        0
      ]
    )
    out[f"{axis}_memory_slope"] = float(
      np.polyfit(
        n[upper], np.log([r["peak_bytes"] for r in out[axis]])[upper], 1
      )[0]
    )
  return out


def scipy_trust_ncg(prob, max_iterations, max_seconds, **hyperparams):
  """SciPy's trust-ncg on jitted JAX value-and-gradient and hessp, stopped at
  loss <= LOSS_TARGET. Returns iterations, seconds (compile excluded), loss."""
  flat, unravel = jax.flatten_util.ravel_pytree(prob.params)
  dtype = flat.dtype
  loss = lambda z: prob.loss(unravel(z), *prob.train)
  value_and_grad = jax.jit(jax.value_and_grad(loss))
  hessp = jax.jit(lambda z, v: trncg_jax.hvp.make_hvp(loss, z)(v))
  z0 = np.asarray(flat, np.float64)
  value_and_grad(flat)[0].block_until_ready()  # compile outside the timing
  hessp(flat, flat).block_until_ready()
  counts = {"hessp": 0, "iterations": 0}
  last = {"loss": float(loss(flat))}
  start = time.perf_counter()

  def fg(z):
    v, g = value_and_grad(jnp.asarray(z, dtype))
    last["loss"] = float(v)
    return float(v), np.asarray(g, np.float64)

  def hp(z, v):
    counts["hessp"] += 1
    return np.asarray(
      hessp(jnp.asarray(z, dtype), jnp.asarray(v, dtype)), np.float64
    )

  def callback(intermediate_result):
    counts["iterations"] += 1
    if (
      intermediate_result.fun <= LOSS_TARGET
      or time.perf_counter() - start > max_seconds
    ):
      raise StopIteration

  res = scipy.optimize.minimize(
    fg,
    z0,
    jac=True,
    hessp=hp,
    method="trust-ncg",
    callback=callback,
    options=dict(
      gtol=1e-12,
      maxiter=max_iterations,
      initial_trust_radius=float(hyperparams["initial_radius"]),
      max_trust_radius=float(hyperparams["max_radius"]),
      eta=float(hyperparams["eta"]),
    ),
  )
  return dict(
    iterations=counts["iterations"],
    hvps=counts["hessp"],
    seconds=time.perf_counter() - start,
    loss=float(res.fun),
    reached_target=bool(res.fun <= LOSS_TARGET),
  )


def to_target(prob, optimizer, max_steps, max_seconds, chunk, desc, progress):
  """Runs ``optimizer`` to loss <= LOSS_TARGET in chunks of ``chunk`` steps
  (one compiled loop), giving up after ``max_steps`` steps or ``max_seconds``
  of run time: a baseline still short of the target then is slower than
  anything that reached it sooner."""
  res, _ = run_for(
    max_seconds,
    prob.loss,
    prob.params,
    prob.train,
    optimizer,
    chunk=chunk,
    max_steps=max_steps,
    desc=desc,
    progress=progress,
    loss_tol=LOSS_TARGET,
  )
  grads, hvps = work_counts(res.history, res.num_steps)
  return dict(
    iterations=res.num_steps,
    seconds=res.run_seconds,
    compile_seconds=res.compile_seconds,
    gradients=grads,
    hvps=hvps,
    loss=float(res.history["loss"][-1]),
    reached_target=res.status == trncg_jax.SolveStatus.LOSS_TOL,
  )


#: The trust-region variants of part (e).
#: ``trncg_gn_nystrom`` preconditions CG with a rank-50 Nystrom sketch.
TR_VARIANTS = ("trncg", "trncg_gn", "trncg_gn_nystrom")


def part_e(
  n_train, max_steps, max_seconds, scipy_seconds, torch_iterations, progress
):
  """Time to loss <= 1e-6 on the six elementary functions, side by side."""
  hyper = dict(initial_radius=2.0, max_radius=10.0, eta=1e-3)
  gauss_newton = paper.make_optimizers()
  optimizers = {
    "trncg": trncg_jax.trncg(inexact_newton=True, forcing_power=0.5, **hyper),
    **{n: gauss_newton[n] for n in TR_VARIANTS[1:]},
    "adam": optax.adam(1e-3),
    "lbfgs": optax.lbfgs(),
  }
  rows = []
  try:
    from benchmarks import torch_trncg  # pylint: disable=g-import-not-at-top
  except ImportError:
    torch_trncg = None
    print(
      "  PyTorch not installed: pip install -e '.[torch]' for that baseline"
    )
  for fname in P.ELEMENTARY_FUNCTIONS:
    prob = P.elementary_problem(fname, n_train, n_train)
    row = {"function": fname}
    for name, opt in optimizers.items():
      row[name] = to_target(
        prob,
        opt,
        max_steps,
        max_seconds,
        chunk=max(1, min(max_steps, 2_500)),
        desc=f"{fname}/{name}",
        progress=progress,
      )
    row["scipy_trust_ncg"] = scipy_trust_ncg(
      prob, 5_000, scipy_seconds, **hyper
    )
    if torch_trncg is not None and torch_iterations:
      # Per-iteration comparison on the same work: the paper's method and
      # hyperparameters in both, from the same initial weights.
      ours = trncg_jax.solve(
        prob.loss,
        prob.params,
        *prob.train,
        optimizer=trncg_jax.trncg(**trncg_jax.PAPER_HYPERPARAMS),
        max_steps=torch_iterations,
      )
      theirs = torch_trncg.run(prob.params, *prob.train, torch_iterations)
      ours_hvps = int(ours.history["cg_steps"].sum())
      row["torch"] = dict(
        iterations=torch_iterations,
        seconds=theirs["seconds"],
        hvps=theirs["hvps"],
        jax_seconds=ours.run_seconds,
        jax_hvps=ours_hvps,
        per_iteration_ratio=theirs["seconds"] / ours.run_seconds,
        per_hvp_ratio=(theirs["seconds"] / max(theirs["hvps"], 1))
        / (ours.run_seconds / max(ours_hvps, 1)),
      )
    rows.append(row)
    print(
      f"  {fname}: "
      + ", ".join(
        f"{k} {v['seconds']:.2f} s" for k, v in row.items() if k != "function"
      ),
      flush=True,
    )
  return rows


def part_f(n_train, progress):
  """sin(10x): HVPs to the target for each CG strategy."""
  prob = P.elementary_problem("sin10", n_train, n_train)
  # Every strategy starts from the paper's hyperparameters and changes one.
  paper_hp = trncg_jax.PAPER_HYPERPARAMS
  inexact = dict(paper_hp, inexact_newton=True, forcing_power=0.5)
  strategies = {
    "paper (CG tol 1e-8)": trncg_jax.trncg(**paper_hp),
    "inexact Newton": trncg_jax.trncg(**inexact),
    "inexact Newton, linearize": trncg_jax.trncg(
      **inexact, hvp_mode="linearize"
    ),
    "inexact Newton, max_radius 100": trncg_jax.trncg(
      **dict(inexact, max_radius=100.0)
    ),
    "inexact Newton, initial_radius 0.1": trncg_jax.trncg(
      **dict(inexact, initial_radius=0.1)
    ),
    "inexact Newton, eta 0.1": trncg_jax.trncg(**dict(inexact, eta=0.1)),
    "Gauss-Newton, inexact": trncg_jax.trncg(
      **inexact, hvp_mode=trncg_jax.hvp.GAUSS_NEWTON
    ),
    "Gauss-Newton, CG tol 1e-8": trncg_jax.trncg(
      **paper_hp, hvp_mode=trncg_jax.hvp.GAUSS_NEWTON
    ),
    "Gauss-Newton, Nystrom rank 50": paper.make_optimizers()[
      "trncg_gn_nystrom"
    ],
  }
  out = {}
  for name, opt in strategies.items():
    res = trncg_jax.solve(
      prob.loss,
      prob.params,
      *prob.train,
      optimizer=opt,
      max_steps=5_000,
      loss_tol=LOSS_TARGET,
      progress=progress,
      desc=f"sin10/{name}",
    )
    out[name] = dict(
      iterations=res.num_steps,
      hvps=int(res.history["hvps"].sum()),
      seconds=res.run_seconds,
      loss=float(res.history["loss"][-1]),
      reached_target=res.status == trncg_jax.SolveStatus.LOSS_TOL,
    )
    print(f"  {name}: {out[name]}", flush=True)
  return out


def report(results) -> str:
  lines = [
    *header(
      "Performance",
      "perf",
      results.get("argv", []),
      date=results.get("date"),
      machine_name=results["machine"],
    ),
    "",
  ]
  if "a" in results:
    lines += [
      "## (a) HVP cost / gradient cost",
      "",
      "| loss | gradient (ms) | "
      + " | ".join(trncg_jax.hvp.HESSIAN_MODES)
      + " | best |",
      "| --- " * (3 + len(trncg_jax.hvp.HESSIAN_MODES)) + "|",
    ]
    for name, row in results["a"].items():
      lines.append(
        f"| {name} | {row['grad_ms']:.2f} | "
        + " | ".join(
          f"{row['ratios'][m][str(K)]:.2f}" for m in trncg_jax.hvp.HESSIAN_MODES
        )
        + f" | **{row['best']:.2f}** |"
      )
    lines += [
      "",
      f"Per HVP in a loop of {K} products (as in CG)."
      " k=1 figures are in perf.json.",
      "",
    ]
  if "b" in results:
    b = results["b"]
    lines += [
      "## (b) CG iteration / bare HVP",
      "",
      f"{b['cg_steps']} CG steps on N_e: {b['cg_iteration_ms']:.3f} ms per "
      f"CG iteration; one bare jitted HVP call {b['hvp_ms']:.3f} ms "
      f"(ratio **{b['ratio_vs_bare_hvp']:.2f}**); one HVP inside a "
      f"fori_loop {b['hvp_in_loop_ms']:.3f} ms (ratio "
      f"{b['ratio_vs_hvp_in_loop']:.2f}).",
      "",
    ]
  if "c" in results:
    c = results["c"]
    lines += [
      "## (c) TR iteration / (value-and-gradient + k HVPs)",
      "",
      f"N_e, k = {c['k']}: iteration {c['iteration_ms']:.3f} ms; "
      f"value-and-gradient {c['value_and_grad_ms']:.3f} ms + {c['k']} "
      f"HVPs {c['k_hvps_ms']:.3f} ms; ratio **{c['ratio']:.2f}**.",
      "",
    ]
  if "d" in results:
    d = results["d"]
    lines += [
      "## (d) Scaling (linear is slope 1)",
      "",
      f"Time per HVP: slope {d['params_time_slope']:.2f} against params"
      f" (3 tanh layers, 1,000 points), {d['batch_time_slope']:.2f} against"
      f" batch (width 64). XLA peak-memory estimate: slope "
      f"{d['params_memory_slope']:.2f} and {d['batch_memory_slope']:.2f}.",
      "",
      "![scaling](perf_scaling.png)",
      "",
    ]
  if "e" in results:
    lines += [
      "## (e) Time to loss <= 1e-6 (s; iterations)",
      "",
      f"| function | {' | '.join(TR_VARIANTS)} | adam | lbfgs | "
      "scipy trust-ncg | trncg vs scipy | PyTorch / JAX per iteration "
      "(per HVP) |",
      "| --- " * (len(TR_VARIANTS) + 6) + "|",
    ]

    def cell(r):
      if r is None:
        return "n/a"
      mark = "" if r["reached_target"] else " (not reached)"
      return f"{r['seconds']:.2f}; {r['iterations']}{mark}"

    for row in results["e"]:
      torch_cell = (
        "n/a"
        if "torch" not in row
        else f"{row['torch']['per_iteration_ratio']:.1f}x "
        f"({row['torch']['per_hvp_ratio']:.1f}x)"
      )
      speedup = row["scipy_trust_ncg"]["seconds"] / row["trncg"]["seconds"]
      variants = " | ".join(cell(row.get(name)) for name in TR_VARIANTS)
      lines.append(
        f"| {row['function']} | {variants} | {cell(row['adam'])} | "
        f"{cell(row['lbfgs'])} | {cell(row['scipy_trust_ncg'])} | "
        f"{speedup:.1f}x | {torch_cell} |"
      )
    lines += [
      "",
      *e_summary(results["e"]),
      "",
      "![time to target](perf_time_to_target.png)",
      "",
    ]
  if "f" in results:
    lines += [
      "## (f) sin(10x): HVPs to loss <= 1e-6",
      "",
      "| strategy | iterations | HVPs | time (s) | reached |",
      "| --- | --- | --- | --- | --- |",
    ]
    for name, r in results["f"].items():
      lines.append(
        f"| {name} | {r['iterations']} | {r['hvps']} | "
        f"{r['seconds']:.2f} | {r['reached_target']} |"
      )
    lines.append("")
  return "\n".join(lines)


def e_summary(rows) -> list[str]:
  """Part (e) in a few counts: on how many functions each of ours reached the
  target sooner than Adam and L-BFGS, its smallest speed-up over SciPy's
  trust-ncg, and PyTorch's time per TR iteration relative to ours."""

  def faster(a, b):  # a reached the target, and before b did (or b never did)
    return a["reached_target"] and (
      not b["reached_target"] or a["seconds"] < b["seconds"]
    )

  n = len(rows)
  out = []
  for name in TR_VARIANTS:
    if all(name in r for r in rows):
      adam = sum(faster(r[name], r["adam"]) for r in rows)
      lbfgs = sum(faster(r[name], r["lbfgs"]) for r in rows)
      out.append(
        f"- {name} reached loss <= 1e-6 sooner than Adam on {adam} of {n}"
        f" functions, and sooner than L-BFGS on {lbfgs} of {n}."
      )
  scipy = min(
    r["scipy_trust_ncg"]["seconds"] / r["trncg"]["seconds"] for r in rows
  )
  out.append(f"- trncg is at least {scipy:.1f}x faster than SciPy trust-ncg.")
  ratios = [r["torch"]["per_iteration_ratio"] for r in rows if "torch" in r]
  if ratios:
    out.append(
      f"- A PyTorch TR iteration takes at least {min(ratios):.1f}x as long"
      " as ours."
    )
  return out


def plots(results, out: pathlib.Path):
  from benchmarks.plots import subplots  # pylint: disable=g-import-not-at-top

  files = []
  if "d" in results:
    fig, axes = subplots(1, 2, figsize=(10, 4))
    for ax, axis, label in zip(
      axes, ("params", "batch"), ("parameters", "batch size")
    ):
      rows = results["d"][axis]
      n = [r["n"] for r in rows]
      ax.loglog(
        n,
        [1e3 * r["seconds"] for r in rows],
        "o-",
        label=f"ms per HVP (slope {results['d'][f'{axis}_time_slope']:.2f})",
      )
      ax.loglog(
        n,
        [r["peak_bytes"] / 2**20 for r in rows],
        "s--",
        label=f"peak MiB (slope {results['d'][f'{axis}_memory_slope']:.2f})",
      )
      ax.set_xlabel(label)
      ax.legend()
      ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"HVP scaling: {results['machine']}", fontsize=8)
    fig.tight_layout()
    files.append(out / "perf_scaling.png")
    fig.savefig(files[-1], dpi=120)
  if "e" in results:
    names = [
      n
      for n in (*TR_VARIANTS, "adam", "lbfgs", "scipy_trust_ncg")
      if n in results["e"][0]
    ]
    fig, ax = subplots(figsize=(10, 4))
    x = np.arange(len(results["e"]))
    for i, name in enumerate(names):
      secs = [r[name]["seconds"] for r in results["e"]]
      width = 0.8 / len(names)
      bars = ax.bar(
        x + (i - (len(names) - 1) / 2) * width, secs, width, label=name
      )
      for bar, r in zip(bars, results["e"]):
        if not r[name]["reached_target"]:
          bar.set_hatch("//")
    ax.set_xticks(x, [r["function"] for r in results["e"]])
    ax.set_yscale("log")
    ax.set_ylabel("seconds to loss <= 1e-6 (hatched: not reached)")
    ax.legend()
    fig.suptitle(results["machine"], fontsize=8)
    fig.tight_layout()
    files.append(out / "perf_time_to_target.png")
    fig.savefig(files[-1], dpi=120)
  return files


def main(argv=None):
  jax.config.update("jax_enable_x64", True)  # as the paper benchmark runs
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--quick", action="store_true", help="small sizes, for a smoke test"
  )
  parser.add_argument("--only", nargs="+", choices=list("abcdef"))
  parser.add_argument(
    "--out",
    default="results/latest/perf",
    help="output folder (git ignores the default)",
  )
  parser.add_argument(
    "--report",
    action="store_true",
    help="rewrite perf.md and the figures from --out's perf.json, running"
    " nothing",
  )
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  parts = args.only or list("abcdef")
  quick = args.quick
  reps = 2 if quick else 5
  progress = not args.no_progress
  out = pathlib.Path(args.out)
  previous = out / "perf.json"
  if args.report:
    results = json.loads(previous.read_text())
    plots(results, out)
    (out / "perf.md").write_text(report(results) + "\n")
    return results
  results = {
    "machine": machine(),
    "date": time.strftime("%Y-%m-%d"),
    "argv": list(argv if argv is not None else sys.argv[1:]),
  }
  if args.only and previous.exists():  # update those parts, keep the others
    kept = json.loads(previous.read_text())
    if kept.get("machine") == results["machine"]:
      results = dict(kept, date=results["date"], argv=results["argv"])
  if "a" in parts:
    print("(a) HVP / gradient", flush=True)
    results["a"] = part_a(cases(500 if quick else 10_000), 2 if quick else 3)
  n_train = 200 if quick else 1_000
  elem = P.elementary_problem("sin10", n_train)
  fun = lambda p: elem.loss(p, *elem.train)
  if "b" in parts:
    print("(b) CG loop overhead", flush=True)
    results["b"] = part_b(fun, elem.params, reps)
  if "c" in parts:
    print("(c) TR iteration overhead", flush=True)
    results["c"] = part_c(fun, elem.params, reps)
  if "d" in parts:
    print("(d) scaling", flush=True)
    results["d"] = part_d(
      widths=(16, 32, 64) if quick else (16, 32, 64, 128, 256, 512, 724),
      batches=(1_000, 3_000)
      if quick
      else (1_000, 3_000, 10_000, 30_000, 100_000),
      reps=2 if quick else 3,
    )
  if "e" in parts:
    print("(e) time to target", flush=True)
    results["e"] = part_e(
      n_train,
      max_steps=50 if quick else 25_001,
      max_seconds=5 if quick else 120,
      scipy_seconds=5 if quick else 300,
      torch_iterations=2 if quick else 30,
      progress=progress,
    )
  if "f" in parts:
    print("(f) sin(10x) HVPs", flush=True)
    results["f"] = part_f(n_train, progress)
  out.mkdir(parents=True, exist_ok=True)
  (out / "perf.json").write_text(json.dumps(results, indent=1, default=float))
  plots(results, out)
  text = report(results)
  (out / "perf.md").write_text(text + "\n")
  print(text)
  return results


if __name__ == "__main__":
  main()
