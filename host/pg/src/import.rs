//! Copying a file store's `DATA_DIR` into the database, in the formats `host/src/storage.rs`,
//! `session.rs`, `usage/ledger.rs`, `rollout.rs` and the Telegram inbox write (parsed here so
//! this crate does not depend on the host):
//!
//! - `user_*.json`: a backend's private id map, `{"<user id>": "<id>"}` (the Python bot's
//!   `user_threads.json` is one); `group_*.json`: the same backend's group map,
//!   `{"<chat>:<user>" | "<chat>": "<id>"}`, imported under the private map's name.
//! - `history/<user>.jsonl`, `history/groups/<chat>_<user>.jsonl` / `<chat>.jsonl`: one
//!   `{"role", "text"}` per line; an unreadable line is skipped, as the file store skips it.
//! - `rollout.json`, `usage.jsonl` (one ledger entry per line), and the Telegram inbox:
//!   `inbox/log`, lines `+<update id> <update JSON>` (taken) and `-<update id> <unix secs>`
//!   (answered), or the layout before it, `inbox/<update id>.json`.
//!
//! Everything goes in one transaction. Nothing the database has is overwritten: an id map
//! entry, a session's history or the rollout already there stays, a usage line already copied
//! (by its content and its rank among equal lines) is not copied again, so a second import
//! changes nothing.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use crate::{HISTORY_LIMIT, PgStore, ROLLOUT_CHANNEL, StoreError, UsageEntry, key};

/// Rows an import added (all zero for a second run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub session_ids: u64,
    pub history_sessions: u64,
    pub history_messages: u64,
    pub usage_entries: u64,
    pub rollout: bool,
    pub inbox_updates: u64,
    /// Lines of history and usage files that did not parse (skipped, as the file store does).
    pub skipped_lines: u64,
}

fn import_err(path: &Path, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Import {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(import_err(path, err)),
    }
}

/// Files of `dir` whose names satisfy `keep`, by name (a missing directory has none).
fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(err) => return Err(import_err(dir, err)),
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path())))
        .filter(|(name, _)| keep(name))
        .collect();
    found.sort();
    Ok(found)
}

/// An id map file: a JSON object of string ids. Unlike a torn history line, a map that does
/// not parse stops the import: silently dropping it would lose every user's session.
fn id_map(path: &Path, bytes: &[u8]) -> Result<Vec<(String, String)>, StoreError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| import_err(path, e))?;
    let object = value
        .as_object()
        .ok_or_else(|| import_err(path, "not a JSON object"))?;
    object
        .iter()
        .map(|(k, v)| {
            let id = v
                .as_str()
                .ok_or_else(|| import_err(path, format!("value for {k:?} is not a string")))?;
            Ok((k.clone(), id.to_owned()))
        })
        .collect()
}

/// A history file's messages, oldest first, the last [`HISTORY_LIMIT`] only.
fn history(bytes: &[u8], skipped: &mut u64) -> (Vec<String>, Vec<String>) {
    #[derive(serde::Deserialize)]
    struct Record {
        role: String,
        text: String,
    }
    let mut messages: Vec<(String, String)> = Vec::new();
    // Bytes, not lines of text: a record cut mid-character must not end the file.
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => {
                let role = if r.role == "assistant" {
                    "assistant"
                } else {
                    "user"
                };
                messages.push((role.to_owned(), r.text));
            }
            Err(_) => *skipped += 1,
        }
    }
    let keep = messages.len().saturating_sub(HISTORY_LIMIT as usize);
    messages.drain(..keep);
    messages.into_iter().unzip()
}

pub(crate) async fn import(store: &PgStore, dir: &Path) -> Result<ImportReport, StoreError> {
    if !dir.is_dir() {
        return Err(import_err(dir, "not a directory"));
    }
    let mut report = ImportReport::default();
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    store.counted(1);
    let run = Run { store, tx: &tx };

    // Id maps.
    let maps = files(dir, |n| {
        n.ends_with(".json") && (n.starts_with("user_") || n.starts_with("group_"))
    })?;
    for (name, path) in maps {
        let Some(bytes) = read(&path)? else { continue };
        let entries = id_map(&path, &bytes)?;
        let (map, keys): (String, Vec<Option<String>>) = match name.strip_prefix("group_") {
            Some(rest) => (
                format!("user_{rest}"),
                entries
                    .iter()
                    .map(|(k, _)| key::from_group_map_key(k))
                    .collect(),
            ),
            None => (
                name.clone(),
                entries
                    .iter()
                    .map(|(k, _)| k.trim().parse::<i64>().ok().map(key::private))
                    .collect(),
            ),
        };
        let mut ks = Vec::new();
        let mut ids = Vec::new();
        for ((raw, id), k) in entries.iter().zip(keys) {
            let k =
                k.ok_or_else(|| import_err(&path, format!("key {raw:?} is not a session key")))?;
            ks.push(k);
            ids.push(id.clone());
        }
        report.session_ids += run
            .execute(
                "INSERT INTO session_ids (map, session_key, session_id) \
                 SELECT $1, k, v FROM unnest($2::text[], $3::text[]) AS m(k, v) ON CONFLICT DO NOTHING",
                &[&map, &ks, &ids],
            )
            .await?;
    }

    // Histories.
    let mut histories: Vec<(String, PathBuf)> = Vec::new();
    for (name, path) in files(&dir.join("history"), |n| n.ends_with(".jsonl"))? {
        let stem = name.trim_end_matches(".jsonl");
        if let Ok(user) = stem.parse::<i64>() {
            histories.push((key::private(user), path));
        }
    }
    for (name, path) in files(&dir.join("history").join("groups"), |n| {
        n.ends_with(".jsonl")
    })? {
        if let Some(k) = key::from_group_file_stem(name.trim_end_matches(".jsonl")) {
            histories.push((k, path));
        }
    }
    for (k, path) in histories {
        let Some(bytes) = read(&path)? else { continue };
        let (roles, texts) = history(&bytes, &mut report.skipped_lines);
        if roles.is_empty() {
            continue;
        }
        let n = run
            .execute(
                // One exchange number per message: a file's messages need not come in pairs.
                "INSERT INTO history (session_key, exchange, pos, role, text) \
                 SELECT $1, nextval('history_exchange_seq'), 0, r, t FROM \
                 (SELECT r, t FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS m(r, t, n) ORDER BY n) ordered \
                 WHERE NOT EXISTS (SELECT 1 FROM history WHERE session_key = $1)",
                &[&k, &roles, &texts],
            )
            .await?;
        if n > 0 {
            report.history_sessions += 1;
            report.history_messages += n;
        }
    }

    // Rollout.
    let path = dir.join("rollout.json");
    if let Some(bytes) = read(&path)? {
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| import_err(&path, e))?;
        report.rollout = run
            .execute(
                "WITH up AS (INSERT INTO rollout (singleton, value) VALUES (true, $1) ON CONFLICT DO NOTHING RETURNING 1) \
                 SELECT pg_notify($2, '') FROM up",
                &[&value, &ROLLOUT_CHANNEL],
            )
            .await?
            > 0;
    }

    // Usage.
    let path = dir.join("usage.jsonl");
    if let Some(bytes) = read(&path)? {
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut cols = UsageColumns::default();
        for line in bytes.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Ok(entry) = serde_json::from_slice::<UsageEntry>(line) else {
                report.skipped_lines += 1;
                continue;
            };
            // Two equal lines are two turns: the rank among equals keeps both, once.
            let canonical = serde_json::to_string(&entry).unwrap_or_default();
            let rank = seen.entry(canonical.clone()).or_insert(0);
            *rank += 1;
            cols.push(&entry, format!("usage.jsonl:{canonical}#{rank}"));
        }
        for chunk in cols.chunks(5000) {
            report.usage_entries += run
                .execute(
                    "INSERT INTO usage (t_unix_ms, user_id, backend, model, input, cached_input, output, reasoning, \
                     embedding, micro_usd, import_key) \
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], \
                     $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[]) \
                     ON CONFLICT (import_key) DO NOTHING",
                    &chunk.params(),
                )
                .await?;
        }
    }

    // The Telegram inbox: updates accepted but not answered yet.
    for (update_id, body) in inbox_pending(&dir.join("inbox"), &mut report)? {
        report.inbox_updates += run
            .execute(
                "INSERT INTO inbox (update_id, body, chat_id) SELECT $1, $2, ($2::jsonb->'message'->'chat'->>'id')::bigint \
                 WHERE NOT EXISTS (SELECT 1 FROM processed_updates WHERE update_id = $1) ON CONFLICT DO NOTHING",
                &[&update_id, &body],
            )
            .await?;
    }

    tx.commit().await?;
    store.counted(1);
    tracing::info!(dir = %dir.display(), ?report, "data dir imported");
    Ok(report)
}

/// The questions an inbox holds and has not answered, from its log (lines whose `-` follows their
/// `+` are answered; a torn last line was never confirmed) and from files of the older layout.
fn inbox_pending(dir: &Path, report: &mut ImportReport) -> Result<Vec<(i64, serde_json::Value)>, StoreError> {
    let mut pending: std::collections::BTreeMap<i64, serde_json::Value> = Default::default();
    let mut answered = std::collections::HashSet::new();
    if let Some(bytes) = read(&dir.join("log"))? {
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in bytes[..whole].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let text = String::from_utf8_lossy(line);
            let parsed = text.split_once(' ').and_then(|(head, tail)| {
                let (sign, id) = head.split_at_checked(1)?;
                Some((sign.to_owned(), id.parse::<i64>().ok()?, tail))
            });
            match parsed {
                Some((sign, id, json)) if sign == "+" => match serde_json::from_str(json) {
                    Ok(body) if !answered.contains(&id) => {
                        pending.insert(id, body);
                    }
                    Ok(_) => {}
                    Err(_) => report.skipped_lines += 1,
                },
                Some((sign, id, _)) if sign == "-" => {
                    pending.remove(&id);
                    answered.insert(id);
                }
                _ => report.skipped_lines += 1,
            }
        }
    }
    for (name, path) in files(dir, |n| n.ends_with(".json") && !n.starts_with('.'))? {
        let Ok(update_id) = name.trim_end_matches(".json").parse::<i64>() else {
            continue;
        };
        let Some(bytes) = read(&path)? else { continue };
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(body) if !answered.contains(&update_id) => {
                pending.insert(update_id, body);
            }
            Ok(_) => {}
            Err(_) => report.skipped_lines += 1,
        }
    }
    Ok(pending.into_iter().collect())
}

struct Run<'a> {
    store: &'a PgStore,
    tx: &'a Transaction<'a>,
}

impl Run<'_> {
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let statement = self.tx.prepare_cached(sql).await?;
        self.store.counted(1);
        Ok(self.tx.execute(&statement, params).await?)
    }
}

#[derive(Default, Clone)]
struct UsageColumns {
    t: Vec<i64>,
    user: Vec<i64>,
    backend: Vec<String>,
    model: Vec<String>,
    input: Vec<i64>,
    cached: Vec<i64>,
    output: Vec<i64>,
    reasoning: Vec<i64>,
    embedding: Vec<i64>,
    micro_usd: Vec<i64>,
    import_key: Vec<String>,
}

impl UsageColumns {
    fn push(&mut self, e: &UsageEntry, import_key: String) {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.t.push(n(e.t_unix_ms));
        self.user.push(e.user_id);
        self.backend.push(e.backend.clone());
        self.model.push(e.model.clone());
        self.input.push(n(e.tokens.input));
        self.cached.push(n(e.tokens.cached_input));
        self.output.push(n(e.tokens.output));
        self.reasoning.push(n(e.tokens.reasoning));
        self.embedding.push(n(e.tokens.embedding));
        self.micro_usd.push(n(e.micro_usd));
        self.import_key.push(import_key);
    }

    /// The columns cut into batches of `size` rows, so one statement stays a sane size.
    fn chunks(&self, size: usize) -> Vec<UsageColumns> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < self.t.len() {
            let end = (start + size).min(self.t.len());
            let r = start..end;
            out.push(UsageColumns {
                t: self.t[r.clone()].to_vec(),
                user: self.user[r.clone()].to_vec(),
                backend: self.backend[r.clone()].to_vec(),
                model: self.model[r.clone()].to_vec(),
                input: self.input[r.clone()].to_vec(),
                cached: self.cached[r.clone()].to_vec(),
                output: self.output[r.clone()].to_vec(),
                reasoning: self.reasoning[r.clone()].to_vec(),
                embedding: self.embedding[r.clone()].to_vec(),
                micro_usd: self.micro_usd[r.clone()].to_vec(),
                import_key: self.import_key[r].to_vec(),
            });
            start = end;
        }
        out
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.t,
            &self.user,
            &self.backend,
            &self.model,
            &self.input,
            &self.cached,
            &self.output,
            &self.reasoning,
            &self.embedding,
            &self.micro_usd,
            &self.import_key,
        ]
    }
}
