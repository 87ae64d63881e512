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
//! # Calibration
//!
//! Cascades accept the learner's answer when its confidence is high enough (`accept_when`),
//! so the confidence must be honest: of the answers given with probability 0.7, about 70 %
//! right. Online SGD over many classes is not: on a 16-class short-text set the raw softmax
//! was under-confident (answers at 0.3–0.4 right half the time; expected calibration error
//! 0.10–0.12), while on two classes it was honest. Every answer therefore divides the logits
//! by a temperature `T` before the softmax (`T < 1` sharpens), one scalar stored with the
//! model. It never changes which label wins, only how sure the learner says it is. Training
//! of the weights ignores it (they learn on the raw logits).
//!
//! - **Fitted at training time.** [`Learner::train`] (used by `keel learner train`) holds out
//!   one example in [`HOLD_OUT_EVERY`], chosen by a hash of its text (so the same examples give
//!   the same split and the same bytes), learns from the others, then sets `T` to the value
//!   that minimises the log-loss of the held-out examples (bisection on `1/T`, where the loss
//!   is convex), then learns the held-out examples too. With fewer than [`MIN_HELD_OUT`] held
//!   out it learns everything and keeps the online estimate.
//! - **Kept current online, prequentially.** Before [`Learner::update`] learns from an example,
//!   it takes one gradient step on `ln T` for the log-loss of the answer the learner would
//!   have given to that still unseen example (`d loss / d ln T = (z_label − E_q[z]) / T`,
//!   clipped, step [`TEMPERATURE_RATE`]); so `keel serve`'s online updates track the model as
//!   it sharpens. Examples with a label the learner has not met yet do not move it.
//!
//! The learning rate is the same whatever the number of classes: scaling it up with the
//! number of classes (by `K/2`, `sqrt(K/2)` or `log2 K`) made the raw model less
//! under-confident but less accurate, with a worse log-loss even after the temperature, on
//! 16 synthetic classes at 12,000 and 50,000 texts; scaling it down did not help either. The
//! temperature is what makes the confidence honest. (Figures: `calibration_figures` in the
//! crate's tests.)
//!
//! Labels are strings and the label set grows as new labels arrive. A learner that knows
//! fewer than two labels does not answer ([`Learner::predict`] returns `None`), which a
//! cascade reads as "not accepted". The model is persisted with [`Learner::to_bytes`]:
//! versioned, sparse (only buckets that training touched) and ending with a SHA-256 so that
//! corruption is an [`Error`], never a panic. The hashes and the feature extraction are part
//! of that format: changing either needs a new [`FORMAT_VERSION`] (a unit test pins them).
//! Version 2 added the temperature; version 1 bytes load with `T = 1`. The code is split into
//! `features.rs` (text → buckets), `format.rs` (bytes) and `evaluation.rs` (metrics).
//!
//! Architecture invariant: no IO and no clock here except in [`bench`], which measures speed
//! on purpose; storing the bytes is the caller's business.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

mod evaluation;
mod features;
mod format;

pub use evaluation::{evaluate, CalibrationBin, Evaluation, CALIBRATION_BINS};
use features::extract_features;

/// The version of the byte format written by [`Learner::to_bytes`]. Every version starts with
/// [`MAGIC`] and ends with the SHA-256 of all bytes before it.
/// Version 2 added the temperature; version 1 still loads (see `format.rs`).
pub const FORMAT_VERSION: u16 = 2;

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

/// The temperature stays within these bounds, whatever the data: outside them the logits are
/// either nearly all equal or one of them is the whole answer.
pub const MIN_TEMPERATURE: f32 = 0.05;
pub const MAX_TEMPERATURE: f32 = 20.0;

/// Step size of the prequential update of `ln T` (see the module documentation): about a few
/// hundred examples to follow a change in the model's sharpness, while one example moves the
/// temperature by at most `TEMPERATURE_RATE × TEMPERATURE_GRADIENT_LIMIT` (2 %). Online ECE
/// was about the same at 0.002 and 0.005 and worse at 0.01 and 0.02.
pub const TEMPERATURE_RATE: f64 = 0.005;
const TEMPERATURE_GRADIENT_LIMIT: f64 = 4.0;

/// [`Learner::train`] holds out one example in this many (chosen by a hash of the text) to fit
/// the temperature on.
pub const HOLD_OUT_EVERY: u64 = 10;

/// Fewer held-out examples than this do not say enough to fit a temperature: [`Learner::train`]
/// learns from them too and keeps the prequential estimate.
pub const MIN_HELD_OUT: usize = 100;

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
        "learner model format version {found} is not supported: this build reads versions 1 \
         to {supported}; use a Keel release that reads it"
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

/// A labelled text: `(text, label)`.
type Example = (String, String);

/// What [`Learner::train`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Training {
    /// The learner's version after training.
    pub version: u64,
    /// Examples learnt from (all of them, the held-out ones last).
    pub examples: u64,
    /// Examples the temperature was fitted on; 0 when there were too few to fit.
    pub held_out: u64,
    /// The temperature the online updates had reached before the fit.
    pub prequential_temperature: f32,
    /// The temperature after training.
    pub temperature: f32,
    /// Mean log-loss of the held-out examples at the prequential temperature, then at the
    /// fitted one; `None` when nothing was fitted.
    pub held_out_log_loss_before: Option<f64>,
    pub held_out_log_loss_after: Option<f64>,
}

/// [`Learner::train`] calls its `progress` every this many examples.
pub const PROGRESS_EVERY: usize = 100;

struct FittedTemperature {
    temperature: f32,
    log_loss_before: f64,
    log_loss_after: f64,
}

/// Whether [`Learner::train`] holds `text` out: one text in [`HOLD_OUT_EVERY`], by a hash of
/// its bytes, so the same examples always give the same split (and a repeated text falls on
/// one side only).
pub fn is_held_out(text: &str) -> bool {
    let hash = features::fnv1a(features::FNV_OFFSET, text.as_bytes());
    (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32).is_multiple_of(HOLD_OUT_EVERY)
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
    /// Divides the logits before the softmax of every answer (not of training, which learns
    /// the weights on the raw logits): below 1 sharpens, above 1 softens. 1 until calibrated.
    temperature: f32,
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
            .field("temperature", &self.temperature)
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
            temperature: 1.0,
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

    /// The temperature that divides the logits of every answer (see the module
    /// documentation); 1 for a model that was never calibrated.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// Sets the temperature, e.g. 1 to see the raw scores, or one fitted elsewhere. Online
    /// updates go on adjusting it from there.
    pub fn set_temperature(&mut self, temperature: f32) -> Result<(), Error> {
        if !(MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&temperature) {
            return Err(Error::InvalidOptions(format!(
                "temperature is {temperature}, expected {MIN_TEMPERATURE}..={MAX_TEMPERATURE}"
            )));
        }
        self.temperature = temperature;
        Ok(())
    }

    /// Learns from one labelled text: one gradient step. A new label joins the label set.
    /// Does not change [`Learner::version`].
    ///
    /// Training adds an anchor to the softmax, a class that is never the answer and whose
    /// score is always 0, so that the first label learns before a second one arrives.
    pub fn update(&mut self, text: &str, label: &str) -> Result<(), Error> {
        self.learn_one(text, label, true)
    }

    /// [`Learner::update`]; `calibrate` says whether the example also moves the temperature
    /// (not when it was just used to fit it).
    fn learn_one(&mut self, text: &str, label: &str, calibrate: bool) -> Result<(), Error> {
        // A label met for the first time was not among the answers the learner could give:
        // its prediction says nothing about the temperature.
        let calibrate = calibrate && self.class_index(label).is_some();
        let class = self.class_index_or_insert(label)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        self.learn(&mut scratch, text, class, calibrate);
        self.scratch = scratch;
        Ok(())
    }

    /// Learns from each example in order, then bumps the version and returns it. All labels
    /// are checked first: on an error nothing has been learnt.
    pub fn update_batch(&mut self, examples: &[(String, String)]) -> Result<u64, Error> {
        self.check_labels(examples)?;
        for (text, label) in examples {
            self.update(text, label)?;
        }
        self.version += 1;
        Ok(self.version)
    }

    /// Trains on a labelled set and calibrates: learns from the examples in order except one
    /// in [`HOLD_OUT_EVERY`] held out by a hash of its text, fits the temperature on the
    /// held-out examples (the log-loss of their predictions, minimised exactly), then learns
    /// from the held-out examples too, in order, without moving the temperature again. With
    /// fewer than [`MIN_HELD_OUT`] held out it learns everything in order and keeps the
    /// prequential temperature. Bumps the version once; `progress` is called with the number
    /// of examples learnt so far, every [`PROGRESS_EVERY`] examples and at the end. All labels
    /// are checked first: on an error nothing has been learnt.
    pub fn train(
        &mut self,
        examples: &[(String, String)],
        mut progress: impl FnMut(usize),
    ) -> Result<Training, Error> {
        self.check_labels(examples)?;
        let (held_out, learnt_first): (Vec<&Example>, Vec<&Example>) =
            examples.iter().partition(|(text, _)| is_held_out(text));
        let fit = held_out.len() >= MIN_HELD_OUT;
        let (first, last): (Vec<&Example>, Vec<&Example>) = if fit {
            (learnt_first, held_out)
        } else {
            (examples.iter().collect(), Vec::new())
        };
        let mut learnt = 0usize;
        for (text, label) in &first {
            self.learn_one(text, label, true)?;
            learnt += 1;
            if learnt.is_multiple_of(PROGRESS_EVERY) {
                progress(learnt);
            }
        }
        let prequential_temperature = self.temperature;
        let mut held_out_log_loss = None;
        if fit {
            if let Some(fitted) = self.fit_temperature(&last) {
                held_out_log_loss = Some((fitted.log_loss_before, fitted.log_loss_after));
                self.temperature = fitted.temperature;
            }
        }
        // Fitted on them: they no longer predict as unseen examples.
        let calibrate = held_out_log_loss.is_none();
        for (text, label) in &last {
            self.learn_one(text, label, calibrate)?;
            learnt += 1;
            if learnt.is_multiple_of(PROGRESS_EVERY) {
                progress(learnt);
            }
        }
        if !learnt.is_multiple_of(PROGRESS_EVERY) || learnt == 0 {
            progress(learnt);
        }
        self.version += 1;
        Ok(Training {
            version: self.version,
            examples: examples.len() as u64,
            held_out: if held_out_log_loss.is_some() {
                last.len() as u64
            } else {
                0
            },
            prequential_temperature,
            temperature: self.temperature,
            held_out_log_loss_before: held_out_log_loss.map(|(before, _)| before),
            held_out_log_loss_after: held_out_log_loss.map(|(_, after)| after),
        })
    }

    /// The temperature that minimises the mean log-loss of `examples` (labels the learner does
    /// not know yet are left out), or `None` when fewer than two labels are known or no
    /// example is left. The loss is convex in `1/T`: its derivative, `Σ (E_q[z] - z_label)`,
    /// grows with `1/T`, so bisection finds the minimum within the bounds.
    fn fit_temperature(&self, examples: &[&Example]) -> Option<FittedTemperature> {
        if self.classes.len() < 2 {
            return None;
        }
        let mut scratch = Scratch::default();
        let mut scored: Vec<(Vec<f32>, usize)> = Vec::with_capacity(examples.len());
        for (text, label) in examples {
            if let Some(class) = self.class_index(label) {
                extract_features(&self.options, text, &mut scratch);
                self.compute_logits(&scratch.features, &mut scratch.logits);
                scored.push((scratch.logits.clone(), class));
            }
        }
        if scored.is_empty() {
            return None;
        }
        let temperature = fit_temperature(&scored, &mut scratch.probabilities);
        Some(FittedTemperature {
            temperature,
            log_loss_before: mean_log_loss(&scored, self.temperature, &mut scratch.probabilities),
            log_loss_after: mean_log_loss(&scored, temperature, &mut scratch.probabilities),
        })
    }

    /// Checks every label of `examples` and that the new ones fit under the label limit.
    fn check_labels(&self, examples: &[(String, String)]) -> Result<(), Error> {
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
        Ok(())
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
        let inverse_temperature = 1.0 / f64::from(self.temperature);
        let score = |class: &Option<usize>| {
            class.map_or(0.0, |class| f64::from(logits[class]) * inverse_temperature)
        };
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

    /// One gradient step of the cross-entropy loss on one example; before it, when
    /// `calibrate`, one step of the temperature on the answer the learner would have given.
    fn learn(&mut self, scratch: &mut Scratch, text: &str, class: usize, calibrate: bool) {
        let classes = self.classes.len();
        extract_features(&self.options, text, scratch);
        self.compute_logits(&scratch.features, &mut scratch.logits);
        if calibrate && classes >= 2 {
            self.temperature = temperature_step(
                self.temperature,
                &scratch.logits,
                class,
                &mut scratch.probabilities,
            );
        }
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

/// One prequential gradient step of the log-loss on `ln T` for an example the model has not
/// learnt yet: `logits` are its raw scores and `class` its label. With `q = softmax(z / T)`,
/// `d loss / d ln T = (z_class - Σ q_k z_k) / T`: positive when the label scored above the
/// model's expectation (it was too shy), which lowers T. The gradient is clipped so one odd
/// example cannot swing the temperature; `probabilities` is scratch space.
fn temperature_step(
    temperature: f32,
    logits: &[f32],
    class: usize,
    probabilities: &mut Vec<f64>,
) -> f32 {
    let temperature_f64 = f64::from(temperature);
    let scaled = logits
        .iter()
        .map(|logit| f64::from(*logit) / temperature_f64);
    softmax(scaled, probabilities);
    let expected: f64 = probabilities
        .iter()
        .zip(logits)
        .map(|(probability, logit)| probability * f64::from(*logit))
        .sum();
    let gradient = (f64::from(logits[class]) - expected) / temperature_f64;
    let gradient = gradient.clamp(-TEMPERATURE_GRADIENT_LIMIT, TEMPERATURE_GRADIENT_LIMIT);
    let log_temperature = temperature_f64.ln() - TEMPERATURE_RATE * gradient;
    (log_temperature.exp() as f32).clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)
}

/// Bisection on `β = 1/T` for the zero of the derivative of the mean log-loss of `scored`
/// (raw logits and the label's index), within the temperature bounds; 60 halvings of the
/// interval in `ln β` are far below what an `f32` temperature can show.
fn fit_temperature(scored: &[(Vec<f32>, usize)], probabilities: &mut Vec<f64>) -> f32 {
    let mut slope = |beta: f64| -> f64 {
        let mut total = 0.0;
        for (logits, class) in scored {
            softmax(
                logits.iter().map(|logit| f64::from(*logit) * beta),
                probabilities,
            );
            let expected: f64 = probabilities
                .iter()
                .zip(logits)
                .map(|(probability, logit)| probability * f64::from(*logit))
                .sum();
            total += expected - f64::from(logits[*class]);
        }
        total
    };
    let (mut low, mut high) = (
        (1.0 / f64::from(MAX_TEMPERATURE)).ln(),
        (1.0 / f64::from(MIN_TEMPERATURE)).ln(),
    );
    if slope(low.exp()) >= 0.0 {
        return MAX_TEMPERATURE;
    }
    if slope(high.exp()) <= 0.0 {
        return MIN_TEMPERATURE;
    }
    for _ in 0..60 {
        let middle = 0.5 * (low + high);
        if slope(middle.exp()) < 0.0 {
            low = middle;
        } else {
            high = middle;
        }
    }
    ((1.0 / (0.5 * (low + high)).exp()) as f32).clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)
}

/// Mean of `-ln p(label)` over `scored` at `temperature`.
fn mean_log_loss(
    scored: &[(Vec<f32>, usize)],
    temperature: f32,
    probabilities: &mut Vec<f64>,
) -> f64 {
    let inverse = 1.0 / f64::from(temperature);
    let total: f64 = scored
        .iter()
        .map(|(logits, class)| {
            softmax(
                logits.iter().map(|logit| f64::from(*logit) * inverse),
                probabilities,
            );
            -probabilities[*class].max(MIN_PROBABILITY).ln()
        })
        .sum();
    total / scored.len().max(1) as f64
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
    /// Quality on every fifth example of the list by a learner trained ([`Learner::train`])
    /// on the others: accuracy, log-loss and expected calibration error (equal-width bins,
    /// see [`Evaluation::ece`]) on the test examples, and the fitted temperature.
    pub test_examples: u64,
    pub test_accuracy: f64,
    pub test_log_loss: f64,
    pub test_ece: f64,
    pub temperature: f32,
}

/// Measures quality, then learning and prediction speed on one thread. Quality: a learner
/// trained on four examples in five is tested on the fifth. Speed: a fresh learner learns
/// from the examples in a loop (cycling through them), then predicts them in a loop, each
/// phase until a limit in `limits`. Predictions reuse a [`Scratch`], as a hot path should.
pub fn bench(
    examples: &[(String, String)],
    options: LearnerOptions,
    limits: BenchLimits,
) -> Result<BenchReport, Error> {
    if examples.is_empty() {
        return Err(Error::NoExamples);
    }
    let (test, train): (Vec<_>, Vec<_>) = examples
        .iter()
        .enumerate()
        .partition(|(index, _)| index % 5 == 0);
    let train: Vec<(String, String)> = train.into_iter().map(|(_, pair)| pair.clone()).collect();
    let test: Vec<(String, String)> = test.into_iter().map(|(_, pair)| pair.clone()).collect();
    let mut calibrated = Learner::new(options)?;
    calibrated.train(&train, |_| {})?;
    let quality = evaluate(&calibrated, &test);
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
        test_examples: quality.n,
        test_accuracy: quality.accuracy,
        test_log_loss: quality.log_loss,
        test_ece: quality.ece,
        temperature: calibrated.temperature(),
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

    /// Labels drawn from `softmax(z / temperature)` for uniform random logits.
    fn drawn_at(temperature: f64, count: usize) -> Vec<(Vec<f32>, usize)> {
        let mut random = fastrand::Rng::with_seed(5);
        let mut probabilities = Vec::new();
        (0..count)
            .map(|_| {
                let logits: Vec<f32> = (0..4).map(|_| random.f32() * 4.0 - 2.0).collect();
                softmax(
                    logits.iter().map(|logit| f64::from(*logit) / temperature),
                    &mut probabilities,
                );
                let mut left = random.f64();
                let mut class = probabilities.len() - 1;
                for (index, probability) in probabilities.iter().enumerate() {
                    if left < *probability {
                        class = index;
                        break;
                    }
                    left -= probability;
                }
                (logits, class)
            })
            .collect()
    }

    #[test]
    fn the_fit_recovers_a_known_temperature() {
        let mut probabilities = Vec::new();
        for truth in [0.5f32, 1.0, 2.5] {
            let scored = drawn_at(f64::from(truth), 20_000);
            let fitted = fit_temperature(&scored, &mut probabilities);
            assert!((fitted / truth - 1.0).abs() < 0.05, "{truth}: {fitted}");
            let at = |temperature| mean_log_loss(&scored, temperature, &mut Vec::new());
            assert!(at(fitted) <= at(fitted * 1.1) && at(fitted) <= at(fitted / 1.1));
        }
        // Always right with a wide margin: as sharp as allowed; always wrong: as soft.
        let right = vec![(vec![5.0, 0.0], 0); 10];
        assert_eq!(fit_temperature(&right, &mut probabilities), MIN_TEMPERATURE);
        let wrong = vec![(vec![5.0, 0.0], 1); 10];
        assert_eq!(fit_temperature(&wrong, &mut probabilities), MAX_TEMPERATURE);
    }

    #[test]
    fn the_prequential_step_follows_the_surprise() {
        let mut probabilities = Vec::new();
        let logits = [2.0f32, 0.0, -1.0];
        // Right with the highest score: too shy, sharpen. Wrong: too sure, soften.
        assert!(temperature_step(1.0, &logits, 0, &mut probabilities) < 1.0);
        assert!(temperature_step(1.0, &logits, 2, &mut probabilities) > 1.0);
        // One example moves T by at most 2 %, and never past the bounds.
        let moved = temperature_step(1.0, &[100.0, -100.0], 1, &mut probabilities);
        assert!((moved - 1.0).abs() <= 0.021, "{moved}");
        let at_bound = temperature_step(MIN_TEMPERATURE, &logits, 0, &mut probabilities);
        assert_eq!(at_bound, MIN_TEMPERATURE);
    }

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
