//! Group commit: one task owns the write path and applies every case write that queued up
//! while the previous transaction was committing, in one transaction. Durability is not
//! weakened (each transaction is fully synced); its cost is shared by the whole batch.

use keel_store::{CaseWrite, Store, WriteOutcome};
use tokio::sync::{mpsc, oneshot};

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

pub(crate) fn spawn(store: Store, max_batch: usize) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = tokio::spawn(run(store, rx, max_batch.max(1)));
    (Handle { tx }, task)
}

async fn run(store: Store, mut rx: mpsc::Receiver<(CaseWrite, Reply)>, max_batch: usize) {
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
