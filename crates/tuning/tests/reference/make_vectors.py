#!/usr/bin/env python3
"""Reference values for keel-tuning, computed independently with numpy / scipy / statsmodels.

Writes vectors.json next to this file. The Rust tests read that file; they never run Python.

    python3 -m venv /tmp/tuning-venv
    /tmp/tuning-venv/bin/pip install numpy scipy statsmodels
    /tmp/tuning-venv/bin/python crates/tuning/tests/reference/make_vectors.py

Large samples are not stored: they are described by a generator spec that both this script and
the Rust test expand with the same arithmetic-only generator (SplitMix64; an approximately
normal value is the sum of 12 uniforms minus 6), so they are identical bit for bit on every
platform. Each expanded sample is also summarised (length, sum) so that a generator mismatch
fails loudly instead of producing confusing differences.

Evidently itself is not installed: its formulas (drift test choice, binning, PSI floor,
normalised Wasserstein, chi-square expectation, Z-test) are written out below from its source
(evidently/legacy/calculations/stattests/*.py) on top of numpy / scipy.
"""

import json
import math
import pathlib

import numpy as np
import scipy
import statsmodels
from scipy import optimize, special, stats
from scipy.spatial import distance
from statsmodels.stats.proportion import proportion_confint

MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        return mix64(self.state)

    def next_f64(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def stable_hash(text):
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h * 0x100000001B3) & MASK
    return mix64(h)


def generate(spec):
    """Expands a sample spec exactly as tests/tuning.rs does."""
    rng = SplitMix64(spec["seed"])
    kind = spec["kind"]
    out = []
    for _ in range(spec["n"]):
        if kind == "normal":
            total = 0.0
            for _ in range(12):
                total += rng.next_f64()
            out.append((total - 6.0) * spec["scale"] + spec["shift"])
        elif kind == "integer":
            out.append(float(math.floor(rng.next_f64() * spec["levels"])))
        elif kind == "category":
            # Cumulative weights; the first bucket whose cumulative weight exceeds u.
            u = rng.next_f64()
            cumulative = 0.0
            chosen = len(spec["weights"]) - 1
            for index, weight in enumerate(spec["weights"]):
                cumulative += weight
                if u < cumulative:
                    chosen = index
                    break
            out.append(chosen)
        else:
            raise ValueError(kind)
    return out


def categories(spec):
    return [spec["labels"][i] for i in generate(spec)]


def summary(values):
    return {"len": len(values), "sum": float(math.fsum(values))}


def normal(seed, n, shift=0.0, scale=1.0):
    return {"kind": "normal", "seed": seed, "n": n, "shift": shift, "scale": scale}


def integer(seed, n, levels):
    return {"kind": "integer", "seed": seed, "n": n, "levels": levels}


def category(seed, n, weights, labels):
    return {"kind": "category", "seed": seed, "n": n, "weights": weights, "labels": labels}


# ---------------------------------------------------------------- Wilson


def round_half_away(x):
    whole = math.floor(x)
    return whole + (1 if x - whole >= 0.5 else 0)


def wilson_cases():
    cases = []
    for successes, n in [(0, 1), (1, 1), (0, 10), (10, 10), (5, 10), (95, 100), (49, 50),
                         (50, 50), (980, 1000), (150, 160), (3, 7), (9999, 10000)]:
        for alpha in [0.05, 0.10, 0.01]:
            z = float(stats.norm.isf(alpha / 2))
            low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
            cases.append({"successes": successes, "n": n, "alpha": alpha, "z": z,
                          "low": float(low), "high": float(high)})
    return cases


def reviews_needed_cases():
    z = float(stats.norm.isf(0.025))
    cases = []
    for p_true, target in [(0.98, 0.95), (0.99, 0.95), (0.97, 0.90), (0.999, 0.99), (0.9, 0.8)]:
        ns = np.arange(1, 200001)
        # Round half away from zero, as Rust's f64::round (numpy's round is half to even).
        successes = np.array([round_half_away(p_true * m) for m in ns], dtype=float)
        low, _ = proportion_confint(successes, ns, alpha=0.05, method="wilson")
        index = int(np.argmax(low >= target))
        assert low[index] >= target
        n = int(ns[index])
        cases.append({"p_true": p_true, "target": target, "z": z, "n": n})
    return cases


# ---------------------------------------------------------------- SPRT


def sprt_cases():
    cases = []
    for p0, p1, alpha, beta in [(0.05, 0.10, 0.05, 0.05), (0.02, 0.04, 0.01, 0.10),
                                (0.10, 0.25, 0.05, 0.20), (0.40, 0.70, 0.05, 0.05)]:
        upper = math.log((1 - beta) / alpha)
        lower = math.log(beta / (1 - alpha))
        step_error = math.log(p1 / p0)
        step_correct = math.log((1 - p1) / (1 - p0))
        e1 = p1 * step_error + (1 - p1) * step_correct
        e0 = p0 * step_error + (1 - p0) * step_correct
        asn_h1 = ((1 - beta) * upper + beta * lower) / e1
        asn_h0 = (alpha * upper + (1 - alpha) * lower) / e0
        # A fixed error sequence at rate 1.5·p1 and the decisions it produces.
        rng = SplitMix64(int(p0 * 1000) + 17)
        errors = [rng.next_f64() < min(0.99, 1.5 * p1) for _ in range(300)]
        llr, decisions, final_llr, restarts = 0.0, [], None, 0
        for error in errors:
            llr += step_error if error else step_correct
            if llr >= upper:
                decisions.append("reject_h0")
                break
            if llr <= lower:
                decisions.append("accept_h0")
                llr = 0.0
                restarts += 1
            else:
                decisions.append("continue")
        cases.append({"p0": p0, "p1": p1, "alpha": alpha, "beta": beta, "upper": upper,
                      "lower": lower, "asn_h1": asn_h1, "asn_h0": asn_h0,
                      "errors": errors[:len(decisions)], "decisions": decisions,
                      "final_llr": llr, "restarts": restarts})
    return cases


# ---------------------------------------------------------------- special functions


def gamma_cases():
    cases = []
    for a, x in [(0.5, 0.01), (0.5, 2.0), (0.5, 40.0), (1.0, 3.0), (2.5, 1.0), (2.5, 10.0),
                 (10.0, 5.0), (10.0, 30.0), (50.0, 45.0), (50.0, 80.0), (500.0, 480.0),
                 (3.5, 60.0)]:
        cases.append({"a": a, "x": x, "q": float(special.gammaincc(a, x)),
                      "ln_gamma": float(special.gammaln(a))})
    return cases


def kstwo_cases():
    cases = []
    # One or more points in each branch of scipy's _kolmogn for the survival function.
    points = [(10, 0.04), (10, 0.08), (10, 0.95), (10, 0.55), (50, 0.05), (50, 0.1),
              (50, 0.2), (50, 0.3), (140, 0.05), (140, 0.12), (141, 0.05), (293, 0.03),
              (293, 0.06), (293, 0.1), (1000, 0.02), (1000, 0.04), (1000, 0.06),
              (5373, 0.01), (5373, 0.015), (5373, 0.03), (150000, 0.002), (150000, 0.004),
              (141, 0.005), (293, 0.015), (1000, 0.008)]
    for n, x in points:
        cases.append({"n": n, "x": x, "sf": float(stats.kstwo.sf(x, n))})
    return cases


# ---------------------------------------------------------------- drift building blocks


def ks_cases():
    specs = [
        (normal(1, 20), normal(2, 20, 0.5)),
        (normal(3, 30), normal(4, 45, 0.3)),
        (integer(5, 40, 10), integer(6, 60, 8)),
        (normal(7, 800), normal(8, 650, 0.1)),
        (normal(9, 1000), normal(10, 1000)),
        (normal(11, 5), normal(12, 7, 3.0)),
        (normal(13, 137), normal(14, 2, 0.5)),
        (normal(15, 300), normal(16, 12000, 0.15)),
        (normal(17, 11000), normal(18, 10500, 0.03)),
        (normal(19, 400), normal(20, 10001, 0.0)),
        (normal(21, 250), normal(22, 250, 1.0)),
    ]
    cases = []
    for first, second in specs:
        a, b = generate(first), generate(second)
        result = stats.ks_2samp(a, b, method="auto")
        mode = "exact" if max(len(a), len(b)) <= 10000 else "asymptotic"
        cases.append({"first": first, "second": second, "first_summary": summary(a),
                      "second_summary": summary(b), "statistic": float(result.statistic),
                      "p_value": float(result.pvalue), "p_value_method": mode})
    return cases


def chi_square_cases():
    cases = []
    for observed, expected in [
        ([10, 20, 30], [12, 18, 30]),
        ([16, 18, 16, 14, 12, 12], [16, 16, 16, 16, 16, 8]),
        ([50, 50], [60, 40]),
        ([120, 30, 50], [100 * 200 / 300, 150 * 200 / 300, 50 * 200 / 300]),
        ([500, 100, 200, 200], [250, 250, 250, 250]),
        ([3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [7.5] * 10),
    ]:
        result = stats.chisquare(observed, expected)
        cases.append({"observed": [float(v) for v in observed],
                      "expected": [float(v) for v in expected],
                      "statistic": float(result.statistic), "dof": len(observed) - 1,
                      "p_value": float(result.pvalue)})
    return cases


def jensen_shannon_cases():
    cases = []
    for p, q in [([0.5, 0.3, 0.2], [0.3, 0.3, 0.4]), ([1, 2, 3, 4], [4, 3, 2, 1]),
                 ([0.2, 0.8, 0.0], [0.0, 0.1, 0.9]), ([1.0, 0.0], [0.0, 1.0]),
                 ([0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]),
                 ([10, 0, 5, 1, 1], [9, 1, 5, 0, 2])]:
        cases.append({"p": [float(v) for v in p], "q": [float(v) for v in q],
                      "distance": float(distance.jensenshannon(p, q))})
    return cases


def wasserstein_cases():
    cases = []
    for first, second in [(normal(31, 10), normal(32, 13, 0.5)),
                          (normal(33, 3000), normal(34, 2000, 0.2, 1.5)),
                          (integer(35, 200, 6), integer(36, 150, 6)),
                          (normal(37, 1500), normal(38, 1700))]:
        a, b = generate(first), generate(second)
        d = float(stats.wasserstein_distance(a, b))
        std = float(np.std(a))
        cases.append({"first": first, "second": second, "first_summary": summary(a),
                      "second_summary": summary(b), "distance": d, "reference_std": std,
                      "normalised": d / max(std, 0.001)})
    return cases


# ---------------------------------------------------------------- Evidently's formulas


def evidently_binned(reference, current, numeric, fill_zeroes):
    """evidently/legacy/calculations/stattests/utils.py: get_binned_data."""
    reference = np.asarray(reference, dtype=object if not numeric else float)
    current = np.asarray(current, dtype=object if not numeric else float)
    if numeric and len(set(reference.tolist())) > 20:
        bins = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
        reference_percents = np.histogram(reference, bins)[0] / len(reference)
        current_percents = np.histogram(current, bins)[0] / len(current)
        binning = "sturges"
    else:
        keys = sorted(set(reference.tolist()) | set(current.tolist()))
        ref_counts = {key: 0 for key in keys}
        cur_counts = {key: 0 for key in keys}
        for value in reference.tolist():
            ref_counts[value] += 1
        for value in current.tolist():
            cur_counts[value] += 1
        reference_percents = np.array([ref_counts[k] / len(reference) for k in keys])
        current_percents = np.array([cur_counts[k] / len(current) for k in keys])
        binning = "categories"
    if fill_zeroes:
        for percents in (reference_percents, current_percents):
            smallest = min(percents[percents != 0])
            np.place(percents, percents == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001)
    return reference_percents, current_percents, binning


def evidently_psi(reference, current, numeric):
    r, c, binning = evidently_binned(reference, current, numeric, True)
    return float(np.sum((r - c) * np.log(r / c))), binning, len(r)


def evidently_js(reference, current, numeric):
    r, c, binning = evidently_binned(reference, current, numeric, False)
    return float(distance.jensenshannon(r, c)), binning, len(r)


def evidently_chi(reference, current):
    keys = sorted(set(reference) | set(current))
    ref_counts = {k: 0 for k in keys}
    cur_counts = {k: 0 for k in keys}
    for value in reference:
        ref_counts[value] += 1
    for value in current:
        cur_counts[value] += 1
    k_norm = len(current) / len(reference)
    f_exp = [ref_counts[k] * k_norm for k in keys]
    f_obs = [cur_counts[k] for k in keys]
    return float(stats.chisquare(f_obs, f_exp)[1])


def evidently_z(reference, current):
    """z_stattest.py (binary features)."""
    if len(set(reference)) == 1 and len(set(current)) == 1 and set(reference) == set(current):
        return 1.0
    first = sorted(set(reference) | set(current))[0]
    ref = [0 if v == first else 1 for v in reference]
    cur = [0 if v == first else 1 for v in current]
    n1, n2 = len(ref), len(cur)
    p1, p2 = sum(ref) / n1, sum(cur) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    # Evidently writes 2 * (1 - norm.cdf(|z|)); the survival function is the same number
    # without cancellation for small p.
    return float(2 * stats.norm.sf(abs(z)))


def evidently_detect(reference, current, numeric, method=None):
    """registry.py: _get_default_stattest, then the chosen test with its default threshold."""
    unique = len(set(reference) | set(current))
    if method is None:
        if len(reference) <= 1000:
            if numeric and unique > 5:
                method = "ks"
            else:
                method = "chi_square" if unique > 2 else "z_test"
        else:
            method = "wasserstein" if numeric and unique > 5 else "jensen_shannon"
    if method == "ks":
        value, threshold = float(stats.ks_2samp(reference, current)[1]), 0.05
        drifted = value <= threshold
    elif method == "chi_square":
        value, threshold = evidently_chi(reference, current), 0.05
        drifted = value < threshold
    elif method == "z_test":
        value, threshold = evidently_z(reference, current), 0.05
        drifted = value < threshold
    elif method == "wasserstein":
        norm = max(np.std(reference), 0.001)
        value, threshold = float(stats.wasserstein_distance(reference, current) / norm), 0.1
        drifted = value >= threshold
    elif method == "jensen_shannon":
        value, threshold = evidently_js(reference, current, numeric)[0], 0.1
        drifted = value >= threshold
    elif method == "psi":
        value, threshold = evidently_psi(reference, current, numeric)[0], 0.1
        drifted = value >= threshold
    return {"method": method, "value": value, "threshold": threshold, "drifted": bool(drifted)}


def expand(spec):
    return categories(spec) if spec["kind"] == "category" else generate(spec)


def psi_cases():
    cases = []
    labels = ["alpha", "beta", "gamma", "delta", "epsilon"]
    for reference, current, numeric in [
        (normal(41, 2000), normal(42, 1500, 0.3), True),
        (normal(43, 500), normal(44, 800, 0.0, 2.0), True),
        (integer(45, 1200, 8), integer(46, 900, 6), True),
        (category(47, 1000, [0.5, 0.3, 0.2], labels), category(48, 700, [0.3, 0.3, 0.2, 0.2], labels), False),
        (category(49, 100000, [0.99995, 0.00005, 0.0], labels), category(50, 300, [0.8, 0.1, 0.1], labels), False),
    ]:
        a, b = expand(reference), expand(current)
        value, binning, bins = evidently_psi(a, b, numeric)
        js, js_binning, js_bins = evidently_js(a, b, numeric)
        cases.append({"reference": reference, "current": current, "numeric": numeric,
                      "psi": value, "binning": binning, "bins": bins,
                      "jensen_shannon": js})
    return cases


def z_cases():
    cases = []
    for reference, current in [(category(51, 400, [0.7, 0.3], ["no", "yes"]),
                                category(52, 300, [0.6, 0.4], ["no", "yes"])),
                               (category(53, 900, [0.5, 0.5], ["a", "b"]),
                                category(54, 100, [0.2, 0.8], ["a", "b"]))]:
        a, b = categories(reference), categories(current)
        cases.append({"reference": reference, "current": current,
                      "p_value": evidently_z(a, b)})
    return cases


def detect_cases():
    labels = ["north", "south", "east", "west"]
    setups = [
        (normal(61, 500), normal(62, 400, 0.3), True, None),
        (normal(63, 500), normal(64, 400, 0.0), True, None),
        (normal(65, 3000), normal(66, 2000, 0.2), True, None),
        (normal(67, 3000), normal(68, 2000, 0.0), True, None),
        (category(69, 600, [0.4, 0.3, 0.2, 0.1], labels), category(70, 500, [0.25, 0.25, 0.25, 0.25], labels), False, None),
        (category(71, 2000, [0.4, 0.3, 0.2, 0.1], labels), category(72, 1500, [0.3, 0.3, 0.2, 0.2], labels), False, None),
        (category(73, 800, [0.8, 0.2], labels), category(74, 600, [0.7, 0.3], labels), False, None),
        (integer(75, 900, 4), integer(76, 700, 4), True, None),
        (integer(77, 1800, 3), integer(78, 1200, 4), True, None),
        (normal(79, 1500), normal(80, 1000, 0.25), True, "psi"),
        (category(81, 600, [0.4, 0.3, 0.2, 0.1], labels), category(82, 500, [0.4, 0.3, 0.2, 0.1], labels), False, "psi"),
    ]
    cases = []
    for reference, current, numeric, method in setups:
        a, b = expand(reference), expand(current)
        expected = evidently_detect(a, b, numeric, method)
        cases.append({"reference": reference, "current": current, "numeric": numeric,
                      "forced_method": method, **expected})
    return cases


# ---------------------------------------------------------------- calibration


def calibration_pairs(seed, n, tie_step):
    """Overconfident model: confidence c, right with probability c² (ties when tie_step)."""
    rng = SplitMix64(seed)
    pairs = []
    for _ in range(n):
        c = rng.next_f64()
        if tie_step:
            c = math.floor(c / tie_step) * tie_step
        correct = rng.next_f64() < c * c
        pairs.append((c, correct))
    return pairs


def ece_numpy(confidence, correct, bins):
    # Equal-frequency cuts as numpy's array_split makes them, each moved forward to the end
    # of a run of equal confidences so that ties never straddle two bins.
    order = np.argsort(confidence, kind="stable")
    total, ece, rows = len(confidence), 0.0, []
    sizes = [len(g) for g in np.array_split(order, bins)]
    sorted_conf = confidence[order]
    groups, start, cut = [], 0, 0
    for size in sizes:
        cut += size
        end = min(max(cut, start), total)
        while start < end < total and sorted_conf[end] == sorted_conf[end - 1]:
            end += 1
        if end > start:
            groups.append(order[start:end])
            start = end
    for group in groups:
        if len(group) == 0:
            continue
        mean_confidence = float(np.mean(confidence[group]))
        accuracy = float(np.mean(correct[group]))
        ece += len(group) / total * abs(accuracy - mean_confidence)
        rows.append({"count": int(len(group)), "mean_confidence": mean_confidence,
                     "accuracy": accuracy})
    return ece, rows


def calibration_cases():
    cases = []
    for seed, n, tie_step, bins in [(91, 1003, None, 10), (92, 1003, None, 7),
                                    (93, 500, 0.05, 10), (94, 8, None, 10)]:
        pairs = calibration_pairs(seed, n, tie_step)
        confidence = np.array([p[0] for p in pairs])
        correct = np.array([1.0 if p[1] else 0.0 for p in pairs])
        ece, rows = ece_numpy(confidence, correct, bins)

        # Isotonic: pool equal confidences (weighted means), then PAV.
        distinct, inverse = np.unique(confidence, return_inverse=True)
        weights = np.bincount(inverse).astype(float)
        means = np.bincount(inverse, weights=correct) / weights
        fitted = optimize.isotonic_regression(means, weights=weights, increasing=True).x

        # Platt on logit(confidence) with Platt's smoothed targets.
        eps = 1e-6
        clipped = np.clip(confidence, eps, 1 - eps)
        features = np.log(clipped / (1 - clipped))
        positives = correct.sum()
        negatives = n - positives
        targets = np.where(correct == 1.0, (positives + 1) / (positives + 2), 1 / (negatives + 2))

        def loss(theta):
            z = theta[0] * features + theta[1]
            return float(np.sum(targets * np.logaddexp(0, -z) + (1 - targets) * np.logaddexp(0, z)))

        def gradient(theta):
            q = special.expit(theta[0] * features + theta[1])
            return np.array([np.sum((q - targets) * features), np.sum(q - targets)])

        platt = optimize.minimize(loss, x0=[1.0, 0.0], jac=gradient, method="BFGS",
                                  options={"gtol": 1e-11, "maxiter": 1000})
        cases.append({"seed": seed, "n": n, "tie_step": tie_step, "bins": bins, "ece": ece,
                      "reliability": rows,
                      "isotonic_points": [[float(x), float(y)] for x, y in zip(distinct, fitted)],
                      "platt_a": float(platt.x[0]), "platt_b": float(platt.x[1])})
    return cases


# ---------------------------------------------------------------- sampling


def sampling_cases():
    cases = []
    for text, rate in [("case-1", 0.2), ("case-2", 0.2), ("refund:0193a6f0", 0.02),
                       ("", 0.5), ("opération:é", 0.5), ("invoice:42", 0.0), ("x", 1.0)]:
        h = stable_hash(text)
        clamped = min(max(rate, 0.001), 1.0)
        u = (h >> 11) * (1.0 / (1 << 53))
        cases.append({"text": text, "rate": rate, "hash": str(h), "sampled": u < clamped})
    return cases


def main():
    generator = SplitMix64(1234567)
    vectors = {
        "generated_by": {"numpy": np.__version__, "scipy": scipy.__version__,
                         "statsmodels": statsmodels.__version__},
        "splitmix64_seed_1234567": [str(generator.next_u64()) for _ in range(5)],
        "wilson": wilson_cases(),
        "reviews_needed": reviews_needed_cases(),
        "sprt": sprt_cases(),
        "gamma": gamma_cases(),
        "kstwo": kstwo_cases(),
        "ks_2samp": ks_cases(),
        "chi_square": chi_square_cases(),
        "jensen_shannon": jensen_shannon_cases(),
        "wasserstein": wasserstein_cases(),
        "psi": psi_cases(),
        "z_test": z_cases(),
        "detect": detect_cases(),
        "calibration": calibration_cases(),
        "sampling": sampling_cases(),
    }
    path = pathlib.Path(__file__).with_name("vectors.json")
    path.write_text(json.dumps(vectors, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
