"""The scaling stage on points drawn from a known law with noise, and its honest limits."""

import json

import numpy as np
import pytest

from seqarena.cli import main
from seqarena.scaling import Point, fit_law, fit_scaling

TRUE = {"mamba": (1.8, 6000.0, 0.25), "transformer": (1.8, 9000.0, 0.25)}  # E, A, alpha over FLOPs


def ladder(family, law, sizes=(1e6, 3e6, 1e7, 3e7, 1e8), seeds=(0, 1, 2), noise=0.004, rng=None):
    """Points of L = E + A C^-alpha at 20 tokens a parameter (C = 6 N D), with relative noise."""
    rng = rng or np.random.default_rng(0)
    E, A, alpha = law
    points = []
    for n in sizes:
        tokens = int(20 * n)
        flops = 6.0 * n * tokens
        for seed in seeds:
            loss = (E + A * flops**-alpha) * (1 + noise * rng.standard_normal())
            points.append(Point(f"{family}-{int(n)}", seed, int(n), tokens, flops, float(loss)))
    return points


def test_a_noiseless_law_is_recovered():
    flops = np.geomspace(1e14, 1e19, 6)
    E, A, alpha = fit_law(flops, 1.7 + 40.0 * flops**-0.2)
    assert abs(E - 1.7) < 1e-3 and abs(alpha - 0.2) < 1e-3 and abs(A / 40.0 - 1) < 1e-2


def test_the_fitted_exponent_falls_within_its_interval_and_the_truth_within_it_too():
    rng = np.random.default_rng(1)
    points = ladder("mamba", TRUE["mamba"], rng=rng) + ladder("transformer", TRUE["transformer"], rng=rng)
    fits = fit_scaling(points)
    for family, (_, _, alpha) in TRUE.items():
        law = fits["families"][family]["flops"]
        low, high = law["alpha_interval"]
        assert low <= law["alpha"] <= high and low <= alpha <= high, (family, law)
        assert fits["families"][family]["seeds"] == [0, 1, 2] and len(fits["families"][family]["sizes"]) == 5
    (mamba_vs_transformer,) = [m for m in fits["multipliers"] if m["family"] == "transformer"]
    # Mamba reaches a loss with less compute: the Transformer++ needs (9000/6000)^(1/0.25) = 5x as much
    assert all(row["multiplier"] > 1 for row in mamba_vs_transformer["at"])
    assert mamba_vs_transformer["at"][-1]["distinguishable"]
    # 5x Mamba's largest compute is past the Transformer++'s largest run: its law, not a run, says it
    assert [row["extrapolated"] for row in mamba_vs_transformer["at"]] == [False] * 4 + [True]
    assert fit_scaling(points[::-1]) == fits  # the order the summaries come in changes no draw


def test_two_families_on_one_law_are_not_distinguishable():
    rng = np.random.default_rng(2)
    points = ladder("mamba", TRUE["mamba"], rng=rng, noise=0.01) + ladder(
        "mamba2", TRUE["mamba"], rng=rng, noise=0.01
    )
    (row, *_), _ = (m["at"] for m in fit_scaling(points)["multipliers"])
    assert not row["distinguishable"] and row["interval"][0] < 1 < row["interval"][1]


def test_fewer_than_three_sizes_get_no_fit_and_say_what_they_have():
    points = ladder("mamba", TRUE["mamba"]) + ladder("transformer", TRUE["transformer"], sizes=(1e6, 1e7))
    fits = fit_scaling(points)
    record = fits["families"]["transformer"]
    assert record["fit"] is None
    assert record["why"] == (
        "transformer: 2 size(s) (transformer-1000000, transformer-10000000); a law needs at least 3 sizes "
        "of the family"
    )
    assert fits["multipliers"] == [] and "flops" in fits["families"]["mamba"]


def test_sizes_at_different_tokens_per_parameter_are_refused_unless_the_ladder_is_fixed_token():
    points = ladder("mamba", TRUE["mamba"])
    fixed = [
        Point(p.model, p.seed, p.parameters, 20_000_000, 6.0 * p.parameters * 2e7, p.loss) for p in points
    ]
    with pytest.raises(
        ValueError, match=r"different tokens per parameter \(mamba-100000000 0\.2, .*mamba-1000000 20\)"
    ):
        fit_scaling(fixed)
    assert fit_scaling(fixed, fixed_token=True)["fixed_token"]


def test_the_command_reads_summaries_and_writes_fits_json(tmp_path):
    summaries = []
    for point in ladder("mamba", TRUE["mamba"], seeds=(0,)):
        path = tmp_path / point.model / "summary.json"
        path.parent.mkdir()
        path.write_text(
            json.dumps(
                {
                    "model": point.model,
                    "seed": point.seed,
                    "parameters": point.parameters,
                    "tokens": point.tokens,
                    "training_flops": point.flops,
                    "final_val_loss": point.loss,
                }
            )
        )
        summaries.append(str(path))
    main(["scaling", "--summaries", ",".join(summaries), "--out", str(tmp_path / "fits.json")])
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert fits["families"]["mamba"]["flops"]["draws"] > 800 and fits["library"].startswith(
        "scipy"
    )  # 3+ sizes each
    (tmp_path / "mamba-1000000" / "summary.json").write_text(json.dumps({"model": "mamba-1000000"}))
    with pytest.raises(
        ValueError, match="summary.json: no training_flops, final_val_loss, tokens, parameters"
    ):
        main(["scaling", "--summaries", ",".join(summaries), "--out", str(tmp_path / "fits.json")])


def test_the_reports_notes_state_each_law_and_multiplier_with_its_interval(tmp_path):
    from seqarena.report import Results, multiplier_table, scaling_notes

    rng = np.random.default_rng(1)
    fits = fit_scaling(
        ladder("mamba", TRUE["mamba"], rng=rng) + ladder("transformer", TRUE["transformer"], rng=rng)
    )
    notes = scaling_notes(Results(tmp_path, scaling=fits))
    law = fits["families"]["mamba"]["flops"]
    low, high = law["alpha_interval"]
    assert (
        f"alpha {law['alpha']:.3f}, 95% interval {low:.3f} to {high:.3f} (5 sizes, 3 seed(s), 15 runs)"
        in notes
    )
    row = next(m for m in fits["multipliers"] if m["family"] == "transformer")["at"][0]
    assert (
        f"transformer to reach mamba's loss at mamba-1000000: {row['multiplier']:.2f}x the compute" in notes
    )
    assert "mamba to reach transformer's loss" not in notes  # every pair: the table, folded in the report
    table = multiplier_table(Results(tmp_path, scaling=fits))
    assert {(row["needs"], row["to reach the loss of"]) for row in table} >= {
        ("mamba", "transformer-1000000")
    }
    one_law = [ladder(family, TRUE["mamba"], rng=rng, noise=0.01) for family in ("mamba", "transformer")]
    same = fit_scaling(one_law[0] + one_law[1])
    assert "not distinguishable at this budget" in scaling_notes(Results(tmp_path, scaling=same))


def test_the_scaling_figure_draws_each_law_and_says_where_a_family_has_none(tmp_path):
    from seqarena.report import Results
    from seqarena.report.figures import scaling

    rng = np.random.default_rng(2)
    points = ladder("mamba", TRUE["mamba"], rng=rng, seeds=(0,)) + ladder(
        "transformer", TRUE["transformer"], sizes=(1e6, 3e6), seeds=(0,), rng=rng
    )
    summaries = {
        p.model: {
            "summary": {
                "model": p.model,
                "parameters": p.parameters,
                "tokens": p.tokens,
                "flops_per_token": p.flops / p.tokens,
                "final_val_loss": p.loss,
            }
        }
        for p in points
    }
    fits = fit_scaling(points)
    assert fits["families"]["transformer"]["fit"] is None  # two sizes
    figure = scaling(Results(tmp_path, train=summaries, scaling=fits))
    assert figure._suptitle.get_text().endswith("(lines: fitted laws; bands: their 95% intervals)")
    for panel, axis in zip(figure.axes, ("flops", "parameters"), strict=True):
        legend = [text.get_text() for text in panel.get_legend().get_texts()]
        assert legend == ["mamba", "transformer (no law: 2 sizes)"]
        law = fits["families"]["mamba"][axis]["curve"]
        (curve,) = [line for line in panel.get_lines() if line.get_linestyle() == "-"]
        assert list(curve.get_xdata()) == law["x"] and list(curve.get_ydata()) == law["loss"]
        assert len(panel.collections) == 1  # mamba's band; none for the transformer
    unfitted = {model: s for model, s in summaries.items() if model.startswith("transformer")}
    figure = scaling(Results(tmp_path, train=unfitted, scaling=fit_scaling(points[5:])))
    assert "no law fitted" in figure._suptitle.get_text()
