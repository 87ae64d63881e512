//! Integration tests of keel-ledger: the vendored RFC 6962 test vectors, and the whole path a
//! sequencer and an auditor take (append, store nodes, restore, prove, sign, check offline).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failure report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use keel_ledger::{
    consistency_proof, inclusion_proof, root, verify_checkpoint, verify_consistency,
    verify_consistency_bytes, verify_inclusion, verify_inclusion_bytes, Actor, Checkpoint,
    CompletedNode, Envelope, Frontier, Hash, NodeSource, NoteSigner, ProofDocument, Subject,
};
use serde_json::Value;

/// The RFC 6962 vectors, vendored with their Apache-2.0 licence (see the folder's README), so
/// a clone of Keel with nothing beside it runs this test.
fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/rfc6962")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("test vectors missing at {}: {error}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(json_files(&path));
        } else if path
            .extension()
            .is_some_and(|extension| extension == "json")
        {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn bytes(vector: &Value, field: &str) -> Vec<u8> {
    BASE64.decode(vector[field].as_str().unwrap()).unwrap()
}

fn proof(vector: &Value) -> Vec<Vec<u8>> {
    match &vector["proof"] {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(|item| BASE64.decode(item.as_str().unwrap()).unwrap())
            .collect(),
        other => panic!("unexpected proof {other}"),
    }
}

fn number(vector: &Value, field: &str) -> u64 {
    vector[field].as_u64().unwrap()
}

fn as_hash(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

fn as_hashes(proof: &[Vec<u8>]) -> Option<Vec<Hash>> {
    proof.iter().map(|hash| as_hash(hash)).collect()
}

/// Checks one vector; returns whether it expected an error.
fn check_vector(path: &Path, is_inclusion: bool) -> bool {
    let vector: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let want_error = vector["wantErr"].as_bool().unwrap();
    let proof = proof(&vector);
    let (result, typed_result) = if is_inclusion {
        let (index, size) = (number(&vector, "leafIdx"), number(&vector, "treeSize"));
        let (leaf, tree_root) = (bytes(&vector, "leafHash"), bytes(&vector, "root"));
        let result = verify_inclusion_bytes(&leaf, index, size, &proof, &tree_root);
        let typed = match (as_hash(&leaf), as_hash(&tree_root), as_hashes(&proof)) {
            (Some(leaf), Some(tree_root), Some(proof)) => {
                Some(verify_inclusion(&leaf, index, size, &proof, &tree_root))
            }
            _ => None,
        };
        (result, typed)
    } else {
        let (old_size, new_size) = (number(&vector, "size1"), number(&vector, "size2"));
        let (old_root, new_root) = (bytes(&vector, "root1"), bytes(&vector, "root2"));
        let result = verify_consistency_bytes(old_size, new_size, &old_root, &new_root, &proof);
        let typed = match (as_hash(&old_root), as_hash(&new_root), as_hashes(&proof)) {
            (Some(old_root), Some(new_root), Some(proof)) => Some(verify_consistency(
                old_size, new_size, &old_root, &new_root, &proof,
            )),
            _ => None,
        };
        (result, typed)
    };
    assert_eq!(
        result.is_err(),
        want_error,
        "{}: {:?} ({})",
        path.display(),
        result,
        vector["desc"]
    );
    if let Some(typed_result) = typed_result {
        assert_eq!(typed_result, result, "{}", path.display());
    }
    want_error
}

#[test]
fn rfc6962_vectors() {
    let dir = vectors_dir();
    let mut counts = HashMap::new();
    for (kind, is_inclusion) in [("inclusion", true), ("consistency", false)] {
        let files = json_files(&dir.join(kind));
        assert!(
            !files.is_empty(),
            "no {kind} vectors under {}",
            dir.display()
        );
        for file in files {
            let want_error = check_vector(&file, is_inclusion);
            *counts.entry((kind, want_error)).or_insert(0) += 1;
        }
    }
    let total: usize = counts.values().sum();
    eprintln!("RFC 6962 vectors checked: {total} ({counts:?})");
    assert!(total > 0);
    for kind in ["inclusion", "consistency"] {
        assert!(
            counts.get(&(kind, false)).copied().unwrap_or(0) > 0,
            "no valid {kind} vector"
        );
        assert!(
            counts.get(&(kind, true)).copied().unwrap_or(0) > 0,
            "no invalid {kind} vector"
        );
    }
    // The vendored folder holds 196 vectors; losing some silently would weaken this test.
    assert!(total >= 196, "only {total} vectors");
}

/// A node store like the `store` crate's: perfect nodes keyed by (level, index).
#[derive(Default)]
struct NodeTable {
    nodes: HashMap<(u8, u64), Hash>,
}

#[derive(Debug, thiserror::Error)]
#[error("node ({0}, {1}) not found")]
struct NotFound(u8, u64);

impl NodeSource for NodeTable {
    type Error = NotFound;
    fn node(&self, level: u8, index: u64) -> Result<Hash, NotFound> {
        self.nodes
            .get(&(level, index))
            .copied()
            .ok_or(NotFound(level, index))
    }
}

fn envelope(seq: i64) -> Envelope {
    Envelope {
        seq,
        at: format!("2026-11-27T16:36:{:02}.{:03}Z", seq % 60, seq % 1000),
        kind: "step.completed".to_owned(),
        actor: Actor {
            actor_type: if seq % 3 == 0 { "ai" } else { "human" }.to_owned(),
            id: format!("actor-{seq}"),
        },
        subject: Subject {
            case: Some(format!("case-{}", seq / 10)),
            step: (seq % 2 == 0).then(|| "review".to_owned()),
            ..Subject::default()
        },
        data_sha256: keel_ledger::data_sha256(&serde_json::json!({"seq": seq, "note": "é\n"})),
    }
}

#[test]
fn sequencer_and_auditor_end_to_end() {
    let signer = NoteSigner::from_seed("keel.test/ledger", &[42; 32]).unwrap();
    let key = signer.verifier_key();
    let mut table = NodeTable::default();
    let mut frontier = Frontier::new();
    let mut completed: Vec<CompletedNode> = Vec::new();
    let mut checkpoints = Vec::new();

    // Sequence in batches, restoring the frontier from storage between batches as a new
    // leader would, and sign a checkpoint after each batch.
    for batch in 0..7i64 {
        frontier = Frontier::restore(frontier.size(), &table).unwrap();
        for seq in batch * 37..(batch + 1) * 37 {
            frontier.append_into(envelope(seq).leaf_hash(), &mut completed);
        }
        for (level, index, hash) in completed.drain(..) {
            assert!(table.nodes.insert((level, index), hash).is_none());
        }
        assert_eq!(root(frontier.size(), &table).unwrap(), frontier.root());
        let checkpoint = Checkpoint {
            origin: "keel.test/ledger".to_owned(),
            size: frontier.size(),
            root: frontier.root(),
        };
        checkpoints.push(signer.sign(&checkpoint));
    }

    // The auditor trusts only the verifier key.
    let latest = verify_checkpoint(checkpoints.last().unwrap(), &key).unwrap();
    assert_eq!(latest.size, 7 * 37);
    for seq in [0, 1, 100, 258] {
        let entry = envelope(seq);
        let index = u64::try_from(seq).unwrap();
        let proof = inclusion_proof(index, latest.size, &table).unwrap();
        let document = ProofDocument::Inclusion {
            leaf_index: index,
            tree_size: latest.size,
            leaf_hash: hex::encode(entry.leaf_hash()),
            proof: proof.iter().map(hex::encode).collect(),
            checkpoint: checkpoints.last().unwrap().clone(),
            entry: Some(entry),
        };
        let json = serde_json::to_string_pretty(&document).unwrap();
        let parsed: ProofDocument = serde_json::from_str(&json).unwrap();
        parsed.check(&key).unwrap();
    }
    for (older, note) in checkpoints.iter().enumerate().take(6) {
        let old = verify_checkpoint(note, &key).unwrap();
        let proof = consistency_proof(old.size, latest.size, &table).unwrap();
        verify_consistency(old.size, latest.size, &old.root, &latest.root, &proof).unwrap();
        let document = ProofDocument::Consistency {
            from_size: old.size,
            to_size: latest.size,
            from_root: hex::encode(old.root),
            to_root: hex::encode(latest.root),
            proof: proof.iter().map(hex::encode).collect(),
            checkpoint: checkpoints.last().unwrap().clone(),
        };
        assert!(document.check(&key).is_ok(), "checkpoint {older}");
    }

    // Tampering with one stored entry is caught by recomputing its leaf.
    let mut altered = envelope(100);
    altered.actor.id = "mallory".to_owned();
    let proof = inclusion_proof(100, latest.size, &table).unwrap();
    assert!(
        verify_inclusion(&altered.leaf_hash(), 100, latest.size, &proof, &latest.root).is_err()
    );
}

#[test]
fn garbage_proof_documents_are_errors() {
    let signer = NoteSigner::from_seed("keel.test/ledger", &[42; 32]).unwrap();
    let key = signer.verifier_key();
    for json in [
        r#"{"type":"inclusion","leaf_index":0,"tree_size":0,"leaf_hash":"","proof":[],"checkpoint":""}"#,
        r#"{"type":"inclusion","leaf_index":18446744073709551615,"tree_size":18446744073709551615,"leaf_hash":"00","proof":["zz"],"checkpoint":"x\n\n"}"#,
        r#"{"type":"consistency","from_size":0,"to_size":0,"from_root":"","to_root":"","proof":[],"checkpoint":"\n\n— a b\n"}"#,
    ] {
        let document: ProofDocument = serde_json::from_str(json).unwrap();
        assert!(document.check(&key).is_err(), "{json}");
        assert!(document.check("not a key").is_err());
    }
}
