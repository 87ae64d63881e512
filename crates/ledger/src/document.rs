//! Proof documents: the self-contained JSON that the HTTP API serves and that
//! `keel audit check-proof FILE.json` verifies offline with nothing but a verifier key.
//!
//! A document carries the proof, the hashes it connects and the signed checkpoint that anchors
//! them. [`ProofDocument::check`] verifies the checkpoint signature, that the checkpoint's size
//! and root are the ones the proof targets, the proof itself, and (for inclusion) that the
//! optional entry envelope hashes to the proven leaf.

use serde::{Deserialize, Serialize};

use crate::checkpoint::{verify_checkpoint, Checkpoint, CheckpointError};
use crate::entry::Envelope;
use crate::proof::{verify_consistency, verify_inclusion, ProofError};
use crate::Hash;

/// Most hashes accepted in one proof: a consistency proof of a tree of 2^64 leaves has at most
/// 2 × 64, so longer proofs are rejected before any decoding.
pub const MAX_PROOF_HASHES: usize = 128;

/// A proof document as served by the API; hashes are lowercase hex.
// Documents are built one per request and never stored in bulk, so the size difference between
// the variants costs nothing, and an unboxed `entry` keeps the API plain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProofDocument {
    /// The leaf `leaf_index` of the tree of `tree_size` leaves is `leaf_hash`.
    Inclusion {
        leaf_index: u64,
        tree_size: u64,
        leaf_hash: String,
        proof: Vec<String>,
        /// Signed note of the checkpoint for `tree_size`.
        checkpoint: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entry: Option<Envelope>,
    },
    /// The tree of `from_size` leaves with `from_root` is a prefix of the tree of `to_size`.
    Consistency {
        from_size: u64,
        to_size: u64,
        from_root: String,
        to_root: String,
        proof: Vec<String>,
        /// Signed note of the checkpoint for `to_size`.
        checkpoint: String,
    },
}

/// What a successfully checked document establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckedProof {
    /// `leaf_hash` is leaf `leaf_index` of the signed `checkpoint`.
    Inclusion {
        checkpoint: Checkpoint,
        leaf_index: u64,
        leaf_hash: Hash,
    },
    /// The tree of `from_size` leaves with root `from_root` is a prefix of the signed
    /// `checkpoint`. `from_root` comes from the document, not from a signature: compare it
    /// with a checkpoint you already trust.
    Consistency {
        checkpoint: Checkpoint,
        from_size: u64,
        from_root: Hash,
    },
}

impl CheckedProof {
    /// The signed checkpoint the proof is anchored to.
    pub fn checkpoint(&self) -> &Checkpoint {
        match self {
            Self::Inclusion { checkpoint, .. } | Self::Consistency { checkpoint, .. } => checkpoint,
        }
    }
}

/// Why a proof document did not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofDocError {
    #[error("the checkpoint does not verify: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("{field} is not 64 hex digits")]
    BadHex { field: &'static str },
    #[error("the proof has {count} hashes; at most {MAX_PROOF_HASHES} are accepted")]
    ProofTooLong { count: usize },
    #[error("the checkpoint is for tree size {checkpoint_size}, the proof for {proof_size}")]
    SizeMismatch {
        checkpoint_size: u64,
        proof_size: u64,
    },
    #[error("the checkpoint's root hash differs from the document's to_root")]
    RootMismatch,
    #[error("the proof does not verify: {0}")]
    Proof(#[from] ProofError),
    #[error("the entry's leaf hash differs from leaf_hash: the entry was altered")]
    EntryMismatch,
}

impl ProofDocument {
    /// Verifies the document against the log's verifier key (see [`verify_checkpoint`]).
    pub fn check(&self, verifier_key: &str) -> Result<CheckedProof, ProofDocError> {
        match self {
            Self::Inclusion {
                leaf_index,
                tree_size,
                leaf_hash,
                proof,
                checkpoint,
                entry,
            } => {
                let proof = decode_proof(proof)?;
                let leaf_hash = decode_hash(leaf_hash, "leaf_hash")?;
                let checkpoint = verify_checkpoint(checkpoint, verifier_key)?;
                check_size(&checkpoint, *tree_size)?;
                verify_inclusion(
                    &leaf_hash,
                    *leaf_index,
                    *tree_size,
                    &proof,
                    &checkpoint.root,
                )?;
                if let Some(entry) = entry {
                    if entry.leaf_hash() != leaf_hash {
                        return Err(ProofDocError::EntryMismatch);
                    }
                }
                Ok(CheckedProof::Inclusion {
                    checkpoint,
                    leaf_index: *leaf_index,
                    leaf_hash,
                })
            }
            Self::Consistency {
                from_size,
                to_size,
                from_root,
                to_root,
                proof,
                checkpoint,
            } => {
                let proof = decode_proof(proof)?;
                let from_root = decode_hash(from_root, "from_root")?;
                let to_root = decode_hash(to_root, "to_root")?;
                let checkpoint = verify_checkpoint(checkpoint, verifier_key)?;
                check_size(&checkpoint, *to_size)?;
                if checkpoint.root != to_root {
                    return Err(ProofDocError::RootMismatch);
                }
                verify_consistency(*from_size, *to_size, &from_root, &to_root, &proof)?;
                Ok(CheckedProof::Consistency {
                    checkpoint,
                    from_size: *from_size,
                    from_root,
                })
            }
        }
    }
}

fn check_size(checkpoint: &Checkpoint, proof_size: u64) -> Result<(), ProofDocError> {
    if checkpoint.size != proof_size {
        return Err(ProofDocError::SizeMismatch {
            checkpoint_size: checkpoint.size,
            proof_size,
        });
    }
    Ok(())
}

fn decode_proof(proof: &[String]) -> Result<Vec<Hash>, ProofDocError> {
    if proof.len() > MAX_PROOF_HASHES {
        return Err(ProofDocError::ProofTooLong { count: proof.len() });
    }
    proof
        .iter()
        .map(|hash| decode_hash(hash, "a proof hash"))
        .collect()
}

fn decode_hash(text: &str, field: &'static str) -> Result<Hash, ProofDocError> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash).map_err(|_| ProofDocError::BadHex { field })?;
    Ok(hash)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;
    use crate::checkpoint::NoteSigner;
    use crate::entry::{Actor, Subject};
    use crate::tree::{consistency_proof, inclusion_proof, root, MemoryTree};

    struct Fixture {
        signer: NoteSigner,
        tree: MemoryTree,
        entries: Vec<Envelope>,
    }

    fn fixture() -> Fixture {
        let signer = NoteSigner::from_seed("keel.test/ledger", &[3; 32]).unwrap();
        let mut tree = MemoryTree::new();
        let entries: Vec<Envelope> = (0..11)
            .map(|seq| Envelope {
                seq,
                at: "2026-11-27T16:36:11.123Z".to_owned(),
                kind: "case.created".to_owned(),
                actor: Actor {
                    actor_type: "system".to_owned(),
                    id: "engine".to_owned(),
                },
                subject: Subject::default(),
                data_sha256: crate::data_sha256(&serde_json::json!({ "n": seq })),
            })
            .collect();
        for entry in &entries {
            tree.push(entry.leaf_hash());
        }
        Fixture {
            signer,
            tree,
            entries,
        }
    }

    fn note(fixture: &Fixture, size: u64) -> String {
        fixture.signer.sign(&Checkpoint {
            origin: "keel.test/ledger".to_owned(),
            size,
            root: root(size, &fixture.tree).unwrap(),
        })
    }

    fn inclusion(fixture: &Fixture, index: u64, size: u64) -> ProofDocument {
        ProofDocument::Inclusion {
            leaf_index: index,
            tree_size: size,
            leaf_hash: hex::encode(fixture.entries[index as usize].leaf_hash()),
            proof: inclusion_proof(index, size, &fixture.tree)
                .unwrap()
                .iter()
                .map(hex::encode)
                .collect(),
            checkpoint: note(fixture, size),
            entry: Some(fixture.entries[index as usize].clone()),
        }
    }

    fn consistency(fixture: &Fixture, from: u64, to: u64) -> ProofDocument {
        ProofDocument::Consistency {
            from_size: from,
            to_size: to,
            from_root: hex::encode(root(from, &fixture.tree).unwrap()),
            to_root: hex::encode(root(to, &fixture.tree).unwrap()),
            proof: consistency_proof(from, to, &fixture.tree)
                .unwrap()
                .iter()
                .map(hex::encode)
                .collect(),
            checkpoint: note(fixture, to),
        }
    }

    #[test]
    fn valid_documents_check_and_round_trip_through_json() {
        let fixture = fixture();
        let key = fixture.signer.verifier_key();
        let document = inclusion(&fixture, 6, 11);
        let json = serde_json::to_string(&document).unwrap();
        assert!(
            json.starts_with(r#"{"type":"inclusion","leaf_index":6,"#),
            "{json}"
        );
        let parsed: ProofDocument = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, document);
        let checked = parsed.check(&key).unwrap();
        assert_eq!(checked.checkpoint().size, 11);

        let document = consistency(&fixture, 4, 11);
        let json = serde_json::to_string(&document).unwrap();
        assert!(
            json.starts_with(r#"{"type":"consistency","from_size":4,"#),
            "{json}"
        );
        let checked = serde_json::from_str::<ProofDocument>(&json)
            .unwrap()
            .check(&key)
            .unwrap();
        assert!(matches!(
            checked,
            CheckedProof::Consistency { from_size: 4, .. }
        ));
    }

    #[test]
    fn entry_is_optional() {
        let fixture = fixture();
        let mut document = inclusion(&fixture, 0, 1);
        if let ProofDocument::Inclusion { entry, .. } = &mut document {
            *entry = None;
        }
        let json = serde_json::to_string(&document).unwrap();
        assert!(!json.contains("entry"));
        assert!(document.check(&fixture.signer.verifier_key()).is_ok());
    }

    #[test]
    fn inconsistent_documents_fail() {
        let fixture = fixture();
        let key = fixture.signer.verifier_key();

        let mut altered_entry = inclusion(&fixture, 3, 9);
        if let ProofDocument::Inclusion {
            entry: Some(entry), ..
        } = &mut altered_entry
        {
            entry.kind = "case.deleted".to_owned();
        }
        assert_eq!(altered_entry.check(&key), Err(ProofDocError::EntryMismatch));

        let mut wrong_note = inclusion(&fixture, 3, 9);
        if let ProofDocument::Inclusion { checkpoint, .. } = &mut wrong_note {
            *checkpoint = note(&fixture, 10);
        }
        assert!(matches!(
            wrong_note.check(&key),
            Err(ProofDocError::SizeMismatch { .. })
        ));

        let mut bad_hex = inclusion(&fixture, 3, 9);
        if let ProofDocument::Inclusion { proof, .. } = &mut bad_hex {
            proof[0].pop();
        }
        assert!(matches!(
            bad_hex.check(&key),
            Err(ProofDocError::BadHex { .. })
        ));

        let mut too_long = inclusion(&fixture, 3, 9);
        if let ProofDocument::Inclusion { proof, .. } = &mut too_long {
            *proof = vec![proof[0].clone(); MAX_PROOF_HASHES + 1];
        }
        assert!(matches!(
            too_long.check(&key),
            Err(ProofDocError::ProofTooLong { .. })
        ));

        let mut wrong_leaf = inclusion(&fixture, 3, 9);
        if let ProofDocument::Inclusion { leaf_index, .. } = &mut wrong_leaf {
            *leaf_index = 4;
        }
        assert!(matches!(
            wrong_leaf.check(&key),
            Err(ProofDocError::Proof(_))
        ));

        let other_key = NoteSigner::from_seed("keel.test/ledger", &[4; 32])
            .unwrap()
            .verifier_key();
        assert!(matches!(
            inclusion(&fixture, 3, 9).check(&other_key),
            Err(ProofDocError::Checkpoint(
                CheckpointError::UnknownKey { .. }
            ))
        ));

        let mut wrong_to_root = consistency(&fixture, 2, 7);
        if let ProofDocument::Consistency { to_root, .. } = &mut wrong_to_root {
            *to_root = hex::encode([0u8; 32]);
        }
        assert_eq!(wrong_to_root.check(&key), Err(ProofDocError::RootMismatch));

        let mut wrong_from_root = consistency(&fixture, 2, 7);
        if let ProofDocument::Consistency { from_root, .. } = &mut wrong_from_root {
            *from_root = hex::encode([0u8; 32]);
        }
        assert!(matches!(
            wrong_from_root.check(&key),
            Err(ProofDocError::Proof(_))
        ));
    }
}
