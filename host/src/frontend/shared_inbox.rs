//! The webhook inbox of several replicas, in PostgreSQL: Telegram's update is answered 200 once
//! its row committed, and any replica takes it from there under a lease (see `swapbot_pg`'s
//! `enqueue_update` / `take_pending`). A replica that dies holding updates loses their leases
//! when they run out, and another replica answers them: nothing waits for the dead one to come
//! back. The inbox and `processed_updates` together are the dedup of updates delivered twice.
//!
//! Order is kept per chat, not per user: a chat's updates are what Telegram numbers in order and
//! what the dispatcher runs one after another; a user writing in a private chat and a group at
//! once has two orders, and the session lock still keeps their turns one at a time.

use std::time::Duration;

use swapbot_pg::PgStore;
use swapbot_telegram::UpdateQueue;
use swapbot_telegram::inbox::{Inbox, Stored};
use teloxide::types::Update;

/// `INBOX_LEASE_SECS` when unset: how long a taken update is this replica's before another may
/// take it (renewed every third of it while its turn runs). A dead replica's questions wait this
/// long at most.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How often a replica looks for updates that other replicas accepted (or that a dead replica
/// held): its own are taken the moment they are enqueued or its previous turn of the chat ended.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// How long an update waits for the delivery of the one before it (Telegram delivers over
/// several connections at once, so update n+1 can commit before n): see `take_pending`.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Takes of one update after which it is given up: every taker so far died or stalled with it,
/// most likely because of it (a question that crashes the process would otherwise take every
/// replica down in turn, forever).
pub const MAX_ATTEMPTS: i32 = 5;

pub struct SharedInbox {
    pg: PgStore,
    replica_id: String,
    lease: Duration,
}

impl SharedInbox {
    /// The inbox as `replica_id` takes from it. A replica restarting under its id gives up the
    /// leases its previous run held (nothing of that run is in flight any more), so those
    /// questions are answered now rather than after the lease.
    pub async fn open(pg: PgStore, replica_id: String, lease: Duration) -> Result<Self, swapbot_pg::StoreError> {
        let released = pg.release_leases(&replica_id).await?;
        if released > 0 {
            tracing::info!(released, "took back the updates this replica held before its restart");
        }
        Ok(SharedInbox { pg, replica_id, lease })
    }
}

#[async_trait::async_trait]
impl UpdateQueue for SharedInbox {
    async fn enqueue(&self, update: &Update) -> anyhow::Result<Stored> {
        let body = serde_json::to_value(update)?;
        Ok(if self.pg.enqueue_update(i64::from(update.id.0), &body).await? { Stored::New } else { Stored::Duplicate })
    }

    async fn take(&self, limit: usize) -> anyhow::Result<Vec<Update>> {
        let taken = self.pg.take_pending(&self.replica_id, limit as i64, self.lease, SETTLE).await?;
        let mut updates = Vec::with_capacity(taken.len());
        for row in taken {
            if row.attempts > MAX_ATTEMPTS {
                tracing::error!(
                    update_id = row.update_id,
                    attempts = row.attempts - 1,
                    "an update whose every taker died or stalled is given up unanswered"
                );
                self.pg.ack_update(row.update_id).await?;
                continue;
            }
            if row.attempts > 1 {
                tracing::info!(update_id = row.update_id, attempts = row.attempts, "taking over an update another run did not finish");
            }
            // From text, not `from_value`: teloxide's `Update` read from a `serde_json::Value` comes out
            // as `UpdateKind::Error` (its message deserializer wants borrowed strings), and the
            // question would be dropped by the dispatcher as an unknown kind.
            let update = serde_json::from_str::<Update>(&row.body.to_string())
                .map_err(|e| e.to_string())
                .and_then(|u| if Inbox::keeps(&u) { Ok(u) } else { Err("not a message".to_string()) });
            match update {
                Ok(update) => updates.push(update),
                Err(err) => {
                    // Written by a binary that decoded it; a later one that cannot would be stuck on
                    // it forever (and hold its chat back): dropped, by id only.
                    tracing::warn!(update_id = row.update_id, %err, "an update in the inbox does not decode; dropped");
                    self.pg.ack_update(row.update_id).await?;
                }
            }
        }
        Ok(updates)
    }

    async fn extend(&self, ids: &[u32]) -> anyhow::Result<Vec<u32>> {
        let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
        let held = self.pg.extend_leases(&ids, &self.replica_id, self.lease).await?;
        Ok(ids.into_iter().filter(|id| !held.contains(id)).map(|id| id as u32).collect())
    }

    async fn ack(&self, id: u32) -> anyhow::Result<()> {
        Ok(self.pg.ack_update(i64::from(id)).await?)
    }

    async fn release(&self) -> anyhow::Result<()> {
        self.pg.release_leases(&self.replica_id).await?;
        Ok(())
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    fn poll_every(&self) -> Option<Duration> {
        Some(POLL_EVERY)
    }
}
