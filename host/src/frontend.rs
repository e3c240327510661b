//! What the Telegram front end calls: turns, /new and the admins' /rollout, over the
//! turn service. Each chat has its own session (see `session.rs`).

use std::sync::Arc;

use swapbot_telegram::{Sender, TurnHandler, TurnResult};

use crate::rollout::Rollout;
use crate::service::TurnService;
use crate::session::{GroupSessions, SessionKey};

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

    async fn admin(&self, user_id: i64, command: &str) -> Option<String> {
        self.rollout.command(user_id, command)
    }
}
