//! The one retry policy of a turn: a failed attempt is tried once more when the backend says it
//! may succeed, nothing was shown to the user yet, and the wait fits under the host's cap on
//! server-requested waits (a turn holds its session's lock while it waits).

use std::time::Duration;

use crate::runtime::ChatError;

/// Attempts of one turn at most (the first and one retry).
pub const MAX_ATTEMPTS: u32 = 2;

/// How long to wait before attempt `attempt + 1`, or `None` to give up now.
pub fn next_attempt(error: &ChatError, attempt: u32, shown_text: bool, max_wait: Duration) -> Option<Duration> {
    if !error.retryable || attempt >= MAX_ATTEMPTS || shown_text {
        return None;
    }
    let wait = match error.retry_after_ms {
        Some(ms) => swapbot_openai::capped_wait(Duration::from_millis(ms as u64), max_wait),
        None => Some(swapbot_openai::backoff(attempt)),
    };
    if wait.is_none() {
        // The user hears now instead of after a wait longer than the cap.
        tracing::warn!(
            retry_after_ms = error.retry_after_ms,
            max_ms = max_wait.as_millis() as u64,
            "server asked for a wait beyond the cap: not retrying"
        );
    }
    wait
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ErrorKind;

    fn error(retryable: bool, retry_after_ms: Option<u32>) -> ChatError {
        ChatError {
            kind: ErrorKind::RateLimited,
            message: "429".into(),
            retryable,
            retry_after_ms,
            session_id: None,
            turn_id: None,
            usage: None,
        }
    }

    #[test]
    fn a_turn_is_retried_once_and_never_past_the_cap_or_after_text_was_shown() {
        let cap = Duration::from_secs(5);
        assert_eq!(next_attempt(&error(true, Some(1200)), 1, false, cap), Some(Duration::from_millis(1200)));
        assert_eq!(next_attempt(&error(true, Some(1200)), 2, false, cap), None, "one retry only");
        assert_eq!(next_attempt(&error(true, Some(3_600_000)), 1, false, cap), None, "an hour is not slept");
        assert_eq!(next_attempt(&error(true, None), 1, true, cap), None, "text was shown");
        assert_eq!(next_attempt(&error(false, None), 1, false, cap), None, "not retryable");
        assert!(next_attempt(&error(true, None), 1, false, cap).is_some_and(|w| w <= cap));
    }
}
