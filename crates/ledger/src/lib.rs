//! Keel's tamper-evident ledger: the pure half of the audit trail.
//!
//! This crate turns journal entries into Merkle-tree leaves and proves things about the tree:
//!
//! - [`jcs`]: RFC 8785 JSON canonicalization, so that one logical value has one byte form.
//! - [`entry`]: the journal entry [`Envelope`] and its leaf hash (it commits to `data_sha256`,
//!   never to `data`, so personal data can be erased without breaking the tree).
//! - [`tree`]: the RFC 6962 / RFC 9162 Merkle tree read through [`NodeSource`], proof
//!   generation, the append-only [`Frontier`], and the in-memory [`MemoryTree`].
//! - [`proof`]: offline verification of inclusion and consistency proofs.
//! - [`checkpoint`]: C2SP tlog-checkpoints inside C2SP signed notes (Ed25519).
//! - [`document`]: the JSON proof documents served by the HTTP API and checked offline.
//!
//! The crate does no IO, reads no clock and draws no randomness: signing keys come from 32
//! seed bytes the caller supplies, and tree nodes come from the caller's [`NodeSource`].

pub mod checkpoint;
pub mod document;
pub mod entry;
pub mod jcs;
pub mod proof;
pub mod tree;

use sha2::{Digest, Sha256};

pub use checkpoint::{verify_checkpoint, Checkpoint, CheckpointError, NoteSigner, VerifierKey};
pub use document::{CheckedProof, ProofDocError, ProofDocument};
pub use entry::{data_sha256, Actor, Envelope, Subject};
pub use proof::{
    verify_consistency, verify_consistency_bytes, verify_inclusion, verify_inclusion_bytes,
    ProofError,
};
pub use tree::{
    consistency_proof, inclusion_proof, root, CompletedNode, Frontier, MemoryTree, MissingNode,
    NodeSource, TreeError,
};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Domain-separation prefix of a leaf hash (RFC 6962 §2.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

/// Hash of a leaf: SHA-256(0x00 ‖ `leaf_bytes`).
pub fn leaf_hash(leaf_bytes: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(leaf_bytes);
    hasher.finalize().into()
}

/// Hash of an interior node: SHA-256(0x01 ‖ `left` ‖ `right`).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// Root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn leaf_and_node_hashes_are_domain_separated() {
        // RFC 6962 test vector: the hash of the empty leaf.
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let leaf = leaf_hash(b"a");
        assert_ne!(node_hash(&leaf, &leaf), leaf_hash(&[leaf, leaf].concat()));
    }
}
