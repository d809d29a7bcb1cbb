"""PINNs to high accuracy in float64, at equal wall-clock, beside published
figures.

    python -m benchmarks.pinn --quick    # about 7 minutes on 2 CPU cores
    python -m benchmarks.pinn            # the issue's budgets (about 4 hours)

Problems, each with its exact (or finite-difference) solution:

- ``poisson_257`` and ``poisson_9873``: -Delta u = 2 pi^2 sin(pi x) sin(pi y)
  on [0,1]^2, u = 0 on the boundary; tanh nets 2-64-1 and 2-64-64-48-48-1;
  900 interior and 120 boundary points, fixed; RMS error on 9,000 held-out
  points (the set-up of Dangel, Mueller & Zeinhofer, NeurIPS 2024);
- ``heat_smooth``: the paper's smooth 2D heat problem (``benchmarks.problems``),
  10,000 collocation points, relative L2 error at t = 1;
- ``heat``: the paper's heat problem with discontinuous corner data, relative
  L2 error at t = 1 against a finite-difference solution.

Every optimizer gets the same run time (compile excluded): ``trncg_gn`` (the
defaults of ``trncg(hvp_mode="gauss_newton")``), ``trncg_gn_cg`` (the same
with CG-Steihaug forced), ``trncg_gn_nystrom`` (CG-Steihaug with the Nystrom
preconditioner of rank 50), ``optax.lbfgs`` and ``optax.adam`` at the best
of three learning rates (chosen on the final training loss). Each run is a
chain of ``trncg_jax.solve`` calls, so the error is recorded along the way.

Writes ``pinn.json``, ``pinn.md``, ``pinn_error_time.png`` and
``pinn_error_iterations.png`` to ``--out`` (default ``results/latest/pinn``).
``--optimizers`` picks runs by name (``adam`` picks all three learning
rates); with ``--update`` the other runs are kept from ``--out``'s
``pinn.json``, so one variant can be rerun without the others' hours.
``--seeds`` runs each problem from several initial nets (``init_mlp`` seeds;
the data stay fixed) and adds a table of the final errors across them, with
how many reach the best published figure:

    python -m benchmarks.pinn --problems poisson_257 --optimizers trncg_gn \
      --seeds 0 1 2 3 4 5 6 7 --out results/pinn_poisson_257_seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import trncg_jax
from benchmarks import problems as P
from benchmarks.common import header, run_for

#: Dangel, Mueller & Zeinhofer, "Kronecker-factored approximate curvature for
#: PINNs", NeurIPS 2024 (their result files): float64, 1000 s on an RTX 6000.
PUBLISHED = {
  "poisson_257": dict(
    ENGD=6.2e-8, HessianFree=3.2e-7, KFAC_star=2.0e-7, LBFGS=1.8e-4, Adam=9.4e-5
  ),
  "poisson_9873": dict(
    HessianFree=1.25e-6, KFAC_star=7.9e-7, LBFGS=3.4e-4, Adam=2.1e-4
  ),
}
ADAM_LEARNING_RATES = (1e-4, 1e-3, 1e-2)


@dataclasses.dataclass(frozen=True)
class Budget:
  """Run time per optimizer (seconds), trncg's iteration cap (the others
  only have the time), and the heat problems' sizes."""

  seconds: float
  max_steps: int
  points: int = 10_000  # heat problems: collocation points
  test_points: int = 10_000


FULL = {
  "poisson_257": Budget(300, 1000),
  "poisson_9873": Budget(600, 5000),
  "heat_smooth": Budget(900, 5000),
  "heat": Budget(300, 5000),
}
QUICK = {
  "poisson_257": Budget(5, 1000),
  "poisson_9873": Budget(5, 1000),
  "heat_smooth": Budget(5, 1000, 2_000, 2_000),
  "heat": Budget(5, 1000, 2_000, 2_000),
}
#: Records per run: the error curves have about this many points.
RECORDS = 30


def setup(name: str, budget: Budget, seed: int = 0):
  """``(loss, params, args, error_fn, metric)`` of problem ``name``, from the
  initial net of ``init_mlp`` seed ``seed``."""
  if name.startswith("poisson"):
    apply, params = P.init_mlp(P.POISSON_SIZES[name], seed, jnp.float64)
    apply = jax.jit(apply)
    data = P.poisson_data()
    exact = P.poisson_exact(data.test, xp=np)
    error = lambda p: P.rms(apply(p, data.test)[:, 0], exact)
    return (
      P.poisson_loss_fn(apply),
      params,
      (data.interior, data.boundary),
      error,
      "RMS error",
    )
  apply, params, data, test, reference = P.heat_problem(
    budget.points,
    budget.test_points,
    name == "heat_smooth",
    jnp.float64,
    fd_n=201,
    fd_dt=2e-3,
    seed=seed,
  )
  apply = jax.jit(apply)
  error = lambda p: P.relative_l2(apply(p, test)[:, 0], reference)
  return P.heat_loss_fn(apply), params, (data,), error, "relative L2 at t=1"


def optimizers() -> dict:
  opts = {
    "trncg_gn": trncg_jax.trncg(hvp_mode="gauss_newton"),
    "trncg_gn_cg": trncg_jax.trncg(hvp_mode="gauss_newton", solver="cg"),
    # The configuration docs/choosing.md recommends where the dense step
    # stalls (the discontinuous heat problem).
    "trncg_gn_nystrom": trncg_jax.trncg(
      hvp_mode="gauss_newton", solver="cg", nystrom_rank=50
    ),
    "lbfgs": optax.lbfgs(),
  }
  opts.update({f"adam_{lr:g}": optax.adam(lr) for lr in ADAM_LEARNING_RATES})
  return opts


def run_traced(
  loss, params, args, optimizer, budget: Budget, error_fn, desc, progress: bool
) -> dict:
  """Chained ``solve`` calls until ``budget.seconds`` of run time, the
  iteration cap, or a stop; the error after each call."""
  res, trace = run_for(
    budget.seconds,
    loss,
    params,
    args,
    optimizer,
    records=RECORDS,
    max_steps=budget.max_steps,
    callback=error_fn,
    desc=desc,
    progress=progress,
    grad_tol=0.0,
    loss_tol=0.0,
  )
  return dict(
    seconds=trace["seconds"],
    steps=trace["steps"],
    loss=trace["loss"],
    error=trace["callback"],
    status=res.status.name,
    compile_seconds=res.compile_seconds,
  )


def error_at(trace: dict, seconds: float) -> float:
  """The error of the last record within ``seconds`` of run time."""
  k = int(np.searchsorted(trace["seconds"], seconds, side="right")) - 1
  return trace["error"][max(k, 0)]


def selected(opt_name: str, only: tuple) -> bool:
  """Whether ``--optimizers`` picks ``opt_name``: by its name, or ``adam``
  for every learning rate; all of them when ``only`` is empty."""
  adam = "adam" in only and opt_name.startswith("adam_")
  return not only or opt_name in only or adam


def run_problem(
  name: str, budget: Budget, progress: bool, only: tuple = (), seed: int = 0
) -> dict:
  loss, params, args, error_fn, metric = setup(name, budget, seed)
  runs = {}
  for opt_name, optimizer in optimizers().items():
    if not selected(opt_name, only):
      continue
    # The iteration cap is trncg's; the others fill the time budget.
    capped = (
      budget
      if opt_name.startswith("trncg")
      else dataclasses.replace(budget, max_steps=2**31 - 1)
    )
    runs[opt_name] = run_traced(
      loss,
      params,
      args,
      optimizer,
      capped,
      error_fn,
      f"{label(name, seed)}/{opt_name}",
      progress,
    )
    print(
      f"{label(name, seed):13s} {opt_name:12s} steps {runs[opt_name]['steps'][-1]:7d} "
      f"loss {runs[opt_name]['loss'][-1]:.2e} "
      f"error {runs[opt_name]['error'][-1]:.2e} "
      f"({runs[opt_name]['status']})",
      flush=True,
    )
  adams = [k for k in runs if k.startswith("adam_")]
  if adams:
    best = min(adams, key=lambda k: runs[k]["loss"][-1])
    runs["adam"] = dict(runs[best], learning_rate=float(best[5:]))
  for k in adams:
    del runs[k]
  return dict(
    problem=name,
    seed=seed,
    metric=metric,
    params=P.count_params(params),
    budget_seconds=budget.seconds,
    max_steps=budget.max_steps,
    runs=runs,
    published=PUBLISHED.get(name, {}),
  )


def label(problem: str, seed: int) -> str:
  """The problem's name, with the initial net's seed unless it is 0."""
  return problem + (f", seed {seed}" if seed else "")


def by_problem(results: list[dict]) -> dict[str, list[dict]]:
  """``results`` grouped by problem (one entry per seed), in their order."""
  problems = {}
  for r in results:
    problems.setdefault(r["problem"], []).append(r)
  return problems


def across_seeds(results: list[dict]) -> list[str]:
  """Markdown lines: each problem and optimizer run from several seeds, its
  final errors, their median, and how many reach the best published figure
  (none when fewer than two seeds ran)."""
  lines = []
  for problem, runs in by_problem(results).items():
    if len(runs) < 2:
      continue
    best = min(runs[0]["published"].values(), default=None)
    if not lines:
      lines += [
        "",
        "Across seeds (final errors, by seed):",
        "",
        "| problem | optimizer | seeds | errors | median "
        "| at or below the best published |",
        "|" + " --- |" * 6,
      ]
    for opt in dict.fromkeys(k for r in runs for k in r["runs"]):
      have = [r for r in runs if opt in r["runs"]]
      errors = [r["runs"][opt]["error"][-1] for r in have]
      reached = (
        f"{sum(e <= best for e in errors)} of {len(errors)} ({best:.1e})"
        if best is not None
        else ""
      )
      lines.append(
        f"| {problem} | {opt} | {', '.join(str(r['seed']) for r in have)} | "
        f"{', '.join(f'{e:.1e}' for e in errors)} | "
        f"{float(np.median(errors)):.1e} | {reached} |"
      )
  return lines


def markdown(results: list[dict], header: str) -> str:
  lines = [
    header,
    "",
    "| problem | optimizer | iterations | run time (s) | status "
    "| loss | error | error at 1/4, 1/2 of the budget |",
    "|" + " --- |" * 8,
  ]
  shown = set()  # the published rows once per problem, not per seed
  for r in results:
    for name, run in r["runs"].items():
      name_lr = name + (
        f" (lr {run['learning_rate']:g})" if name == "adam" else ""
      )
      early = ", ".join(
        f"{error_at(run, r['budget_seconds'] * q):.2e}" for q in (0.25, 0.5)
      )
      lines.append(
        f"| {label(r['problem'], r.get('seed', 0))} ({r['params']} params) "
        f"| {name_lr} | "
        f"{run['steps'][-1]} | {run['seconds'][-1]:.1f} | {run['status']} | "
        f"{run['loss'][-1]:.2e} | {run['error'][-1]:.2e} | {early} |"
      )
    published = {} if r["problem"] in shown else r["published"]
    shown.add(r["problem"])
    for method, value in published.items():
      lines.append(
        f"| {r['problem']} | published: {method} (Dangel et al. "
        f"2024, 1000 s on a GPU) | | | | | {value:.2e} | |"
      )
  lines += across_seeds(results)
  lines += [
    "",
    "![error against run time](pinn_error_time.png)",
    "![error against iterations](pinn_error_iterations.png)",
  ]
  return "\n".join(lines) + "\n"


def plot(results: list[dict], out: pathlib.Path) -> None:
  from benchmarks.plots import (  # pylint: disable=g-import-not-at-top
    legend_below,
    save,
    subplots,
  )

  problems = by_problem(results)
  for axis, xlabel, fname in (
    ("seconds", "run time (s, compile excluded)", "pinn_error_time.png"),
    ("steps", "iterations", "pinn_error_iterations.png"),
  ):
    fig, axes = subplots(
      1,
      len(problems),
      figsize=(max(6.0, 4.2 * len(problems)), 4.6),
      squeeze=False,
    )
    for ax, runs in zip(axes[0], problems.values()):
      r = runs[0]
      for seeded in runs:
        for name, run in seeded["runs"].items():
          x = np.maximum(run[axis], 1e-3 if axis == "seconds" else 1)
          tag = f" (seed {seeded.get('seed', 0)})" if len(runs) > 1 else ""
          ax.loglog(x, run["error"], label=name + tag, marker=".", markersize=3)
      for i, (method, value) in enumerate(r["published"].items()):
        ax.axhline(
          value, color=f"C{i + 4}", ls=":", lw=1, label=f"{method} (published)"
        )
      ax.set(
        title=f"{r['problem']} ({r['params']} params)",
        xlabel=xlabel,
        ylabel=r["metric"],
      )
    save(fig, out / fname, legend_below(fig))


def updated(old: list[dict], new: list[dict]) -> tuple[list[dict], str]:
  """``old`` with ``new``'s runs in place of those of the same name (new
  problems appended), and the names of the runs kept from ``old``."""
  key = lambda r: (r["problem"], r.get("seed", 0))
  fresh = {key(r): r for r in new}
  kept, results = [], []
  for r in old:
    if key(r) in fresh:
      runs = fresh.pop(key(r))["runs"]
      kept += [f"{label(*key(r))}/{k}" for k in r["runs"] if k not in runs]
      r = dict(r, runs=dict(r["runs"], **runs))
    results.append(r)
  return results + list(fresh.values()), ", ".join(kept)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="5 s per optimizer and problem, smaller heat sets",
  )
  parser.add_argument(
    "--problems", nargs="+", default=list(FULL), choices=list(FULL)
  )
  parser.add_argument(
    "--optimizers",
    nargs="+",
    default=(),
    choices=[n for n in optimizers() if not n.startswith("adam_")] + ["adam"],
    help="run only these (adam: its three learning rates)",
  )
  parser.add_argument(
    "--update",
    action="store_true",
    help="keep the other optimizers' runs from --out's pinn.json",
  )
  parser.add_argument(
    "--seeds",
    nargs="+",
    type=int,
    default=[0],
    help="the initial nets' seeds, each run in turn (the data stay fixed)",
  )
  parser.add_argument("--out", default="results/latest/pinn")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  jax.config.update("jax_enable_x64", True)  # every problem is float64
  budgets = QUICK if args.quick else FULL
  out = pathlib.Path(args.out)
  # Read before the runs, so that a missing file does not cost their hours.
  earlier = out / "pinn.json"
  if args.update and not earlier.exists():
    parser.error(f"--update needs an earlier run's {earlier}")
  earlier = json.loads(earlier.read_text()) if args.update else None
  out.mkdir(parents=True, exist_ok=True)
  start = time.time()
  results = [
    run_problem(
      name, budgets[name], not args.no_progress, tuple(args.optimizers), seed
    )
    for name in args.problems
    for seed in args.seeds
  ]
  title = "PINN suite" + (" (--quick)" if args.quick else "")
  lines = header(title, "pinn", argv)
  if args.update:
    results, kept = updated(earlier, results)
    lines.append(f"Kept from the earlier run: {kept or 'none'}.")
  lines.append(f"{math.ceil((time.time() - start) / 60)} min in all.")
  head = "\n".join(lines)
  (out / "pinn.json").write_text(json.dumps(results, indent=1))
  (out / "pinn.md").write_text(markdown(results, head))
  plot(results, out)
  print(markdown(results, head))
  return results


if __name__ == "__main__":
  main()
