"""Scaling laws across sizes: the paper's Figure 4, fitted, with uncertainty.

Per family, the final validation loss against training compute C (FLOPs, the model's own count)
and against parameters N, each as L(x) = E + A x^(-alpha), fitted by least squares with SciPy
(``fit_law``). Intervals come from a bootstrap over the
family's (size, seed) points: every draw that keeps at least ``MIN_SIZES`` sizes is refitted.
The compute multiplier of family B against family A at each of A's sizes is the compute B's law
needs to reach A's fitted loss there, over A's compute, with the interval of paired draws: above
1, B needs more. Where that interval holds 1, the two are not distinguishable at this budget.

Honest limits: a family with fewer than ``MIN_SIZES`` sizes gets no fit, and the record says which
it has; sizes trained at different tokens per parameter are refused for the compute law unless
the ladder is declared fixed-token (then the law is over N at fixed data, as Figure 4 is not).
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqarena.files import atomic_write
from seqarena.models.families import family_name
from seqarena.options import option

MIN_SIZES = 3
BOOTSTRAP = 1000
LEVEL = 0.95
TOKEN_RATIO_SPREAD = 1.1  # tokens per parameter that differ by more than this across sizes differ


@dataclass(frozen=True)
class Point:
    """One trained model: its family, size, seed, parameters, tokens, compute and final loss."""

    model: str
    seed: int
    parameters: int
    tokens: int
    flops: float
    loss: float

    @property
    def family(self) -> str:
        return family_name(self.model)


def point_from_summary(path: Path) -> Point:
    summary = json.loads(Path(path).read_text())
    missing = [k for k in ("training_flops", "final_val_loss", "tokens", "parameters") if k not in summary]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} (a summary.json from before the scaling stage?)")
    return Point(
        summary["model"],
        summary.get("seed", 0),
        summary["parameters"],
        summary["tokens"],
        summary["training_flops"],
        summary["final_val_loss"],
    )


def _fit_at(alpha: float, x: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """(E, A, squared residual) of the best E, A >= 0 for this alpha: non-negative least squares."""
    from scipy.optimize import nnls

    (E, A), residual = nnls(np.stack([np.ones_like(x), x**-alpha], axis=1), loss)
    return float(E), float(A), float(residual) ** 2


def fit_law(x, loss) -> tuple[float, float, float]:
    """(E, A, alpha) of L = E + A x^(-alpha) through the points: for each alpha E and A are a linear
    fit (SciPy's nnls, both >= 0), and alpha is the bounded minimum of its residual (SciPy's
    minimize_scalar). x is scaled by its geometric mean while fitting, so A stays near the losses."""
    from scipy.optimize import minimize_scalar

    x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    scale = float(np.exp(np.log(x).mean()))
    best = minimize_scalar(lambda a: _fit_at(a, x / scale, loss)[2], bounds=(1e-3, 3.0), method="bounded")
    E, A, _ = _fit_at(best.x, x / scale, loss)
    return E, A * scale**best.x, float(best.x)


def _loss_at(law: tuple[float, float, float], x: float) -> float:
    E, A, alpha = law
    return E + A * x**-alpha


def _compute_needed(law: tuple[float, float, float], loss: float) -> float:
    """The x at which the law reaches ``loss`` (infinite where its floor E is at or above it)."""
    E, A, alpha = law
    if loss <= E or A <= 0:
        return math.inf
    log_x = math.log(A / (loss - E)) / alpha
    return math.exp(log_x) if log_x < 700 else math.inf


def _interval(values) -> list[float]:
    """The central LEVEL of the draws (a draw may be infinite: the quantiles do not interpolate)."""
    low, high = np.quantile(
        np.asarray(values, dtype=float), [(1 - LEVEL) / 2, (1 + LEVEL) / 2], method="inverted_cdf"
    )
    return [float(low), float(high)]


class Family:
    """One family's points and its laws over compute and parameters, with bootstrap draws."""

    def __init__(self, name: str, points: list[Point], rng: np.random.Generator):
        self.name, self.points = name, points
        self.sizes = sorted(
            {p.model for p in points}, key=lambda m: min(q.parameters for q in points if q.model == m)
        )
        self.seeds = sorted({p.seed for p in points})
        self.laws, self.draws = {}, {"flops": [], "parameters": []}
        if len(self.sizes) < MIN_SIZES:
            return
        for axis in self.draws:
            self.laws[axis] = fit_law([getattr(p, axis) for p in points], [p.loss for p in points])
        for _ in range(BOOTSTRAP):
            sample = [points[i] for i in rng.integers(0, len(points), len(points))]
            if len({p.model for p in sample}) < MIN_SIZES:
                self.draws["flops"].append(None)
                self.draws["parameters"].append(None)
                continue
            for axis in self.draws:
                try:
                    self.draws[axis].append(
                        fit_law([getattr(p, axis) for p in sample], [p.loss for p in sample])
                    )
                except RuntimeError:  # nnls reached its iteration limit on this draw
                    self.draws[axis].append(None)

    @property
    def why_no_fit(self) -> str | None:
        if len(self.sizes) >= MIN_SIZES:
            return None
        return (
            f"{self.name}: {len(self.sizes)} size(s) ({', '.join(self.sizes)}); a law needs at least "
            f"{MIN_SIZES} sizes of the family"
        )

    def record(self) -> dict:
        record = {"sizes": self.sizes, "seeds": self.seeds, "points": len(self.points)}
        if self.why_no_fit:
            return record | {"fit": None, "why": self.why_no_fit}
        for axis, (E, A, alpha) in self.laws.items():
            draws = [d for d in self.draws[axis] if d is not None]
            xs = [getattr(p, axis) for p in self.points]
            grid = np.geomspace(min(xs), max(xs), 24)
            curves = np.array([[_loss_at(d, x) for x in grid] for d in draws])
            record[axis] = {
                "E": E,
                "A": A,
                "alpha": alpha,
                "draws": len(draws),
                "E_interval": _interval([d[0] for d in draws]),
                "alpha_interval": _interval([d[2] for d in draws]),
                "curve": {
                    "x": grid.tolist(),
                    "loss": [_loss_at(self.laws[axis], x) for x in grid],
                    "interval": [_interval(column) for column in curves.T],
                },
            }
        return record


def multipliers(a: Family, b: Family) -> dict:
    """The compute b needs for a's fitted loss at each of a's sizes, over a's compute; ``extrapolated``
    where that compute lies outside b's own runs (b's law, not b's runs, says it)."""
    measured = [p.flops for p in b.points]
    rows = []
    for model in a.sizes:
        compute = float(np.mean([p.flops for p in a.points if p.model == model]))
        loss = _loss_at(a.laws["flops"], compute)
        value = _compute_needed(b.laws["flops"], loss) / compute
        paired = [
            _compute_needed(db, _loss_at(da, compute)) / compute
            for da, db in zip(a.draws["flops"], b.draws["flops"], strict=True)
            if da is not None and db is not None
        ]
        low, high = _interval(paired)
        row = {"model": model, "compute": compute, "loss": loss, "multiplier": value}
        row["extrapolated"] = not min(measured) <= value * compute <= max(measured)
        rows.append(row | {"interval": [low, high], "distinguishable": not low <= 1 <= high})
    return {"family": b.name, "against": a.name, "at": rows}


def check_token_ratios(points: list[Point], fixed_token: bool) -> None:
    """Refuse a compute law over sizes trained at different tokens per parameter, naming them."""
    ratios = {p.model: p.tokens / p.parameters for p in points}
    if fixed_token or not ratios or max(ratios.values()) <= TOKEN_RATIO_SPREAD * min(ratios.values()):
        return
    listed = ", ".join(f"{m} {r:.3g}" for m, r in sorted(ratios.items(), key=lambda kv: kv[1]))
    raise ValueError(
        f"the sizes were trained at different tokens per parameter ({listed}): a compute-optimal "
        "fit needs one ratio (train.tokens 0: 20 each); if the ladder is fixed-token, say so "
        "(scaling.fixed_token: true)"
    )


def fit_scaling(points: list[Point], fixed_token: bool = False, seed: int = 0) -> dict:
    """fits.json's content: every family's laws, and each pair's compute multiplier."""
    check_token_ratios(points, fixed_token)
    points = sorted(points, key=lambda p: (p.family, p.parameters, p.seed))  # draws whatever the order given
    rng = np.random.default_rng(seed)
    families = {}
    for name in sorted({p.family for p in points}):
        families[name] = Family(name, [p for p in points if p.family == name], rng)
    fitted = [f for f in families.values() if not f.why_no_fit]
    pairs = [multipliers(a, b) for a in fitted for b in fitted if a is not b]
    return {
        "library": "scipy.optimize: minimize_scalar over alpha, nnls for E and A; a bootstrap of the points",
        "law": "L = E + A x^(-alpha), x = training FLOPs or parameters",
        "level": LEVEL,
        "bootstrap": BOOTSTRAP,
        "fixed_token": fixed_token,
        "families": {name: family.record() for name, family in families.items()},
        "multipliers": pairs,
    }


@dataclass
class ScalingConfig:
    summaries: list[str] = option(help="summary.json files of trained models (any sizes and seeds)")
    out: str = option(help="fits.json to write")
    fixed_token: bool = option(False, help="the ladder trains every size on the same tokens")
    seed: int = option(0, help="the bootstrap's")


def scaling_command(cfg: ScalingConfig) -> None:
    """Fit each family's scaling laws and the compute multipliers between families."""
    fits = fit_scaling([point_from_summary(Path(p)) for p in cfg.summaries], cfg.fixed_token, cfg.seed)
    text = json.dumps(fits, indent=2) + "\n"
    atomic_write(Path(cfg.out), lambda tmp: Path(tmp).write_text(text))
    for name, family in fits["families"].items():
        if family.get("fit", True) is None:
            print(family["why"])
        else:
            low, high = family["flops"]["alpha_interval"]
            print(f"{name}: alpha {family['flops']['alpha']:.3f} [{low:.3f}, {high:.3f}] over compute")
