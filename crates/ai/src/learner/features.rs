//! Feature extraction and hashing: text → bucket indices. Everything here is part of the
//! persisted format (stored weights mean nothing under other buckets): a change needs a new
//! [`super::FORMAT_VERSION`], and the tests below pin the hashes.

use super::{floor_char_boundary, LearnerOptions, Scratch};

pub(super) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
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
pub(super) fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
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
pub(super) fn extract_features(options: &LearnerOptions, text: &str, scratch: &mut Scratch) {
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

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

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
}
