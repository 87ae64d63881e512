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
use sha2::{Digest, Sha256};

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
// Features. Everything here is part of the persisted format.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Salts that give each kind of feature its own hash family, so that a word and an n-gram
/// with the same bytes land in different buckets.
const SALT_WORD: u64 = 0x776f_7264_0000_0000;
const SALT_SYMBOL: u8 = b's';
const SALT_BIGRAM: u64 = 0x6269_6772_616d_0000;
const SALT_CHAR_NGRAM: u64 = 0x6e67_7261_6d00_0000;
const WORD_START: u8 = b'<';
const WORD_END: u8 = b'>';
/// Zero bytes kept after a word so that an 8-byte window can be read at any of its characters.
const PADDING: usize = 8;

/// FNV-1a, 64 bits, one byte at a time: stable across platforms, fast on short inputs.
#[inline]
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn salted(salt: u8) -> u64 {
    fnv1a(FNV_OFFSET, &[salt])
}

/// Multiply-shift: the top bits of `hash × φ·2^64` depend on every bit of `hash`.
#[inline]
fn bucket_of(hash: u64, buckets_log2: u8) -> u32 {
    (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - u32::from(buckets_log2))) as u32
}

/// Order-sensitive: "not good" and "good not" differ.
fn bigram_hash(previous: u64, current: u64) -> u64 {
    (previous.rotate_left(23).wrapping_mul(FNV_PRIME) ^ current ^ SALT_BIGRAM)
        .wrapping_mul(FNV_PRIME)
}

/// The hash of a character n-gram of `length` bytes starting at `word[start]` (`word`
/// padded). Up to 8 bytes the bytes themselves are the key, read as one little-endian word
/// (words hold no zero byte, so the length is implied) and mixed with a multiplication: one
/// load instead of a loop. Longer n-grams (non-ASCII) go through FNV-1a.
#[inline]
fn char_ngram_hash(word: &[u8], start: usize, length: usize) -> u64 {
    if length <= 8 {
        mix_char_ngram(read_window(word, start) & byte_mask(length))
    } else {
        mix_char_ngram(fnv1a(FNV_OFFSET, &word[start..start + length]))
    }
}

#[inline]
fn read_window(word: &[u8], start: usize) -> u64 {
    let mut window = [0u8; 8];
    window.copy_from_slice(&word[start..start + 8]);
    u64::from_le_bytes(window)
}

/// The low `length` bytes (1..=8).
#[inline]
fn byte_mask(length: usize) -> u64 {
    u64::MAX >> (64 - 8 * length)
}

#[inline]
fn mix_char_ngram(key: u64) -> u64 {
    let key = key ^ SALT_CHAR_NGRAM;
    let mixed = (key ^ (key >> 31)).wrapping_mul(0x7fb5_d329_728e_a185);
    mixed ^ (mixed >> 27)
}

/// The hash of a word, `word[1..1 + length]` (`word` padded): 8 bytes per multiplication
/// rather than FNV-1a's one, since words (and URLs) can be long.
#[inline]
fn word_hash(word: &[u8], length: usize) -> u64 {
    let mut hash = SALT_WORD ^ (length as u64).wrapping_mul(FNV_PRIME);
    let mut start = 1;
    while start <= length {
        let chunk = read_window(word, start) & byte_mask((length + 1 - start).min(8));
        hash = (hash ^ chunk)
            .wrapping_mul(0x9fb2_1c65_1e98_df25)
            .rotate_left(29);
        start += 8;
    }
    hash ^ (hash >> 32)
}

/// What each byte is to the tokenizer: one load per byte instead of range checks. ASCII bytes
/// answer as `char::is_alphanumeric` and `char::is_whitespace` do; the rest start a
/// multi-byte character that is looked at whole.
const BYTE_CLASSES: [ByteClass; 256] = byte_classes();

#[derive(Clone, Copy, PartialEq, Eq)]
enum ByteClass {
    Alphanumeric,
    Whitespace,
    Symbol,
    NonAscii,
}

const fn byte_classes() -> [ByteClass; 256] {
    let mut classes = [ByteClass::NonAscii; 256];
    let mut byte = 0u8;
    while byte < 128 {
        classes[byte as usize] = if byte.is_ascii_alphanumeric() {
            ByteClass::Alphanumeric
        } else if matches!(byte, b'\t'..=b'\r' | b' ') {
            // Tab, line feed, vertical tab, form feed, carriage return, space.
            ByteClass::Whitespace
        } else {
            ByteClass::Symbol
        };
        byte += 1;
    }
    classes
}

/// Fills `scratch.features` with the bucket of every feature of `text`, repeats included.
///
/// Tokens are maximal runs of alphanumeric characters (words, lowercased) and single
/// characters that are neither alphanumeric nor whitespace (symbols: `$`, `!`, `@`). Each
/// token gives a unigram and, with the previous token, a bigram; each word also gives its
/// character n-grams between the markers `<` and `>`. ASCII bytes take a fast path that
/// answers as `char::is_alphanumeric` and `char::is_whitespace` do.
fn extract_features(options: &LearnerOptions, text: &str, scratch: &mut Scratch) {
    let text = &text[..floor_char_boundary(text, options.max_text_bytes)];
    let bytes = text.as_bytes();
    scratch.features.clear();
    scratch.word.clear();
    scratch.word.push(WORD_START);
    let mut previous: Option<u64> = None;
    let mut word_is_ascii = true;
    let mut index = 0;
    while index < bytes.len() {
        let class = BYTE_CLASSES[usize::from(bytes[index])];
        let (is_alphanumeric, is_whitespace, width) = if class != ByteClass::NonAscii {
            if class == ByteClass::Alphanumeric {
                let end = bytes[index..]
                    .iter()
                    .position(|byte| BYTE_CLASSES[usize::from(*byte)] != ByteClass::Alphanumeric)
                    .map_or(bytes.len(), |length| index + length);
                let from = scratch.word.len();
                scratch.word.extend_from_slice(&bytes[index..end]);
                scratch.word[from..].make_ascii_lowercase();
                index = end;
                continue;
            }
            (false, class == ByteClass::Whitespace, 1)
        } else {
            let Some(character) = text[index..].chars().next() else {
                break;
            };
            if character.is_alphanumeric() {
                let mut encoded = [0u8; 4];
                for lower in character.to_lowercase() {
                    let lower = lower.encode_utf8(&mut encoded).as_bytes();
                    scratch.word.extend_from_slice(lower);
                }
                word_is_ascii = false;
            }
            let is_whitespace = character.is_whitespace();
            (
                character.is_alphanumeric(),
                is_whitespace,
                character.len_utf8(),
            )
        };
        if !is_alphanumeric {
            if scratch.word.len() > 1 {
                previous = Some(emit_word(options, scratch, word_is_ascii, previous));
                word_is_ascii = true;
            }
            if !is_whitespace {
                let hash = fnv1a(salted(SALT_SYMBOL), &bytes[index..index + width]);
                previous = Some(emit_token(options, scratch, hash, previous));
            }
        }
        index += width;
    }
    if scratch.word.len() > 1 {
        emit_word(options, scratch, word_is_ascii, previous);
    }
}

/// Emits a token's unigram and its bigram with the previous token; returns its hash.
fn emit_token(
    options: &LearnerOptions,
    scratch: &mut Scratch,
    hash: u64,
    previous: Option<u64>,
) -> u64 {
    scratch.features.push(bucket_of(hash, options.buckets_log2));
    if let (true, Some(previous)) = (options.word_bigrams, previous) {
        let bigram = bigram_hash(previous, hash);
        scratch
            .features
            .push(bucket_of(bigram, options.buckets_log2));
    }
    hash
}

/// Emits the features of the word in `scratch.word` (`<` + the word's lowercased bytes, none
/// zero),
/// leaves `scratch.word` holding `<` for the next word, and returns the word's hash.
fn emit_word(
    options: &LearnerOptions,
    scratch: &mut Scratch,
    is_ascii: bool,
    previous: Option<u64>,
) -> u64 {
    let length = scratch.word.len() - 1;
    scratch.word.push(WORD_END);
    scratch.word.extend_from_slice(&[0; PADDING]);
    let hash = word_hash(&scratch.word, length);
    emit_token(options, scratch, hash, previous);
    let (min, max) = (
        usize::from(options.char_ngrams.0),
        usize::from(options.char_ngrams.1),
    );
    if max > 0 {
        // With its markers.
        let length = length + 2;
        let log2 = options.buckets_log2;
        let (word, features) = (&scratch.word, &mut scratch.features);
        if is_ascii {
            // One byte, one character: one window read gives every n-gram of a start, and the
            // slots are made once per word rather than pushed one by one.
            let total: usize = (min..=max).map(|n| (length + 1).saturating_sub(n)).sum();
            let base = features.len();
            features.resize(base + total, 0);
            let mut slots = features[base..].iter_mut();
            for first in 0..(length + 1).saturating_sub(min) {
                let window = read_window(word, first);
                for ngram_length in min..=max.min(length - first) {
                    if let Some(slot) = slots.next() {
                        *slot = bucket_of(mix_char_ngram(window & byte_mask(ngram_length)), log2);
                    }
                }
            }
        } else {
            let boundaries = &mut scratch.boundaries;
            boundaries.clear();
            boundaries.extend((0..length).filter(|index| word[*index] & 0xc0 != 0x80));
            boundaries.push(length);
            let characters = boundaries.len() - 1;
            for first in 0..(characters + 1).saturating_sub(min) {
                for last in first + min..=characters.min(first + max) {
                    let (start, end) = (boundaries[first], boundaries[last]);
                    let hash = char_ngram_hash(word, start, end - start);
                    features.push(bucket_of(hash, log2));
                }
            }
        }
    }
    scratch.word.truncate(1);
    hash
}

// ---------------------------------------------------------------------------------------------
// Persistence.

impl Learner {
    /// The model as bytes: magic, format version, options, counters, labels, biases, then only
    /// the buckets that training touched (gap-encoded index, count, one `f32` per class), and
    /// the SHA-256 of everything before. Continuing to train a model read back gives the same
    /// bytes as never having stored it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let classes = self.classes.len();
        let touched = self.counts.iter().filter(|count| **count > 0).count();
        let mut out = Vec::with_capacity(128 + touched * (6 + 4 * classes));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let options = &self.options;
        out.push(options.buckets_log2);
        out.push(options.char_ngrams.0);
        out.push(options.char_ngrams.1);
        out.push(u8::from(options.word_bigrams));
        out.extend_from_slice(&options.learning_rate.to_le_bytes());
        out.extend_from_slice(&options.l2.to_le_bytes());
        out.extend_from_slice(&(options.max_text_bytes as u64).to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.examples_seen.to_le_bytes());
        put_varint(&mut out, classes as u64);
        for label in &self.classes {
            put_varint(&mut out, label.len() as u64);
            out.extend_from_slice(label.as_bytes());
        }
        for bias in &self.bias {
            out.extend_from_slice(&bias.to_le_bytes());
        }
        put_varint(&mut out, touched as u64);
        let mut next = 0usize;
        for (bucket, count) in self.counts.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            put_varint(&mut out, (bucket - next) as u64);
            put_varint(&mut out, u64::from(*count));
            for weight in &self.weights[bucket * classes..(bucket + 1) * classes] {
                out.extend_from_slice(&weight.to_le_bytes());
            }
            next = bucket + 1;
        }
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        out
    }

    /// Reads [`Learner::to_bytes`] back, checking the magic bytes, the checksum, the format
    /// version and every value against its bounds.
    pub fn from_bytes(bytes: &[u8]) -> Result<Learner, Error> {
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::NotALearner);
        }
        if bytes.len() < MAGIC.len() + 2 + CHECKSUM_BYTES {
            return Err(Error::ChecksumMismatch);
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if Sha256::digest(body).as_slice() != checksum {
            return Err(Error::ChecksumMismatch);
        }
        let mut reader = Reader {
            bytes: body,
            position: MAGIC.len(),
        };
        let found = reader.u16()?;
        if found != FORMAT_VERSION {
            return Err(Error::UnsupportedFormatVersion {
                found,
                supported: FORMAT_VERSION,
            });
        }
        let learner = read_learner(&mut reader)?;
        if reader.position != body.len() {
            return Err(Error::Corrupt(format!(
                "{} unexpected bytes after the weights",
                body.len() - reader.position
            )));
        }
        Ok(learner)
    }
}

fn read_learner(reader: &mut Reader<'_>) -> Result<Learner, Error> {
    let options = LearnerOptions {
        buckets_log2: reader.u8()?,
        char_ngrams: (reader.u8()?, reader.u8()?),
        word_bigrams: match reader.u8()? {
            0 => false,
            1 => true,
            other => return Err(Error::Corrupt(format!("word_bigrams flag is {other}"))),
        },
        learning_rate: reader.f32()?,
        l2: reader.f32()?,
        max_text_bytes: usize::try_from(reader.u64()?)
            .map_err(|_| Error::Corrupt("max_text_bytes does not fit".to_string()))?,
    };
    options
        .validate()
        .map_err(|error| Error::Corrupt(error.to_string()))?;
    let mut learner = Learner::empty(options);
    learner.version = reader.u64()?;
    learner.examples_seen = reader.u64()?;
    let classes = reader.length(options.class_limit(), "labels")?;
    for _ in 0..classes {
        let length = reader.length(MAX_LABEL_BYTES, "label bytes")?;
        let label = std::str::from_utf8(reader.take(length)?)
            .map_err(|_| Error::Corrupt("a label is not UTF-8".to_string()))?;
        validate_label(label).map_err(|error| Error::Corrupt(error.to_string()))?;
        if learner.class_index(label).is_some() {
            return Err(Error::Corrupt(format!("label {label:?} appears twice")));
        }
        learner.add_class(label);
    }
    for class in 0..classes {
        learner.bias[class] = reader.finite_f32()?;
    }
    read_rows(reader, &mut learner)?;
    Ok(learner)
}

fn read_rows(reader: &mut Reader<'_>, learner: &mut Learner) -> Result<(), Error> {
    let buckets = learner.options.buckets();
    let classes = learner.classes.len();
    let touched = reader.length(buckets, "touched buckets")?;
    if touched > 0 && classes == 0 {
        return Err(Error::Corrupt("weights without labels".to_string()));
    }
    let mut next = 0usize;
    for _ in 0..touched {
        let gap = reader.length(buckets - next, "bucket gap")?;
        let bucket = next + gap;
        if bucket >= buckets {
            return Err(Error::Corrupt(format!("bucket {bucket} is out of range")));
        }
        let count = u32::try_from(reader.varint()?)
            .map_err(|_| Error::Corrupt("a bucket count does not fit in 32 bits".to_string()))?;
        if count == 0 {
            return Err(Error::Corrupt(format!(
                "bucket {bucket} is stored with count 0"
            )));
        }
        learner.counts[bucket] = count;
        for class in 0..classes {
            learner.weights[bucket * classes + class] = reader.finite_f32()?;
        }
        next = bucket + 1;
    }
    Ok(())
}

/// LEB128, 7 bits a byte: bucket gaps and counts are small.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], Error> {
        let end = self
            .position
            .checked_add(length)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| Error::Corrupt("the bytes end early".to_string()))?;
        let taken = &self.bytes[self.position..end];
        self.position = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn f32(&mut self) -> Result<f32, Error> {
        Ok(f32::from_le_bytes(self.array()?))
    }

    fn finite_f32(&mut self) -> Result<f32, Error> {
        let value = self.f32()?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(Error::Corrupt(format!("a weight is {value}")))
        }
    }

    fn varint(&mut self) -> Result<u64, Error> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Error::Corrupt(
            "a number is longer than 64 bits".to_string(),
        ))
    }

    /// A varint that counts something, at most `limit`.
    fn length(&mut self, limit: usize, what: &str) -> Result<usize, Error> {
        let value = self.varint()?;
        usize::try_from(value)
            .ok()
            .filter(|value| *value <= limit)
            .ok_or_else(|| Error::Corrupt(format!("{value} {what}, at most {limit} expected")))
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

/// How well a classifier did on labelled examples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Examples evaluated.
    pub n: u64,
    /// Fraction predicted right; 0 when `n` is 0.
    pub accuracy: f64,
    /// Mean of `-ln p(true label)`, each probability clipped to 1e-15; 0 when `n` is 0.
    pub log_loss: f64,
    /// Every label met (true or predicted), sorted.
    pub labels: Vec<String>,
    /// `confusion[true][predicted]`, indexed like `labels`.
    pub confusion: Vec<Vec<u64>>,
}

impl Evaluation {
    /// Metrics from any classifier's outcomes: each is the true label and the probabilities
    /// the classifier gave; the prediction is the most probable label (on a tie the first
    /// listed), and a true label missing from the list had probability 0.
    pub fn from_outcomes(outcomes: &[(String, Vec<(String, f64)>)]) -> Evaluation {
        let mut labels: Vec<String> = Vec::new();
        for (truth, probabilities) in outcomes {
            labels.push(truth.to_string());
            labels.extend(probabilities.iter().map(|(label, _)| label.clone()));
        }
        labels.sort();
        labels.dedup();
        let index = |label: &str| {
            labels
                .binary_search_by(|known| known.as_str().cmp(label))
                .ok()
        };
        let mut confusion = vec![vec![0u64; labels.len()]; labels.len()];
        let (mut n, mut correct, mut loss) = (0u64, 0u64, 0.0f64);
        for (truth, probabilities) in outcomes {
            let mut best: Option<&(String, f64)> = None;
            for candidate in probabilities {
                if best.is_none_or(|best| candidate.1 > best.1) {
                    best = Some(candidate);
                }
            }
            let truth_probability = probabilities
                .iter()
                .find(|(label, _)| label == truth)
                .map_or(0.0, |(_, probability)| *probability);
            n += 1;
            loss -= truth_probability.max(MIN_PROBABILITY).ln();
            if let (Some(row), Some(column)) =
                (index(truth), best.and_then(|(label, _)| index(label)))
            {
                confusion[row][column] += 1;
                correct += u64::from(row == column);
            }
        }
        let mean = |total: f64| if n == 0 { 0.0 } else { total / n as f64 };
        Evaluation {
            n,
            accuracy: mean(correct as f64),
            log_loss: mean(loss),
            labels,
            confusion,
        }
    }

    /// A plain-text report: the headline numbers, then the confusion matrix with true labels
    /// as rows and predicted labels as columns.
    pub fn to_table(&self) -> String {
        let corner = "true \\ predicted";
        let first_width = self
            .labels
            .iter()
            .map(String::len)
            .chain([corner.len()])
            .max()
            .unwrap_or(0);
        let widths: Vec<usize> = self
            .labels
            .iter()
            .enumerate()
            .map(|(column, label)| {
                let widest_count = self
                    .confusion
                    .iter()
                    .map(|row| row[column].to_string().len())
                    .max();
                label.len().max(widest_count.unwrap_or(0))
            })
            .collect();
        let mut out = format!(
            "examples  {}\naccuracy  {:.4}\nlog loss  {:.4}\n\n{corner:<first_width$}",
            self.n, self.accuracy, self.log_loss
        );
        for (label, width) in self.labels.iter().zip(&widths) {
            out.push_str(&format!("  {label:>width$}"));
        }
        out.push('\n');
        for (label, row) in self.labels.iter().zip(&self.confusion) {
            out.push_str(&format!("{label:<first_width$}"));
            for (count, width) in row.iter().zip(&widths) {
                out.push_str(&format!("  {count:>width$}"));
            }
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for Evaluation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_table())
    }
}

/// Evaluates `learner` on labelled `(text, label)` examples, over every label that the learner
/// knows or the examples name (a label the learner never met scores as in
/// [`Learner::predict_within`]). An untrained learner gets uniform probabilities.
pub fn evaluate(learner: &Learner, examples: &[(String, String)]) -> Evaluation {
    let mut labels: Vec<&str> = learner.classes.iter().map(String::as_str).collect();
    for (_, label) in examples {
        if !labels.contains(&label.as_str()) {
            labels.push(label);
        }
    }
    let candidates: Vec<(&str, Option<usize>)> = labels
        .iter()
        .map(|label| (*label, learner.class_index(label)))
        .collect();
    let mut scratch = Scratch::default();
    let outcomes: Vec<(String, Vec<(String, f64)>)> = examples
        .iter()
        .map(|(text, truth)| {
            learner.probabilities_over(&mut scratch, text, &candidates);
            let probabilities = labels
                .iter()
                .zip(&scratch.probabilities)
                .map(|(label, probability)| (label.to_string(), *probability))
                .collect();
            (truth.clone(), probabilities)
        })
        .collect();
    Evaluation::from_outcomes(&outcomes)
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

    fn features(options: &LearnerOptions, text: &str) -> Vec<u32> {
        let mut scratch = Scratch::default();
        extract_features(options, text, &mut scratch);
        scratch.features
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference (Fowler, Noll, Vo): the hash must never change, weights depend on it.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf29ce484222325);
        assert_eq!(salted(b'a'), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn feature_buckets_are_pinned() {
        // A change here changes what stored weights mean: bump FORMAT_VERSION.
        let options = LearnerOptions::default();
        let buckets = features(&options, "Hi, you!");
        // 4 tokens, 3 bigrams, "<hi>" one 4-gram, "<you>" two 4-grams and one 5-gram.
        assert_eq!(buckets.len(), 4 + 3 + 1 + 3);
        let digest = |text: &str| {
            let mut hasher = Sha256::new();
            for bucket in features(&options, text) {
                hasher.update(bucket.to_le_bytes());
            }
            hex::encode(hasher.finalize())
        };
        assert_eq!(
            digest("Hi, you!"),
            "f5f4a3a81a502df32a47cd20867f4a22035acc38046110e0a546050ae957fb73"
        );
        assert_eq!(
            digest("Ünïcode: ÉTÉ 日本語 costs €5, Straße"),
            "def6c5d5804df4cc7012a17050e10e370e2668941b70836792d236c8f0abaec0"
        );
    }

    #[test]
    fn counts_features_by_kind() {
        let mut options = LearnerOptions {
            char_ngrams: (0, 0),
            word_bigrams: false,
            ..LearnerOptions::default()
        };
        assert_eq!(features(&options, "  the cat, the HAT  ").len(), 5);
        options.word_bigrams = true;
        assert_eq!(features(&options, "the cat").len(), 3);
        options.char_ngrams = (3, 3);
        // "<the>" and "<cat>": three 3-grams each.
        assert_eq!(features(&options, "the cat").len(), 3 + 6);
        // Non-ASCII words count characters, not bytes: "<été>" has three 3-grams.
        let word_only = LearnerOptions {
            word_bigrams: false,
            ..options
        };
        assert_eq!(features(&word_only, "ÉTÉ").len(), 1 + 3);
        assert_eq!(features(&word_only, "ÉTÉ"), features(&word_only, "été"));
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let options = LearnerOptions {
            max_text_bytes: 5,
            ..LearnerOptions::default()
        };
        assert_eq!(features(&options, "abcdéfgh"), features(&options, "abcd"));
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
