//! The journal entry envelope and its leaf hash (DESIGN §4).
//!
//! The leaf commits to the canonical JSON (RFC 8785) of the envelope, which carries
//! `data_sha256` but never `data`: personal data can later be erased while every leaf and every
//! proof stays valid. Verification recomputes millions of leaf hashes, so the canonical form is
//! written field by field in sorted key order (and streamed straight into SHA-256 for the leaf
//! hash) instead of going through `serde_json::Value`; tests check that both paths agree.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::jcs::{self, Sink};
use crate::Hash;

/// The part of a journal entry that the Merkle leaf commits to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Journal sequence number of the entry.
    pub seq: i64,
    /// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-27T16:36:11.123Z`.
    pub at: String,
    /// Event kind, e.g. `case.created`.
    pub kind: String,
    /// Who caused the entry.
    pub actor: Actor,
    /// What the entry is about.
    pub subject: Subject,
    /// Lowercase hex SHA-256 of the JCS form of the entry's `data` (see [`data_sha256`]).
    pub data_sha256: String,
}

/// Who caused an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    /// `human`, `ai` or `system`.
    #[serde(rename = "type")]
    pub actor_type: String,
    /// Identifier of the human, AI operation or system component.
    pub id: String,
}

/// What an entry is about; absent fields are omitted from the JSON (and from the leaf).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
}

impl Envelope {
    /// The RFC 8785 canonical JSON of the envelope: the bytes the leaf commits to.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_canonical(&mut out);
        out
    }

    /// Appends the canonical bytes to `out` (reuse `out` across entries to avoid allocating).
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        self.write_to(out);
    }

    /// The Merkle leaf hash: SHA-256(0x00 ‖ canonical bytes). Allocation-free.
    pub fn leaf_hash(&self) -> Hash {
        let mut hasher = Sha256::new();
        hasher.update([0x00]);
        self.write_to(&mut hasher);
        hasher.finalize().into()
    }

    /// Writes the members in RFC 8785 order: actor, at, data_sha256, kind, seq, subject.
    fn write_to<S: Sink>(&self, out: &mut S) {
        out.put(b"{\"actor\":{\"id\":");
        jcs::write_string(out, &self.actor.id);
        out.put(b",\"type\":");
        jcs::write_string(out, &self.actor.actor_type);
        out.put(b"},\"at\":");
        jcs::write_string(out, &self.at);
        out.put(b",\"data_sha256\":");
        jcs::write_string(out, &self.data_sha256);
        out.put(b",\"kind\":");
        jcs::write_string(out, &self.kind);
        out.put(b",\"seq\":");
        jcs::write_integer(out, self.seq);
        out.put(b",\"subject\":");
        self.subject.write_to(out);
        out.put(b"}");
    }
}

impl Subject {
    /// Writes the present members in RFC 8785 order: case, exception, step, task, workflow.
    fn write_to<S: Sink>(&self, out: &mut S) {
        let members = [
            ("\"case\":", &self.case),
            ("\"exception\":", &self.exception),
            ("\"step\":", &self.step),
            ("\"task\":", &self.task),
            ("\"workflow\":", &self.workflow),
        ];
        out.put(b"{");
        let mut first = true;
        for (name, value) in members {
            let Some(value) = value else { continue };
            if !first {
                out.put(b",");
            }
            first = false;
            out.put(name.as_bytes());
            jcs::write_string(out, value);
        }
        out.put(b"}");
    }
}

/// Lowercase hex SHA-256 of the RFC 8785 form of an entry's `data`.
pub fn data_sha256(data: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    jcs::write_value(&mut hasher, data);
    hex::encode(hasher.finalize())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample() -> Envelope {
        Envelope {
            seq: 42,
            at: "2026-11-27T16:36:11.123Z".to_owned(),
            kind: "case.created".to_owned(),
            actor: Actor {
                actor_type: "human".to_owned(),
                id: "alice@example.com".to_owned(),
            },
            subject: Subject {
                case: Some("c-1".to_owned()),
                workflow: Some("refunds".to_owned()),
                ..Subject::default()
            },
            data_sha256: data_sha256(&json!({"amount": 12.5})),
        }
    }

    fn via_value(envelope: &Envelope) -> Vec<u8> {
        jcs::canonicalize(&serde_json::to_value(envelope).unwrap())
    }

    #[test]
    fn canonical_bytes_are_pinned() {
        let envelope = sample();
        let expected = concat!(
            r#"{"actor":{"id":"alice@example.com","type":"human"},"at":"2026-11-27T16:36:11.123Z","#,
            r#""data_sha256":"#,
        );
        let canonical = String::from_utf8(envelope.canonical_bytes()).unwrap();
        assert!(canonical.starts_with(expected), "{canonical}");
        assert!(canonical.ends_with(
            r#","kind":"case.created","seq":42,"subject":{"case":"c-1","workflow":"refunds"}}"#
        ));
        assert_eq!(envelope.canonical_bytes(), via_value(&envelope));
        assert_eq!(
            envelope.leaf_hash(),
            crate::leaf_hash(&envelope.canonical_bytes())
        );
    }

    #[test]
    fn empty_subject_is_an_empty_object() {
        let mut envelope = sample();
        envelope.subject = Subject::default();
        let canonical = String::from_utf8(envelope.canonical_bytes()).unwrap();
        assert!(canonical.ends_with(r#""subject":{}}"#), "{canonical}");
        assert_eq!(envelope.canonical_bytes(), via_value(&envelope));
    }

    #[test]
    fn data_sha256_hashes_the_canonical_form() {
        let reordered: serde_json::Value =
            serde_json::from_str(r#"{"b": 1.0, "a": [true]}"#).unwrap();
        let expected = hex::encode(Sha256::digest(br#"{"a":[true],"b":1}"#));
        assert_eq!(data_sha256(&reordered), expected);
    }

    #[test]
    fn envelope_json_round_trips_and_ignores_data() {
        let envelope = sample();
        let mut value = serde_json::to_value(&envelope).unwrap();
        value["data"] = json!({"name": "erased"});
        let back: Envelope = serde_json::from_value(value).unwrap();
        assert_eq!(back, envelope);
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9._-]{0,12}",
            any::<String>(),
            "[\\x00-\\x1f\"\\\\\u{7f}\u{2028}é😀]{0,8}",
        ]
    }

    prop_compose! {
        fn any_envelope()(
            seq in any::<i64>(),
            at in any_text(),
            kind in any_text(),
            actor_type in any_text(),
            id in any_text(),
            subject in proptest::collection::vec(proptest::option::of(any_text()), 5),
            data_sha256 in any_text(),
        ) -> Envelope {
            Envelope {
                seq,
                at,
                kind,
                actor: Actor { actor_type, id },
                subject: Subject {
                    case: subject[0].clone(),
                    workflow: subject[1].clone(),
                    step: subject[2].clone(),
                    task: subject[3].clone(),
                    exception: subject[4].clone(),
                },
                data_sha256,
            }
        }
    }

    proptest! {
        #[test]
        fn direct_writer_matches_generic_jcs(envelope in any_envelope()) {
            prop_assert_eq!(envelope.canonical_bytes(), via_value(&envelope));
            prop_assert_eq!(envelope.leaf_hash(), crate::leaf_hash(&via_value(&envelope)));
        }
    }
}
