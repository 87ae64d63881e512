//! Group commit: one task owns the write path and applies every case write that queued up
//! while the previous transaction was committing, in one transaction. Durability is not
//! weakened (each transaction is fully synced); its cost is shared by the whole batch.

use std::sync::Arc;

use keel_store::{CaseWrite, Store, WriteOutcome};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::{Error, Result};

/// Writes waiting for the committer; submitters wait (back-pressure) beyond this.
const QUEUE: usize = 8_192;

type Reply = oneshot::Sender<Result<WriteOutcome, String>>;

#[derive(Clone)]
pub(crate) struct Handle {
    tx: mpsc::Sender<(CaseWrite, Reply)>,
}

impl Handle {
    /// Queues a write and waits until its transaction committed (or failed).
    pub async fn commit(&self, write: CaseWrite) -> Result<WriteOutcome> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send((write, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        match wait.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(message)) => Err(Error::Io(format!(
                "the write failed and was rolled back; retrying is safe: {message}"
            ))),
            Err(_) => Err(Error::ShuttingDown),
        }
    }
}

/// Spawns the committer; `exception_raised` is notified after each transaction that raised
/// an exception (an `exception.raised` or `sla.breached` entry).
pub(crate) fn spawn(
    store: Store,
    max_batch: usize,
    exception_raised: Arc<Notify>,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = tokio::spawn(run(store, rx, max_batch.max(1), exception_raised));
    (Handle { tx }, task)
}

/// Whether committing `writes` raises an exception.
fn raises_exception(writes: &[CaseWrite]) -> bool {
    writes.iter().any(|write| {
        write
            .entries
            .iter()
            .any(|entry| matches!(entry.kind.as_str(), "exception.raised" | "sla.breached"))
    })
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<(CaseWrite, Reply)>,
    max_batch: usize,
    exception_raised: Arc<Notify>,
) {
    let mut writes = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    while let Some((write, reply)) = rx.recv().await {
        writes.push(write);
        replies.push(reply);
        while writes.len() < max_batch {
            match rx.try_recv() {
                Ok((write, reply)) => {
                    writes.push(write);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        match store.commit(&writes).await {
            Ok(outcomes) => {
                if raises_exception(&writes) {
                    exception_raised.notify_one();
                }
                for (reply, outcome) in replies.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                tracing::error!(%error, batch = writes.len(), "group commit failed");
                let message = error.to_string();
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
        writes.clear();
    }
}
