//! Signed tree heads: C2SP tlog-checkpoints inside C2SP signed notes, signed with Ed25519.
//!
//! The format is byte-compatible with Go's `golang.org/x/mod/sumdb/note` and `tlog`, so any
//! tool of that family can check Keel's checkpoints:
//!
//! ```text
//! <origin>
//! <decimal tree size>
//! <base64 root hash>
//! [extension lines]
//!
//! — <key name> <base64(4-byte key id ‖ 64-byte Ed25519 signature)>
//! ```
//!
//! The key id is the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key); the verifier
//! key string is `<name>+<8 hex key id>+<base64(0x01 ‖ public key)>`. Keys come from 32 seed
//! bytes supplied by the caller: this module draws no randomness.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Hash;

/// Longest note accepted for verification; real checkpoints are a few hundred bytes.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;
/// Most signature lines read from one note (the Go implementation's limit).
pub const MAX_SIGNATURES: usize = 100;

/// Algorithm byte of Ed25519 keys in the signed-note format.
const ALGORITHM_ED25519: u8 = 0x01;
/// Start of every signature line: an em dash (U+2014) and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// Start of the Go private-key string format.
const PRIVATE_KEY_PREFIX: &str = "PRIVATE+KEY+";

/// Why a checkpoint could not be signed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("invalid key name {0:?}: it must be non-empty, without spaces or '+'")]
    InvalidName(String),
    #[error("malformed verifier key: {0}")]
    MalformedVerifierKey(&'static str),
    #[error("malformed private key: {0}")]
    MalformedPrivateKey(&'static str),
    #[error("malformed signed note: {0}")]
    MalformedNote(&'static str),
    #[error("the note carries no signature by key {name} ({key_id:08x}); check the verifier key")]
    UnknownKey { name: String, key_id: u32 },
    #[error("the signature by key {name} does not match the note: it was altered or forged")]
    BadSignature { name: String },
    #[error("malformed checkpoint body: {0}")]
    BadBody(&'static str),
}

/// A signed tree head: the tree `origin` had `size` leaves with root hash `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Unique identity of the log, e.g. `keel.example.com/ledger`.
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note body: `<origin>\n<size>\n<base64 root>\n`.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        )
    }

    /// Parses a note body, ignoring any extension lines after the root hash.
    pub fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let Some(body) = body.strip_suffix('\n') else {
            return Err(CheckpointError::BadBody("it does not end with a newline"));
        };
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if !is_valid_origin(origin) {
            return Err(CheckpointError::BadBody(
                "the origin line is empty or has control characters",
            ));
        }
        let size_line = lines
            .next()
            .ok_or(CheckpointError::BadBody("no tree size line"))?;
        let size: u64 = size_line
            .parse()
            .map_err(|_| CheckpointError::BadBody("the tree size is not a decimal number"))?;
        if size.to_string() != size_line {
            return Err(CheckpointError::BadBody(
                "the tree size is not in canonical decimal form",
            ));
        }
        let root_line = lines
            .next()
            .ok_or(CheckpointError::BadBody("no root hash line"))?;
        let root = BASE64
            .decode(root_line)
            .ok()
            .and_then(|bytes| Hash::try_from(bytes).ok())
            .ok_or(CheckpointError::BadBody(
                "the root hash is not 32 bytes of base64",
            ))?;
        if lines.any(str::is_empty) {
            return Err(CheckpointError::BadBody("an extension line is empty"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

fn is_valid_origin(origin: &str) -> bool {
    !origin.is_empty() && !origin.chars().any(char::is_control)
}

/// A key name: non-empty, no Unicode white space, no `+` (Go's `isValidName`).
fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(char::is_whitespace)
}

/// First 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key), big-endian.
fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update(b"\n")
        .chain_update([ALGORITHM_ED25519])
        .chain_update(public_key)
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Signs checkpoints with an Ed25519 key under a key name.
pub struct NoteSigner {
    name: String,
    key_id: u32,
    signing_key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer whose Ed25519 key is derived from `seed` (RFC 8032 secret key).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, CheckpointError> {
        if !is_valid_name(name) {
            return Err(CheckpointError::InvalidName(name.to_owned()));
        }
        let signing_key = SigningKey::from_bytes(seed);
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, signing_key.verifying_key().as_bytes()),
            signing_key,
        })
    }

    /// Parses Go's private key string `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>`.
    pub fn from_private_key(text: &str) -> Result<Self, CheckpointError> {
        let malformed = CheckpointError::MalformedPrivateKey;
        let rest = text
            .strip_prefix(PRIVATE_KEY_PREFIX)
            .ok_or(malformed("it does not start with PRIVATE+KEY+"))?;
        let (name, key_id_hex, key) =
            split_key_fields(rest).ok_or(malformed("wrong field count"))?;
        let seed = decode_algorithm_key(key)
            .ok_or(malformed("the key is not base64 of 0x01 and 32 bytes"))?;
        let signer = Self::from_seed(name, &seed)?;
        if parse_key_id(key_id_hex) != Some(signer.key_id) {
            return Err(malformed("the key id does not match the name and key"));
        }
        Ok(signer)
    }

    /// Go's private key string (secret: store it like a password).
    pub fn private_key(&self) -> String {
        let mut key = vec![ALGORITHM_ED25519];
        key.extend_from_slice(self.signing_key.as_bytes());
        format!(
            "{PRIVATE_KEY_PREFIX}{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(key)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The verifier key string `<name>+<8 hex key id>+<base64(0x01 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        self.verifier().to_string()
    }

    /// The parsed form of [`NoteSigner::verifier_key`].
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            key_id: self.key_id,
            public_key: self.signing_key.verifying_key(),
        }
    }

    /// The full signed note for `checkpoint`.
    ///
    /// The origin must be a non-empty line without control characters; otherwise the note is
    /// still produced but [`verify_checkpoint`] rejects it (use [`NoteSigner::try_sign`] to get
    /// an error instead).
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        self.sign_body(&checkpoint.body())
    }

    /// [`NoteSigner::sign`] that refuses a checkpoint whose origin cannot be verified.
    pub fn try_sign(&self, checkpoint: &Checkpoint) -> Result<String, CheckpointError> {
        if !is_valid_origin(&checkpoint.origin) {
            return Err(CheckpointError::BadBody(
                "the origin line is empty or has control characters",
            ));
        }
        Ok(self.sign(checkpoint))
    }

    fn sign_body(&self, body: &str) -> String {
        let signature = self.signing_key.sign(body.as_bytes());
        let mut blob = Vec::with_capacity(4 + 64);
        blob.extend_from_slice(&self.key_id.to_be_bytes());
        blob.extend_from_slice(&signature.to_bytes());
        format!(
            "{body}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(blob)
        )
    }
}

/// A parsed verifier key: who signs, under which key id, with which Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    public_key: VerifyingKey,
}

impl VerifierKey {
    /// Parses `<name>+<8 hex key id>+<base64(0x01 ‖ public key)>` and checks the key id.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let malformed = CheckpointError::MalformedVerifierKey;
        let (name, key_id_hex, key) = split_key_fields(text)
            .ok_or(malformed("expected <name>+<8 hex digits>+<base64 key>"))?;
        if !is_valid_name(name) {
            return Err(malformed("invalid key name"));
        }
        let key_id = parse_key_id(key_id_hex).ok_or(malformed("the key id is not 8 hex digits"))?;
        let public_bytes = decode_algorithm_key(key)
            .ok_or(malformed("the key is not base64 of 0x01 and 32 bytes"))?;
        if key_id != self::key_id(name, &public_bytes) {
            return Err(malformed("the key id does not match the name and key"));
        }
        let public_key = VerifyingKey::from_bytes(&public_bytes)
            .map_err(|_| malformed("the key is not a valid Ed25519 public key"))?;
        Ok(Self {
            name: name.to_owned(),
            key_id,
            public_key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Verifies the note's signature by this key and returns the note body.
    pub fn open<'note>(&self, note: &'note str) -> Result<&'note str, CheckpointError> {
        let (body, signatures) = split_note(note)?;
        let mut verified = false;
        for (count, line) in signatures.split_terminator('\n').enumerate() {
            if count >= MAX_SIGNATURES {
                return Err(CheckpointError::MalformedNote("too many signature lines"));
            }
            let (name, key_id, signature) = parse_signature_line(line)?;
            if name != self.name || key_id != self.key_id {
                continue; // Another key's signature: not ours to judge.
            }
            let bad_signature = || CheckpointError::BadSignature {
                name: self.name.clone(),
            };
            let signature = Signature::from_slice(&signature).map_err(|_| bad_signature())?;
            self.public_key
                .verify_strict(body.as_bytes(), &signature)
                .map_err(|_| bad_signature())?;
            verified = true;
        }
        if !verified {
            return Err(CheckpointError::UnknownKey {
                name: self.name.clone(),
                key_id: self.key_id,
            });
        }
        Ok(body)
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = vec![ALGORITHM_ED25519];
        key.extend_from_slice(self.public_key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(key)
        )
    }
}

/// Verifies a signed checkpoint note against `verifier_key` and parses its body.
/// Signatures by other keys are ignored; extension lines of the body are ignored.
pub fn verify_checkpoint(note: &str, verifier_key: &str) -> Result<Checkpoint, CheckpointError> {
    let verifier = VerifierKey::parse(verifier_key)?;
    let body = verifier.open(note)?;
    Checkpoint::parse_body(body)
}

/// Splits `<name>+<key id>+<key>` at its first two `+` (names cannot contain `+`).
fn split_key_fields(text: &str) -> Option<(&str, &str, &str)> {
    let (name, rest) = text.split_once('+')?;
    let (key_id, key) = rest.split_once('+')?;
    Some((name, key_id, key))
}

fn parse_key_id(hex_digits: &str) -> Option<u32> {
    if hex_digits.len() != 8 || !hex_digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex_digits, 16).ok()
}

/// Decodes base64 of `0x01 ‖ 32 key bytes`.
fn decode_algorithm_key(text: &str) -> Option<[u8; 32]> {
    let bytes = BASE64.decode(text).ok()?;
    let (&algorithm, key) = bytes.split_first()?;
    if algorithm != ALGORITHM_ED25519 {
        return None;
    }
    key.try_into().ok()
}

/// Splits a note into its body (ending in a newline) and its signature block, applying the
/// signed-note rules: valid UTF-8 without control characters other than newline, a blank line
/// before the signatures, and a final newline.
fn split_note(note: &str) -> Result<(&str, &str), CheckpointError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(CheckpointError::MalformedNote(
            "the note is longer than 64 KiB",
        ));
    }
    if note.bytes().any(|byte| byte < 0x20 && byte != b'\n') {
        return Err(CheckpointError::MalformedNote(
            "the note contains control characters",
        ));
    }
    let split = note.rfind("\n\n").ok_or(CheckpointError::MalformedNote(
        "no blank line before the signatures",
    ))?;
    let (body, signatures) = (&note[..=split], &note[split + 2..]);
    if signatures.is_empty() || !signatures.ends_with('\n') {
        return Err(CheckpointError::MalformedNote(
            "the signature block does not end with a newline",
        ));
    }
    Ok((body, signatures))
}

/// Parses `— <name> <base64(key id ‖ signature)>` into name, key id and signature bytes.
fn parse_signature_line(line: &str) -> Result<(&str, u32, Vec<u8>), CheckpointError> {
    let malformed = CheckpointError::MalformedNote;
    let rest = line.strip_prefix(SIGNATURE_PREFIX).ok_or(malformed(
        "a signature line does not start with an em dash and a space",
    ))?;
    let (name, encoded) = rest
        .split_once(' ')
        .ok_or(malformed("a signature line has no signature"))?;
    if !is_valid_name(name) || encoded.is_empty() {
        return Err(malformed(
            "a signature line has an invalid name or no signature",
        ));
    }
    let mut decoded = BASE64
        .decode(encoded)
        .map_err(|_| malformed("a signature is not valid base64"))?;
    if decoded.len() < 5 {
        return Err(malformed("a signature is shorter than a key id"));
    }
    let key_id = u32::from_be_bytes([decoded[0], decoded[1], decoded[2], decoded[3]]);
    decoded.drain(..4);
    Ok((name, key_id, decoded))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;

    // The example of golang.org/x/mod/sumdb/note: an external anchor for the wire format.
    const GO_PRIVATE_KEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VERIFIER_KEY: &str =
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
        then you don't know what your problem is.\n\
        \n\
        \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    fn signer() -> NoteSigner {
        NoteSigner::from_seed("keel.example/ledger", &[7; 32]).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "keel.example/ledger".to_owned(),
            size: 12345,
            root: [0xab; 32],
        }
    }

    #[test]
    fn go_reference_note_round_trips() {
        let signer = NoteSigner::from_private_key(GO_PRIVATE_KEY).unwrap();
        assert_eq!(signer.verifier_key(), GO_VERIFIER_KEY);
        assert_eq!(signer.private_key(), GO_PRIVATE_KEY);
        assert_eq!(signer.sign_body(GO_TEXT), GO_NOTE);
        let verifier = VerifierKey::parse(GO_VERIFIER_KEY).unwrap();
        assert_eq!(verifier.open(GO_NOTE).unwrap(), GO_TEXT);
        assert_eq!(verifier.to_string(), GO_VERIFIER_KEY);
        // Not a checkpoint body, but the signature is fine.
        assert!(matches!(
            verify_checkpoint(GO_NOTE, GO_VERIFIER_KEY),
            Err(CheckpointError::BadBody(_))
        ));
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let signer = signer();
        let note = signer.sign(&checkpoint());
        assert!(
            note.starts_with("keel.example/ledger\n12345\nq6ur"),
            "{note}"
        );
        assert!(note.contains("\n\n\u{2014} keel.example/ledger "));
        assert_eq!(
            verify_checkpoint(&note, &signer.verifier_key()),
            Ok(checkpoint())
        );
        assert_eq!(signer.try_sign(&checkpoint()), Ok(note));
    }

    #[test]
    fn verifier_key_format() {
        let signer = signer();
        let key = signer.verifier_key();
        let parts: Vec<&str> = key.split('+').collect();
        assert_eq!(parts[0], "keel.example/ledger");
        assert_eq!(parts[1], format!("{:08x}", signer.key_id()));
        let decoded = BASE64.decode(parts[2..].join("+")).unwrap();
        assert_eq!(decoded.len(), 33);
        assert_eq!(decoded[0], 0x01);
        let public_key = signer.signing_key.verifying_key();
        assert_eq!(&decoded[1..], public_key.as_bytes());
        assert_eq!(
            signer.key_id(),
            key_id("keel.example/ledger", public_key.as_bytes())
        );
        assert_eq!(VerifierKey::parse(&key).unwrap().to_string(), key);
    }

    #[test]
    fn mangled_verifier_keys_are_rejected() {
        let key = signer().verifier_key();
        for end in 0..key.len() {
            if key.is_char_boundary(end) {
                assert!(VerifierKey::parse(&key[..end]).is_err(), "{}", &key[..end]);
            }
        }
        let mut bytes = key.clone().into_bytes();
        let plus = key.find('+').unwrap();
        bytes[plus + 1] = if bytes[plus + 1] == b'0' { b'1' } else { b'0' };
        let wrong_id = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            VerifierKey::parse(&wrong_id),
            Err(CheckpointError::MalformedVerifierKey(_))
        ));
        assert!(VerifierKey::parse("bad name+00000000+AQ==").is_err());
    }

    #[test]
    fn invalid_names_are_rejected() {
        for name in ["", "a b", "a+b", "tab\there", "nbsp\u{a0}"] {
            assert_eq!(
                NoteSigner::from_seed(name, &[1; 32]).map(|_| ()),
                Err(CheckpointError::InvalidName(name.to_owned()))
            );
        }
    }

    #[test]
    fn tampering_is_detected() {
        let signer = signer();
        let key = signer.verifier_key();
        let note = signer.sign(&checkpoint());

        let tampered_body = note.replacen("12345", "12346", 1);
        assert_eq!(
            verify_checkpoint(&tampered_body, &key),
            Err(CheckpointError::BadSignature {
                name: "keel.example/ledger".to_owned()
            })
        );

        let other = NoteSigner::from_seed("keel.example/ledger", &[8; 32]).unwrap();
        assert!(matches!(
            verify_checkpoint(&note, &other.verifier_key()),
            Err(CheckpointError::UnknownKey { .. })
        ));
        let renamed = NoteSigner::from_seed("someone-else", &[7; 32]).unwrap();
        assert!(matches!(
            verify_checkpoint(&note, &renamed.verifier_key()),
            Err(CheckpointError::UnknownKey { .. })
        ));

        // Dropping signature bytes (keeping valid base64) is a bad signature, not a panic.
        let (head, signature_line) = note.rsplit_once(' ').unwrap();
        let blob = BASE64.decode(signature_line.trim_end()).unwrap();
        for keep in [5, 20, 67] {
            let truncated = format!("{head} {}\n", BASE64.encode(&blob[..keep]));
            assert!(matches!(
                verify_checkpoint(&truncated, &key),
                Err(CheckpointError::BadSignature { .. })
            ));
        }
        let cut = format!("{head} {}\n", &signature_line[..20]);
        assert!(verify_checkpoint(&cut, &key).is_err());
        // Every prefix of the note is rejected.
        for end in 0..note.len() {
            if note.is_char_boundary(end) {
                assert!(verify_checkpoint(&note[..end], &key).is_err());
            }
        }
    }

    #[test]
    fn other_signatures_and_extension_lines_are_tolerated() {
        let signer = signer();
        let witness = NoteSigner::from_seed("witness.example", &[9; 32]).unwrap();
        let body = "keel.example/ledger\n12345\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\nextra line\n";
        let note = signer.sign_body(body);
        let witness_note = witness.sign_body(body);
        let witness_line = witness_note.rsplit_once("\n\n").unwrap().1;
        let both = format!("{note}{witness_line}");
        assert_eq!(
            verify_checkpoint(&both, &signer.verifier_key()),
            Ok(checkpoint())
        );
        assert_eq!(
            verify_checkpoint(&both, &witness.verifier_key()),
            Ok(checkpoint())
        );
    }

    #[test]
    fn malformed_notes_are_rejected() {
        let signer = signer();
        let key = signer.verifier_key();
        let note = signer.sign(&checkpoint());
        for bad in [
            String::new(),
            "\n\n".to_owned(),
            note.replace('\u{2014}', "-"),
            note.replace("\n\n", "\n"),
            note.trim_end().to_owned(),
            note.replacen("keel", "ke\relk", 1),
            format!("{note}not a signature\n"),
            "x".repeat(MAX_NOTE_BYTES + 1),
            format!("{note}{}", "\u{2014} a AAAAAAAA\n".repeat(MAX_SIGNATURES)),
        ] {
            assert!(verify_checkpoint(&bad, &key).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bodies_are_parsed_strictly() {
        let good = checkpoint().body();
        assert_eq!(Checkpoint::parse_body(&good), Ok(checkpoint()));
        for bad in [
            "",
            "\n",
            "origin\n",
            "origin\n12\n",
            "origin\n012\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "origin\n+12\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "origin\n-1\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "origin\n18446744073709551616\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "origin\n12\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s\n",
            "origin\n12\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6t=\n",
            "origin\n12\nq6ur\n",
            "origin\n12\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=",
            "origin\n12\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\n",
            "\n12\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
        ] {
            assert!(Checkpoint::parse_body(bad).is_err(), "{bad:?}");
        }
        let empty_origin = Checkpoint {
            origin: String::new(),
            ..checkpoint()
        };
        assert!(signer().try_sign(&empty_origin).is_err());
    }
}
