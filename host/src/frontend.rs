//! What the Telegram front end calls: turns, /new and the admins' /rollout, over the
//! turn service.

use std::sync::Arc;

use swapbot_telegram::{Sender, TurnHandler, TurnResult};

use crate::rollout::Rollout;
use crate::service::TurnService;

pub struct BotHandler {
    pub service: Arc<TurnService>,
    pub rollout: Arc<Rollout>,
}

#[async_trait::async_trait]
impl TurnHandler for BotHandler {
    async fn turn(&self, who: Sender, text: String, deltas: tokio::sync::mpsc::UnboundedSender<String>) -> TurnResult {
        match self.service.turn(who.user_id, &text, Some(deltas)).await.reply {
            Ok(answer) => TurnResult::Answer(answer),
            Err(human) => TurnResult::Failed(human),
        }
    }

    async fn reset(&self, user_id: i64) -> anyhow::Result<()> {
        self.service.reset(user_id).await
    }

    async fn admin(&self, user_id: i64, command: &str) -> Option<String> {
        self.rollout.command(user_id, command)
    }
}
