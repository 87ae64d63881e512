//! The local learner: learning, probabilities, persistence, evaluation, and accuracy on the
//! spam sample shipped in `examples/data`.

use std::path::PathBuf;

use keel_ai::learner::{
    self, bench, evaluate, BenchLimits, Evaluation, Learner, LearnerOptions, Prediction,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn examples(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(text, label)| (text.to_string(), label.to_string()))
        .collect()
}

fn labels(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

fn trained(pairs: &[(&str, &str)]) -> Learner {
    let mut learner = Learner::default();
    learner.update_batch(&examples(pairs)).unwrap();
    learner
}

const BILLING_AND_PARTY: &[(&str, &str)] = &[
    (
        "invoice 4411 is overdue, please pay the amount due",
        "billing",
    ),
    (
        "your payment failed, update the card on your account",
        "billing",
    ),
    ("refund for the double charge on my invoice", "billing"),
    (
        "come to the birthday party on saturday, bring cake",
        "social",
    ),
    (
        "we are having a barbecue in the garden this weekend",
        "social",
    ),
    ("party tonight! music, friends and cake", "social"),
];

fn assert_probabilities_valid(prediction: &Prediction) {
    let total: f64 = prediction.probabilities.iter().map(|(_, p)| p).sum();
    assert!((total - 1.0).abs() < 1e-9, "sum {total}");
    for pair in prediction.probabilities.windows(2) {
        assert!(
            pair[0].1 >= pair[1].1,
            "not sorted: {:?}",
            prediction.probabilities
        );
    }
    for (_, probability) in &prediction.probabilities {
        assert!((0.0..=1.0).contains(probability));
    }
    assert_eq!(prediction.label, prediction.probabilities[0].0);
    assert_eq!(prediction.probability, prediction.probabilities[0].1);
}

#[test]
fn separates_two_obvious_classes_after_a_few_examples() {
    let learner = trained(BILLING_AND_PARTY);
    for (text, expected) in [
        ("the invoice amount is overdue, please pay", "billing"),
        ("my card payment for the account failed", "billing"),
        ("cake and music at the party this saturday", "social"),
        ("friends in the garden for a barbecue", "social"),
    ] {
        let prediction = learner.predict(text).unwrap();
        assert_eq!(prediction.label, expected, "{text}: {prediction:?}");
        assert!(prediction.probability > 0.6, "{text}: {prediction:?}");
    }
}

#[test]
fn probabilities_are_a_distribution() {
    let mut learner = trained(BILLING_AND_PARTY);
    learner
        .update("the server is down again", "outage")
        .unwrap();
    for text in [
        "",
        "invoice",
        "party",
        "server down",
        "something unrelated entirely",
        "€€€ ünïcödé 日本語",
    ] {
        let prediction = learner.predict(text).unwrap();
        assert_eq!(prediction.probabilities.len(), 3);
        assert_probabilities_valid(&prediction);
    }
}

#[test]
fn an_untrained_or_single_label_learner_does_not_answer() {
    let mut learner = Learner::default();
    assert_eq!(learner.predict("anything"), None);
    assert_eq!(
        learner.predict_within("anything", &labels(&["a", "b"])),
        None
    );
    learner.update("only spam so far", "spam").unwrap();
    assert_eq!(learner.predict("only spam so far"), None);
    assert_eq!(learner.predict_within("x", &labels(&["spam", "ham"])), None);
    learner.update("hello mum", "ham").unwrap();
    assert!(learner.predict("hello").is_some());
}

#[test]
fn same_examples_in_the_same_order_give_the_same_model() {
    let first = trained(BILLING_AND_PARTY);
    let second = trained(BILLING_AND_PARTY);
    assert_eq!(first.to_bytes(), second.to_bytes());
    assert_eq!(
        first.predict("pay the party"),
        second.predict("pay the party")
    );
}

#[test]
fn round_trip_keeps_predictions_counters_and_learning() {
    let mut learner = Learner::default();
    learner
        .update_batch(&examples(&BILLING_AND_PARTY[..3]))
        .unwrap();
    learner
        .update_batch(&examples(&BILLING_AND_PARTY[3..]))
        .unwrap();
    let bytes = learner.to_bytes();
    let restored = Learner::from_bytes(&bytes).unwrap();
    assert_eq!(restored.version(), 2);
    assert_eq!(restored.examples_seen(), 6);
    assert_eq!(restored.classes(), learner.classes());
    assert_eq!(restored.options(), learner.options());
    assert_eq!(restored.to_bytes(), bytes);
    for text in ["invoice overdue", "party cake", "", "unrelated"] {
        assert_eq!(restored.predict(text), learner.predict(text));
    }
    // Learning goes on from the stored counts exactly as if the model had never been stored.
    let more = examples(&[("gift card refund", "billing"), ("new: the outage", "ops")]);
    let mut continued = restored;
    continued.update_batch(&more).unwrap();
    learner.update_batch(&more).unwrap();
    assert_eq!(continued.to_bytes(), learner.to_bytes());
}

#[test]
fn update_batch_bumps_the_version_and_checks_labels_first() {
    let mut learner = Learner::default();
    assert_eq!(learner.version(), 0);
    assert_eq!(
        learner
            .update_batch(&examples(&BILLING_AND_PARTY[..2]))
            .unwrap(),
        1
    );
    assert_eq!(learner.update_batch(&[]).unwrap(), 2);
    let before = learner.to_bytes();
    let error = learner
        .update_batch(&examples(&[("fine text", "billing"), ("bad label", "")]))
        .unwrap_err();
    assert!(
        matches!(error, learner::Error::InvalidLabel { .. }),
        "{error}"
    );
    assert_eq!(
        learner.to_bytes(),
        before,
        "a rejected batch learns nothing"
    );
    let too_long = learner.update("x", &"y".repeat(300)).unwrap_err();
    assert!(
        too_long.to_string().contains("at most 256 bytes"),
        "{too_long}"
    );
}

#[test]
fn options_come_from_configuration_with_defaults() {
    let options: LearnerOptions = serde_json::from_str(r#"{"char_ngrams": [3, 5]}"#).unwrap();
    assert_eq!(
        options,
        LearnerOptions {
            char_ngrams: (3, 5),
            ..LearnerOptions::default()
        }
    );
    assert!(serde_json::from_str::<LearnerOptions>(r#"{"bucket_log2": 12}"#).is_err());
    let out_of_range: LearnerOptions = serde_json::from_str(r#"{"buckets_log2": 40}"#).unwrap();
    assert!(matches!(
        Learner::new(out_of_range),
        Err(learner::Error::InvalidOptions(_))
    ));
}

#[test]
fn the_label_set_is_bounded() {
    let options = LearnerOptions {
        buckets_log2: 10,
        ..LearnerOptions::default()
    };
    let mut learner = Learner::new(options).unwrap();
    for class in 0..learner::MAX_CLASSES {
        learner.update("text", &format!("label-{class}")).unwrap();
    }
    let error = learner.update("text", "one too many").unwrap_err();
    assert_eq!(
        error,
        learner::Error::TooManyClasses {
            label: "one too many".to_string(),
            limit: learner::MAX_CLASSES
        }
    );
    assert_eq!(learner.classes().len(), learner::MAX_CLASSES);
}

#[test]
fn the_label_set_grows_and_keeps_what_it_knew() {
    let mut learner = trained(BILLING_AND_PARTY);
    assert_eq!(learner.classes(), labels(&["billing", "social"]).as_slice());
    learner
        .update_batch(&examples(&[
            ("the database server is down, pager alert", "outage"),
            ("outage: api returns 503 errors, server down", "outage"),
            ("pager alert: disk full on the database", "outage"),
        ]))
        .unwrap();
    assert_eq!(
        learner.classes(),
        labels(&["billing", "social", "outage"]).as_slice()
    );
    assert_eq!(
        learner.predict("server down, 503 errors").unwrap().label,
        "outage"
    );
    assert_eq!(
        learner
            .predict("please pay the overdue invoice")
            .unwrap()
            .label,
        "billing"
    );
    assert_eq!(
        learner.predict("birthday cake party").unwrap().label,
        "social"
    );
}

#[test]
fn predict_within_renormalises_over_the_declared_labels() {
    let mut learner = trained(BILLING_AND_PARTY);
    learner.update("the server is down", "outage").unwrap();
    let text = "overdue invoice party";
    let full = learner.predict(text).unwrap();
    let probability = |prediction: &Prediction, label: &str| {
        prediction
            .probabilities
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, p)| *p)
            .unwrap()
    };

    let within = learner
        .predict_within(text, &labels(&["social", "billing", "social"]))
        .unwrap();
    assert_probabilities_valid(&within);
    assert_eq!(within.probabilities.len(), 2, "duplicates are ignored");
    let ratio_full = probability(&full, "billing") / probability(&full, "social");
    let ratio_within = probability(&within, "billing") / probability(&within, "social");
    assert!((ratio_full - ratio_within).abs() < 1e-9 * ratio_full);

    // A declared label the learner never met keeps some probability.
    let with_unknown = learner
        .predict_within(text, &labels(&["billing", "social", "legal"]))
        .unwrap();
    assert_probabilities_valid(&with_unknown);
    assert!(probability(&with_unknown, "legal") > 0.0);

    assert_eq!(
        learner.predict_within(text, &labels(&["legal", "hr"])),
        None
    );
    assert_eq!(learner.predict_within(text, &[]), None);
    let only = learner.predict_within(text, &labels(&["outage"])).unwrap();
    assert_eq!((only.label.as_str(), only.probability), ("outage", 1.0));
}

fn with_checksum(mut body: Vec<u8>) -> Vec<u8> {
    let checksum = Sha256::digest(&body);
    body.extend_from_slice(&checksum);
    body
}

#[test]
fn damaged_bytes_are_typed_errors() {
    let bytes = trained(BILLING_AND_PARTY).to_bytes();
    let body = bytes[..bytes.len() - 32].to_vec();
    assert_eq!(
        Learner::from_bytes(&[]).unwrap_err(),
        learner::Error::NotALearner
    );
    assert_eq!(
        Learner::from_bytes(b"{\"json\": true}").unwrap_err(),
        learner::Error::NotALearner
    );
    for cut in [9, 20, bytes.len() / 2, bytes.len() - 1] {
        assert_eq!(
            Learner::from_bytes(&bytes[..cut]).unwrap_err(),
            learner::Error::ChecksumMismatch,
            "cut at {cut}"
        );
    }
    for position in [10, 40, bytes.len() / 2, bytes.len() - 1] {
        let mut flipped = bytes.clone();
        flipped[position] ^= 0x10;
        assert_eq!(
            Learner::from_bytes(&flipped).unwrap_err(),
            learner::Error::ChecksumMismatch
        );
    }
    let mut future = body.clone();
    future[8] = 3;
    assert_eq!(
        Learner::from_bytes(&with_checksum(future)).unwrap_err(),
        learner::Error::UnsupportedFormatVersion {
            found: 3,
            supported: 2
        }
    );
    let mut never = body.clone();
    never[8] = 0;
    assert!(matches!(
        Learner::from_bytes(&with_checksum(never)),
        Err(learner::Error::UnsupportedFormatVersion { found: 0, .. })
    ));
    // The temperature (bytes 46..50) must be within its bounds.
    for temperature in [f32::NAN, 0.0, -1.0, 1e6] {
        let mut bad_temperature = body.clone();
        bad_temperature[46..50].copy_from_slice(&temperature.to_le_bytes());
        assert!(
            matches!(
                Learner::from_bytes(&with_checksum(bad_temperature)),
                Err(learner::Error::Corrupt(_))
            ),
            "{temperature}"
        );
    }
    // Damage that the checksum cannot see (written that way) is still caught.
    let mut bad_options = body.clone();
    bad_options[10] = 99;
    assert!(matches!(
        Learner::from_bytes(&with_checksum(bad_options)),
        Err(learner::Error::Corrupt(_))
    ));
    let mut trailing = body.clone();
    trailing.push(0);
    assert!(matches!(
        Learner::from_bytes(&with_checksum(trailing)),
        Err(learner::Error::Corrupt(_))
    ));
    let mut short = body;
    short.pop();
    assert!(matches!(
        Learner::from_bytes(&with_checksum(short)),
        Err(learner::Error::Corrupt(_))
    ));
}

fn outcome(truth: &str, probabilities: &[(&str, f64)]) -> (String, Vec<(String, f64)>) {
    let probabilities = probabilities
        .iter()
        .map(|(label, p)| (label.to_string(), *p))
        .collect();
    (truth.to_string(), probabilities)
}

#[test]
fn evaluation_metrics_match_a_hand_computation() {
    let evaluation = Evaluation::from_outcomes(&[
        outcome("spam", &[("spam", 0.9), ("ham", 0.1)]),
        outcome("ham", &[("spam", 0.6), ("ham", 0.4)]),
        outcome("ham", &[("ham", 0.8), ("spam", 0.2)]),
        outcome("ham", &[("ham", 0.5), ("spam", 0.5)]),
    ]);
    assert_eq!(evaluation.n, 4);
    assert_eq!(evaluation.accuracy, 0.75);
    let log_loss = -(0.9f64.ln() + 0.4f64.ln() + 0.8f64.ln() + 0.5f64.ln()) / 4.0;
    assert!((evaluation.log_loss - log_loss).abs() < 1e-12);
    // Confidences 0.9 (right), 0.6 (wrong), 0.8 (right), 0.5 (right), one per bin.
    let ece = (0.1 + 0.6 + 0.2 + 0.5) / 4.0;
    assert!((evaluation.ece - ece).abs() < 1e-12, "{}", evaluation.ece);
    assert_eq!(
        evaluation
            .calibration
            .iter()
            .map(|bin| (bin.lower, bin.n, bin.accuracy))
            .collect::<Vec<_>>(),
        [(0.5, 1, 1.0), (0.6, 1, 0.0), (0.8, 1, 1.0), (0.9, 1, 1.0)]
    );
    assert_eq!(evaluation.labels, labels(&["ham", "spam"]));
    // Rows are true labels, columns predicted; the 0.5/0.5 tie goes to the first listed (ham).
    assert_eq!(evaluation.confusion, vec![vec![2, 1], vec![0, 1]]);
    assert_eq!(
        evaluation.to_table(),
        "examples  4\n\
         accuracy  0.7500\n\
         log loss  0.4845\n\
         ece       0.3500 (10 equal-width confidence bins)\n\
         \n\
         confidence  examples  mean confidence  accuracy\n\
         0.5-0.6            1           0.5000    1.0000\n\
         0.6-0.7            1           0.6000    0.0000\n\
         0.8-0.9            1           0.8000    1.0000\n\
         0.9-1.0            1           0.9000    1.0000\n\
         \n\
         true \\ predicted  ham  spam\n\
         ham                 2     1\n\
         spam                0     1\n"
    );
    assert_eq!(evaluation.to_string(), evaluation.to_table());
    let json = serde_json::to_value(&evaluation).unwrap();
    assert_eq!(json["confusion"], serde_json::json!([[2, 1], [0, 1]]));
    assert_eq!(json["labels"], serde_json::json!(["ham", "spam"]));
    assert_eq!(json["ece"], serde_json::json!(evaluation.ece));
    assert_eq!(json["calibration"][1]["accuracy"], serde_json::json!(0.0));
}

#[test]
fn evaluation_of_edge_cases() {
    let empty = Evaluation::from_outcomes(&[]);
    assert_eq!(
        (empty.n, empty.accuracy, empty.log_loss, empty.ece),
        (0, 0.0, 0.0, 0.0)
    );
    assert!(empty.calibration.is_empty());
    // Confidence 1 falls in the last bin.
    let certain = Evaluation::from_outcomes(&[outcome("ham", &[("ham", 1.0), ("spam", 0.0)])]);
    assert_eq!(certain.calibration.len(), 1);
    assert_eq!((certain.calibration[0].lower, certain.ece), (0.9, 0.0));
    // A true label the classifier never offers: probability 0, clipped, and a wrong answer.
    let missing = Evaluation::from_outcomes(&[outcome("legal", &[("ham", 1.0)])]);
    assert_eq!(missing.accuracy, 0.0);
    assert!((missing.log_loss - -(1e-15f64).ln()).abs() < 1e-9);
    assert_eq!(missing.confusion, vec![vec![0, 0], vec![1, 0]]);
}

#[test]
fn evaluate_agrees_with_predict() {
    let learner = trained(BILLING_AND_PARTY);
    let test = examples(&[
        ("pay the overdue invoice", "billing"),
        ("party with cake", "social"),
        ("refund my card", "social"),
    ]);
    let evaluation = evaluate(&learner, &test);
    let mut correct = 0;
    let mut loss = 0.0;
    for (text, truth) in &test {
        let prediction = learner.predict(text).unwrap();
        correct += usize::from(&prediction.label == truth);
        loss -= prediction
            .probabilities
            .iter()
            .find(|(l, _)| l == truth)
            .unwrap()
            .1
            .ln();
    }
    assert_eq!(evaluation.n, 3);
    assert_eq!(evaluation.accuracy, correct as f64 / 3.0);
    assert!((evaluation.log_loss - loss / 3.0).abs() < 1e-9);
    assert_eq!(evaluation.confusion.iter().flatten().sum::<u64>(), 3);

    // Untrained: uniform over the labels the examples name.
    let untrained = evaluate(&Learner::default(), &test);
    assert!((untrained.log_loss - 2f64.ln()).abs() < 1e-12);
}

#[test]
fn bench_reports_counts_without_asserting_speed() {
    let training = examples(BILLING_AND_PARTY);
    let limits = BenchLimits {
        max_duration: std::time::Duration::from_secs(5),
        max_iterations: 50,
    };
    let report = bench(&training, LearnerOptions::default(), limits).unwrap();
    assert_eq!(
        (
            report.updates,
            report.predictions,
            report.examples,
            report.classes
        ),
        (50, 50, 6, 2)
    );
    assert!(report.model_bytes > 0);
    assert_eq!(
        bench(&[], LearnerOptions::default(), limits).unwrap_err(),
        learner::Error::NoExamples
    );
}

fn spam_file(name: &str) -> Vec<(String, String)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/data")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let field = |name: &str| value[name].as_str().unwrap().to_string();
            (field("text"), field("label"))
        })
        .collect()
}

#[test]
fn learns_spam_from_the_sample_and_holds_up_on_the_holdout() {
    let sample = spam_file("spam-sample.jsonl");
    let holdout = spam_file("spam-holdout.jsonl");
    assert_eq!((sample.len(), holdout.len()), (400, 200));
    let mut learner = Learner::default();
    learner.update_batch(&sample).unwrap();
    let evaluation = evaluate(&learner, &holdout);
    eprintln!("{evaluation}\nmodel bytes: {}", learner.to_bytes().len());
    assert!(evaluation.accuracy >= ACCURACY_FLOOR, "{evaluation}");
}

/// Measured 0.97 on the holdout (log loss 0.11); the floor leaves room for harmless changes
/// and still fails a learner that learns little (a coin scores 0.5).
const ACCURACY_FLOOR: f64 = 0.92;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn bytes_round_trip_preserves_predictions(
        training in prop::collection::vec(("[a-e ]{0,30}|[é日!$0-9 ]{0,8}", 0..4usize), 0..25),
        probes in prop::collection::vec("[a-f é!]{0,30}", 1..5),
    ) {
        let options = LearnerOptions { buckets_log2: 12, ..LearnerOptions::default() };
        let mut learner = Learner::new(options).unwrap();
        let training: Vec<(String, String)> =
            training.into_iter().map(|(text, class)| (text, format!("class {class}"))).collect();
        learner.update_batch(&training).unwrap();
        let bytes = learner.to_bytes();
        let restored = Learner::from_bytes(&bytes).unwrap();
        prop_assert_eq!(restored.to_bytes(), bytes);
        for probe in &probes {
            prop_assert_eq!(restored.predict(probe), learner.predict(probe));
            let within = labels(&["class 1", "class 3", "unknown"]);
            prop_assert_eq!(restored.predict_within(probe, &within), learner.predict_within(probe, &within));
        }
    }

    #[test]
    fn damaged_bytes_never_panic(position in 0usize..4096, mask in 1u8..=255, cut in 0usize..4096) {
        let bytes = trained(&BILLING_AND_PARTY[..3]).to_bytes();
        let mut damaged = bytes.clone();
        let position = position % damaged.len();
        damaged[position] ^= mask;
        prop_assert!(Learner::from_bytes(&damaged).is_err());
        prop_assert!(Learner::from_bytes(&bytes[..cut % bytes.len()]).is_err());
        // The same damage behind a valid checksum: an error or a valid model, never a panic.
        let body = damaged[..damaged.len() - 32].to_vec();
        if let Ok(learner) = Learner::from_bytes(&with_checksum(body)) {
            let _ = learner.predict("still answers");
        }
    }
}

/// Speed on ~1 KB texts, printed, never asserted. Run in release:
/// `KEEL_LEARNER_BENCH=1 cargo test --release -p keel-ai learner_speed -- --nocapture`.
#[test]
fn learner_speed() {
    if std::env::var_os("KEEL_LEARNER_BENCH").is_none() {
        return;
    }
    let limits = BenchLimits {
        max_duration: std::time::Duration::from_secs(3),
        max_iterations: u64::MAX,
    };
    for (name, texts) in [
        ("spam-sample.jsonl", spam_file("spam-sample.jsonl")),
        ("synthetic", synthetic_kilobyte_texts(2_000)),
    ] {
        let report = bench(&texts, LearnerOptions::default(), limits).unwrap();
        eprintln!("{name}: {}", serde_json::to_string_pretty(&report).unwrap());
    }
}

/// Texts of about 1 KB from a 5,000-word vocabulary, two labels, deterministic.
fn synthetic_kilobyte_texts(count: usize) -> Vec<(String, String)> {
    let mut random = fastrand::Rng::with_seed(7);
    let vocabulary: Vec<String> = (0..5_000)
        .map(|_| {
            let length = random.usize(2..10);
            (0..length)
                .map(|_| random.alphanumeric().to_ascii_lowercase())
                .collect()
        })
        .collect();
    (0..count)
        .map(|index| {
            let mut text = String::new();
            while text.len() < 1_000 {
                text.push_str(&vocabulary[random.usize(..vocabulary.len())]);
                text.push(if random.u8(..10) == 0 { '.' } else { ' ' });
            }
            (text, if index % 2 == 0 { "a" } else { "b" }.to_string())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Calibration on many classes.

/// A seeded stand-in for a many-class short-text task (tickets by topic): each class has 24
/// words of its own; texts of 4 to 14 words mix them with a shared vocabulary of 3,000 words
/// (skewed towards the first, as real words are) and with other classes' words, so even a
/// perfect model errs. The same arguments give the same texts.
fn synthetic_topics(classes: usize, count: usize, seed: u64) -> Vec<(String, String)> {
    let mut random = fastrand::Rng::with_seed(seed);
    let word = |random: &mut fastrand::Rng| -> String {
        let length = random.usize(3..9);
        (0..length).map(|_| random.lowercase()).collect()
    };
    let shared: Vec<String> = (0..3_000).map(|_| word(&mut random)).collect();
    let own: Vec<Vec<String>> = (0..classes)
        .map(|_| (0..24).map(|_| word(&mut random)).collect())
        .collect();
    (0..count)
        .map(|_| {
            let class = random.usize(..classes);
            let length = random.usize(4..15);
            let words: Vec<&str> = (0..length)
                .map(|_| {
                    let roll = random.f64();
                    if roll < 0.25 {
                        own[class][random.usize(..24)].as_str()
                    } else if roll < 0.35 {
                        own[random.usize(..classes)][random.usize(..24)].as_str()
                    } else {
                        let index = (random.f64().powi(3) * shared.len() as f64) as usize;
                        shared[index].as_str()
                    }
                })
                .collect();
            (words.join(" "), format!("topic-{class:02}"))
        })
        .collect()
}

type Examples = Vec<(String, String)>;

/// Every fifth example is for testing, the rest for training.
fn split(examples: Examples) -> (Examples, Examples) {
    let (test, train): (Vec<_>, Vec<_>) = examples
        .into_iter()
        .enumerate()
        .partition(|(index, _)| index % 5 == 0);
    let strip =
        |pairs: Vec<(usize, (String, String))>| pairs.into_iter().map(|(_, pair)| pair).collect();
    (strip(train), strip(test))
}

/// The evaluation of `learner` on `test`, and of the same weights at temperature 1.
fn with_and_without_temperature(
    name: &str,
    learner: &Learner,
    test: &[(String, String)],
) -> (Evaluation, Evaluation) {
    let calibrated = evaluate(learner, test);
    let mut raw = learner.clone();
    raw.set_temperature(1.0).unwrap();
    let uncalibrated = evaluate(&raw, test);
    eprintln!(
        "{name}: {} test examples, accuracy {:.4}; temperature {:.3}: log loss {:.4}, ECE \
         {:.4}; temperature 1: log loss {:.4}, ECE {:.4}",
        calibrated.n,
        calibrated.accuracy,
        learner.temperature(),
        calibrated.log_loss,
        calibrated.ece,
        uncalibrated.log_loss,
        uncalibrated.ece
    );
    // A temperature does not change which label wins.
    assert_eq!(calibrated.confusion, uncalibrated.confusion);
    (calibrated, uncalibrated)
}

/// Measured (seed 11): accuracy 0.80; ECE 0.020 with the fitted temperature (0.68), 0.103 at
/// temperature 1 (as on the real 16-class set of issue 13: 0.12). The learner is under-confident.
#[test]
fn a_fitted_temperature_makes_a_many_class_learner_honest() {
    let (train, test) = split(synthetic_topics(16, 12_000, 11));
    let mut learner = Learner::default();
    let mut progress = Vec::new();
    let training = learner.train(&train, |done| progress.push(done)).unwrap();
    let (calibrated, uncalibrated) = with_and_without_temperature("16 classes", &learner, &test);
    assert!(
        (0.6..0.95).contains(&calibrated.accuracy),
        "the set should be hard but learnable: {}",
        calibrated.accuracy
    );
    assert!(calibrated.ece <= 0.05, "{calibrated}");
    assert!(uncalibrated.ece >= 0.08, "{uncalibrated}");
    assert!(calibrated.ece * 2.0 <= uncalibrated.ece);
    assert!(calibrated.log_loss < uncalibrated.log_loss);
    assert!(learner.temperature() < 0.9, "under-confident: T below 1");

    let held_out = train
        .iter()
        .filter(|(text, _)| learner::is_held_out(text))
        .count();
    assert_eq!(training.held_out, held_out as u64);
    assert!(
        (train.len() / 12..train.len() / 8).contains(&held_out),
        "{held_out}"
    );
    assert_eq!(
        (training.examples, training.version),
        (train.len() as u64, 1)
    );
    assert_eq!(training.temperature, learner.temperature());
    let (before, after) = (
        training.held_out_log_loss_before.unwrap(),
        training.held_out_log_loss_after.unwrap(),
    );
    assert!(
        after <= before,
        "the fit minimises the held-out loss: {before} -> {after}"
    );
    assert_eq!(progress.last(), Some(&train.len()));
    assert!(progress.windows(2).all(|pair| pair[0] < pair[1]));
}

#[test]
fn two_classes_stay_calibrated() {
    let (train, test) = split(synthetic_topics(2, 4_000, 11));
    let mut learner = Learner::default();
    learner.train(&train, |_| {}).unwrap();
    let (calibrated, uncalibrated) = with_and_without_temperature("2 classes", &learner, &test);
    assert!(calibrated.ece <= 0.05, "{calibrated}");
    assert!(
        calibrated.log_loss <= uncalibrated.log_loss + 0.005,
        "{calibrated}\n{uncalibrated}"
    );
    // The weights learn as before: the same examples through update_batch give the same
    // answers at temperature 1.
    let mut old_way = Learner::default();
    let (held_out, kept): (Vec<_>, Vec<_>) = train
        .iter()
        .cloned()
        .partition(|(text, _)| learner::is_held_out(text));
    old_way.update_batch(&kept).unwrap();
    old_way.update_batch(&held_out).unwrap();
    old_way.set_temperature(1.0).unwrap();
    let mut raw = learner.clone();
    raw.set_temperature(1.0).unwrap();
    assert_eq!(evaluate(&old_way, &test), evaluate(&raw, &test));
}

/// A learner that starts from a few hundred examples and then learns one outcome at a time,
/// as `keel serve` does, keeps its confidence honest through the prequential updates of the
/// temperature (measured: ECE 0.025 against 0.10 at temperature 1).
#[test]
fn online_updates_keep_calibration() {
    let (train, test) = split(synthetic_topics(16, 12_000, 11));
    let mut learner = Learner::default();
    learner.train(&train[..500], |_| {}).unwrap();
    let after_start = learner.temperature();
    for batch in train[500..].chunks(10) {
        learner.update_batch(batch).unwrap();
    }
    assert_ne!(
        learner.temperature(),
        after_start,
        "online updates move the temperature"
    );
    let (calibrated, uncalibrated) =
        with_and_without_temperature("16 classes online", &learner, &test);
    assert!(calibrated.ece <= 0.05, "{calibrated}");
    assert!(calibrated.ece * 2.0 <= uncalibrated.ece, "{uncalibrated}");
}

#[test]
fn training_is_deterministic_and_round_trips() {
    let (train, _) = split(synthetic_topics(4, 1_500, 3));
    let mut first = Learner::default();
    let mut second = Learner::default();
    let report = first.train(&train, |_| {}).unwrap();
    assert_eq!(second.train(&train, |_| {}).unwrap(), report);
    assert_eq!(first.to_bytes(), second.to_bytes());
    assert!(
        report.held_out > 0 && first.temperature() != 1.0,
        "{report:?}"
    );
    let restored = Learner::from_bytes(&first.to_bytes()).unwrap();
    assert_eq!(restored.temperature(), first.temperature());
    assert_eq!(
        restored.predict("anything at all"),
        first.predict("anything at all")
    );

    // Too few to hold out: everything is learnt in order, nothing fitted.
    let mut small = Learner::default();
    let report = small.train(&examples(BILLING_AND_PARTY), |_| {}).unwrap();
    assert_eq!((report.held_out, report.held_out_log_loss_after), (0, None));
    let mut same = trained(BILLING_AND_PARTY);
    assert_eq!(small.to_bytes(), {
        same.set_temperature(same.temperature()).unwrap();
        same.to_bytes()
    });
    // Labels are checked before anything is learnt.
    let before = small.to_bytes();
    assert!(small.train(&examples(&[("x", "")]), |_| {}).is_err());
    assert_eq!(small.to_bytes(), before);
    assert!(small.set_temperature(0.0).is_err() && small.set_temperature(f32::NAN).is_err());
}

/// Written by the learner of format version 1 (buckets_log2 10, no character n-grams) after
/// learning "cheap pills now" → spam and "meeting notes" → ham.
const VERSION_1_BYTES: &str = "4b45454c2d4c524e01000a0000010000c0406f12833a00400000000000000100000000000000020000000000000002047370616d0368616db122043eb360983e08940101e2baab3f000000002401e2baab3f000000008f0201e2baab3f00000000c70101e2baab3f00000000ec0101a8acb2bf16851b402001a8acb2bf16851b400a01e2baab3f000000005001a8acb2bf16851b405bddfe12b5ed16580f2d5097e8f2bccccbf9e3d50461df2302b5ee9b013e188b";

#[test]
fn version_1_bytes_still_load_with_temperature_1() {
    let bytes = hex::decode(VERSION_1_BYTES).unwrap();
    let old = Learner::from_bytes(&bytes).unwrap();
    assert_eq!(old.temperature(), 1.0);
    assert_eq!((old.version(), old.examples_seen()), (1, 2));
    assert_eq!(old.classes(), labels(&["spam", "ham"]).as_slice());
    // The answers version 1 gave, printed by that build.
    for (text, label, probability) in [
        ("cheap pills", "spam", 0.896155177088701),
        ("notes", "ham", 0.9819157846211257),
        ("", "ham", 0.5420440248112797),
    ] {
        let prediction = old.predict(text).unwrap();
        assert_eq!(prediction.label, label);
        assert!(
            (prediction.probability - probability).abs() < 1e-12,
            "{prediction:?}"
        );
    }
    // Written back as version 2, it answers the same.
    let rewritten = old.to_bytes();
    assert_eq!(
        u16::from_le_bytes([rewritten[8], rewritten[9]]),
        learner::FORMAT_VERSION
    );
    assert_eq!(rewritten.len(), bytes.len() + 4);
    let new = Learner::from_bytes(&rewritten).unwrap();
    assert_eq!(new.predict("cheap pills"), old.predict("cheap pills"));
}

/// Calibration figures over several seeds, printed, not asserted:
/// `KEEL_LEARNER_FIGURES=1 cargo test --release -p keel-ai calibration_figures -- --nocapture`.
#[test]
fn calibration_figures() {
    if std::env::var_os("KEEL_LEARNER_FIGURES").is_none() {
        return;
    }
    for (classes, count) in [
        (2, 4_000),
        (2, 20_000),
        (4, 6_000),
        (16, 12_000),
        (16, 50_000),
    ] {
        for seed in [11, 12, 13] {
            let (train, test) = split(synthetic_topics(classes, count, seed));
            let mut learner = Learner::default();
            learner.train(&train, |_| {}).unwrap();
            let name = format!("{classes} classes, {count} texts, seed {seed}");
            with_and_without_temperature(&name, &learner, &test);
            let mut online = Learner::default();
            online.train(&train[..500], |_| {}).unwrap();
            for batch in train[500..].chunks(10) {
                online.update_batch(batch).unwrap();
            }
            with_and_without_temperature(&format!("{name}, online"), &online, &test);
        }
    }
    let mut spam = Learner::default();
    let training = spam.train(&spam_file("spam-sample.jsonl"), |_| {}).unwrap();
    eprintln!("spam sample: {training:?}");
    with_and_without_temperature("spam holdout", &spam, &spam_file("spam-holdout.jsonl"));
}
