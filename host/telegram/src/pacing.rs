//! Pacing decisions for streamed previews (drafts in private chats, edits in groups), kept pure: the caller
//! passes `now`.

use std::time::Duration;
use tokio::time::Instant;

/// Paces updates of one preview (one chat, one turn): at most one per `interval`, and none before a 429's
/// `retry_after` has passed.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Duration,
    last: Option<Instant>,
    blocked_until: Option<Instant>,
}

impl Pacer {
    pub fn new(interval: Duration) -> Self {
        Pacer { interval, last: None, blocked_until: None }
    }

    /// Earliest instant the next update may go out.
    pub fn next_allowed(&self, now: Instant) -> Instant {
        let mut t = now;
        if let Some(last) = self.last {
            t = t.max(last + self.interval);
        }
        if let Some(b) = self.blocked_until {
            t = t.max(b);
        }
        t
    }

    /// Records that an update went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// Records a 429: nothing before `now + retry_after`.
    pub fn retry_after(&mut self, now: Instant, retry_after: Duration) {
        self.blocked_until = Some(now + retry_after);
    }
}

/// When to push the next preview, given what is shown and what could be shown: `None` = nothing to do.
pub fn next_preview_at(pacer: &Pacer, now: Instant, shown: Option<&str>, wanted: Option<&str>) -> Option<Instant> {
    let wanted = wanted?;
    if shown == Some(wanted) {
        return None;
    }
    Some(pacer.next_allowed(now))
}

/// Backoff for getUpdates failures (attempt 0, 1, 2, …): 1, 2, 4, 8 s, capped at 8 s so a Bot API that comes
/// back is noticed quickly (teloxide's default grows to 64 s).
pub fn polling_backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(3))
}

/// Backoff between delivery retries after a transient failure (attempt 0, 1, …).
pub fn delivery_backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64 << attempt.min(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_update_is_immediate_then_paced() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Duration::from_secs(1));
        assert_eq!(p.next_allowed(t0), t0);
        p.sent(t0);
        assert_eq!(p.next_allowed(t0 + Duration::from_millis(300)), t0 + Duration::from_secs(1));
        assert_eq!(p.next_allowed(t0 + Duration::from_secs(2)), t0 + Duration::from_secs(2));
    }

    #[test]
    fn retry_after_blocks() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Duration::from_secs(1));
        p.sent(t0);
        p.retry_after(t0, Duration::from_secs(5));
        assert_eq!(p.next_allowed(t0 + Duration::from_secs(2)), t0 + Duration::from_secs(5));
    }

    #[test]
    fn preview_only_when_changed() {
        let t0 = Instant::now();
        let p = Pacer::new(Duration::from_secs(1));
        assert_eq!(next_preview_at(&p, t0, None, None), None);
        assert_eq!(next_preview_at(&p, t0, Some("a"), Some("a")), None);
        assert_eq!(next_preview_at(&p, t0, Some("a"), Some("ab")), Some(t0));
        assert_eq!(next_preview_at(&p, t0, None, Some("a")), Some(t0));
    }

    #[test]
    fn backoffs_are_bounded() {
        assert_eq!(polling_backoff(0), Duration::from_secs(1));
        assert_eq!(polling_backoff(50), Duration::from_secs(8));
        assert!(delivery_backoff(100) <= Duration::from_secs(8));
    }
}
