//! Backends are data: a plugin the host has never heard of is loaded from the plugin directory of
//! a running bot, canaried and answers; plugins naming files that are not theirs are refused;
//! and no backend is named in host code outside the shipped preset.

mod common;

use std::path::PathBuf;

use common::{install, plugin_dir, repo, test_plugin, wait_until};
use swapbot::routing::bucket;
use swapbot::routing::rollout::Rollout;

const ADMIN: i64 = 1;



/// A bot whose plugin directory is its own copy of the shipped plugins, watched as `swapbot run`
/// watches it.
async fn running_bot(extra: &[(&str, &str)]) -> (common::Bot, PathBuf, std::sync::Arc<Rollout>) {
    let plugins = tempfile::tempdir().unwrap().keep();
    for name in ["assistants.wasm", "responses.wasm"] {
        install(&plugins, name, &std::fs::read(plugin_dir().join(name)).unwrap());
    }
    let dir = plugins.display().to_string();
    let mut vars = vec![("PLUGIN_DIR", dir.as_str()), ("ADMIN_USER_IDS", "1")];
    vars.extend_from_slice(extra);
    let bot = common::bot(&vars).await;
    let rollout = Rollout::new(
        &bot.app.config.data_dir,
        bot.app.config.routing.clone(),
        bot.app.service.clone(),
        bot.app.config.admin_user_ids.clone(),
    );
    tokio::spawn(bot.app.plugins.clone().watch());
    assert!(wait_until(|| bot.app.plugins.is_watching()).await);
    (bot, plugins, rollout)
}

#[tokio::test]
async fn a_backend_the_host_never_heard_of_is_dropped_in_canaried_to_half_the_users_and_answers() {
    let (bot, plugins, rollout) = running_bot(&[("BACKEND_ECHO_MODEL", "echo-model"), ("BACKEND_ECHO_OPTIONS", "greeting=hi")]).await;
    assert!(bot.app.plugins.get("echo").is_none());
    let refused = rollout.command(ADMIN, "/rollout canary echo 50").unwrap();
    assert!(refused.contains("No backend \"echo\" is loaded"), "{refused}");

    install(&plugins, "echo.wasm", &test_plugin("echo.wasm"));
    assert!(wait_until(|| bot.app.plugins.get("echo").is_some()).await, "echo.wasm was not loaded");
    let reply = rollout.command(ADMIN, "/rollout canary echo 50").unwrap();
    assert!(reply.contains("canary echo on at 50%"), "{reply}");
    let status = rollout.command(ADMIN, "/rollout").unwrap();
    assert!(status.contains("echo: plugin v1.0.0"), "{status}");

    // 40 users at once: half by bucket on echo (no session, the host's history), the others on
    // the default backend as before.
    let users: Vec<i64> = (1000..1040).collect();
    let turns = users.iter().map(|&u| {
        let service = bot.app.service.clone();
        async move { (u, service.turn(u, "ping", None).await) }
    });
    let outcomes = futures::future::join_all(turns).await;
    let mut on_echo = 0;
    for (user, outcome) in &outcomes {
        let answer = outcome.reply.as_ref().unwrap_or_else(|e| panic!("user {user}: {e}"));
        if bucket(*user) < 50 {
            on_echo += 1;
            assert_eq!(outcome.backend, "echo");
            assert_eq!(answer, &format!("hi {user}: ping (history 0, model echo-model)"));
            assert_eq!(outcome.record.session_id, None, "a stateless backend has no session");
        } else {
            assert_eq!(outcome.backend, "assistants");
        }
    }
    assert!(on_echo > 5 && on_echo < 35, "{on_echo} of 40 on echo");
    // The host keeps the conversation of a stateless backend: the second turn sees the first.
    let echo_user = *users.iter().find(|&&u| bucket(u) < 50).unwrap();
    let second = bot.app.service.turn(echo_user, "again", None).await.reply.unwrap();
    assert_eq!(second, format!("hi {echo_user}: again (history 2, model echo-model)"));

    // Removing the file takes the backend out of service; its users get a clear error, the
    // others keep being answered.
    std::fs::remove_file(plugins.join("echo.wasm")).unwrap();
    assert!(wait_until(|| bot.app.plugins.get("echo").is_none()).await, "echo was not removed");
    let outcome = bot.app.service.turn(echo_user, "still there?", None).await;
    assert_eq!(outcome.record.error_kind.as_deref(), Some("plugin-missing"));
    let other = *users.iter().find(|&&u| bucket(u) >= 50).unwrap();
    assert!(bot.app.service.turn(other, "My name is Ada.", None).await.reply.is_ok());
    std::fs::remove_dir_all(&plugins).ok();
}

#[tokio::test]
async fn a_plugin_naming_another_backends_id_map_or_a_path_outside_the_data_dir_is_refused() {
    let (bot, plugins, _rollout) = running_bot(&[]).await;
    install(&plugins, "thief.wasm", &test_plugin("thief.wasm"));
    install(&plugins, "escape.wasm", &test_plugin("escape.wasm"));
    let thief = bot.app.plugins.reload("thief").await.unwrap_err().to_string();
    assert!(thief.contains("user_conversations.json") && thief.contains("is backend responses's id map"), "{thief}");
    let escape = bot.app.plugins.reload("escape").await.unwrap_err().to_string();
    assert!(escape.contains("not a plain file name"), "{escape}");
    assert!(bot.app.plugins.get("thief").is_none() && bot.app.plugins.get("escape").is_none());
    // A file whose name is not the backend it describes is refused too.
    install(&plugins, "mirror.wasm", &test_plugin("echo.wasm"));
    let wrong = bot.app.plugins.reload("mirror").await.unwrap_err().to_string();
    assert!(wrong.contains("\"echo\"") && wrong.contains("\"mirror\""), "{wrong}");
    std::fs::remove_dir_all(&plugins).ok();
}

#[tokio::test]
async fn a_rollout_file_from_before_the_registry_keeps_its_meaning() {
    let (bot, plugins, rollout) = running_bot(&[]).await;
    std::fs::write(rollout.path(), r#"{"use_openai_responses": true, "rollout_percent": 30, "test_users": [7]}"#).unwrap();
    rollout.apply_file().unwrap();
    let routing = bot.app.service.routing();
    for user in 1..=300i64 {
        let expected = if user == 7 || bucket(user) < 30 { "responses" } else { "assistants" };
        assert_eq!(routing.route(user).0, expected, "user {user}");
    }
    // `/rollout default` promotes, and the file keeps the Python bot's fields beside the new ones.
    let reply = rollout.command(ADMIN, "/rollout default responses").unwrap();
    assert!(reply.contains("default responses"), "{reply}");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(rollout.path()).unwrap()).unwrap();
    assert_eq!((file["default_backend"].as_str(), file["use_openai_responses"].as_bool(), file["rollout_percent"].as_u64()), (Some("responses"), Some(true), Some(30)));
    std::fs::remove_dir_all(&plugins).ok();
}

/// The host works on whatever plugins are in its directory: a backend name in host code (outside
/// the preset of the two shipped backends and the tests) would make it a code change again.
#[test]
fn no_backend_is_named_in_host_code_outside_the_shipped_preset() {
    let names = ["\"assistants\"", "\"responses\"", "\"user_threads.json\"", "\"user_conversations.json\""];
    let mut found = vec![];
    let mut stack = vec![repo().join("host/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("config/legacy.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Unit tests may name what they like.
            let code = text.split("#[cfg(test)]").next().unwrap();
            for (n, line) in code.lines().enumerate() {
                let line = line.trim_start();
                if line.starts_with("//") {
                    continue;
                }
                if names.iter().any(|name| line.contains(name)) {
                    found.push(format!("{}:{}: {line}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "backend names in host code:\n{}", found.join("\n"));
}
