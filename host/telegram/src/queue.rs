//! Where an accepted question waits until its turn has ended, and the loop that takes questions
//! from there to the dispatcher.
//!
//! [`UpdateQueue`] is the contract: `enqueue` is durable before it returns (the webhook answers
//! Telegram 200 only then), `take` hands out updates under a lease, `extend` keeps the lease of a
//! turn still running, `ack` ends an update when its turn did. Two implementations:
//! - [`FileQueue`], the file [`Inbox`] of one process in `DATA_DIR`: no one else takes its
//!   updates, so nothing is leased; what a crash left is replayed at the next start;
//! - a shared one, for several replicas (PostgreSQL, implemented by the host so that this crate
//!   does not depend on a database): every replica takes from it, and an update whose taker
//!   died is taken by another once the lease runs out.
//!
//! [`Taker`] runs the same loop over either: it takes when this process enqueued or acked
//! something (a local wake-up), and, for a shared queue, also every [`UpdateQueue::poll_every`]
//! (updates other replicas accepted, leases that ran out).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teloxide::types::Update;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, warn};

use crate::AbortOnDrop;
use crate::inbox::{Inbox, Stored};

/// A durable queue of accepted updates (only those [`Inbox::keeps`]: messages).
#[async_trait::async_trait]
pub trait UpdateQueue: Send + Sync + 'static {
    /// Makes `update` durable; `Ok` only once it is. [`Stored::Duplicate`]: it was accepted
    /// before (waiting, in flight or answered), and the caller drops it.
    async fn enqueue(&self, update: &Update) -> anyhow::Result<Stored>;
    /// Up to `limit` updates to answer now, oldest first, each held for this process until it is
    /// acked or its lease runs out.
    async fn take(&self, limit: usize) -> anyhow::Result<Vec<Update>>;
    /// Renews the leases of `ids`, whose turns still run. Returns those whose lease was lost
    /// (another taker has them now).
    async fn extend(&self, ids: &[u32]) -> anyhow::Result<Vec<u32>>;
    /// The update's turn ended (answered or apologised for): it leaves the queue, and a later
    /// delivery of it is a duplicate.
    async fn ack(&self, id: u32) -> anyhow::Result<()>;
    /// Stopping: gives up what this process took and did not ack, so that others take it now
    /// rather than after the lease.
    async fn release(&self) -> anyhow::Result<()> {
        Ok(())
    }
    /// How long a take holds an update (renewed every third of it while its turn runs). `None`:
    /// nobody else takes from this queue, nothing to renew.
    fn lease(&self) -> Option<Duration>;
    /// How often to look for updates this process did not enqueue itself. `None`: there are none.
    fn poll_every(&self) -> Option<Duration>;
}

/// The file [`Inbox`] as a queue: what this process stored, in the order stored, after what an
/// earlier run left (if opened [`replaying`](Self::replaying)).
pub struct FileQueue {
    inbox: Arc<Inbox>,
    ready: Mutex<VecDeque<Update>>,
}

impl FileQueue {
    /// The queue of a poller, which replays the inbox itself (before it polls past it).
    pub fn new(inbox: Arc<Inbox>) -> Self {
        FileQueue { inbox, ready: Mutex::new(VecDeque::new()) }
    }

    /// What an earlier run accepted and did not finish is taken first.
    pub fn replaying(inbox: Arc<Inbox>) -> Self {
        let ready = inbox.pending().into();
        FileQueue { inbox, ready: Mutex::new(ready) }
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<Update>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl UpdateQueue for FileQueue {
    async fn enqueue(&self, update: &Update) -> anyhow::Result<Stored> {
        let (inbox, copy) = (self.inbox.clone(), update.clone());
        // The store fsyncs: off the async workers.
        let stored = tokio::task::spawn_blocking(move || inbox.store(&copy)).await??;
        if stored == Stored::New {
            self.ready().push_back(update.clone());
        }
        Ok(stored)
    }

    async fn take(&self, limit: usize) -> anyhow::Result<Vec<Update>> {
        let mut ready = self.ready();
        let n = limit.min(ready.len());
        Ok(ready.drain(..n).collect())
    }

    async fn extend(&self, _ids: &[u32]) -> anyhow::Result<Vec<u32>> {
        Ok(vec![])
    }

    async fn ack(&self, id: u32) -> anyhow::Result<()> {
        // One unsynced line in the inbox's log: not worth a thread hop.
        self.inbox.done(id);
        Ok(())
    }

    fn lease(&self) -> Option<Duration> {
        None
    }

    fn poll_every(&self) -> Option<Duration> {
        None
    }
}

/// Updates one process holds at most (taken, not acked): the rest stay in a shared queue for
/// replicas with room. Turns beyond the session-lock pool wait anyway.
pub const MAX_IN_FLIGHT: usize = 32;

/// Feeds the dispatcher from a queue and acks what it finished; see the module docs.
pub(crate) struct Taker {
    queue: Arc<dyn UpdateQueue>,
    /// Taken and not acked: the leases to renew.
    in_flight: Mutex<HashSet<u32>>,
    wake: Notify,
}

impl Taker {
    pub(crate) fn new(queue: Arc<dyn UpdateQueue>) -> Arc<Self> {
        Arc::new(Taker { queue, in_flight: Mutex::new(HashSet::new()), wake: Notify::new() })
    }

    pub(crate) fn queue(&self) -> &Arc<dyn UpdateQueue> {
        &self.queue
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Something may be takeable now (this process enqueued, or acked one that held its chat's
    /// later updates back). A wake-up while the loop is busy is kept for its next wait.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// The turn of `id` ended. Retried a little: an ack that never lands means the update is taken
    /// again once its lease runs out, and answered a second time.
    pub(crate) async fn ack(&self, id: u32) {
        // Out of the renewals first: a renewal that no longer finds it must not pass for a lost lease.
        self.in_flight().remove(&id);
        for attempt in 0..4u32 {
            match self.queue.ack(id).await {
                Ok(()) => break,
                Err(err) if attempt < 3 => {
                    warn!(update_id = id, attempt, err = %format!("{err:#}"), "cannot ack an answered update; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(err) => {
                    error!(update_id = id, err = %format!("{err:#}"), "cannot ack an answered update: it will be answered again");
                }
            }
        }
        self.wake();
    }

    /// Takes updates and sends them to the dispatcher until the dispatcher is gone (or the task is
    /// aborted), renewing the leases of those in flight.
    pub(crate) async fn run(self: Arc<Self>, dispatcher: UnboundedSender<Update>) {
        let _renew = self.queue.lease().map(|lease| {
            let me = self.clone();
            AbortOnDrop(tokio::spawn(me.renew(lease)))
        });
        let mut failures = 0u32;
        loop {
            let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight().len());
            let mut full_batch = false;
            if room > 0 {
                match self.queue.take(room).await {
                    Ok(updates) => {
                        failures = 0;
                        full_batch = updates.len() == room;
                        for update in updates {
                            self.in_flight().insert(update.id.0);
                            if dispatcher.send(update).is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        failures += 1;
                        // Once, then every minute or so while it lasts: the queue is away, not a user.
                        if failures == 1 || failures.is_multiple_of(60) {
                            warn!(err = %format!("{err:#}"), failures, "cannot take updates from the inbox; retrying");
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if full_batch {
                // More may be waiting.
                continue;
            }
            match self.queue.poll_every() {
                Some(every) => {
                    let _ = tokio::time::timeout(every, self.wake.notified()).await;
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Every third of the lease, renews the leases of every update in flight (one call).
    async fn renew(self: Arc<Self>, lease: Duration) {
        let every = (lease / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let ids: Vec<u32> = self.in_flight().iter().copied().collect();
            if ids.is_empty() {
                continue;
            }
            match self.queue.extend(&ids).await {
                Ok(lost) => {
                    for id in lost {
                        // Still in flight (not acked meanwhile): another replica took it after the lease
                        // ran out (this one stalled past it), and may answer the question too.
                        if self.in_flight().remove(&id) {
                            warn!(update_id = id, "lost the lease of an update in flight: another replica may answer it too");
                        }
                    }
                }
                Err(err) => warn!(err = %format!("{err:#}"), "cannot renew the leases of updates in flight"),
            }
        }
    }
}
