//! The plugins currently serving, one slot per backend, swapped atomically.
//!
//! A turn takes an `Arc` of the plugin at its start and finishes on it even if a newer module
//! is swapped in meanwhile. Modules are compiled once and cached on disk by content hash and
//! engine compatibility, so a restart with unchanged plugins does not recompile.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;

use crate::runtime::{LoadedPlugin, PluginError, PluginRuntime};
use crate::routing::Backend;

type Observer = Box<dyn Fn(Backend, bool) + Send + Sync>;

/// How long a burst of file events may last before the file is read.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(40);

pub struct PluginSet {
    runtime: PluginRuntime,
    dir: PathBuf,
    cache_dir: Option<PathBuf>,
    slots: [ArcSwapOption<LoadedPlugin>; 2],
    observer: ArcSwapOption<Observer>,
    /// A larger file is refused before it is read (a sparse 200 MB file would be read whole).
    max_file_bytes: u64,
}

/// Default of [`PluginSet::with_max_file_bytes`]; today's plugins are well under 1 MiB.
pub const DEFAULT_MAX_PLUGIN_FILE_BYTES: u64 = 32 << 20;

fn slot(backend: Backend) -> usize {
    match backend {
        Backend::Assistants => 0,
        Backend::Responses => 1,
    }
}

/// What happened when a plugin file was (re)loaded.
#[derive(Debug)]
pub enum LoadOutcome {
    Loaded { backend: Backend, version: String, sha256: String, cached: bool, millis: u128 },
    Unchanged,
    Missing,
}

impl PluginSet {
    pub fn new(runtime: PluginRuntime, dir: impl Into<PathBuf>, cache_dir: Option<PathBuf>) -> Self {
        Self {
            runtime,
            dir: dir.into(),
            cache_dir,
            slots: [ArcSwapOption::empty(), ArcSwapOption::empty()],
            observer: ArcSwapOption::empty(),
            max_file_bytes: DEFAULT_MAX_PLUGIN_FILE_BYTES,
        }
    }

    pub fn with_max_file_bytes(mut self, max: u64) -> Self {
        self.max_file_bytes = max;
        self
    }

    /// The file's bytes, unless it is missing (`None`) or larger than the cap.
    async fn read_capped(&self, path: &Path) -> Result<Option<Vec<u8>>, PluginError> {
        let cannot = |err: std::io::Error| PluginError::Compile(format!("cannot read {}: {err}", path.display()));
        let len = match tokio::fs::metadata(path).await {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(cannot(err)),
        };
        if len > self.max_file_bytes {
            return Err(PluginError::Compile(format!(
                "{} is {len} bytes, over the limit of {} (PLUGIN_MAX_FILE_MB)",
                path.display(),
                self.max_file_bytes
            )));
        }
        // `take` also bounds a file that grows between the check and the read.
        let file = tokio::fs::File::open(path).await.map_err(cannot)?;
        let mut bytes = Vec::with_capacity(len as usize);
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::AsyncReadExt::take(file, self.max_file_bytes + 1), &mut bytes)
            .await
            .map_err(cannot)?;
        if bytes.len() as u64 > self.max_file_bytes {
            return Err(PluginError::Compile(format!("{} grew over the limit while read", path.display())));
        }
        Ok(Some(bytes))
    }

    pub fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, backend: Backend) -> Option<Arc<LoadedPlugin>> {
        self.slots[slot(backend)].load_full()
    }

    /// Puts a validated plugin in service.
    pub fn install(&self, backend: Backend, plugin: Arc<LoadedPlugin>) -> Option<Arc<LoadedPlugin>> {
        self.slots[slot(backend)].swap(Some(plugin))
    }

    /// Loads every backend's file that is present.
    pub async fn load_all(&self) -> Vec<(Backend, Result<LoadOutcome, PluginError>)> {
        let mut outcomes = vec![];
        for backend in Backend::ALL {
            outcomes.push((backend, self.reload(backend).await));
        }
        outcomes
    }

    /// (Re)loads one backend's file; the old module keeps serving unless the new one validates.
    /// Every swap and refusal is logged with the old and new version and sha256.
    pub async fn reload(&self, backend: Backend) -> Result<LoadOutcome, PluginError> {
        let result = self.try_reload(backend).await;
        if let Err(err) = &result {
            let old = self.get(backend);
            let file = self.dir.join(backend.file_name());
            let new_sha256 = match self.read_capped(&file).await {
                Ok(Some(bytes)) => hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))[..12].to_string(),
                _ => "-".into(),
            };
            tracing::error!(
                backend = backend.name(),
                file = %file.display(),
                new_sha256,
                old_version = old.as_ref().map(|p| p.description.version.as_str()).unwrap_or("-"),
                old_sha256 = old.as_ref().map(|p| &p.sha256[..12]).unwrap_or("-"),
                %err,
                "plugin refused; the previous module keeps serving"
            );
        }
        if let Some(observer) = &*self.observer.load() {
            match &result {
                Ok(LoadOutcome::Loaded { .. }) => observer(backend, true),
                Err(_) => observer(backend, false),
                _ => {}
            }
        }
        result
    }

    /// Called after every swap (true) and refusal (false), e.g. for metrics.
    pub fn set_observer(&self, observer: impl Fn(Backend, bool) + Send + Sync + 'static) {
        self.observer.store(Some(Arc::new(Box::new(observer))));
    }

    /// Watches the plugin directory (the directory, so a file replaced by rename is seen) and
    /// SIGHUP, reloading what changed. Runs until the process ends.
    pub async fn watch(self: Arc<Self>) -> anyhow::Result<()> {
        use notify::Watcher;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<Backend>>();
        let fs_tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in &event.paths {
                // Only the two plugin names count: editor temp files and `.x.wasm.swap-tmp` do not.
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if let Some(backend) = Backend::ALL.into_iter().find(|b| b.file_name() == name) {
                    let _ = fs_tx.send(Some(backend));
                }
            }
        })?;
        std::fs::create_dir_all(&self.dir)?;
        watcher.watch(&self.dir, notify::RecursiveMode::NonRecursive)?;
        #[cfg(unix)]
        {
            let hup_tx = tx.clone();
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: rescanning the plugin directory");
                    let _ = hup_tx.send(None);
                }
            });
        }
        tracing::info!(dir = %self.dir.display(), "watching for plugin changes");
        while let Some(first) = rx.recv().await {
            // A copy over the file arrives as several events: let it settle, then load once.
            let mut pending: Vec<Backend> = match first {
                Some(b) => vec![b],
                None => Backend::ALL.to_vec(),
            };
            tokio::time::sleep(SETTLE).await;
            while let Ok(more) = rx.try_recv() {
                match more {
                    Some(b) => pending.push(b),
                    None => pending.extend(Backend::ALL),
                }
            }
            pending.sort();
            pending.dedup();
            for backend in pending {
                let _ = self.reload(backend).await;
            }
        }
        drop(watcher);
        Ok(())
    }

    async fn try_reload(&self, backend: Backend) -> Result<LoadOutcome, PluginError> {
        let path = self.dir.join(backend.file_name());
        let Some(bytes) = self.read_capped(&path).await? else { return Ok(LoadOutcome::Missing) };
        let started = Instant::now();
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let old = self.get(backend);
        if old.as_ref().is_some_and(|p| p.sha256 == sha256) {
            return Ok(LoadOutcome::Unchanged);
        }
        let (plugin, cached) = self.compile_cached(&bytes, &sha256, backend).await?;
        self.self_test(backend, &plugin).await?;
        let plugin = Arc::new(plugin);
        let outcome = LoadOutcome::Loaded {
            backend,
            version: plugin.description.version.clone(),
            sha256: sha256.clone(),
            cached,
            millis: started.elapsed().as_millis(),
        };
        tracing::info!(
            backend = backend.name(),
            old_version = old.as_ref().map(|p| p.description.version.as_str()).unwrap_or("-"),
            old_sha256 = old.as_ref().map(|p| &p.sha256[..12]).unwrap_or("-"),
            new_version = %plugin.description.version,
            new_sha256 = &sha256[..12],
            cached,
            load_ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        self.install(backend, plugin);
        Ok(outcome)
    }

    /// Runs the harness cases shipped beside the module (`PLUGIN_DIR/<backend>.cases/*.json`).
    async fn self_test(&self, backend: Backend, plugin: &LoadedPlugin) -> Result<(), PluginError> {
        let dir = self.dir.join(format!("{}.cases", backend.name()));
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for file in &files {
            let case = crate::dev::harness::read_case(file).map_err(|e| PluginError::SelfTest(e.to_string()))?;
            let result = crate::dev::harness::run_case(&self.runtime, plugin, case).await;
            if !result.passed() {
                return Err(PluginError::SelfTest(format!(
                    "case {:?} ({}) failed: {}",
                    result.name,
                    file.display(),
                    result.failures.join("; ")
                )));
            }
        }
        if !files.is_empty() {
            tracing::info!(backend = backend.name(), cases = files.len(), "plugin self-test passed");
        }
        Ok(())
    }

    async fn compile_cached(&self, bytes: &[u8], sha256: &str, backend: Backend) -> Result<(LoadedPlugin, bool), PluginError> {
        let name = Some(backend.name());
        let Some(cache_dir) = &self.cache_dir else {
            return Ok((self.runtime.load(bytes, name).await?, false));
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.runtime.engine().precompile_compatibility_hash().hash(&mut hasher);
        let engine = format!("{:016x}", hasher.finish());
        let artifact = cache_dir.join(format!("{sha256}-{engine}.cwasm"));
        let key = cache_key(cache_dir);
        match std::fs::read(&artifact) {
            Ok(entry) => match key.as_ref().and_then(|key| verified_entry(key, sha256, &engine, &entry)) {
                // Safety: the MAC, under a key only this host holds, binds the artifact to this
                // module's hash and this engine; wasmtime checks its header again.
                Some(native) => match unsafe { self.runtime.load_precompiled(native, sha256.into(), bytes.len(), name).await } {
                    Ok(plugin) => return Ok((plugin, true)),
                    Err(err) => tracing::warn!(artifact = %artifact.display(), %err, "compile cache entry unusable, recompiling"),
                },
                None => tracing::warn!(
                    artifact = %artifact.display(),
                    module_sha256 = &sha256[..12],
                    "compile cache entry fails its check (not written by this host for this module and engine); recompiling"
                ),
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(artifact = %artifact.display(), %err, "compile cache entry unreadable, recompiling"),
        }
        let plugin = self.runtime.load(bytes, name).await?;
        // A cache write failure only costs a recompile at the next start.
        match PluginRuntime::serialize(&plugin) {
            Ok(mut serialized) => {
                let Some(key) = key else { return Ok((plugin, false)) };
                let mac = entry_mac(&key, sha256, &engine, &serialized);
                serialized.extend_from_slice(&mac);
                if let Err(err) = crate::state::write_atomic(&artifact, &serialized) {
                    tracing::warn!(%err, "could not write the compile cache");
                }
            }
            Err(err) => tracing::warn!(%err, "could not serialise the compiled plugin"),
        }
        Ok((plugin, false))
    }
}

/// Length of the MAC that ends each compile cache entry.
const MAC_LEN: usize = 32;

/// The key of the compile cache's MACs, beside the cache (not in it), created at first start.
/// `None` when it can neither be read nor created: then nothing is cached or trusted.
fn cache_key(cache_dir: &Path) -> Option<[u8; 32]> {
    let path = cache_dir.with_file_name(".plugin-cache.key");
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Some(key);
        }
        tracing::warn!(file = %path.display(), "compile cache key is malformed; making a new one (cached modules are recompiled)");
    }
    let key: [u8; 32] = rand::random();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = std::fs::create_dir_all(cache_dir.parent().unwrap_or(Path::new(".")))
        .and_then(|()| options.open(&path))
        .and_then(|mut file| {
            std::io::Write::write_all(&mut file, &key)?;
            file.sync_all()
        });
    match written {
        Ok(()) => Some(key),
        Err(err) => {
            tracing::warn!(file = %path.display(), %err, "cannot create the compile cache key; modules are compiled at every start");
            None
        }
    }
}

/// HMAC-SHA256 (RFC 2104) over what the entry claims to be and its native code.
fn entry_mac(key: &[u8; 32], module_sha256: &str, engine: &str, native: &[u8]) -> [u8; MAC_LEN] {
    use sha2::{Digest, Sha256};
    let pad = |byte: u8| {
        let mut block = [byte; 64];
        for (b, k) in block.iter_mut().zip(key) {
            *b ^= k;
        }
        block
    };
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    // Length-prefixed fields, so no two different claims hash alike.
    for field in [module_sha256.as_bytes(), engine.as_bytes(), native] {
        inner.update((field.len() as u64).to_le_bytes());
        inner.update(field);
    }
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The native code of a cache entry whose MAC checks out, else `None`.
fn verified_entry<'a>(key: &[u8; 32], module_sha256: &str, engine: &str, entry: &'a [u8]) -> Option<&'a [u8]> {
    let split = entry.len().checked_sub(MAC_LEN)?;
    let (native, mac) = entry.split_at(split);
    let expected = entry_mac(key, module_sha256, engine, native);
    // Constant time: a timing side channel must not leak the MAC byte by byte.
    let diff = expected.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    (diff == 0).then_some(native)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_mac_binds_module_engine_and_code() {
        let key = [7u8; 32];
        let mut entry = b"native code".to_vec();
        entry.extend_from_slice(&entry_mac(&key, "abc", "e1", b"native code"));
        assert_eq!(verified_entry(&key, "abc", "e1", &entry), Some(&b"native code"[..]));
        assert_eq!(verified_entry(&key, "abd", "e1", &entry), None, "another module");
        assert_eq!(verified_entry(&key, "abc", "e2", &entry), None, "another engine");
        assert_eq!(verified_entry(&[8u8; 32], "abc", "e1", &entry), None, "another host's key");
        let mut edited = entry.clone();
        edited[0] ^= 1;
        assert_eq!(verified_entry(&key, "abc", "e1", &edited), None, "edited code");
        assert_eq!(verified_entry(&key, "abc", "e1", &entry[..10]), None, "truncated");
    }
}
