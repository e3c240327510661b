//! What the Telegram front end calls: turns, /new and the admins' /rollout, over the
//! turn service. Each chat has its own session (see `session.rs`).

pub mod shared_inbox;
pub mod terminal;

use std::sync::Arc;

use swapbot_telegram::{Sender, TurnHandler, TurnResult};

use crate::routing::rollout::Rollout;
use crate::turn::TurnService;
use crate::state::{GroupSessions, SessionKey};

pub struct BotHandler {
    pub service: Arc<TurnService>,
    pub rollout: Arc<Rollout>,
    /// `GROUP_SESSIONS`: one session per (group, user), or one per group.
    pub group_sessions: GroupSessions,
}

impl BotHandler {
    fn session(&self, who: &Sender) -> SessionKey {
        SessionKey::for_chat(who.user_id, who.chat_id, who.private, self.group_sessions)
    }
}

#[async_trait::async_trait]
impl TurnHandler for BotHandler {
    async fn turn(&self, who: Sender, text: String, deltas: tokio::sync::mpsc::UnboundedSender<String>) -> TurnResult {
        match self.service.turn_in(who.user_id, self.session(&who), &text, Some(deltas)).await.reply {
            Ok(answer) => TurnResult::Answer(answer),
            Err(human) => TurnResult::Failed(human),
        }
    }

    async fn reset(&self, who: Sender) -> anyhow::Result<()> {
        self.service.reset(self.session(&who)).await
    }

    async fn admin(&self, who: &Sender, command: &str) -> Option<String> {
        let mut words = command.split_whitespace();
        let head = words.next().unwrap_or_default().to_ascii_lowercase();
        if head == "/usage" || head.starts_with("/usage@") {
            let args: Vec<&str> = words.collect();
            // Other users' ids and spending are not for a group to read.
            if !who.private && args.first().is_some_and(|a| a.eq_ignore_ascii_case("top")) {
                return Some(USAGE_TOP_IN_PRIVATE.into());
            }
            return Some(usage_command(&self.service, who.user_id, &args));
        }
        self.rollout.handle(who.user_id, command).await
    }
}

pub const USAGE_TOP_IN_PRIVATE: &str = "Ask /usage top in a private chat with me: it lists other users.";

/// `/usage`: the user's own use this day and month; `/usage top` (admins): the heaviest users.
pub fn usage_command(service: &TurnService, user_id: i64, args: &[&str]) -> String {
    let accounting = service.accounting();
    let now = crate::calendar::unix_ms_now();
    let line = |t: &crate::usage::Totals| {
        format!(
            "{} answer{}, {} tokens ({} cached), {}",
            t.turns,
            if t.turns == 1 { "" } else { "s" },
            t.tokens(),
            t.tokens.cached_input,
            crate::usage::format_usd(t.micro_usd)
        )
    };
    match args {
        [] => {
            let u = accounting.ledger.usage_of(user_id, now);
            format!("Your use of the assistant (UTC):\ntoday: {}\nthis month: {}", line(&u.day), line(&u.month))
        }
        ["top"] | ["top", _] if accounting.admins.contains(&user_id) => {
            let n = args.get(1).and_then(|n| n.parse::<usize>().ok()).unwrap_or(10).clamp(1, 50);
            let top = accounting.ledger.top(n, now);
            let total = accounting.ledger.total(now);
            let mut out = format!("This month (UTC), everyone: {}\nHeaviest users:", line(&total.month));
            if top.is_empty() {
                out.push_str(" none yet");
            }
            for (i, (user, t)) in top.iter().enumerate() {
                out.push_str(&format!("\n{}. {user}: {}", i + 1, line(t)));
            }
            out
        }
        _ => "Usage: /usage".into(),
    }
}
