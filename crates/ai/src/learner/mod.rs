//! The local learner: Keel's built-in classifier for `classify` tasks. It costs no tokens and
//! learns online from labelled outcomes, so it can sit as tier 0 of a model cascade: as it
//! learns, the easy cases stop reaching paid models.
//!
//! The model is multinomial logistic regression (softmax) over hashed features of the text:
//! lowercased word unigrams and bigrams, symbols (`$`, `!`), and character n-grams of each
//! word between boundary markers (`<word>`), hashed into `2^buckets_log2` buckets with
//! hashes written here (FNV-1a and multiply-xorshift mixes: stable across platforms and
//! releases, since stored weights depend on them). Each text's feature vector is scaled by
//! `1/sqrt(n)` (`n` features), so long texts do not dominate. Weights are laid out
//! bucket-major (`[bucket][class]`, contiguous `f32`): one feature costs one cache line
//! whatever the number of classes.
//!
//! Learning is one stochastic gradient step per example with a per-bucket learning rate
//! `learning_rate / sqrt(occurrences of the bucket)`: features seen for the first time move
//! fast (a handful of examples separate obvious classes), frequent ones settle. Nothing is
//! random, so the same examples in the same order give the same bytes.
//!
//! Labels are strings and the label set grows as new labels arrive. A learner that knows
//! fewer than two labels does not answer ([`Learner::predict`] returns `None`), which a
//! cascade reads as "not accepted". The model is persisted with [`Learner::to_bytes`]:
//! versioned, sparse (only buckets that training touched) and ending with a SHA-256 so that
//! corruption is an [`Error`], never a panic. The hashes and the feature extraction are part
//! of that format: changing either needs a new [`FORMAT_VERSION`] (a unit test pins them).
//!
//! Architecture invariant: no IO and no clock here except in [`bench`], which measures speed
//! on purpose; storing the bytes is the caller's business.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

mod evaluation;
mod features;
mod format;

pub use evaluation::{evaluate, Evaluation};
use features::extract_features;

/// The version of the byte format written by [`Learner::to_bytes`]. Every version starts with
/// [`MAGIC`] and ends with the SHA-256 of all bytes before it.
pub const FORMAT_VERSION: u16 = 1;

/// First bytes of a serialized learner.
pub const MAGIC: [u8; 8] = *b"KEEL-LRN";

/// At most this many labels, whatever the options: a `classify` task with more is not what
/// a linear model of this size is for.
pub const MAX_CLASSES: usize = 256;

/// At most this many weights (`buckets × classes`, 512 MiB of `f32`); with many buckets the
/// label limit is lower than [`MAX_CLASSES`].
pub const MAX_WEIGHTS: usize = 1 << 27;

/// Labels are short names, not texts.
pub const MAX_LABEL_BYTES: usize = 256;

const CHECKSUM_BYTES: usize = 32;

/// Probabilities are clipped to this before taking a logarithm, so one confident mistake
/// costs a large but finite log loss.
const MIN_PROBABILITY: f64 = 1e-15;

/// The bias learns the label frequencies; it moves more slowly than the features so that the
/// first examples do not turn into a prior.
const BIAS_RATE: f32 = 0.1;

/// The learner's errors. None is a programmer error: each comes from data (a label, options,
/// stored bytes) and says what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("invalid learner options: {0}")]
    InvalidOptions(String),
    #[error("invalid label {label:?}: {reason}")]
    InvalidLabel { label: String, reason: &'static str },
    #[error(
        "cannot add label {label:?}: the learner already knows {limit} labels, the limit for its \
         bucket count; use fewer labels or a learner with fewer buckets"
    )]
    TooManyClasses { label: String, limit: usize },
    #[error("not a Keel learner model: the bytes do not start with the learner's magic bytes")]
    NotALearner,
    #[error(
        "the learner model is corrupt: its SHA-256 does not match (the bytes were changed or \
         cut short); restore them from the store or train again"
    )]
    ChecksumMismatch,
    #[error(
        "learner model format version {found} is not supported: this build reads version \
         {supported}; use a Keel release that reads it"
    )]
    UnsupportedFormatVersion { found: u16, supported: u16 },
    #[error("the learner model is corrupt: {0}")]
    Corrupt(String),
    #[error("no examples to measure: give the benchmark at least one labelled text")]
    NoExamples,
}

/// How the learner turns text into features and how fast it learns. Fixed for the life of a
/// model (they are stored with the weights). Deserializable so that configuration can set
/// them; missing fields take the defaults, and [`Learner::new`] checks the result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearnerOptions {
    /// `2^buckets_log2` hash buckets (10..=24). 18 keeps collisions rare for the vocabulary of
    /// a business `classify` task while the weights of two classes fit in 2 MiB.
    pub buckets_log2: u8,
    /// Character n-grams of each word, `(min, max)` characters including the boundary markers
    /// (1..=8); `(0, 0)` turns them off. They catch spelling variants, inflections and
    /// obfuscation ("fr33") that whole words miss. The default (4, 5) was as accurate as
    /// (3, 5) on the spam sample with a third fewer features.
    pub char_ngrams: (u8, u8),
    /// Pairs of adjacent words ("not good").
    pub word_bigrams: bool,
    /// Step size of a bucket seen for the first time; later steps shrink as `1/sqrt(count)`.
    pub learning_rate: f32,
    /// Weight decay applied to the weights an example touches.
    pub l2: f32,
    /// Longer texts are cut to this many bytes (at a character boundary): the head of a text
    /// says what it is, and it bounds the cost of one prediction.
    pub max_text_bytes: usize,
}

impl Default for LearnerOptions {
    fn default() -> LearnerOptions {
        LearnerOptions {
            buckets_log2: 18,
            char_ngrams: (4, 5),
            word_bigrams: true,
            // Chosen by 5-fold cross-validation on examples/data/spam-sample.jsonl (emails of
            // about 1 KB): accuracy is flat between 3 and 8, log loss best near 6.
            learning_rate: 6.0,
            l2: 1e-3,
            max_text_bytes: 16 * 1024,
        }
    }
}

impl LearnerOptions {
    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |message: String| Err(Error::InvalidOptions(message));
        if !(10..=24).contains(&self.buckets_log2) {
            return invalid(format!(
                "buckets_log2 is {}, expected 10..=24",
                self.buckets_log2
            ));
        }
        let (min, max) = self.char_ngrams;
        if (min, max) != (0, 0) && !(1 <= min && min <= max && max <= 8) {
            return invalid(format!(
                "char_ngrams is ({min}, {max}), expected (0, 0) or 1 <= min <= max <= 8"
            ));
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= 100.0)
        {
            return invalid(format!(
                "learning_rate is {}, expected (0, 100]",
                self.learning_rate
            ));
        }
        if !(self.l2.is_finite() && (0.0..1.0).contains(&self.l2)) {
            return invalid(format!("l2 is {}, expected [0, 1)", self.l2));
        }
        if !(1..=1 << 20).contains(&self.max_text_bytes) {
            return invalid(format!(
                "max_text_bytes is {}, expected 1..=1048576",
                self.max_text_bytes
            ));
        }
        Ok(())
    }

    fn buckets(&self) -> usize {
        1 << self.buckets_log2
    }

    /// How many labels a model with these options may know.
    pub fn class_limit(&self) -> usize {
        MAX_CLASSES.min(MAX_WEIGHTS / self.buckets())
    }
}

/// One answer of the learner.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The most probable label (on a tie, the label the learner met first).
    pub label: String,
    /// Its probability.
    pub probability: f64,
    /// Every candidate label with its probability, most probable first; they sum to 1.
    pub probabilities: Vec<(String, f64)>,
}

/// Buffers reused across calls so that a prediction allocates nothing per feature. Keep one
/// per thread and pass it to the `_with` methods on hot paths.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    /// `<` and the current word, lowercased (UTF-8).
    word: Vec<u8>,
    /// Character boundaries of `word` when it is not ASCII.
    boundaries: Vec<usize>,
    /// Bucket of each feature of the text, repeats included.
    features: Vec<u32>,
    logits: Vec<f32>,
    probabilities: Vec<f64>,
}

/// The model. See the module documentation for what it learns and how.
#[derive(Clone)]
pub struct Learner {
    options: LearnerOptions,
    /// In the order first seen; a class's index is its column in `weights`.
    classes: Vec<String>,
    /// `buckets × classes.len()`, bucket-major. Empty until the first label.
    weights: Vec<f32>,
    /// Per bucket, how many feature occurrences trained it (saturating). Drives the per-bucket
    /// learning rate and tells which buckets to persist. Empty until the first label.
    counts: Vec<u32>,
    /// Per class.
    bias: Vec<f32>,
    version: u64,
    examples_seen: u64,
    /// For `update`, which has `&mut self`; not part of the model.
    scratch: Scratch,
}

impl fmt::Debug for Learner {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Learner")
            .field("options", &self.options)
            .field("classes", &self.classes)
            .field("version", &self.version)
            .field("examples_seen", &self.examples_seen)
            .finish_non_exhaustive()
    }
}

impl Default for Learner {
    fn default() -> Learner {
        Learner::empty(LearnerOptions::default())
    }
}

impl Learner {
    /// An untrained learner.
    pub fn new(options: LearnerOptions) -> Result<Learner, Error> {
        options.validate()?;
        Ok(Learner::empty(options))
    }

    fn empty(options: LearnerOptions) -> Learner {
        Learner {
            options,
            classes: Vec::new(),
            weights: Vec::new(),
            counts: Vec::new(),
            bias: Vec::new(),
            version: 0,
            examples_seen: 0,
            scratch: Scratch::default(),
        }
    }

    pub fn options(&self) -> &LearnerOptions {
        &self.options
    }

    /// The labels learnt so far, in the order first seen.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Bumped by each [`Learner::update_batch`]; stored with the model so that the caller can
    /// tell which weights answered.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Examples learnt from, over the model's whole life.
    pub fn examples_seen(&self) -> u64 {
        self.examples_seen
    }

    /// Learns from one labelled text: one gradient step. A new label joins the label set.
    /// Does not change [`Learner::version`].
    ///
    /// Training adds an anchor to the softmax, a class that is never the answer and whose
    /// score is always 0, so that the first label learns before a second one arrives.
    pub fn update(&mut self, text: &str, label: &str) -> Result<(), Error> {
        let class = self.class_index_or_insert(label)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        self.learn(&mut scratch, text, class);
        self.scratch = scratch;
        Ok(())
    }

    /// Learns from each example in order, then bumps the version and returns it. All labels
    /// are checked first: on an error nothing has been learnt.
    pub fn update_batch(&mut self, examples: &[(String, String)]) -> Result<u64, Error> {
        let mut new_labels: Vec<&str> = Vec::new();
        for (_, label) in examples {
            validate_label(label)?;
            if self.class_index(label).is_none() && !new_labels.contains(&label.as_str()) {
                new_labels.push(label);
            }
        }
        let limit = self.options.class_limit();
        if self.classes.len() + new_labels.len() > limit {
            let label = new_labels
                .get(limit.saturating_sub(self.classes.len()))
                .copied();
            return Err(Error::TooManyClasses {
                label: label.unwrap_or_default().to_string(),
                limit,
            });
        }
        for (text, label) in examples {
            self.update(text, label)?;
        }
        self.version += 1;
        Ok(self.version)
    }

    /// The learner's answer over every label it knows, or `None` while it knows fewer than two
    /// labels: it cannot tell anything apart yet, and a cascade must treat that as "not
    /// accepted". Allocates its buffers; see [`Learner::predict_with`].
    pub fn predict(&self, text: &str) -> Option<Prediction> {
        self.predict_with(&mut Scratch::default(), text)
    }

    /// [`Learner::predict`] reusing `scratch`.
    pub fn predict_with(&self, scratch: &mut Scratch, text: &str) -> Option<Prediction> {
        if self.classes.len() < 2 {
            return None;
        }
        let candidates: Vec<(&str, Option<usize>)> = self
            .classes
            .iter()
            .enumerate()
            .map(|(index, label)| (label.as_str(), Some(index)))
            .collect();
        Some(self.prediction_over(scratch, text, &candidates))
    }

    /// The learner's answer restricted to `labels` (the labels a workflow declares), the
    /// probabilities renormalised over them. A declared label the learner has not met yet
    /// scores 0, as a class added now would (all-zero weights, the training anchor of
    /// [`Learner::update`]): it keeps some probability instead of silently dropping out. `None` while the
    /// learner knows fewer than two labels, or when it knows none of `labels`.
    pub fn predict_within(&self, text: &str, labels: &[String]) -> Option<Prediction> {
        self.predict_within_with(&mut Scratch::default(), text, labels)
    }

    /// [`Learner::predict_within`] reusing `scratch`.
    pub fn predict_within_with(
        &self,
        scratch: &mut Scratch,
        text: &str,
        labels: &[String],
    ) -> Option<Prediction> {
        if self.classes.len() < 2 {
            return None;
        }
        let mut candidates: Vec<(&str, Option<usize>)> = Vec::with_capacity(labels.len());
        for label in labels {
            if !candidates.iter().any(|(seen, _)| *seen == label.as_str()) {
                candidates.push((label, self.class_index(label)));
            }
        }
        if candidates.iter().all(|(_, class)| class.is_none()) {
            return None;
        }
        Some(self.prediction_over(scratch, text, &candidates))
    }

    fn prediction_over(
        &self,
        scratch: &mut Scratch,
        text: &str,
        candidates: &[(&str, Option<usize>)],
    ) -> Prediction {
        self.probabilities_over(scratch, text, candidates);
        let mut probabilities: Vec<(String, f64)> = candidates
            .iter()
            .zip(&scratch.probabilities)
            .map(|((label, _), probability)| (label.to_string(), *probability))
            .collect();
        // Stable sort: ties keep the candidates' order.
        probabilities.sort_by(|a, b| b.1.total_cmp(&a.1));
        let (label, probability) = probabilities
            .first()
            .cloned()
            .unwrap_or_else(|| (String::new(), 0.0));
        Prediction {
            label,
            probability,
            probabilities,
        }
    }

    /// Fills `scratch.probabilities` with the softmax over `candidates`; a candidate without a
    /// class scores 0 (see [`Learner::predict_within`]).
    fn probabilities_over(
        &self,
        scratch: &mut Scratch,
        text: &str,
        candidates: &[(&str, Option<usize>)],
    ) {
        extract_features(&self.options, text, scratch);
        self.compute_logits(&scratch.features, &mut scratch.logits);
        let logits = &scratch.logits;
        let score = |class: &Option<usize>| class.map_or(0.0, |class| f64::from(logits[class]));
        softmax(
            candidates.iter().map(|(_, class)| score(class)),
            &mut scratch.probabilities,
        );
    }

    /// `logits[class] = bias[class] + scale × Σ weights[feature][class]`.
    fn compute_logits(&self, features: &[u32], logits: &mut Vec<f32>) {
        let classes = self.classes.len();
        logits.clear();
        logits.resize(classes, 0.0);
        if classes == 0 {
            return;
        }
        if classes == 2 {
            // The common case (spam/ham, yes/no) without the inner loop.
            let (rows, _) = self.weights.as_chunks::<2>();
            let (mut first, mut second) = (0.0f32, 0.0f32);
            for &bucket in features {
                let [weight_first, weight_second] = rows[bucket as usize];
                first += weight_first;
                second += weight_second;
            }
            logits[0] = first;
            logits[1] = second;
        } else {
            for &bucket in features {
                let at = bucket as usize * classes;
                let row = &self.weights[at..at + classes];
                for (logit, weight) in logits.iter_mut().zip(row) {
                    *logit += weight;
                }
            }
        }
        let scale = feature_scale(features.len());
        for (logit, bias) in logits.iter_mut().zip(&self.bias) {
            *logit = *logit * scale + bias;
        }
    }

    /// One gradient step of the cross-entropy loss on one example.
    fn learn(&mut self, scratch: &mut Scratch, text: &str, class: usize) {
        let classes = self.classes.len();
        extract_features(&self.options, text, scratch);
        self.compute_logits(&scratch.features, &mut scratch.logits);
        // The anchor: a class without weights whose logit is always 0. Without it a learner
        // that knows one label would learn nothing (its probability is always 1), and the
        // examples that arrive before a second label would be lost.
        softmax(
            scratch
                .logits
                .iter()
                .map(|logit| f64::from(*logit))
                .chain([0.0]),
            &mut scratch.probabilities,
        );
        // Reuse `logits` for the gradient with respect to the logits: p - y.
        for (index, (gradient, probability)) in scratch
            .logits
            .iter_mut()
            .zip(&scratch.probabilities)
            .enumerate()
        {
            let target = if index == class { 1.0 } else { 0.0 };
            *gradient = (*probability - target) as f32;
        }
        let gradient = &scratch.logits;
        let scale = feature_scale(scratch.features.len());
        let (learning_rate, l2) = (self.options.learning_rate, self.options.l2);
        if classes == 2 {
            // As below, without the inner loop.
            let (rows, _) = self.weights.as_chunks_mut::<2>();
            let (first, second) = (scale * gradient[0], scale * gradient[1]);
            for &bucket in &scratch.features {
                let bucket = bucket as usize;
                let count = self.counts[bucket].saturating_add(1);
                self.counts[bucket] = count;
                let rate = learning_rate / (count as f32).sqrt();
                let row = &mut rows[bucket];
                row[0] -= rate * (first + l2 * row[0]);
                row[1] -= rate * (second + l2 * row[1]);
            }
        } else {
            for &bucket in &scratch.features {
                let bucket = bucket as usize;
                let count = self.counts[bucket].saturating_add(1);
                self.counts[bucket] = count;
                let rate = learning_rate / (count as f32).sqrt();
                let row = &mut self.weights[bucket * classes..(bucket + 1) * classes];
                for (weight, gradient) in row.iter_mut().zip(gradient) {
                    *weight -= rate * (scale * gradient + l2 * *weight);
                }
            }
        }
        let bias_rate = learning_rate * BIAS_RATE / ((self.examples_seen + 1) as f32).sqrt();
        for (bias, gradient) in self.bias.iter_mut().zip(gradient) {
            *bias -= bias_rate * gradient;
        }
        self.examples_seen += 1;
    }

    fn class_index(&self, label: &str) -> Option<usize> {
        self.classes.iter().position(|class| class == label)
    }

    fn class_index_or_insert(&mut self, label: &str) -> Result<usize, Error> {
        if let Some(index) = self.class_index(label) {
            return Ok(index);
        }
        validate_label(label)?;
        let limit = self.options.class_limit();
        if self.classes.len() >= limit {
            return Err(Error::TooManyClasses {
                label: label.to_string(),
                limit,
            });
        }
        self.add_class(label);
        Ok(self.classes.len() - 1)
    }

    /// Widens every bucket's row by one zero weight: the new class starts neutral.
    fn add_class(&mut self, label: &str) {
        let buckets = self.options.buckets();
        let old = self.classes.len();
        let new = old + 1;
        let mut weights = vec![0.0f32; buckets * new];
        if old > 0 {
            for (new_row, old_row) in weights
                .chunks_exact_mut(new)
                .zip(self.weights.chunks_exact(old))
            {
                new_row[..old].copy_from_slice(old_row);
            }
        }
        self.weights = weights;
        if self.counts.is_empty() {
            self.counts = vec![0; buckets];
        }
        self.bias.push(0.0);
        self.classes.push(label.to_string());
    }
}

fn validate_label(label: &str) -> Result<(), Error> {
    let reason = if label.is_empty() {
        "a label cannot be empty"
    } else if label.len() > MAX_LABEL_BYTES {
        "a label is at most 256 bytes"
    } else {
        return Ok(());
    };
    let mut shown = label.to_string();
    shown.truncate(floor_char_boundary(label, 64));
    Err(Error::InvalidLabel {
        label: shown,
        reason,
    })
}

/// `1/sqrt(n)`: unit L2 norm when no feature repeats.
fn feature_scale(features: usize) -> f32 {
    if features == 0 {
        0.0
    } else {
        1.0 / (features as f32).sqrt()
    }
}

/// Softmax of `logits` into `out`, in f64, shifted by the maximum so nothing overflows.
fn softmax(logits: impl Iterator<Item = f64> + Clone, out: &mut Vec<f64>) {
    let maximum = logits.clone().fold(f64::NEG_INFINITY, f64::max);
    out.clear();
    out.extend(logits.map(|logit| (logit - maximum).exp()));
    let total: f64 = out.iter().sum();
    for probability in out.iter_mut() {
        *probability /= total;
    }
}

fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

// ---------------------------------------------------------------------------------------------
// Benchmark.

/// When each phase of [`bench`] stops: at whichever limit comes first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchLimits {
    pub max_duration: Duration,
    pub max_iterations: u64,
}

impl Default for BenchLimits {
    fn default() -> BenchLimits {
        BenchLimits {
            max_duration: Duration::from_secs(2),
            max_iterations: 10_000_000,
        }
    }
}

/// What [`bench`] measured, on one thread.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub examples: u64,
    pub mean_text_bytes: f64,
    pub classes: u64,
    pub updates: u64,
    pub update_seconds: f64,
    pub updates_per_s: f64,
    pub predictions: u64,
    pub prediction_seconds: f64,
    pub predictions_per_s: f64,
    /// Size of the trained model from [`Learner::to_bytes`].
    pub model_bytes: u64,
}

/// Measures learning and prediction speed on one thread: a fresh learner learns from the
/// examples in a loop (cycling through them), then predicts them in a loop, each phase until
/// a limit in `limits`. Predictions reuse a [`Scratch`], as a hot path should.
pub fn bench(
    examples: &[(String, String)],
    options: LearnerOptions,
    limits: BenchLimits,
) -> Result<BenchReport, Error> {
    if examples.is_empty() {
        return Err(Error::NoExamples);
    }
    let mut learner = Learner::new(options)?;
    let (updates, update_seconds) = timed_loop(limits, |iteration| {
        let (text, label) = &examples[iteration as usize % examples.len()];
        learner.update(text, label)
    })?;
    let mut scratch = Scratch::default();
    let (predictions, prediction_seconds) = timed_loop(limits, |iteration| {
        let (text, _) = &examples[iteration as usize % examples.len()];
        std::hint::black_box(learner.predict_with(&mut scratch, text));
        Ok(())
    })?;
    let total_bytes: usize = examples.iter().map(|(text, _)| text.len()).sum();
    let per_second = |count: u64, seconds: f64| {
        if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        }
    };
    Ok(BenchReport {
        examples: examples.len() as u64,
        mean_text_bytes: total_bytes as f64 / examples.len() as f64,
        classes: learner.classes.len() as u64,
        updates,
        update_seconds,
        updates_per_s: per_second(updates, update_seconds),
        predictions,
        prediction_seconds,
        predictions_per_s: per_second(predictions, prediction_seconds),
        model_bytes: learner.to_bytes().len() as u64,
    })
}

/// Runs `step` until either limit; reads the clock every 64 steps so it does not weigh on
/// what is measured. Returns the steps run and the seconds they took.
fn timed_loop(
    limits: BenchLimits,
    mut step: impl FnMut(u64) -> Result<(), Error>,
) -> Result<(u64, f64), Error> {
    let start = Instant::now();
    let mut iterations = 0u64;
    while iterations < limits.max_iterations {
        step(iterations)?;
        iterations += 1;
        if iterations.is_multiple_of(64) && start.elapsed() >= limits.max_duration {
            break;
        }
    }
    Ok((iterations, start.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_options() {
        let cases = [
            LearnerOptions {
                buckets_log2: 9,
                ..LearnerOptions::default()
            },
            LearnerOptions {
                buckets_log2: 25,
                ..LearnerOptions::default()
            },
            LearnerOptions {
                char_ngrams: (4, 3),
                ..LearnerOptions::default()
            },
            LearnerOptions {
                char_ngrams: (0, 3),
                ..LearnerOptions::default()
            },
            LearnerOptions {
                learning_rate: 0.0,
                ..LearnerOptions::default()
            },
            LearnerOptions {
                learning_rate: f32::NAN,
                ..LearnerOptions::default()
            },
            LearnerOptions {
                l2: -1.0,
                ..LearnerOptions::default()
            },
            LearnerOptions {
                max_text_bytes: 0,
                ..LearnerOptions::default()
            },
        ];
        for options in cases {
            assert!(
                matches!(Learner::new(options), Err(Error::InvalidOptions(_))),
                "{options:?}"
            );
        }
        assert!(Learner::new(LearnerOptions::default()).is_ok());
    }
}
