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
    future[8] = 2;
    assert_eq!(
        Learner::from_bytes(&with_checksum(future)).unwrap_err(),
        learner::Error::UnsupportedFormatVersion {
            found: 2,
            supported: 1
        }
    );
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
    assert_eq!(evaluation.labels, labels(&["ham", "spam"]));
    // Rows are true labels, columns predicted; the 0.5/0.5 tie goes to the first listed (ham).
    assert_eq!(evaluation.confusion, vec![vec![2, 1], vec![0, 1]]);
    assert_eq!(
        evaluation.to_table(),
        "examples  4\n\
         accuracy  0.7500\n\
         log loss  0.4845\n\
         \n\
         true \\ predicted  ham  spam\n\
         ham                 2     1\n\
         spam                0     1\n"
    );
    assert_eq!(evaluation.to_string(), evaluation.to_table());
    let json = serde_json::to_value(&evaluation).unwrap();
    assert_eq!(json["confusion"], serde_json::json!([[2, 1], [0, 1]]));
    assert_eq!(json["labels"], serde_json::json!(["ham", "spam"]));
}

#[test]
fn evaluation_of_edge_cases() {
    let empty = Evaluation::from_outcomes(&[]);
    assert_eq!((empty.n, empty.accuracy, empty.log_loss), (0, 0.0, 0.0));
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
