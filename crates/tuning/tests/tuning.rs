//! keel-tuning's integration tests: reference values computed independently with numpy, scipy
//! and statsmodels (tests/reference/make_vectors.py → vectors.json, no Python at run time),
//! seeded simulations of promotion, demotion and drift detection, and edge cases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a panic is a failure report.

use keel_tuning::calibration::{self, Calibrator, Isotonic, Pair, Platt};
use keel_tuning::drift::{self, Defaults, Method, Options, Values};
use keel_tuning::interval::{self, Z_95};
use keel_tuning::random::{stable_hash, SplitMix64};
use keel_tuning::special;
use keel_tuning::sprt::{self, Decision, Sprt};
use keel_tuning::trust::{self, DemotionParams, Outcome, Phase, PhaseCriteria, Window};
use keel_tuning::Error;
use serde_json::Value;

// ------------------------------------------------------------------------------- helpers

fn vectors() -> Value {
    serde_json::from_str(include_str!("reference/vectors.json")).expect("vectors.json parses")
}

fn number(value: &Value) -> f64 {
    value.as_f64().expect("a number")
}

fn integer(value: &Value) -> u64 {
    value.as_u64().expect("an unsigned integer")
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(number)
        .collect()
}

/// |actual − expected| ≤ max(absolute, relative·|expected|).
#[track_caller]
fn assert_close(actual: f64, expected: f64, relative: f64, absolute: f64, what: &str) {
    let allowed = absolute.max(relative * expected.abs());
    assert!(
        (actual - expected).abs() <= allowed,
        "{what}: got {actual:e}, expected {expected:e} (difference {:e}, allowed {allowed:e})",
        (actual - expected).abs()
    );
}

/// Closed forms evaluated the same way in both languages (Wilson, SPRT bounds and ASN, chi-square
/// statistic, Jensen–Shannon, PSI, ECE): a few ulps apart at most (observed ≤ 3e-15).
const CLOSED_FORM_RELATIVE: f64 = 1e-12;
/// p-values from series, continued fractions or lattice-path recursions: scipy and this crate
/// use the same algorithms in different code (Lanczos vs Cephes log-gamma, a log-space vs a
/// double-double Birnbaum–Tingey sum), so they agree to rounding, not to the ulp. Observed:
/// ≤ 6e-14 for Q(a, x) and chi-square, ≤ 2e-13 for ks_2samp, 3.4e-12 for kstwo at
/// n = 150,000 (a sum of 1.5·10⁵ terms).
const P_VALUE_RELATIVE: f64 = 1e-9;
/// p-values this small are "zero" for every decision; compare them absolutely.
const P_VALUE_ABSOLUTE: f64 = 1e-15;

/// Expands a sample spec of make_vectors.py bit for bit (arithmetic only, no libm).
fn generate(spec: &Value) -> Vec<f64> {
    let mut rng = SplitMix64::new(integer(&spec["seed"]));
    let n = integer(&spec["n"]) as usize;
    let kind = spec["kind"].as_str().expect("kind");
    (0..n)
        .map(|_| match kind {
            "normal" => {
                let mut total = 0.0;
                for _ in 0..12 {
                    total += rng.next_f64();
                }
                (total - 6.0) * number(&spec["scale"]) + number(&spec["shift"])
            }
            "integer" => (rng.next_f64() * number(&spec["levels"])).floor(),
            "category" => {
                let u = rng.next_f64();
                let weights = numbers(&spec["weights"]);
                let mut cumulative = 0.0;
                let mut chosen = weights.len() - 1;
                for (index, weight) in weights.iter().enumerate() {
                    cumulative += weight;
                    if u < cumulative {
                        chosen = index;
                        break;
                    }
                }
                chosen as f64
            }
            other => panic!("unknown sample kind {other}"),
        })
        .collect()
}

fn expand(spec: &Value) -> Values {
    let values = generate(spec);
    if spec["kind"] == "category" {
        let labels = spec["labels"].as_array().expect("labels");
        Values::Categorical(
            values
                .iter()
                .map(|index| labels[*index as usize].as_str().expect("label").to_owned())
                .collect(),
        )
    } else {
        Values::Numeric(values)
    }
}

fn numeric(values: &Values) -> &[f64] {
    match values {
        Values::Numeric(values) => values,
        Values::Categorical(_) => panic!("expected numeric values"),
    }
}

/// Checks that a generated sample has the length and sum Python recorded.
#[track_caller]
fn assert_summary(values: &[f64], summary: &Value) {
    assert_eq!(values.len() as u64, integer(&summary["len"]));
    let sum: f64 = values.iter().sum();
    assert_close(sum, number(&summary["sum"]), 1e-12, 1e-9, "sample sum");
}

/// A standard normal variate by Box–Muller (simulations only; reference data uses
/// `generate`).
fn normal(rng: &mut SplitMix64) -> f64 {
    let u = 1.0 - rng.next_f64();
    let v = rng.next_f64();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values[index]
}

// ------------------------------------------------------------------ reference: intervals

#[test]
fn wilson_matches_statsmodels() {
    let vectors = vectors();
    for case in vectors["wilson"].as_array().unwrap() {
        let (successes, n) = (integer(&case["successes"]), integer(&case["n"]));
        let interval = interval::wilson(successes, n, number(&case["z"])).unwrap();
        let what = format!("wilson({successes}, {n}, alpha {})", case["alpha"]);
        assert_close(
            interval.low,
            number(&case["low"]),
            CLOSED_FORM_RELATIVE,
            1e-15,
            &what,
        );
        assert_close(
            interval.high,
            number(&case["high"]),
            CLOSED_FORM_RELATIVE,
            1e-15,
            &what,
        );
        assert_eq!(interval.point, successes as f64 / n as f64);
    }
    // The constant is Φ⁻¹(0.975) as scipy computes it (to the last printed digit).
    let z = number(&vectors["wilson"][0]["z"]);
    assert_close(Z_95, z, 1e-15, 0.0, "Z_95");
}

#[test]
fn reviews_needed_matches_a_statsmodels_scan() {
    for case in vectors()["reviews_needed"].as_array().unwrap() {
        let needed =
            interval::reviews_needed(number(&case["p_true"]), number(&case["target"]), Z_95)
                .unwrap();
        assert_eq!(needed, integer(&case["n"]), "{case}");
    }
}

// ------------------------------------------------------------------------ reference: SPRT

#[test]
fn sprt_bounds_sample_sizes_and_decisions_match_python() {
    for case in vectors()["sprt"].as_array().unwrap() {
        let (p0, p1) = (number(&case["p0"]), number(&case["p1"]));
        let mut test = Sprt::new(p0, p1, number(&case["alpha"]), number(&case["beta"])).unwrap();
        assert_close(
            test.upper_bound(),
            number(&case["upper"]),
            CLOSED_FORM_RELATIVE,
            0.0,
            "A",
        );
        assert_close(
            test.lower_bound(),
            number(&case["lower"]),
            CLOSED_FORM_RELATIVE,
            0.0,
            "B",
        );
        let asn_h1 = test.expected_sample_size_h1();
        let asn_h0 = test.expected_sample_size_h0();
        assert_close(
            asn_h1,
            number(&case["asn_h1"]),
            CLOSED_FORM_RELATIVE,
            0.0,
            "ASN H1",
        );
        assert_close(
            asn_h0,
            number(&case["asn_h0"]),
            CLOSED_FORM_RELATIVE,
            0.0,
            "ASN H0",
        );

        let errors = case["errors"].as_array().unwrap();
        let expected = case["decisions"].as_array().unwrap();
        assert_eq!(errors.len(), expected.len());
        for (error, expected) in errors.iter().zip(expected) {
            let decision = test.observe(error.as_bool().unwrap());
            let name = serde_json::to_value(decision).unwrap();
            assert_eq!(&name, expected);
        }
        // The LLR is a sum of up to a few hundred logs: allow accumulated rounding.
        assert_close(
            test.llr(),
            number(&case["final_llr"]),
            1e-12,
            1e-12,
            "final LLR",
        );
        assert_eq!(test.restarts(), integer(&case["restarts"]));
    }
}

// --------------------------------------------------------- reference: special functions

#[test]
fn incomplete_gamma_and_log_gamma_match_scipy() {
    for case in vectors()["gamma"].as_array().unwrap() {
        let (a, x) = (number(&case["a"]), number(&case["x"]));
        let what = format!("Q({a}, {x})");
        assert_close(
            special::gamma_q(a, x),
            number(&case["q"]),
            P_VALUE_RELATIVE,
            1e-300,
            &what,
        );
        // lnΓ enters p-values through e^{−lnΓ}; an absolute error ε becomes a relative ε.
        assert_close(
            special::ln_gamma(a),
            number(&case["ln_gamma"]),
            1e-13,
            1e-13,
            "lnΓ",
        );
    }
}

#[test]
fn kolmogorov_distribution_matches_scipy_kstwo() {
    for case in vectors()["kstwo"].as_array().unwrap() {
        let (n, x) = (integer(&case["n"]), number(&case["x"]));
        let expected = number(&case["sf"]);
        // Pelz–Good (scipy's choice for large n in the body of the distribution) is itself an
        // approximation, evaluated identically here; the Durbin-matrix and Birnbaum–Tingey
        // branches are exact, so everything should agree to rounding.
        assert_close(
            drift::kstwo_sf(n, x),
            expected,
            P_VALUE_RELATIVE,
            P_VALUE_ABSOLUTE,
            &format!("kstwo.sf({x}, {n})"),
        );
    }
}

// ---------------------------------------------------------------- reference: drift tests

#[test]
fn ks_2samp_matches_scipy_auto() {
    for case in vectors()["ks_2samp"].as_array().unwrap() {
        let first = generate(&case["first"]);
        let second = generate(&case["second"]);
        assert_summary(&first, &case["first_summary"]);
        assert_summary(&second, &case["second_summary"]);
        let result = drift::ks_2samp(&first, &second).unwrap();
        let what = format!("ks_2samp({} vs {})", first.len(), second.len());
        assert_close(
            result.statistic,
            number(&case["statistic"]),
            1e-14,
            0.0,
            &what,
        );
        assert_close(
            result.p_value,
            number(&case["p_value"]),
            P_VALUE_RELATIVE,
            P_VALUE_ABSOLUTE,
            &what,
        );
        assert_eq!(
            serde_json::to_value(result.p_value_method).unwrap(),
            case["p_value_method"]
        );
    }
}

#[test]
fn chi_square_matches_scipy() {
    for case in vectors()["chi_square"].as_array().unwrap() {
        let observed = numbers(&case["observed"]);
        let expected = numbers(&case["expected"]);
        let result = drift::chi_square(&observed, &expected).unwrap();
        let statistic = number(&case["statistic"]);
        assert_close(
            result.statistic,
            statistic,
            CLOSED_FORM_RELATIVE,
            1e-15,
            "chi-square",
        );
        assert_eq!(result.dof, integer(&case["dof"]));
        assert_close(
            result.p_value,
            number(&case["p_value"]),
            P_VALUE_RELATIVE,
            P_VALUE_ABSOLUTE,
            "chi-square p",
        );
    }
}

#[test]
fn jensen_shannon_matches_scipy() {
    for case in vectors()["jensen_shannon"].as_array().unwrap() {
        let distance =
            drift::jensen_shannon_distance(&numbers(&case["p"]), &numbers(&case["q"])).unwrap();
        // Absolute 1e-8 for the identical-distributions case: scipy's sqrt of a rounding
        // residue around 0 can be ~1e-9 where the exact value is 0.
        assert_close(
            distance,
            number(&case["distance"]),
            CLOSED_FORM_RELATIVE,
            1e-8,
            "JS",
        );
    }
}

#[test]
fn wasserstein_matches_scipy_and_evidently_normalisation() {
    for case in vectors()["wasserstein"].as_array().unwrap() {
        let first = generate(&case["first"]);
        let second = generate(&case["second"]);
        assert_summary(&first, &case["first_summary"]);
        assert_summary(&second, &case["second_summary"]);
        // Sums of thousands of terms in another order than numpy's pairwise summation
        // (observed ≤ 2.5e-15).
        let relative = 1e-11;
        let distance = drift::wasserstein_distance(&first, &second).unwrap();
        assert_close(distance, number(&case["distance"]), relative, 0.0, "W1");
        let normalised = drift::wasserstein_normalised(&first, &second).unwrap();
        assert_close(
            normalised.reference_std,
            number(&case["reference_std"]),
            relative,
            0.0,
            "std",
        );
        assert_close(
            normalised.value,
            number(&case["normalised"]),
            relative,
            0.0,
            "W1 / std",
        );
    }
}

#[test]
fn psi_and_binned_jensen_shannon_match_evidently_formulas() {
    for case in vectors()["psi"].as_array().unwrap() {
        let reference = expand(&case["reference"]);
        let current = expand(&case["current"]);
        let (value, binned) = drift::psi(&reference, &current).unwrap();
        assert_eq!(
            serde_json::to_value(binned.binning).unwrap(),
            case["binning"]
        );
        assert_eq!(binned.reference.len() as u64, integer(&case["bins"]));
        assert_close(value, number(&case["psi"]), 1e-11, 0.0, "PSI");
        let js = drift::jensen_shannon_distance(&binned.reference, &binned.current).unwrap();
        assert_close(js, number(&case["jensen_shannon"]), 1e-11, 0.0, "binned JS");
    }
}

#[test]
fn z_test_matches_evidently_formula() {
    for case in vectors()["z_test"].as_array().unwrap() {
        let reference = expand(&case["reference"]);
        let current = expand(&case["current"]);
        let forced = Options {
            method: Some(Method::ZTest),
            ..Options::default()
        };
        let result = drift::detect(&reference, &current, &forced).unwrap();
        assert_close(
            result.value,
            number(&case["p_value"]),
            P_VALUE_RELATIVE,
            P_VALUE_ABSOLUTE,
            "Z-test p",
        );
    }
}

#[test]
fn detect_chooses_and_computes_like_evidently() {
    for case in vectors()["detect"].as_array().unwrap() {
        let reference = expand(&case["reference"]);
        let current = expand(&case["current"]);
        let method = case["forced_method"]
            .as_str()
            .map(|name| serde_json::from_value::<Method>(Value::from(name)).unwrap());
        let options = Options {
            method,
            threshold: None,
            defaults: Defaults::Evidently,
        };
        let result = drift::detect(&reference, &current, &options).unwrap();
        let what = format!("detect {} → {}", case["reference"], case["method"]);
        // Keel's calibrated defaults change thresholds (and chi-square's test), never the
        // value of a statistic: forced to the same method, the value is the same.
        let calibrated = drift::detect(
            &reference,
            &current,
            &Options {
                method: Some(result.method),
                ..Options::default()
            },
        )
        .unwrap();
        if result.method != Method::ChiSquare {
            assert_eq!(calibrated.value, result.value, "{what}");
        }
        assert_eq!(
            serde_json::to_value(result.method).unwrap(),
            case["method"],
            "{what}"
        );
        assert_close(
            result.value,
            number(&case["value"]),
            1e-11,
            P_VALUE_ABSOLUTE,
            &what,
        );
        assert_eq!(result.threshold, number(&case["threshold"]), "{what}");
        assert_eq!(result.drifted, case["drifted"].as_bool().unwrap(), "{what}");
        assert_eq!(result.reference_rows, reference.len());
        assert_eq!(result.current_rows, current.len());
        // The result is a JSON evidence record.
        let json = serde_json::to_value(&result).unwrap();
        assert!(json["parameters"].is_object(), "{what}");
    }
}

// ---------------------------------------------------------------- reference: calibration

fn calibration_pairs(seed: u64, n: usize, tie_step: Option<f64>) -> Vec<Pair> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let mut confidence = rng.next_f64();
            if let Some(step) = tie_step {
                confidence = (confidence / step).floor() * step;
            }
            let correct = rng.next_f64() < confidence * confidence;
            Pair {
                confidence,
                correct,
            }
        })
        .collect()
}

#[test]
fn ece_isotonic_and_platt_match_numpy_and_scipy() {
    for case in vectors()["calibration"].as_array().unwrap() {
        let pairs = calibration_pairs(
            integer(&case["seed"]),
            integer(&case["n"]) as usize,
            case["tie_step"].as_f64(),
        );
        let bins = integer(&case["bins"]) as usize;
        let ece = calibration::expected_calibration_error(&pairs, bins).unwrap();
        assert_close(ece.ece, number(&case["ece"]), 1e-12, 1e-15, "ECE");
        let rows = case["reliability"].as_array().unwrap();
        assert_eq!(ece.bins.len(), rows.len());
        for (bin, row) in ece.bins.iter().zip(rows) {
            assert_eq!(bin.count as u64, integer(&row["count"]));
            assert_close(
                bin.mean_confidence,
                number(&row["mean_confidence"]),
                1e-12,
                1e-15,
                "bin conf",
            );
            assert_close(
                bin.accuracy,
                number(&row["accuracy"]),
                1e-12,
                1e-15,
                "bin accuracy",
            );
        }

        // Evaluate at the confidences generated here, not at the ones read back from JSON:
        // serde_json's default float parser can land one ulp away, on the wrong side of a
        // step.
        let isotonic = Isotonic::fit(&pairs).unwrap();
        let mut distinct: Vec<f64> = pairs.iter().map(|pair| pair.confidence).collect();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        let points = case["isotonic_points"].as_array().unwrap();
        assert_eq!(distinct.len(), points.len());
        for (x, point) in distinct.iter().zip(points) {
            assert_close(*x, number(&point[0]), 1e-15, 0.0, "isotonic x");
            // scipy's PAV accumulates weighted means in another order.
            assert_close(
                isotonic.apply(*x),
                number(&point[1]),
                1e-12,
                1e-12,
                "isotonic",
            );
        }

        // An optimiser's result, not a closed form: scipy's BFGS stops at gradient norm 1e-11
        // and this Newton at 1e-12·n, so both are near but not at the exact optimum of the
        // strictly convex loss (observed difference ≤ 4.5e-9 relative).
        let platt = Platt::fit(&pairs).unwrap();
        assert_close(platt.a, number(&case["platt_a"]), 1e-6, 1e-8, "Platt a");
        assert_close(platt.b, number(&case["platt_b"]), 1e-6, 1e-8, "Platt b");
    }
}

#[test]
fn sampling_hash_matches_python_and_splitmix_matches_the_published_sequence() {
    let vectors = vectors();
    let mut generator = SplitMix64::new(1_234_567);
    for expected in vectors["splitmix64_seed_1234567"].as_array().unwrap() {
        assert_eq!(generator.next_u64().to_string(), expected.as_str().unwrap());
    }
    for case in vectors["sampling"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            stable_hash(text).to_string(),
            case["hash"].as_str().unwrap(),
            "{text}"
        );
        let sampled = trust::sample_review(text, number(&case["rate"]));
        assert_eq!(sampled, case["sampled"].as_bool().unwrap(), "{text}");
    }
}

// -------------------------------------------------------------------- simulation: trust

fn criteria(min_reviews: u64, target: f64, window: Window) -> PhaseCriteria {
    PhaseCriteria::new(min_reviews, target, window).unwrap()
}

fn demotion() -> DemotionParams {
    DemotionParams::new(0.05, None, 0.05, 0.05).unwrap()
}

/// Reviews until the first promotion recommendation of a model that agrees with probability
/// `p`, evaluating after every review; None if not within `horizon`.
fn reviews_until_promotion(
    seed: u64,
    p: f64,
    criteria: &PhaseCriteria,
    horizon: usize,
) -> Option<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut outcomes = Vec::with_capacity(horizon);
    for index in 0..horizon {
        outcomes.push(Outcome {
            at_ms: index as i64 * 1000,
            agreed: rng.next_f64() < p,
        });
        let now_ms = index as i64 * 1000;
        let evaluation = trust::evaluate(
            Phase::FULL_OVERSIGHT,
            now_ms,
            &outcomes,
            &outcomes,
            criteria,
            &demotion(),
        )
        .unwrap();
        if evaluation.recommend_promotion.is_some() {
            return Some(index + 1);
        }
    }
    None
}

#[test]
fn a_98_percent_model_is_promoted_after_about_the_predicted_number_of_reviews() {
    let criteria = criteria(50, 0.95, Window::Count(10_000));
    let predicted = interval::reviews_needed(0.98, 0.95, Z_95).unwrap().max(50) as f64;
    let mut reviews: Vec<f64> = (0..200)
        .map(|seed| {
            reviews_until_promotion(seed, 0.98, &criteria, 5_000)
                .expect("a 98% model is promoted within 5,000 reviews") as f64
        })
        .collect();
    let median_reviews = median(&mut reviews);
    // The prediction (173) is where the bound crosses when the observed rate is exactly 0.98.
    // Runs scatter widely around it (measured over these 200 seeds: 10th percentile 73 — a
    // lucky run of agreements crosses early — 90th percentile 363), but the median crosses
    // where predicted (measured: 173). Asserted: within ±35% of the prediction.
    assert!(
        (0.65 * predicted..=1.35 * predicted).contains(&median_reviews),
        "median {median_reviews} vs predicted {predicted}"
    );
}

#[test]
fn a_model_degrading_to_85_percent_is_demoted_within_the_sprt_horizon() {
    let test = Sprt::with_default_alternative(0.05, 0.05, 0.05).unwrap();
    let asn_h1 = test.expected_sample_size_h1();
    let before = 200;
    let mut delays = Vec::new();
    let mut demoted_before_degradation = 0;
    for seed in 0..200 {
        let mut rng = SplitMix64::new(1_000 + seed);
        let mut outcomes = Vec::new();
        let criteria = criteria(50, 0.99, Window::Count(500));
        for index in 0..before + 2_000 {
            let p = if index < before { 0.98 } else { 0.85 };
            outcomes.push(Outcome {
                at_ms: index as i64,
                agreed: rng.next_f64() < p,
            });
            let evaluation = trust::evaluate(
                Phase::POLICY_BASED,
                index as i64,
                &outcomes,
                &outcomes,
                &criteria,
                &demotion(),
            )
            .unwrap();
            if let Some(evidence) = evaluation.demote {
                assert_eq!(evidence.to_phase, Phase::FULL_OVERSIGHT);
                assert!(evidence.sprt.llr >= evidence.sprt.upper_bound);
                if index < before {
                    demoted_before_degradation += 1;
                } else {
                    delays.push((index + 1 - before) as f64);
                }
                break;
            }
        }
    }
    assert_eq!(
        delays.len() + demoted_before_degradation,
        200,
        "every run is demoted"
    );
    // At 98% the error rate is far below p0 = 5%; each restart cycle rejects with probability
    // well under α, and a run goes through ~3 cycles before the degradation (measured: 0 of
    // 200 runs demoted early).
    assert!(
        demoted_before_degradation <= 4,
        "{demoted_before_degradation}"
    );
    // Wald's ASN under H1 (error rate p1 = 10%) is 128.3 reviews. The degraded model errs 15%
    // of the time, beyond p1, so its LLR climbs towards A ~2.8× faster than under H1, but it
    // starts from wherever 200 good reviews left it in (B, 0]. Measured over these 200 seeds:
    // median 71.5 (0.56× ASN), 95th percentile 153 (1.19×), worst 229 (1.78×). Asserted:
    // median ≤ 1× and 95th percentile ≤ 2× the ASN.
    let median_delay = median(&mut delays);
    let p95_delay = quantile(&mut delays, 0.95);
    assert!(
        median_delay <= 1.0 * asn_h1,
        "median {median_delay} vs ASN {asn_h1}"
    );
    assert!(
        p95_delay <= 2.0 * asn_h1,
        "95th percentile {p95_delay} vs ASN {asn_h1}"
    );
}

#[test]
fn a_90_percent_model_is_almost_never_promoted_to_a_95_percent_target() {
    let criteria = criteria(50, 0.95, Window::Count(200));
    let promoted = (0..1_000)
        .filter(|seed| reviews_until_promotion(50_000 + seed, 0.90, &criteria, 500).is_some())
        .count();
    // Ceiling 5% as asked; with a 95% Wilson bound the chance is tiny. Measured: 1 of 1,000.
    assert!(promoted <= 50, "{promoted} of 1000 runs promoted");
}

#[test]
fn evaluate_produces_a_complete_json_evidence_snapshot() {
    let outcomes: Vec<Outcome> = (0..300)
        .map(|index| Outcome {
            at_ms: 1_000 * index,
            agreed: index % 100 != 7,
        })
        .collect();
    let criteria = criteria(100, 0.95, Window::Milliseconds(200_000));
    let evaluation = trust::evaluate(
        Phase::POLICY_BASED,
        299_000,
        &outcomes,
        &outcomes,
        &criteria,
        &demotion(),
    )
    .unwrap();
    let evidence = evaluation
        .recommend_promotion
        .expect("promotion recommended");
    assert!(evaluation.demote.is_none());
    // Window (99 000, 299 000]: reviews 100..=299, with one disagreement (index 107, 207).
    assert_eq!(evidence.reviews, 200);
    assert_eq!(evidence.agreements, 198);
    assert_eq!(evidence.window_first_at_ms, Some(100_000));
    assert_eq!(evidence.to_phase, Phase::SUPERVISED_AUTONOMY);
    let expected = interval::wilson(198, 200, Z_95).unwrap();
    assert_eq!(evidence.wilson, expected);
    let json = serde_json::to_value(evidence).unwrap();
    for field in [
        "reason",
        "reviews",
        "agreements",
        "wilson",
        "sprt",
        "z",
        "target_agreement",
    ] {
        assert!(!json[field].is_null(), "evidence lacks {field}");
    }
    assert_eq!(json["reason"], "wilson_lower_bound_reached_target");
    assert_eq!(json["from_phase"], 2);
    for field in [
        "llr",
        "upper_bound",
        "lower_bound",
        "p0",
        "p1",
        "alpha",
        "beta",
    ] {
        assert!(
            json["sprt"][field].is_number(),
            "SPRT evidence lacks {field}"
        );
    }
    let back: trust::Evidence = serde_json::from_value(json).unwrap();
    assert_eq!(back, evidence);

    // Phase 4 is never promoted; phase 1 is never demoted; a demotion suppresses promotion.
    let top = trust::evaluate(
        Phase::EARNED_TRUST,
        299_000,
        &outcomes,
        &outcomes,
        &criteria,
        &demotion(),
    )
    .unwrap();
    assert!(top.recommend_promotion.is_none());
    let failing: Vec<Outcome> = (0..60)
        .map(|index| Outcome {
            at_ms: index,
            agreed: index % 2 == 0,
        })
        .collect();
    let lenient = PhaseCriteria::new(1, 0.01, Window::Count(60)).unwrap();
    let bottom = trust::evaluate(
        Phase::FULL_OVERSIGHT,
        60,
        &failing,
        &failing,
        &lenient,
        &demotion(),
    )
    .unwrap();
    assert!(bottom.demote.is_none());
    assert!(bottom.recommend_promotion.is_some());
    let middle = trust::evaluate(
        Phase::SUPERVISED_AUTONOMY,
        60,
        &failing,
        &failing,
        &lenient,
        &demotion(),
    )
    .unwrap();
    let demoted = middle
        .demote
        .expect("50% errors against a 5% target demotes");
    assert_eq!(demoted.to_phase, Phase::POLICY_BASED);
    assert!(demoted.sprt_rejected_at_ms.is_some());
    assert!(middle.recommend_promotion.is_none());
}

#[test]
fn review_sampling_is_reproducible_and_hits_its_rate() {
    for rate in [0.2, 0.02] {
        let sampled = (0..100_000)
            .filter(|index| trust::sample_review(&format!("refund:case-{index}"), rate))
            .count() as f64;
        let expected = 100_000.0 * rate;
        let sd = (100_000.0 * rate * (1.0 - rate)).sqrt();
        assert!(
            (sampled - expected).abs() < 5.0 * sd,
            "rate {rate}: {sampled}"
        );
    }
    assert_eq!(
        trust::sample_review("refund:case-1", 0.2),
        trust::sample_review("refund:case-1", 0.2)
    );
}

// -------------------------------------------------------------------- simulation: drift

fn normal_sample(rng: &mut SplitMix64, n: usize, shift: f64) -> Values {
    Values::Numeric((0..n).map(|_| normal(rng) + shift).collect())
}

fn category_sample(rng: &mut SplitMix64, n: usize, weights: &[f64]) -> Values {
    const LABELS: [&str; 4] = ["card", "transfer", "cash", "cheque"];
    Values::Categorical(
        (0..n)
            .map(|_| {
                let u = rng.next_f64();
                let mut cumulative = 0.0;
                let mut chosen = weights.len() - 1;
                for (index, weight) in weights.iter().enumerate() {
                    cumulative += weight;
                    if u < cumulative {
                        chosen = index;
                        break;
                    }
                }
                LABELS[chosen].to_owned()
            })
            .collect(),
    )
}

/// Draws a (reference, current) pair of samples.
type Make = Box<dyn Fn(&mut SplitMix64) -> (Values, Values)>;

/// Runs `seeds` detections of `make(rng) → (reference, current)` with `options`; returns the
/// method used (the same every time) and the fraction flagged as drift.
fn drift_rate_with(
    options: &Options,
    seeds: u64,
    make: impl Fn(&mut SplitMix64) -> (Values, Values),
) -> (Method, f64) {
    let mut method = None;
    let mut drifted = 0;
    for seed in 0..seeds {
        let mut rng = SplitMix64::new(77_000 + seed);
        let (reference, current) = make(&mut rng);
        let result = drift::detect(&reference, &current, options).unwrap();
        assert!(method.is_none() || method == Some(result.method));
        method = Some(result.method);
        drifted += usize::from(result.drifted);
    }
    (method.unwrap(), drifted as f64 / seeds as f64)
}

fn drift_rate(seeds: u64, make: impl Fn(&mut SplitMix64) -> (Values, Values)) -> (Method, f64) {
    drift_rate_with(&Options::default(), seeds, make)
}

const CATEGORY_BASE: [f64; 4] = [0.4, 0.3, 0.2, 0.1];
const CATEGORY_SHIFTED: [f64; 4] = [0.25, 0.25, 0.25, 0.25];
const BINARY_BASE: [f64; 2] = [0.7, 0.3];
const BINARY_SHIFTED: [f64; 2] = [0.5, 0.5];

#[test]
fn injected_drift_is_detected_and_false_alarms_are_as_expected() {
    let cases: [(&str, Method, Make); 4] = [
        (
            "KS",
            Method::Ks,
            Box::new(|rng| (normal_sample(rng, 500, 0.0), normal_sample(rng, 400, 1.0))),
        ),
        (
            "Wasserstein",
            Method::Wasserstein,
            Box::new(|rng| (normal_sample(rng, 3000, 0.0), normal_sample(rng, 2000, 1.0))),
        ),
        (
            "chi-square",
            Method::ChiSquare,
            Box::new(|rng| {
                (
                    category_sample(rng, 600, &CATEGORY_BASE),
                    category_sample(rng, 500, &CATEGORY_SHIFTED),
                )
            }),
        ),
        (
            "Jensen-Shannon",
            Method::JensenShannon,
            Box::new(|rng| {
                (
                    category_sample(rng, 3000, &CATEGORY_BASE),
                    category_sample(rng, 2000, &CATEGORY_SHIFTED),
                )
            }),
        ),
    ];
    for (name, method, make) in &cases {
        let (used, power) = drift_rate(100, make);
        assert_eq!(used, *method, "{name}");
        // A 1 sd mean shift (numeric) or a 0.4/0.3/0.2/0.1 → uniform shift (categorical) is
        // large at these sizes: every run must catch it.
        assert_eq!(power, 1.0, "{name}: detected in a fraction {power} of runs");
    }

    // Evidently's chi-square is a goodness-of-fit test against the reference *proportions*,
    // which are themselves estimated: under no drift the statistic is about
    // (1 + n_current/n_reference)·χ²(k−1), not χ²(k−1), so with 600 vs 500 rows the false-alarm
    // rate at "5%" is P(χ²₃ > 7.81/1.83) ≈ 23%, not 5%. With `Defaults::Evidently` the
    // implementation shows exactly that known behaviour (measured 22.5% over 200 seeds; the
    // binomial standard error is 3 points, so ±8 points is ±2.7 SE); Keel's default
    // (homogeneity) does not.
    let critical = chi_square_critical(0.05, 3.0);
    let predicted = special::chi_square_sf(critical / (1.0 + 500.0 / 600.0), 3.0);
    let evidently = Options {
        defaults: Defaults::Evidently,
        ..Options::default()
    };
    let same = |rng: &mut SplitMix64| {
        (
            category_sample(rng, 600, &CATEGORY_BASE),
            category_sample(rng, 500, &CATEGORY_BASE),
        )
    };
    let (used, false_alarms) = drift_rate_with(&evidently, 200, same);
    assert_eq!(used, Method::ChiSquare);
    assert!(
        (false_alarms - predicted).abs() <= 0.08,
        "{false_alarms} vs {predicted}"
    );
    let (used, false_alarms) = drift_rate(200, same);
    assert_eq!(used, Method::ChiSquare);
    assert!(false_alarms <= 0.08, "homogeneity: {false_alarms}");

    // Evidently chooses from the reference alone: 1,500 reference rows against 50 current ones
    // get a Wasserstein distance with the fixed 0.1 threshold, which pure noise exceeds in
    // most windows. Keel's default sees the small window and uses KS.
    let small_current =
        |rng: &mut SplitMix64| (normal_sample(rng, 1_500, 0.0), normal_sample(rng, 50, 0.0));
    let (used, evidently_rate) = drift_rate_with(&evidently, 200, small_current);
    assert_eq!(used, Method::Wasserstein);
    assert!(evidently_rate > 0.3, "Evidently's choice: {evidently_rate}");
    let (used, keel_rate) = drift_rate(200, small_current);
    assert_eq!(used, Method::Ks);
    assert!(keel_rate <= 0.08, "Keel's choice: {keel_rate}");
}

/// Window sizes (reference rows, current rows) of the false-alarm simulation: a large
/// reference against small current windows, and equal windows.
const SIZE_PAIRS: [(usize, usize); 4] = [(1_500, 30), (1_500, 100), (1_500, 300), (300, 300)];

/// No-drift windows per method and size pair: 2,000 with `RUN_SLOW_TESTS` (as CI runs it;
/// about 8 minutes of one core in a debug build, 30 s in release), else 200;
/// `KEEL_DRIFT_SIMULATED_WINDOWS` overrides.
fn simulated_windows() -> u64 {
    if let Some(windows) = std::env::var("KEEL_DRIFT_SIMULATED_WINDOWS")
        .ok()
        .and_then(|text| text.parse().ok())
    {
        return windows;
    }
    if std::env::var("RUN_SLOW_TESTS").is_ok() {
        2_000
    } else {
        200
    }
}

/// A method forced on samples of one kind; `sample(rng, rows, drifted)` draws one window.
struct Simulated {
    name: &'static str,
    method: Method,
    sample: fn(&mut SplitMix64, usize, bool) -> Values,
}

fn numeric_window(rng: &mut SplitMix64, rows: usize, drifted: bool) -> Values {
    // A 0.5 sd mean shift when drifted.
    normal_sample(rng, rows, if drifted { 0.5 } else { 0.0 })
}

fn category_window(rng: &mut SplitMix64, rows: usize, drifted: bool) -> Values {
    category_sample(
        rng,
        rows,
        if drifted {
            &CATEGORY_SHIFTED
        } else {
            &CATEGORY_BASE
        },
    )
}

fn binary_window(rng: &mut SplitMix64, rows: usize, drifted: bool) -> Values {
    category_sample(
        rng,
        rows,
        if drifted {
            &BINARY_SHIFTED
        } else {
            &BINARY_BASE
        },
    )
}

const SIMULATED: [Simulated; 8] = [
    Simulated {
        name: "ks",
        method: Method::Ks,
        sample: numeric_window,
    },
    Simulated {
        name: "wasserstein",
        method: Method::Wasserstein,
        sample: numeric_window,
    },
    Simulated {
        name: "chi_square",
        method: Method::ChiSquare,
        sample: category_window,
    },
    Simulated {
        name: "z_test",
        method: Method::ZTest,
        sample: binary_window,
    },
    Simulated {
        name: "jensen_shannon (categories)",
        method: Method::JensenShannon,
        sample: category_window,
    },
    Simulated {
        name: "jensen_shannon (numbers)",
        method: Method::JensenShannon,
        sample: numeric_window,
    },
    Simulated {
        name: "psi (categories)",
        method: Method::Psi,
        sample: category_window,
    },
    Simulated {
        name: "psi (numbers)",
        method: Method::Psi,
        sample: numeric_window,
    },
];

/// The fraction of `windows` seeded window pairs of `sizes` that `simulated` flags.
fn simulated_rate(
    simulated: &Simulated,
    sizes: (usize, usize),
    windows: u64,
    drifted: bool,
) -> f64 {
    let options = Options {
        method: Some(simulated.method),
        ..Options::default()
    };
    let mut alarms = 0_u64;
    for window in 0..windows {
        let mut rng = SplitMix64::new(0x5EED_0000 + window);
        let reference = (simulated.sample)(&mut rng, sizes.0, false);
        let current = (simulated.sample)(&mut rng, sizes.1, drifted);
        let result = drift::detect(&reference, &current, &options).unwrap();
        assert_eq!(result.method, simulated.method);
        alarms += u64::from(result.drifted);
    }
    alarms as f64 / windows as f64
}

/// The false-alarm simulation: every method, forced, on windows drawn from one distribution,
/// at every size pair, with the default (calibrated) thresholds. Prints the measured rates
/// (`cargo test -p keel-tuning --test tuning false_alarm -- --nocapture`).
///
/// The bound is the stated 5% plus three binomial standard errors of the estimate (0.49
/// points at 2,000 windows, so 6.46%; 4.6 points at the quick default of 200): three, not two,
/// because 32 rates are checked at once, and a method whose real rate is 5% should pass all of
/// them; one whose rate is well above it (Evidently's fixed thresholds gave 16% to 50% at
/// these sizes) fails. Measured at 2,000 windows: 0.0% to 5.8%.
#[test]
fn false_alarms_stay_at_five_percent_for_every_method_and_window_sizes() {
    let windows = simulated_windows();
    let allowed = 0.05 + 3.0 * (0.05 * 0.95 / windows as f64).sqrt();
    let mut failures = Vec::new();
    for simulated in &SIMULATED {
        for sizes in SIZE_PAIRS {
            let started = std::time::Instant::now();
            let rate = simulated_rate(simulated, sizes, windows, false);
            eprintln!(
                "false alarms  {:<28} reference {:>5}  current {:>4}: {:>5.2}% of {windows} ({:.1} s)",
                simulated.name,
                sizes.0,
                sizes.1,
                rate * 100.0,
                started.elapsed().as_secs_f64()
            );
            if rate > allowed {
                failures.push(format!("{} at {sizes:?}: {rate}", simulated.name));
            }
        }
    }
    assert!(failures.is_empty(), "above {allowed}: {failures:?}");
}

/// Power: a 0.5 sd mean shift (numbers) or 0.4/0.3/0.2/0.1 → uniform (categories; binary
/// 0.7/0.3 → 0.5/0.5) in a current window of 100 rows against 1,500 reference rows is caught
/// in most windows by every method with its default threshold.
#[test]
fn a_real_shift_in_100_rows_is_detected_in_most_windows() {
    let mut weak = Vec::new();
    for simulated in &SIMULATED {
        let power = simulated_rate(simulated, (1_500, 100), 500, true);
        eprintln!(
            "power  {:<28} reference 1500  current  100: {:>5.1}% of 500",
            simulated.name,
            power * 100.0
        );
        if power < 0.8 {
            weak.push(format!("{}: {power}", simulated.name));
        }
    }
    assert!(
        weak.is_empty(),
        "detected in fewer than 80% of windows: {weak:?}"
    );
}

/// The chi-square critical value for upper tail `alpha`, by bisection on the survival function.
fn chi_square_critical(alpha: f64, dof: f64) -> f64 {
    let (mut low, mut high) = (0.0, 1_000.0);
    for _ in 0..200 {
        let middle = (low + high) / 2.0;
        if special::chi_square_sf(middle, dof) > alpha {
            low = middle;
        } else {
            high = middle;
        }
    }
    (low + high) / 2.0
}

// -------------------------------------------------------------------- calibration choice

#[test]
fn fit_best_calibrates_an_overconfident_model_and_round_trips_through_json() {
    let pairs = calibration_pairs(5, 4_000, None);
    let choice = calibration::fit_best(&pairs, 0.3, 42).unwrap();
    assert_ne!(choice.kind(), "none");
    assert!(choice.ece_after < choice.ece_before / 2.0, "{choice:?}");
    assert_eq!(choice.holdout_pairs, 1_200);
    assert_eq!(
        choice,
        calibration::fit_best(&pairs, 0.3, 42).unwrap(),
        "deterministic"
    );

    let json = serde_json::to_string(&choice.calibrator).unwrap();
    assert!(json.contains(&format!("\"kind\":\"{}\"", choice.kind())));
    let stored: Calibrator = serde_json::from_str(&json).unwrap();
    for confidence in [0.0, 0.1, 0.5, 0.77, 1.0] {
        // serde_json's default float parser (the workspace does not enable
        // `float_roundtrip`) may land one ulp away from the printed value.
        let (after, before) = (
            stored.apply(confidence),
            choice.calibrator.apply(confidence),
        );
        assert_close(
            after,
            before,
            1e-15,
            0.0,
            "calibrator after a JSON round trip",
        );
    }

    // A model that is calibrated already (right with probability = confidence): whatever is
    // chosen must not be worse on the held-out part, and "none" keeps the raw ECE.
    let mut rng = SplitMix64::new(9);
    let calibrated: Vec<Pair> = (0..4_000)
        .map(|_| {
            let confidence = rng.next_f64();
            Pair {
                confidence,
                correct: rng.next_f64() < confidence,
            }
        })
        .collect();
    let choice = calibration::fit_best(&calibrated, 0.3, 1).unwrap();
    assert!(choice.ece_after <= choice.ece_before);
    if choice.kind() == "none" {
        assert_eq!(choice.ece_after, choice.ece_before);
    }
    let none = serde_json::to_string(&Calibrator::Identity).unwrap();
    assert_eq!(none, r#"{"kind":"none"}"#);
}

// ------------------------------------------------------------------------------ edge cases

#[test]
fn empty_inputs_are_errors() {
    let empty = Values::Numeric(Vec::new());
    let one = Values::Numeric(vec![1.0]);
    assert!(matches!(
        drift::detect(&empty, &one, &Options::default()),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        drift::detect(&one, &empty, &Options::default()),
        Err(Error::Empty { .. })
    ));
    let no_labels = Values::Categorical(Vec::new());
    assert!(drift::detect(&no_labels, &no_labels, &Options::default()).is_err());
    assert!(drift::ks_2samp(&[], &[]).is_err());
    assert!(drift::wasserstein_distance(&[1.0], &[]).is_err());
    assert!(drift::chi_square(&[], &[]).is_err());
    assert!(drift::jensen_shannon_distance(&[], &[]).is_err());
    assert!(drift::jensen_shannon_distance(&[0.0, 0.0], &[1.0, 0.0]).is_err());
    assert!(drift::psi_from_proportions(&[], &[]).is_err());
    assert!(calibration::expected_calibration_error(&[], 10).is_err());
    assert!(Isotonic::fit(&[]).is_err());
    assert!(Platt::fit(&[]).is_err());
    assert!(calibration::fit_best(&[], 0.3, 1).is_err());
}

#[test]
fn zero_trials_give_the_whole_interval_and_zero_reviews_promote_nothing() {
    let interval = interval::wilson(0, 0, Z_95).unwrap();
    assert_eq!(
        (interval.low, interval.high, interval.point),
        (0.0, 1.0, 0.0)
    );
    let evaluation = trust::evaluate(
        Phase::POLICY_BASED,
        0,
        &[],
        &[],
        &criteria(1, 0.5, Window::Count(10)),
        &demotion(),
    )
    .unwrap();
    assert_eq!(evaluation.recommend_promotion, None);
    assert_eq!(evaluation.demote, None);
}

#[test]
fn all_equal_values_are_defined() {
    let constant = Values::Numeric(vec![5.0; 1_500]);
    let same = Values::Numeric(vec![5.0; 1_200]);
    let nudged = Values::Numeric(vec![5.01; 1_200]);
    // One unique value, large reference: Jensen–Shannon on one category, distance 0.
    let result = drift::detect(&constant, &same, &Options::default()).unwrap();
    assert_eq!(
        (result.method, result.value, result.drifted),
        (Method::JensenShannon, 0.0, false)
    );
    // Forced Wasserstein: the reference standard deviation is 0, so the distance is divided by
    // Evidently's floor of 0.001 instead: 0.01 / 0.001 = 10.
    let forced = Options {
        method: Some(Method::Wasserstein),
        ..Options::default()
    };
    let result = drift::detect(&constant, &nudged, &forced).unwrap();
    assert_close(result.value, 10.0, 1e-9, 0.0, "W / floor");
    assert!(result.drifted);
    assert_eq!(result.parameters["norm"], 0.001);
    let result = drift::detect(&constant, &same, &forced).unwrap();
    assert_eq!((result.value, result.drifted), (0.0, false));
    // KS on identical constants: D = 0, p = 1. Chi-square on a single category: p = 1.
    let ks = drift::ks_2samp(numeric(&constant), numeric(&same)).unwrap();
    assert_eq!((ks.statistic, ks.p_value), (0.0, 1.0));
    let small = Values::Categorical(vec!["a".to_owned(); 100]);
    let chi = Options {
        method: Some(Method::ChiSquare),
        ..Options::default()
    };
    let result = drift::detect(&small, &small, &chi).unwrap();
    assert_eq!((result.value, result.drifted), (1.0, false));
    // PSI of identical constants: one category, PSI 0.
    let (value, _) = drift::psi(&constant, &same).unwrap();
    assert_eq!(value, 0.0);
    // Calibration where every confidence is the same.
    let flat: Vec<Pair> = (0..50)
        .map(|index| Pair {
            confidence: 0.7,
            correct: index % 2 == 0,
        })
        .collect();
    let isotonic = Isotonic::fit(&flat).unwrap();
    assert_eq!(isotonic.apply(0.1), 0.5);
    assert_eq!(isotonic.apply(0.9), 0.5);
}

#[test]
fn nan_and_out_of_range_inputs_are_errors() {
    let with_nan = Values::Numeric(vec![1.0, f64::NAN, 3.0]);
    let fine = Values::Numeric(vec![1.0, 2.0, 3.0]);
    assert!(matches!(
        drift::detect(&with_nan, &fine, &Options::default()),
        Err(Error::NotFinite { index: 1, .. })
    ));
    assert!(drift::detect(
        &fine,
        &Values::Numeric(vec![f64::INFINITY]),
        &Options::default()
    )
    .is_err());
    assert!(drift::ks_2samp(&[1.0], &[f64::NAN]).is_err());
    assert!(drift::wasserstein_distance(&[f64::NAN], &[1.0]).is_err());
    assert!(drift::chi_square(&[1.0, f64::NAN], &[1.0, 1.0]).is_err());
    assert!(drift::jensen_shannon_distance(&[f64::NAN, 1.0], &[1.0, 1.0]).is_err());
    let bad_threshold = Options {
        threshold: Some(f64::NAN),
        ..Options::default()
    };
    assert!(drift::detect(&fine, &fine, &bad_threshold).is_err());
    let nan_pair = [Pair {
        confidence: f64::NAN,
        correct: true,
    }];
    assert!(calibration::expected_calibration_error(&nan_pair, 10).is_err());
    let above_one = [Pair {
        confidence: 1.5,
        correct: true,
    }];
    assert!(Isotonic::fit(&above_one).is_err());
    assert!(calibration::expected_calibration_error(&calibration_pairs(1, 10, None), 0).is_err());
    assert!(Sprt::new(f64::NAN, 0.1, 0.05, 0.05).is_err());
    assert!(DemotionParams::new(0.05, Some(0.04), 0.05, 0.05).is_err());
    assert!(PhaseCriteria::new(0, 0.9, Window::Count(10)).is_err());
    assert!(PhaseCriteria::new(10, 0.9, Window::Milliseconds(0)).is_err());
    assert!(interval::wilson(3, 2, Z_95).is_err());
    assert_eq!(sprt::default_alternative(0.05), 0.1);
}

#[test]
fn inputs_beyond_the_bound_are_refused() {
    let too_many = vec![0.0; keel_tuning::MAX_VALUES + 1];
    assert!(matches!(
        drift::ks_2samp(&too_many, &[1.0]),
        Err(Error::TooLarge { .. })
    ));
    let reference = Values::Numeric(too_many);
    let current = Values::Numeric(vec![1.0]);
    assert!(matches!(
        drift::detect(&reference, &current, &Options::default()),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn sprt_forced_decisions_are_consistent_with_its_bounds() {
    // Property over many seeded sequences: whenever observe says RejectH0 the LLR is at or
    // above A; Continue means strictly inside (B, A); AcceptH0 resets the LLR to 0.
    for seed in 0..50 {
        let mut rng = SplitMix64::new(seed);
        let mut test = Sprt::new(0.05, 0.12, 0.05, 0.1).unwrap();
        for _ in 0..2_000 {
            match test.observe(rng.next_f64() < 0.08) {
                Decision::RejectH0 => {
                    assert!(test.llr() >= test.upper_bound());
                    break;
                }
                Decision::Continue => {
                    assert!(test.llr() > test.lower_bound() && test.llr() < test.upper_bound());
                }
                Decision::AcceptH0 => assert_eq!(test.llr(), 0.0),
            }
        }
    }
}
