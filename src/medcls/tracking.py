"""Experiment tracking: MLflow or TensorBoard, off by default (the config's ``tracking:`` section).

MLflow logs the resolved config as params, every epoch's numbers as metrics, the run directory (report,
metrics, plots, model card; not the checkpoints) as artefacts, and each exported bundle as a new version of
a registered model. With no ``tracking.uri`` the store is local: ``sqlite:///<output_dir>/mlflow.db`` with
artefacts in ``<output_dir>/mlartifacts`` (MLflow 3 keeps its plain-file store in maintenance mode only).
TensorBoard writes event files to ``<output_dir>/tensorboard/<run>`` (or ``tracking.uri``).

Tracking never loses a run: a store that fails at runtime gives one warning and the run goes on untracked.
The run directory's ``tracking.json`` names the tracked run, so a resumed run and a later ``medcls export``
log to the same one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from .config import Config
from .extras import require
from .utils import atomic_write_json, flatten

log = logging.getLogger("medcls")

STATE_FILE = "tracking.json"
SKIP = {"checkpoints"}  # the weights travel as the registered bundle, not as run artefacts
MAX_PARAM = 6000  # MLflow's limit on a param value's length


def check_tracking(cfg: Config) -> None:
    """Fail before training (one line naming the extra) when the chosen backend is not installed."""
    b = cfg.tracking.backend
    if b == "mlflow":
        require("mlflow", "tracking.backend=mlflow")
    elif b == "tensorboard":
        require("torch.utils.tensorboard", "tracking.backend=tensorboard")


def config_params(cfg: Config) -> dict[str, str]:
    """The config as params: ``{"train.lr": "0.1", ...}`` (strings, at most ``MAX_PARAM`` long)."""
    return {k: str(v)[:MAX_PARAM] for k, v in flatten(cfg.to_dict()).items()}


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a history row (epoch excluded: it is the step)."""
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


def summary_metrics(metrics: dict[str, Any], split: str) -> dict[str, float]:
    """The numbers of an evaluation, as ``<split>_<name>`` (``test_auc``, ``test_per_class.normal.recall``,
    ``test_calibration.ece``)."""
    from .metrics import flat_metrics

    return {f"{split}_{k}": v for k, v in flat_metrics(metrics).items() if math.isfinite(v)}


class Tracker:
    """No backend (``tracking.backend: none``); the base of the others. A backend call that raises turns the
    tracker off with one warning: a tracking store that is down must not stop training."""

    backend = "none"

    def __init__(self) -> None:
        self.alive = True

    def _guard(self, what: str, fn, *args) -> Any:
        if not self.alive:
            return None
        try:
            return fn(*args)
        except Exception as e:  # whatever the store raised, the run goes on
            self.alive = False
            msg = (str(e).strip().splitlines() or [""])[0][:300]
            log.warning("tracking: %s failed (%s: %s); the run goes on without tracking", what, type(e).__name__, msg)
            return None

    def __call__(self, trainer, epoch: int, row: dict[str, Any]) -> None:  # a Trainer callback
        self._guard("logging epoch metrics", self._metrics, numbers(row), epoch + 1)

    def log_summary(self, metrics: dict[str, float]) -> None:
        self._guard("logging the evaluation", self._metrics, metrics, None)

    def finish(self, run_dir: Path) -> None:
        self._guard("logging the run's artefacts", self._finish, Path(run_dir))
        if self.alive and self.backend != "none":
            log.info("%s", self.where())

    def abort(self, interrupted: bool) -> None:
        """Training stopped early: the tracked run is marked KILLED (Ctrl-C) or FAILED, not left running."""
        self._guard("closing the run", self._abort, "KILLED" if interrupted else "FAILED")

    def _abort(self, status: str) -> None:
        pass

    def where(self) -> str:
        return "tracking: off"

    def _metrics(self, values: dict[str, float], step: int | None) -> None:
        pass

    def _finish(self, run_dir: Path) -> None:
        pass


class MlflowTracker(Tracker):
    backend = "mlflow"

    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None = None) -> None:
        super().__init__()
        require("mlflow", "tracking.backend=mlflow")
        from mlflow.tracking import MlflowClient

        self.uri, artefacts = mlflow_uri(cfg)
        self.client = MlflowClient(tracking_uri=self.uri)
        name = cfg.tracking.experiment or cfg.name
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name, artifact_location=artefacts)
        self.experiment = name
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, run_name=run_dir.name,
                                                 tags={"medcls.run_dir": str(run_dir.resolve()),
                                                       **cfg.tracking.tags}).info.run_id
            self._params(config_params(cfg))

    def _params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _metrics(self, values: dict[str, float], step: int | None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step or 0) for k, v in values.items()])

    def _finish(self, run_dir: Path) -> None:
        for p in sorted(run_dir.iterdir()):
            if p.name in SKIP:
                continue
            if p.is_dir():
                self.client.log_artifacts(self.run_id, str(p), artifact_path=p.name)
            else:
                self.client.log_artifact(self.run_id, str(p))
        self.client.set_terminated(self.run_id)

    def _abort(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)

    def log_bundle(self, bundle: Path, model_name: str) -> str | None:
        """The bundle as artefacts of the run and a new version of registered model ``model_name``."""
        self.client.log_artifacts(self.run_id, str(bundle), artifact_path="bundle")
        try:
            self.client.create_registered_model(model_name)
        except Exception as e:  # RESOURCE_ALREADY_EXISTS: a later version
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(e, "error_code", "")) + str(e):
                raise
        mv = self.client.create_model_version(model_name, f"runs:/{self.run_id}/bundle", run_id=self.run_id)
        return str(mv.version)

    def where(self) -> str:
        return (f"tracking: MLflow run {self.run_id} in experiment {self.experiment!r} at {self.uri} "
                f"(see it: mlflow ui --backend-store-uri {self.uri})")


class TensorBoardTracker(Tracker):
    backend = "tensorboard"

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        super().__init__()
        tb = require("torch.utils.tensorboard", "tracking.backend=tensorboard")
        root = Path(cfg.tracking.uri or Path(cfg.output_dir) / "tensorboard")
        self.logdir = root / run_dir.name
        self.writer = tb.SummaryWriter(log_dir=str(self.logdir))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config_params(cfg).items()))
        self.root = root

    def _metrics(self, values: dict[str, float], step: int | None) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step or 0)
        self.writer.flush()

    def _finish(self, run_dir: Path) -> None:
        self.writer.close()

    def _abort(self, status: str) -> None:
        self.writer.close()

    def where(self) -> str:
        return f"tracking: TensorBoard logs in {self.logdir} (see them: tensorboard --logdir {self.root})"


def mlflow_uri(cfg: Config) -> tuple[str, str | None]:
    """The tracking URI and, for the default local store, where its artefacts go."""
    if cfg.tracking.uri:
        return cfg.tracking.uri, None
    root = Path(cfg.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


def start_tracking(cfg: Config, run_dir: Path) -> Tracker:
    """The run's tracker (a no-op one when tracking is off or its store cannot be reached)."""
    run_dir = Path(run_dir)
    backend = cfg.tracking.backend
    if backend == "none":
        return Tracker()
    state = json.loads((run_dir / STATE_FILE).read_text()) if (run_dir / STATE_FILE).is_file() else {}
    probe = Tracker()
    if backend == "mlflow":
        resume = state.get("run_id") if state.get("backend") == "mlflow" else None
        tracker = probe._guard("starting MLflow", MlflowTracker, cfg, run_dir, resume)
    else:
        tracker = probe._guard("starting TensorBoard", TensorBoardTracker, cfg, run_dir)
    if tracker is None:
        return probe
    if backend == "mlflow":
        atomic_write_json(run_dir / STATE_FILE, {"backend": "mlflow", "uri": tracker.uri, "run_id": tracker.run_id,
                                                 "experiment": tracker.experiment})
    log.info("%s", tracker.where())
    return tracker


def log_bundle(run_dir: Path, bundle: Path) -> str | None:
    """After ``medcls export``: the bundle as a new version of the run's registered model (MLflow runs with
    ``tracking.register_model``); returns a line saying where it went, or None when the run is not tracked."""
    from .runs import load_run

    state_file = Path(run_dir) / STATE_FILE
    if not state_file.is_file():
        return None
    cfg = load_run(run_dir).config
    if cfg.tracking.backend != "mlflow" or not cfg.tracking.register_model:
        return None
    state = json.loads(state_file.read_text())
    tracker = Tracker()
    mlt = tracker._guard("opening the MLflow run", MlflowTracker, cfg, Path(run_dir), state["run_id"])
    version = mlt._guard("registering the bundle", mlt.log_bundle, Path(bundle), state["experiment"]) if mlt else None
    if mlt is not None:
        mlt._guard("closing the MLflow run", mlt.client.set_terminated, mlt.run_id)
    if version is None:
        return None
    return f"tracking: bundle registered as model {state['experiment']!r} version {version} in {mlt.uri}"
