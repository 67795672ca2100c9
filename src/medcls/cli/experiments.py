"""Commands that run many trainings: ``medcls cv``, ``medcls tune``, ``medcls ablate`` and ``medcls ensemble``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import ConfigFile, DataDir, Sets, overrides, print_table

CVSeed = Annotated[int | None, typer.Option(help="Seed of the fold assignment and of training (sets `seed`).")]
TuneSeed = Annotated[int | None, typer.Option(help="Seed of the sampler and of every trial's training (sets `seed`).")]


def cv(
    config: ConfigFile = None,
    sets: Sets = None,
    folds: Annotated[int, typer.Option(help="Number of folds (>= 2, <= samples or groups of the smallest class).")] = 5,
    seed: CVSeed = None,
    inner_val: Annotated[float | None, typer.Option(help="Carve this fraction of the training folds as the inner "
                                                    "validation split, so the held-out fold is scored untouched.")] = None,
    evaluate_test: Annotated[bool, typer.Option("--evaluate-test/--no-evaluate-test",
                                                help="Also evaluate every fold model once on the test split (off: test is not read).")] = False,
    run_dir: Annotated[Path | None, typer.Option(help="Exact output folder (must not exist). Default: runs/<name>-cv-<k>-<time>.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Stratified (group-aware) k-fold cross-validation on train + val: fold runs, out-of-fold predictions, mean ± sd."""
    from ..experiments.cv import cv as run_cv
    from ..experiments.cv import print_summary

    result = run_cv(config, folds, overrides=overrides(sets, data_dir), seed=seed, inner_val=inner_val,
                    evaluate_test=evaluate_test, run_dir=run_dir)
    print_summary(result)
    typer.echo(f"cross-validation written to {result.path}")


def tune(
    config: ConfigFile = None,
    sets: Sets = None,
    budget: Annotated[str | None, typer.Option(help="Wall-clock budget of the whole study (shared by the workers "
                                               "that join before it ends): 900s, 30m, 2h, 1h30m.")] = None,
    trials: Annotated[int | None, typer.Option(help="Finished (complete or pruned) trials the whole study should "
                                               "hold, over all workers and earlier runs.")] = None,
    space: Annotated[Path | None, typer.Option(help="YAML search space replacing the default "
                                               "(key: {type: float|int, low, high, log} or {type: categorical, choices}).")] = None,
    study_dir: Annotated[Path | None, typer.Option(help="Parent folder of the study (default: the config's output_dir); "
                                                   "may be a shared folder.")] = None,
    name: Annotated[str | None, typer.Option(help="Study name and folder (default: <config name>-tune). Same name = resume.")] = None,
    seed: TuneSeed = None,
    pruner: Annotated[str, typer.Option(help="median | hyperband | none")] = "median",
    storage: Annotated[str | None, typer.Option(help="Shared study: postgresql+psycopg://USER@HOST:PORT/DB (any "
                                                "SQLAlchemy URL) or journal:FILE; run the same command on every "
                                                "machine. Default: <study folder>/study.db, one worker.")] = None,
    heartbeat: Annotated[int, typer.Option(help="Seconds between a worker's heartbeats (database storages; Optuna's "
                                           "journal has none): a trial silent for twice as long is failed and "
                                           "retried by a live worker.")] = 60,
    status: Annotated[bool, typer.Option("--status", help="Print the study's trials by state and worker and the "
                                         "best so far (needs --name and --storage or --study-dir), and exit.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Budgeted Optuna search of hyperparameters on validation (never reads test); writes best_config.yaml."""
    if status:
        from ..experiments.study import status as study_status

        print_status(study_status(storage, name, study_dir))
        return
    from ..experiments.tune import print_summary
    from ..experiments.tune import tune as run_tune

    result = run_tune(config, budget=budget, trials=trials, overrides=overrides(sets, data_dir), space=space,
                      study_dir=study_dir, name=name, seed=seed, pruner=pruner, storage=storage, heartbeat=heartbeat)
    print_summary(result)
    typer.echo(f"study written to {result.path}")


def print_status(st) -> None:
    """``medcls tune --status``: trials by state, by worker, and the best so far."""
    import datetime as dt

    from rich.console import Console
    from rich.table import Table

    console = Console()
    states = ", ".join(f"{v} {k}" for k, v in sorted(st.states.items())) or "no trials"
    console.print(f"study {st.name} in {st.storage} ({st.direction}): {states}", soft_wrap=True)
    if st.deadline:
        end = dt.datetime.fromtimestamp(st.deadline, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        console.print(f"time budget ends {end}", soft_wrap=True)
    cols = ("complete", "pruned", "fail", "running", "waiting")
    table = Table(title="trials by worker (host:pid)")
    for c in ("worker", *cols):
        table.add_column(c, justify="left" if c == "worker" else "right")
    for w, c in sorted(st.workers.items()):
        table.add_row(w, *[str(c.get(k, 0)) for k in cols])
    console.print(table)
    if st.best is None:
        console.print("best: none complete yet")
        return
    b = st.best
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b["params"].items())
    console.print(f"best: trial {b['number']} value {b['value']:.4f} ({params}) by {b['worker']} in {b['run_dir']}",
                  soft_wrap=True)


def ablate(
    config: ConfigFile = None,
    sets: Sets = None,
    variants: Annotated[str, typer.Option(help="Comma-separated: none (image only), meta_only, concat, "
                                          "cross_attention, gated.")] = "none,meta_only,concat,cross_attention,gated",
    run_dir: Annotated[Path | None, typer.Option(help="Exact output folder (must not exist). Default: runs/<name>-ablation-<time>.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Image-only vs metadata-only vs each fusion on the same splits and seed: one test-AUC table with CIs."""
    from ..experiments.ablate import ablate as run_ablate
    from ..experiments.ablate import to_markdown

    result = run_ablate(config, overrides=overrides(sets, data_dir),
                        variants=[v.strip() for v in variants.split(",") if v.strip()], run_dir=run_dir)
    typer.echo(to_markdown(result.table))
    typer.echo(f"ablation written to {result.path}")


def ensemble(
    runs: Annotated[list[Path] | None, typer.Argument(help="Run directories to combine (seeds, architectures or "
                                                      "CV folds; same classes and preprocessing).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The ensemble's run directory (must not exist).")] = None,
    weights: Annotated[str, typer.Option(help="equal | val (weights minimising the validation log-loss).")] = "equal",
    config: ConfigFile = None,
    sets: Sets = None,
    members: Annotated[int | None, typer.Option(help="Train this many members of --config (seeds seed, seed+1, ...) "
                                                "instead of combining existing runs.")] = None,
    budget: Annotated[str | None, typer.Option(help="With --members: wall-clock budget (30m, 2h); no member starts "
                                               "that would not end within it.")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Evaluate the ensemble on test "
                                           "(CIs, report, model card).")] = True,
    data_dir: DataDir = None,
) -> None:
    """Combine runs into one model (mean of calibrated probabilities) that evaluates, exports, predicts and serves
    like a run; or train K members of a config within a budget (--config --members K --budget 30m)."""
    from ..errors import ConfigError
    from ..experiments.ensemble import build_ensemble, train_ensemble
    from .training import evaluation_rows

    if out is None:
        raise ConfigError("missing option -o / --out (the ensemble's run directory, must not exist)")
    if members is None and (config is not None or sets or budget):
        raise ConfigError("--config, --set and --budget train new members: add --members K (or pass run "
                          "directories instead)")
    if members is not None and runs:
        raise ConfigError("pass either run directories to combine or --members K to train new ones, not both")
    if members is None and not runs:
        raise ConfigError("give at least 2 run directories to combine, or --config CONFIG --members K to train them")
    if members is not None:
        result = train_ensemble(config, out, members=members, budget=budget, overrides=overrides(sets, data_dir),
                                weights=weights, evaluate_split="test" if evaluate else None)
    else:
        result = build_ensemble(runs, out, weights=weights, evaluate_split="test" if evaluate else None)
    rows = {f"member {i} ({m['architecture']}, seed {m['seed']})": {"weight": f"{m['weight']:.3f}",
                                                                     "T": f"{m['temperature']:.3f}",
                                                                     "val auc": f"{m['val_auc']:.4f}"}
            for i, m in enumerate(result.members)}
    rows["ensemble"] = {"val auc": f"{result.val['auc']:.4f}"}
    print_table(f"ensemble of {len(result.members)} · {result.run.dataset.name}", rows, first="model")
    if result.test is not None:
        print_table(f"ensemble · test (n={result.test['n']})", evaluation_rows(result.test, "test"))
    typer.echo(f"ensemble written to {result.run.path}")


def register(app: typer.Typer) -> None:
    """Add the experiment commands to the main app."""
    app.command("cv")(cv)
    app.command("tune")(tune)
    app.command("ablate")(ablate)
    app.command("ensemble")(ensemble)
