"""Baseline controllers fitted on a dataset's train split: the bar a trained model has to clear
(docs/ARCHITECTURE.md, "Baselines").

Each maps a problem's numbers (its features: x_0, and every parameter that varies between records) to the N
controls, fitted on the printed labels of the train records of one system (the text the model is trained to
copy), with scikit-learn:

    nearest   the label of the nearest training problem (Euclidean, on standardized features)
    knn       the inverse-distance-weighted mean of the k nearest labels, k picked on a held-back tenth of
              the train split from K_CHOICES
    affine    least squares from the features to the controls
    mlp       a small MLP regressor (MLP_HIDDEN ReLU layers, Adam, a fixed budget of MLP_UPDATES steps of
              batches of 200 records, as epochs of the 90% of the train split it fits, with early stopping
              on the other 10%, seed 0): the same work whatever the dataset's size, its seconds recorded

An answer is clipped to the bounds and rounded to the dataset's decimals, exactly as a label is printed
(lib/control/labels.py, round_plain), so a baseline writes nothing a model could not. A baseline is fitted
once per dataset: the fitted numbers (standardization, the affine map, the MLP's weights, k) are cached as a
.npz (no pickle) under the user cache, keyed by the train file's sha256 and BASELINES_VERSION, and a
prediction is plain numpy, so an MPC re-plan can ask a baseline from any visited state.

For a family (lib/control/families.py) the features are x_0 and the record's drawn values (its `params`:
dt, N, bound, weights, target, constants), and the labels, whose lengths follow each record's N, are padded
with zeros to the longest: a prediction is cut to the record's own N, clipped to its own bounds and rounded.
A baseline does not apply where the train split has too few records of the system (MIN_TRAIN);
`fit_system` says why.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib.common.atomic import write_bytes_atomic
from lib.common.config import user_cache_dir
from lib.control.answer import parse_controls
from lib.control.families import FAMILIES
from lib.control.labels import round_plain
from lib.control.systems import System, get_system

log = logging.getLogger(__name__)

BASELINES = ("nearest", "knn", "affine", "mlp")
BASELINES_VERSION = "2"  # bump when a fit changes, so cached fits are made again
K_CHOICES = (2, 4, 8, 16, 32)
MLP_HIDDEN = (64, 64)
MLP_UPDATES = 4000  # Adam steps of 200 records: a few seconds on 2 cores, whatever the split's size
MIN_TRAIN = {"nearest": 1, "knn": 10, "affine": 2, "mlp": 50}  # train records a fit needs
ABOUT = {
    "nearest": "label of the nearest training problem (standardized features)",
    "knn": "inverse-distance-weighted mean of the k nearest labels (k picked on a held-back tenth of train)",
    "affine": "least squares from the features to the controls",
    "mlp": f"MLP {'x'.join(map(str, MLP_HIDDEN))} ReLU, Adam, <= {MLP_UPDATES} steps of 200 records, early stopping, seed 0",
}


def state_features(states: np.ndarray, record: dict) -> np.ndarray:
    """[m, d] the features of `record`'s problem started from each of `states` [m, n] (x_0 as the prompt shows
    it, then a family member's drawn values): what an MPC re-plan asks a baseline."""
    states = np.asarray(states, dtype=float).reshape(len(states), -1)
    values = np.array(list(record.get("params", {}).values()), dtype=float)
    return np.hstack([states, np.tile(values, (len(states), 1))])


def problem_features(records: Sequence[dict]) -> np.ndarray:
    """[n, d] the numbers that differ between problems of one system: x_0 as the prompt shows it, and for a
    family member its drawn values."""
    if not records:
        return np.zeros((0, 0))
    return np.vstack([state_features(np.array([record["x0"]]), record) for record in records])


def label_controls(records: Sequence[dict]) -> np.ndarray:
    """[n, N] the printed label of each record (its completion's controls), padded with zeros to the longest
    horizon when a family's records differ in N."""
    longest = max((record["horizon"]["steps"] for record in records), default=0)
    rows = np.zeros((len(records), longest))
    for i, record in enumerate(records):
        steps = record["horizon"]["steps"]
        parsed = parse_controls(record["completion"][-1]["content"], steps)
        rows[i, :steps] = parsed.values if parsed.ok else np.asarray(record["u_opt"], dtype=float)
    return rows


@dataclass
class FittedBaselines:
    """What the baselines of one system learned: plain arrays, so predicting needs numpy alone."""

    system: str
    decimals: int
    mean: np.ndarray  # [d] feature standardization
    scale: np.ndarray  # [d]
    train_x: np.ndarray  # [n, d] standardized train features
    train_u: np.ndarray  # [n, N] their labels
    k: int = 0  # knn's k (0: knn not fitted)
    affine_w: np.ndarray | None = None  # [d, N]
    affine_b: np.ndarray | None = None  # [N]
    mlp_weights: list[np.ndarray] = field(default_factory=list)
    mlp_biases: list[np.ndarray] = field(default_factory=list)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # baseline -> why it was not fitted

    def available(self) -> list[str]:
        return [name for name in BASELINES if name not in self.missing]

    def standardize(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=float) - self.mean) / self.scale

    def nearest_distances(self, features: np.ndarray) -> np.ndarray:
        """[m] the distance from each problem to the nearest training problem, in standardized units."""
        from sklearn.neighbors import NearestNeighbors

        index = NearestNeighbors(n_neighbors=1).fit(self.train_x)
        return index.kneighbors(self.standardize(features))[0][:, 0]

    def predict(self, name: str, features: np.ndarray, system: System | None = None) -> np.ndarray:
        """[m, N] the controls baseline `name` answers to problems of `system` (default: the fixed system it
        was fitted on), cut to its N, clipped to its bounds and rounded as a label."""
        if name in self.missing:
            raise ValueError(f"baseline {name} was not fitted: {self.missing[name]}")
        x = self.standardize(features)
        if name in ("nearest", "knn"):
            u = _neighbour_mean(self.train_x, self.train_u, x, 1 if name == "nearest" else self.k)
        elif name == "affine":
            u = x @ self.affine_w + self.affine_b
        elif name == "mlp":
            u = x
            for i, (w, b) in enumerate(zip(self.mlp_weights, self.mlp_biases, strict=True)):
                u = u @ w + b
                if i < len(self.mlp_weights) - 1:
                    u = np.maximum(u, 0.0)
        else:
            raise ValueError(f"unknown baseline '{name}'")
        system = system or get_system(self.system)
        return round_plain(system, u[:, : system.steps], self.decimals)


def _neighbour_mean(train_x: np.ndarray, train_u: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """The inverse-distance-weighted mean of the k nearest labels (k = 1: the nearest label itself; a
    problem that is a training problem gets that problem's label)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(train_x))
    distances, index = NearestNeighbors(n_neighbors=k).fit(train_x).kneighbors(x)
    if k == 1:
        return train_u[index[:, 0]]
    exact = distances[:, :1] <= 1e-12
    weights = np.where(exact, (distances <= 1e-12).astype(float), 1.0 / np.maximum(distances, 1e-12))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("mk,mkn->mn", weights, train_u[index])


def fit_system(system: str, records: Sequence[dict], decimals: int) -> FittedBaselines:
    """Fit every baseline on one system's train records (each where it applies; `missing` says why not)."""
    if not records:
        empty = np.zeros((0, 0))
        fitted = FittedBaselines(system, decimals, np.zeros(0), np.ones(0), empty, empty)
        fitted.missing = {name: f"the train split has no records of {system}" for name in BASELINES}
        return fitted
    features, labels = problem_features(records), label_controls(records)
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant feature carries no information
    fitted = FittedBaselines(system, decimals, mean, scale, (features - mean) / scale, labels)
    n = len(records)
    for name, needed in MIN_TRAIN.items():
        if n < needed:
            fitted.missing[name] = f"needs at least {needed} train records of {system} (the split has {n})"
    x, u = fitted.train_x, labels
    if "knn" not in fitted.missing:
        started = time.perf_counter()
        fitted.k = _pick_k(x, u, None if system in FAMILIES else get_system(system), decimals)
        fitted.fit_seconds["knn"] = time.perf_counter() - started
    if "affine" not in fitted.missing:
        started = time.perf_counter()
        design = np.hstack([x, np.ones((n, 1))])
        solution = np.linalg.lstsq(design, u, rcond=None)[0]
        fitted.affine_w, fitted.affine_b = solution[:-1], solution[-1]
        fitted.fit_seconds["affine"] = time.perf_counter() - started
    if "mlp" not in fitted.missing:
        fitted.mlp_weights, fitted.mlp_biases, fitted.fit_seconds["mlp"] = _fit_mlp(x, u)
    return fitted


def _pick_k(x: np.ndarray, u: np.ndarray, system: System | None, decimals: int) -> int:
    """The k of K_CHOICES whose neighbour mean, fitted on 90% of the train split, is closest (mean squared
    error of the controls, rounded as a label for a fixed system; a family's members differ in bounds, so
    there as computed) to the labels of the other 10%, a fixed slice."""
    order = np.random.default_rng(0).permutation(len(x))
    held = order[: max(1, len(x) // 10)]
    kept = order[len(held) :]
    errors = {}
    for k in K_CHOICES:
        if k > len(kept):
            break
        guess = _neighbour_mean(x[kept], u[kept], x[held], k)
        guess = guess if system is None else round_plain(system, guess, decimals)
        errors[k] = float(np.mean((guess - u[held]) ** 2))
    return min(errors, key=errors.get) if errors else 1


def _fit_mlp(x: np.ndarray, u: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    fitted_rows = int(0.9 * len(x))  # early stopping holds back a tenth
    batch = min(200, fitted_rows)
    epochs = max(1, int(np.ceil(MLP_UPDATES / np.ceil(fitted_rows / batch))))
    model = MLPRegressor(hidden_layer_sizes=MLP_HIDDEN, max_iter=epochs, batch_size=batch, early_stopping=True,
                         n_iter_no_change=max(5, epochs // 10), random_state=0)  # fmt: skip
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the epoch budget is the budget
        model.fit(x, u)
    seconds = time.perf_counter() - started
    return [np.asarray(w) for w in model.coefs_], [np.asarray(b) for b in model.intercepts_], seconds


# ---------------------------------------------------------------- per dataset, cached


def _cache_path(dataset_dir: Path, info: dict, system: str) -> Path:
    digest = info["files"]["train.jsonl"]["sha256"]
    key = hashlib.sha256(f"{digest}:{system}:{BASELINES_VERSION}".encode()).hexdigest()[:24]
    return user_cache_dir() / "baselines" / f"{key}.npz"


def _save(path: Path, fitted: FittedBaselines) -> None:
    arrays = {
        "mean": fitted.mean,
        "scale": fitted.scale,
        "train_x": fitted.train_x,
        "train_u": fitted.train_u,
    }
    if fitted.affine_w is not None:
        arrays |= {"affine_w": fitted.affine_w, "affine_b": fitted.affine_b}
    for i, (w, b) in enumerate(zip(fitted.mlp_weights, fitted.mlp_biases, strict=True)):
        arrays |= {f"mlp_w{i}": w, f"mlp_b{i}": b}
    meta = {"system": fitted.system, "decimals": fitted.decimals, "k": fitted.k, "layers": len(fitted.mlp_weights),
            "fit_seconds": fitted.fit_seconds, "missing": fitted.missing}  # fmt: skip
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())


def _load(path: Path) -> FittedBaselines | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            layers = meta["layers"]
            return FittedBaselines(
                system=meta["system"], decimals=meta["decimals"], mean=data["mean"], scale=data["scale"],
                train_x=data["train_x"], train_u=data["train_u"], k=meta["k"],
                affine_w=data.get("affine_w"),
                affine_b=data.get("affine_b"),
                mlp_weights=[data[f"mlp_w{i}"] for i in range(layers)],
                mlp_biases=[data[f"mlp_b{i}"] for i in range(layers)],
                fit_seconds=meta["fit_seconds"], missing=meta["missing"],
            )  # fmt: skip
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # no cache, or a damaged one: fit again


def dataset_baselines(dataset_dir: Path, info: dict, systems: Sequence[str]) -> dict[str, FittedBaselines]:
    """{system: its fitted baselines} for the train split of the dataset at dataset_dir, from the cache when
    the same train file (sha256) was fitted before, else fitted now and cached."""
    from lib.control.dataset_format import read_split

    fitted: dict[str, FittedBaselines] = {}
    train = None
    for system in dict.fromkeys(systems):
        path = _cache_path(dataset_dir, info, system)
        cached = _load(path)
        if cached is not None:
            fitted[system] = cached
            continue
        train = read_split(dataset_dir, "train") if train is None else train
        records = [r for r in train if r["system"] == system]
        started = time.perf_counter()
        fitted[system] = fit_system(system, records, int(info["decimals"]))
        log.info("fitted the baselines of %s on %d train records (%.1f s)", system, len(records),
                 time.perf_counter() - started)  # fmt: skip
        try:
            _save(path, fitted[system])
        except OSError as exc:  # a read-only home: the fit still serves this run
            log.warning("could not cache the fitted baselines in %s: %s", path.parent, exc)
    return fitted
