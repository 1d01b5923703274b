"""mint/quality.py: the weight-error -> quality fit behind `mint plan --fit`, checked on results folders
written with a known relation (the fit must recover it) and on too few runs (a clear error)."""

import json
import math

import numpy as np
import pytest

from mint import quality

# Planted relation: KLD = 0.5 * e^2, delta log PPL = 3 * e^2.
KLD_A, KLD_B, PPL_C = 0.5, 2.0, 3.0


def write_run(model_dir, method, budget, errors, n_params, ppl16=100.0):
    units = [dict(role="norm", n_params=7, nrmse=0.0)] + [
        dict(role="routed_expert", n_params=n, nrmse=e) for e, n in zip(errors, n_params)]
    e = quality.weight_error(units)
    for sub, body in ((f"alloc/{method}", {"units": units}),
                      (f"eval/{method}", {"ppl_mean": ppl16 * math.exp(PPL_C * e * e), "kld_mean": KLD_A * e**KLD_B})):
        (model_dir / sub).mkdir(parents=True, exist_ok=True)
        (model_dir / sub / f"{budget}.json").write_text(json.dumps(body))
    return e


def planted_results(root):
    for model, scale in (("m1", 1.0), ("m2", 1.7)):
        model_dir = root / model
        (model_dir / "eval").mkdir(parents=True)
        (model_dir / "eval" / "bf16.json").write_text(json.dumps({"ppl_mean": 100.0}))
        for i, budget in enumerate(("3bpw", "4bpw", "5bpw")):
            write_run(model_dir, "mint", budget, [0.02 * scale / (i + 1), 0.05 * scale / (i + 1)], [300, 100])
    # A data-calibrated baseline has no allocation of ours: not a point of the fit.
    (root / "m1" / "eval" / "gptq").mkdir()
    (root / "m1" / "eval" / "gptq" / "4bit-g128.json").write_text(json.dumps({"ppl_mean": 1.0, "kld_mean": 9.0}))
    # Nor is our allocation rounded by GPTQ (mint quantize-gptq): its units' errors are RTN's, not its own.
    write_run(root / "m1", "mint-gptq", "4bpw", [0.01, 0.02], [300, 100])
    alloc = root / "m1" / "alloc" / "mint-gptq" / "4bpw.json"
    alloc.write_text(json.dumps({**json.loads(alloc.read_text()), "rounding": "gptq"}))
    (root / "m1" / "eval" / "mint-gptq" / "4bpw.json").write_text(json.dumps({"ppl_mean": 1.0, "kld_mean": 9.0}))
    return root


def test_weight_error_is_the_parameter_weighted_mean_over_quantizable_units():
    units = [dict(role="norm", n_params=10, nrmse=0.9), dict(role="attention", n_params=30, nrmse=0.1),
             dict(role="routed_expert", n_params=10, nrmse=0.5)]
    assert quality.weight_error(units) == pytest.approx((30 * 0.1 + 10 * 0.5) / 40)


def test_fit_recovers_a_planted_relation(tmp_path):
    points = quality.measured_points(planted_results(tmp_path))
    assert len(points) == 6 and set(points["method"]) == {"mint"}
    fit = quality.fit_quality(points)
    assert fit["kld_slope"] == pytest.approx(KLD_B) and math.exp(fit["kld_intercept"]) == pytest.approx(KLD_A)
    assert fit["ppl_coef"] == pytest.approx(PPL_C) and fit["kld_rms_log"] < 1e-9 and fit["ppl_rms"] < 1e-12
    assert fit["models"] == ["m1", "m2"] and fit["n"] == 6
    errors = points["weight_error"]
    assert fit["error_range"] == [pytest.approx(errors.min()), pytest.approx(errors.max())]
    kld, low, high, ppl = quality.predict_quality(fit, [0.03])
    assert kld[0] == pytest.approx(KLD_A * 0.03**2) and low[0] == pytest.approx(kld[0])
    assert ppl[0] == pytest.approx(100 * math.expm1(PPL_C * 0.03**2))
    assert "fitted on 6 measured runs of m1, m2" in quality.describe_fit(fit)


def test_fit_spread_reflects_scatter(tmp_path):
    points = quality.measured_points(planted_results(tmp_path))
    points.loc[0, "kld"] *= math.e   # one run a factor e off the law
    fit = quality.fit_quality(points)
    _, low, high, _ = quality.predict_quality(fit, [0.03])
    assert fit["kld_rms_log"] > 0.1 and high[0] / low[0] == pytest.approx(math.exp(2 * fit["kld_rms_log"]))


def test_too_few_runs_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="need at least 3 measured runs .* make tables"):
        quality.fit_quality(quality.measured_points(tmp_path))


def test_plan_with_fit_adds_expected_quality(tmp_path):
    from mint import plan
    from mint.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint("qwen3_moe", tmp_path / "ckpt", hidden=128, intermediate=128)
    table = plan.plan(str(ckpt), tmp_path / "plan", work=tmp_path / "work", fit=planted_results(tmp_path / "res"),
                      progress=False)
    ok = table[table["feasible"]]
    assert np.allclose(ok["kld_fit"], KLD_A * ok["weight_error"] ** 2)
    lo, hi = quality.fit_quality(quality.measured_points(tmp_path / "res"))["error_range"]
    assert (ok["fit_in_range"] == ok["weight_error"].between(lo, hi)).all()
    assert "fitted on 6 measured runs of m1, m2" in (tmp_path / "plan" / "frontier.md").read_text()
    assert (tmp_path / "plan" / "frontier.png").stat().st_size > 0
