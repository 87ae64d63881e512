//! The sequencer: gives every journal entry a leaf index in the RFC 6962 tree, stores the
//! perfect-subtree nodes it completes, and at least every `checkpoint_interval` while entries
//! arrive signs a C2SP checkpoint with the node's Ed25519 key. Exactly one node sequences at
//! a time: the holder of the `sequencer` lease in the database.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_ledger::{Checkpoint, Frontier, Hash, NodeSource, NoteSigner};
use keel_store::{CheckpointRow, Store};

use crate::{Error, Inner, Result};

/// Journal rows read per sequencing step.
const SEQUENCE_BATCH: i64 = 20_000;
/// How long the sequencer lease lasts without renewal.
const LEASE_MS: i64 = 10_000;
/// Name of the private key file in the data directory.
pub const KEY_FILE: &str = "ledger-ed25519.key";

/// The sequencer's in-memory view: the frontier of the tree and the last sequenced entry.
#[derive(Default)]
pub(crate) struct SequencerState {
    frontier: Option<Frontier>,
    last_seq: i64,
    checkpoint_size: u64,
    checkpoint_at_ms: i64,
}

/// Loads the ledger signing key from the data directory, creating it (mode 0600) on first start,
/// and the ledger's origin line from the database.
pub(crate) async fn load_or_create_key(
    store: &Store,
    data_dir: &Path,
) -> Result<(NoteSigner, String)> {
    let origin = store
        .meta_init("ledger_origin", &format!("keel/{}", uuid::Uuid::now_v7()))
        .await?;
    let path = data_dir.join(KEY_FILE);
    let seed = match std::fs::read_to_string(&path) {
        Ok(text) => decode_seed(text.trim()).ok_or_else(|| {
            Error::Ledger(format!(
                "{} is not a 32-byte hex Ed25519 seed; restore it from backup",
                path.display()
            ))
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => create_key(&path)?,
        Err(error) => {
            return Err(Error::Io(format!(
                "cannot read the ledger key {}: {error}",
                path.display()
            )))
        }
    };
    let signer =
        NoteSigner::from_seed(&origin, &seed).map_err(|error| Error::Ledger(error.to_string()))?;
    let stored = store
        .meta_init("ledger_verifier_key", &signer.verifier_key())
        .await?;
    if stored != signer.verifier_key() {
        tracing::warn!(
            stored = %stored,
            "the ledger key in the data directory differs from the one this database was signed with; \
             checkpoints signed before remain verifiable with the stored key"
        );
    }
    Ok((signer, origin))
}

fn decode_seed(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

fn create_key(path: &Path) -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|error| Error::Io(format!("no randomness for the ledger key: {error}")))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|error| Error::Io(format!("cannot create {}: {error}", dir.display())))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| {
            Error::Io(format!(
                "cannot create the ledger key {}: {error}",
                path.display()
            ))
        })?;
    file.write_all(hex::encode(seed).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| {
            Error::Io(format!(
                "cannot write the ledger key {}: {error}",
                path.display()
            ))
        })?;
    tracing::info!(path = %path.display(), "created the ledger signing key");
    Ok(seed)
}

/// The sequencer loop.
pub(crate) async fn run(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = inner.journal_written.notified() => {
                // Let a few more commits land so that one pass covers them.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if let Err(error) = sequence_once(&inner, false).await {
            tracing::warn!(%error, "sequencing failed; retrying");
        }
    }
}

/// Sequences everything written so far; writes a checkpoint when due (or when `force`).
pub(crate) async fn sequence_once(inner: &Inner, force_checkpoint: bool) -> Result<()> {
    let store = &inner.store;
    let now = inner.clock.now_ms();
    if !store
        .acquire_lease("sequencer", &inner.options.node_id, now, now + LEASE_MS)
        .await?
    {
        return Ok(());
    }
    let mut state = inner.sequencer.lock().await;
    let (stored_size, stored_last_seq) = store.tree_state().await?;
    let in_sync = state
        .frontier
        .as_ref()
        .is_some_and(|f| f.size() == stored_size)
        && state.last_seq == stored_last_seq;
    if !in_sync {
        state.frontier = Some(restore_frontier(store, stored_size).await?);
        state.last_seq = stored_last_seq;
        if let Some(latest) = store.latest_checkpoint().await? {
            state.checkpoint_size = latest.tree_size as u64;
            state.checkpoint_at_ms = latest.at_ms;
        }
    }
    loop {
        let rows = store.journal_after(state.last_seq, SEQUENCE_BATCH).await?;
        if rows.is_empty() {
            break;
        }
        let Some(frontier) = state.frontier.as_mut() else {
            break;
        };
        let mut leaves = Vec::with_capacity(rows.len());
        let mut nodes = Vec::with_capacity(rows.len());
        let mut completed = Vec::new();
        for row in &rows {
            let leaf = row.envelope().leaf_hash();
            let index = frontier.size() as i64;
            completed.clear();
            frontier.append_into(leaf, &mut completed);
            leaves.push((index, row.seq, leaf.to_vec()));
            nodes.extend(
                completed
                    .iter()
                    .filter(|(level, _, _)| *level > 0)
                    .map(|(level, idx, hash)| (i64::from(*level), *idx as i64, hash.to_vec())),
            );
        }
        store.append_tree(&leaves, &nodes).await?;
        state.last_seq = rows.last().map_or(state.last_seq, |row| row.seq);
        if (rows.len() as i64) < SEQUENCE_BATCH {
            break;
        }
    }
    let Some(frontier) = state.frontier.as_ref() else {
        return Ok(());
    };
    let size = frontier.size();
    let due = now - state.checkpoint_at_ms >= inner.options.checkpoint_interval.as_millis() as i64;
    if size > state.checkpoint_size && (due || force_checkpoint) {
        let root = frontier.root();
        let note = inner.signer.sign(&Checkpoint {
            origin: inner.origin.clone(),
            size,
            root,
        });
        store
            .insert_checkpoint(&CheckpointRow {
                tree_size: size as i64,
                root: root.to_vec(),
                note,
                at_ms: now,
            })
            .await?;
        state.checkpoint_size = size;
        state.checkpoint_at_ms = now;
    }
    Ok(())
}

/// A node source over hashes fetched ahead of time. In recording mode it answers zeros and
/// remembers what was asked, which tells the caller what to fetch: the nodes a tree
/// algorithm reads depend only on sizes and indexes, never on hash values.
#[derive(Default)]
pub struct PrefetchedNodes {
    nodes: HashMap<(u8, u64), Hash>,
    recording: Option<std::cell::RefCell<Vec<(u8, u64)>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the ledger has no stored node at level {0}, index {1}; the tree tables are incomplete")]
pub struct MissingNode(u8, u64);

impl NodeSource for PrefetchedNodes {
    type Error = MissingNode;

    fn node(&self, level: u8, index: u64) -> Result<Hash, MissingNode> {
        if let Some(recording) = &self.recording {
            recording.borrow_mut().push((level, index));
            return Ok([0; 32]);
        }
        self.nodes
            .get(&(level, index))
            .copied()
            .ok_or(MissingNode(level, index))
    }
}

/// Runs a tree algorithm `f` over nodes read from the store: first to learn which nodes it
/// reads, then with those nodes fetched.
pub async fn with_stored_nodes<T, E: std::fmt::Display>(
    store: &Store,
    f: impl Fn(&PrefetchedNodes) -> std::result::Result<T, E>,
) -> Result<T> {
    let recorder = PrefetchedNodes {
        nodes: HashMap::new(),
        recording: Some(std::cell::RefCell::new(Vec::new())),
    };
    let _ = f(&recorder);
    let wanted = recorder
        .recording
        .map(|cell| cell.into_inner())
        .unwrap_or_default();
    let fetched = store.tree_nodes(&wanted).await?;
    let mut nodes = HashMap::with_capacity(fetched.len());
    for (key, hash) in fetched {
        let hash: Hash = hash
            .try_into()
            .map_err(|_| Error::Ledger(format!("stored node {key:?} is not 32 bytes")))?;
        nodes.insert(key, hash);
    }
    f(&PrefetchedNodes {
        nodes,
        recording: None,
    })
    .map_err(|error| Error::Ledger(error.to_string()))
}

async fn restore_frontier(store: &Store, size: u64) -> Result<Frontier> {
    with_stored_nodes(store, |source| Frontier::restore(size, source)).await
}
