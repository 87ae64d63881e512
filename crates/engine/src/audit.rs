//! Audit: recompute the whole ledger from the journal and compare it with what is stored and
//! signed (`verify`), and serve inclusion and consistency proofs against signed checkpoints.

use keel_ledger::{Checkpoint, Hash, MemoryTree, ProofDocument};
use keel_store::Store;
use serde::Serialize;

use crate::sequencer::with_stored_nodes;
use crate::{Error, Result};

/// Leaves read per page while verifying.
const VERIFY_PAGE: i64 = 50_000;
/// Findings kept in a report (the first ones; the count covers all).
const MAX_FINDINGS: usize = 100;

/// One thing that does not add up, at a leaf.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub leaf_index: i64,
    pub seq: Option<i64>,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub leaves: u64,
    pub journal_entries: i64,
    pub checkpoints: usize,
    pub checkpoints_verified: usize,
    pub consistency_proofs_verified: usize,
    pub findings_total: usize,
    /// The first findings in leaf order; the first is the first bad leaf.
    pub findings: Vec<Finding>,
    pub root: String,
}

/// Recomputes every entry's data hash and leaf hash, rebuilds the tree, checks every
/// checkpoint's signature and root, and that each checkpoint is consistent with the next.
/// `progress` is called with (leaves done, leaves total).
pub async fn verify(
    store: &Store,
    verifier_key: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let (tree_size, _) = store.tree_state().await?;
    let journal_entries = store.journal_count().await?;
    let checkpoints = store.checkpoints().await?;
    let mut findings = Vec::new();
    let mut findings_total = 0usize;
    let mut note = |finding: Finding| {
        findings_total += 1;
        if findings.len() < MAX_FINDINGS {
            findings.push(finding);
        }
    };
    let mut tree = MemoryTree::new();
    let mut next_checkpoint = 0usize;
    let mut checkpoints_verified = 0usize;
    let mut signed_roots: Vec<(u64, Hash)> = Vec::new();
    // Pipeline: the next page is read while the current one is hashed on every core.
    let mut next_page = Some(tokio::spawn(read_page(store.clone(), 0)));
    while let Some(reading) = next_page.take() {
        let page = reading
            .await
            .map_err(|error| Error::Io(error.to_string()))??;
        let Some(last) = page.last() else { break };
        next_page = Some(tokio::spawn(read_page(store.clone(), last.leaf_index + 1)));
        let hashed = tokio::task::spawn_blocking(move || hash_page(page))
            .await
            .map_err(|error| Error::Io(error.to_string()))?;
        for leaf in &hashed {
            let (leaf_index, seq) = (leaf.leaf_index, Some(leaf.seq));
            if leaf_index != tree.size() as i64 {
                note(Finding {
                    leaf_index,
                    seq,
                    problem: format!("leaf index out of order: expected {}", tree.size()),
                });
            }
            if leaf.data_sha256 != leaf.committed_data_sha256 {
                note(Finding {
                    leaf_index,
                    seq,
                    problem: format!(
                        "entry data was changed: it hashes to {} but the entry committed to {}",
                        leaf.data_sha256, leaf.committed_data_sha256
                    ),
                });
            }
            if leaf.stored_leaf_hash.as_slice() != leaf.recomputed.as_slice() {
                note(Finding {
                    leaf_index,
                    seq,
                    problem: format!(
                        "entry envelope was changed (kind, time, actor, subject or data hash): leaf hash is {} but the entry hashes to {}",
                        hex::encode(&leaf.stored_leaf_hash),
                        hex::encode(leaf.recomputed)
                    ),
                });
            }
            // The tree is rebuilt from the entries as they are now, so any change shows in the roots.
            tree.push(leaf.recomputed);
            while let Some(checkpoint) = checkpoints.get(next_checkpoint) {
                if checkpoint.tree_size as u64 != tree.size() {
                    break;
                }
                next_checkpoint += 1;
                match keel_ledger::verify_checkpoint(&checkpoint.note, verifier_key) {
                    Ok(signed) if signed.root == tree.root() && signed.size == tree.size() => {
                        checkpoints_verified += 1;
                        signed_roots.push((signed.size, signed.root));
                    }
                    Ok(signed) => note(Finding {
                        leaf_index,
                        seq,
                        problem: format!(
                            "checkpoint at size {} signs root {} but the entries give {}",
                            signed.size,
                            hex::encode(signed.root),
                            hex::encode(tree.root())
                        ),
                    }),
                    Err(error) => note(Finding {
                        leaf_index,
                        seq,
                        problem: format!(
                            "checkpoint at size {} does not verify: {error}",
                            checkpoint.tree_size
                        ),
                    }),
                }
            }
        }
        progress(tree.size(), tree_size);
    }
    for checkpoint in &checkpoints[next_checkpoint..] {
        note(Finding {
            leaf_index: checkpoint.tree_size - 1,
            seq: None,
            problem: format!(
                "checkpoint at size {} is beyond the {} stored leaves",
                checkpoint.tree_size,
                tree.size()
            ),
        });
    }
    let mut consistency_proofs_verified = 0;
    for pair in signed_roots.windows(2) {
        let ((old_size, old_root), (new_size, new_root)) = (pair[0], pair[1]);
        let checked = keel_ledger::consistency_proof(old_size, new_size, &tree)
            .map_err(|error| error.to_string())
            .and_then(|proof| {
                keel_ledger::verify_consistency(old_size, new_size, &old_root, &new_root, &proof)
                    .map_err(|e| e.to_string())
            });
        match checked {
            Ok(()) => consistency_proofs_verified += 1,
            Err(error) => note(Finding {
                leaf_index: new_size as i64 - 1,
                seq: None,
                problem: format!(
                    "checkpoints at sizes {old_size} and {new_size} are not consistent: {error}"
                ),
            }),
        }
    }
    Ok(VerifyReport {
        ok: findings_total == 0,
        leaves: tree.size(),
        journal_entries,
        checkpoints: checkpoints.len(),
        checkpoints_verified,
        consistency_proofs_verified,
        findings_total,
        findings,
        root: hex::encode(tree.root()),
    })
}

/// Reads one page as two halves on two connections at once: the database's packing of rows
/// is the larger part of reading, and it runs on the connection's own thread.
async fn read_page(store: Store, from: i64) -> Result<Vec<keel_store::LeafRow>> {
    let half = VERIFY_PAGE / 2;
    let (first, second) = tokio::join!(
        store.leaves_packed(from, half),
        store.leaves_packed(from + half, half)
    );
    let mut page = first?;
    if page.len() as i64 == half {
        page.extend(second?);
    }
    Ok(page)
}

/// One leaf as recomputed from its entry.
struct HashedLeaf {
    leaf_index: i64,
    seq: i64,
    stored_leaf_hash: Vec<u8>,
    recomputed: Hash,
    /// SHA-256 of the stored data text (stored in canonical form).
    data_sha256: String,
    /// What the entry committed to.
    committed_data_sha256: String,
}

/// Recomputes data hashes and leaf hashes of a page, split across the available cores.
fn hash_page(page: Vec<keel_store::LeafRow>) -> Vec<HashedLeaf> {
    use sha2::Digest;
    let hash_one = |leaf: &keel_store::LeafRow| HashedLeaf {
        leaf_index: leaf.leaf_index,
        seq: leaf.entry.seq,
        stored_leaf_hash: leaf.leaf_hash.clone(),
        recomputed: leaf.entry.envelope().leaf_hash(),
        data_sha256: hex::encode(sha2::Sha256::digest(leaf.entry.data.as_bytes())),
        committed_data_sha256: leaf.entry.data_sha256.clone(),
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16);
    let chunk = page.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = page
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(hash_one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap_or_default())
            .collect()
    })
}

/// An inclusion proof for leaf `index` against the checkpoint at `size` (default: the latest).
pub async fn inclusion(store: &Store, index: u64, size: Option<u64>) -> Result<ProofDocument> {
    let checkpoint = checkpoint_at(store, size).await?;
    let tree_size = checkpoint.tree_size as u64;
    if index >= tree_size {
        return Err(Error::BadProofRequest(format!(
            "leaf {index} is not in the tree of size {tree_size}; pick an index below the checkpoint's size"
        )));
    }
    // The proof's nodes and the leaf's entry are read at the same time, on two connections.
    let (proof, leaf) = tokio::join!(
        with_stored_nodes(store, |source| keel_ledger::inclusion_proof(
            index, tree_size, source
        )),
        store.leaves(index as i64, 1)
    );
    let proof = proof?;
    let leaf = leaf?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Ledger(format!("leaf {index} is missing from the store")))?;
    Ok(ProofDocument::Inclusion {
        leaf_index: index,
        tree_size,
        leaf_hash: hex::encode(&leaf.leaf_hash),
        proof: proof.iter().map(hex::encode).collect(),
        checkpoint: checkpoint.note,
        entry: Some(leaf.entry.envelope()),
    })
}

/// A consistency proof from tree size `from` to the checkpoint at `to` (default: the latest).
pub async fn consistency(store: &Store, from: u64, to: Option<u64>) -> Result<ProofDocument> {
    let checkpoint = checkpoint_at(store, to).await?;
    let to_size = checkpoint.tree_size as u64;
    if from > to_size {
        return Err(Error::BadProofRequest(format!(
            "`from` must be between 0 and {to_size} (the checkpoint's size)"
        )));
    }
    let (proof, from_root) = with_stored_nodes(store, |source| {
        let proof = keel_ledger::consistency_proof(from, to_size, source)?;
        let root = keel_ledger::root(from, source)?;
        Ok::<_, keel_ledger::TreeError<crate::sequencer::MissingNode>>((proof, root))
    })
    .await?;
    let to_root: Hash = checkpoint
        .root
        .clone()
        .try_into()
        .map_err(|_| Error::Ledger("stored root is not 32 bytes".into()))?;
    Ok(ProofDocument::Consistency {
        from_size: from,
        to_size,
        from_root: hex::encode(from_root),
        to_root: hex::encode(to_root),
        proof: proof.iter().map(hex::encode).collect(),
        checkpoint: checkpoint.note,
    })
}

async fn checkpoint_at(store: &Store, size: Option<u64>) -> Result<keel_store::CheckpointRow> {
    let found = match size {
        Some(size) => store.checkpoint(size as i64).await?,
        None => store.latest_checkpoint().await?,
    };
    found.ok_or_else(|| match size {
        Some(size) => Error::NoCheckpoint(format!(
            "there is no checkpoint at tree size {size}; proofs are served against signed checkpoints (GET /v1/audit/checkpoint shows the latest)"
        )),
        None => Error::NoCheckpoint("no checkpoint has been written yet; the sequencer writes one within a second of the first entry".into()),
    })
}

/// The checkpoint at the tip, parsed.
pub async fn latest_checkpoint(
    store: &Store,
    verifier_key: &str,
) -> Result<Option<(Checkpoint, String)>> {
    let Some(row) = store.latest_checkpoint().await? else {
        return Ok(None);
    };
    let checkpoint = keel_ledger::verify_checkpoint(&row.note, verifier_key)
        .map_err(|error| Error::Ledger(error.to_string()))?;
    Ok(Some((checkpoint, row.note)))
}
