//! The byte format of a stored learner: [`Learner::to_bytes`] and [`Learner::from_bytes`].
//!
//! Version 2 added the temperature (`f32`, after the example count); version 1 bytes still
//! load, with temperature 1 (their answers are unchanged). Only the newest version is written.

use sha2::{Digest, Sha256};

use super::{
    validate_label, Error, Learner, LearnerOptions, CHECKSUM_BYTES, FORMAT_VERSION, MAGIC,
    MAX_LABEL_BYTES, MAX_TEMPERATURE, MIN_TEMPERATURE,
};

/// The oldest format version [`Learner::from_bytes`] reads.
const OLDEST_FORMAT_VERSION: u16 = 1;

impl Learner {
    /// The model as bytes: magic, format version, options, counters, temperature, labels,
    /// biases, then only
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
        out.extend_from_slice(&self.temperature.to_le_bytes());
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
    /// version (1 to [`FORMAT_VERSION`]) and every value against its bounds.
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
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&found) {
            return Err(Error::UnsupportedFormatVersion {
                found,
                supported: FORMAT_VERSION,
            });
        }
        let learner = read_learner(&mut reader, found)?;
        if reader.position != body.len() {
            return Err(Error::Corrupt(format!(
                "{} unexpected bytes after the weights",
                body.len() - reader.position
            )));
        }
        Ok(learner)
    }
}

fn read_learner(reader: &mut Reader<'_>, format_version: u16) -> Result<Learner, Error> {
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
    if format_version >= 2 {
        let temperature = reader.f32()?;
        if !(MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&temperature) {
            return Err(Error::Corrupt(format!(
                "the temperature is {temperature}, expected {MIN_TEMPERATURE}..={MAX_TEMPERATURE}"
            )));
        }
        learner.temperature = temperature;
    }
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
