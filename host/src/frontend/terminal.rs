//! The terminal chat: the same pipeline as Telegram (router, plugins, storage, logs) for a
//! machine with no bot token.

use std::io::Write;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::turn::TurnService;

pub const HELP: &str = "I answer your questions with an OpenAI model and the knowledge base.\n\
/new starts a fresh conversation, /usage shows what you used, /help shows this, /quit (or Ctrl-D) leaves.";

pub async fn run(service: Arc<TurnService>, user_id: i64) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    eprintln!("terminal chat as user {user_id}. {HELP}");
    loop {
        eprint!("you> ");
        let Some(line) = lines.next_line().await? else { break };
        let text = line.trim();
        match text {
            "" => continue,
            "/quit" | "/exit" => break,
            "/help" | "/start" => {
                println!("{HELP}");
                continue;
            }
            "/new" => {
                service.reset(user_id).await?;
                println!("bot> Started a new conversation.");
                continue;
            }
            "/usage" => {
                println!("bot> {}", crate::frontend::usage_command(&service, user_id, &[]));
                continue;
            }
            _ => {}
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let printer = tokio::spawn(async move {
            let mut shown = String::new();
            while let Some(delta) = rx.recv().await {
                if shown.is_empty() {
                    print!("bot> ");
                }
                shown.push_str(&delta);
                print!("{delta}");
                let _ = std::io::stdout().flush();
            }
            shown
        });
        let outcome = service.turn(user_id, text, Some(tx)).await;
        let shown = printer.await.unwrap_or_default();
        match outcome.reply {
            Ok(answer) if !shown.is_empty() => {
                // The streamed text is the answer; finish the line.
                if shown.trim() != answer {
                    print!("\r\x1b[2Kbot> {answer}");
                }
                println!();
            }
            Ok(answer) => println!("bot> {answer}"),
            Err(human) => {
                if !shown.is_empty() {
                    println!();
                }
                println!("bot> {human}");
            }
        }
        eprintln!(
            "     [{} v{} · {} ms · first text {} ms]",
            outcome.backend,
            outcome.record.plugin_version,
            outcome.record.latency_ms,
            outcome.record.ttft_ms.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}
