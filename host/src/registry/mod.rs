//! The set of loaded backends: every `<name>.wasm` in `PLUGIN_DIR` is one, loaded, validated
//! (contract, `describe`, its id map, its self-test cases) and swapped in atomically; files
//! added, replaced and removed while the bot runs are followed (directory watch and SIGHUP).
//!
//! A turn takes an `Arc` of its backend's plugin at its start and finishes on it even if a newer
//! module is swapped in, or the file removed, meanwhile.

mod compile_cache;
mod compiler;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};

pub use self::compiler::Compiler;
pub use crate::config::backends::backend_of_file;
use crate::runtime::{LoadedPlugin, PluginError, PluginRuntime};

type Observer = Box<dyn Fn(&str, bool) + Send + Sync>;

/// How long a burst of file events may last before the file is read.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(40);

/// Default of [`Registry::with_max_file_bytes`]; today's plugins are well under 1 MiB.
pub const DEFAULT_MAX_PLUGIN_FILE_BYTES: u64 = 32 << 20;

/// Files under `DATA_DIR` that are the host's own: no plugin may name one as its id map.
const RESERVED_FILES: [&str; 2] = ["rollout.json", "usage.jsonl"];

/// What happened when a plugin file was (re)loaded.
#[derive(Debug)]
pub enum LoadOutcome {
    Loaded { backend: String, version: String, sha256: String, cached: bool, millis: u128 },
    Unchanged,
    /// The file is gone: the backend was taken out of service.
    Removed,
    Missing,
}

pub struct Registry {
    runtime: PluginRuntime,
    compiler: Compiler,
    dir: PathBuf,
    cache_dir: Option<PathBuf>,
    backends: ArcSwap<BTreeMap<String, Arc<LoadedPlugin>>>,
    /// One load at a time, so the id-map claims checked against the other backends stay true
    /// until the new plugin is installed.
    loading: tokio::sync::Mutex<()>,
    observer: ArcSwapOption<Observer>,
    /// A larger file is refused before it is read (a sparse 200 MB file would be read whole).
    max_file_bytes: u64,
    /// The directory watch is up: from now on a file added is seen.
    watching: std::sync::atomic::AtomicBool,
}

impl Registry {
    pub fn new(runtime: PluginRuntime, dir: impl Into<PathBuf>, cache_dir: Option<PathBuf>) -> Self {
        Self {
            runtime,
            compiler: Compiler::InProcess,
            dir: dir.into(),
            cache_dir,
            backends: ArcSwap::from_pointee(BTreeMap::new()),
            loading: tokio::sync::Mutex::new(()),
            observer: ArcSwapOption::empty(),
            max_file_bytes: DEFAULT_MAX_PLUGIN_FILE_BYTES,
            watching: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// How modules are compiled (in this process unless told).
    pub fn with_compiler(mut self, compiler: Compiler) -> Self {
        self.compiler = compiler;
        self
    }

    pub fn with_max_file_bytes(mut self, max: u64) -> Self {
        self.max_file_bytes = max;
        self
    }

    /// Whether the directory watch runs (files added from now on are loaded).
    pub fn is_watching(&self) -> bool {
        self.watching.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, backend: &str) -> Option<Arc<LoadedPlugin>> {
        self.backends.load().get(backend).cloned()
    }

    /// Every backend in service, by name.
    pub fn loaded(&self) -> Arc<BTreeMap<String, Arc<LoadedPlugin>>> {
        self.backends.load_full()
    }

    pub fn file_of(&self, backend: &str) -> PathBuf {
        self.dir.join(format!("{backend}.wasm"))
    }

    /// Puts a validated plugin in service under `backend`.
    pub fn install(&self, backend: &str, plugin: Arc<LoadedPlugin>) -> Option<Arc<LoadedPlugin>> {
        let mut old = None;
        self.backends.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            old = next.insert(backend.to_owned(), plugin.clone());
            next
        });
        old
    }

    fn remove(&self, backend: &str) -> Option<Arc<LoadedPlugin>> {
        let mut old = None;
        self.backends.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            old = next.remove(backend);
            next
        });
        old
    }

    /// The backends whose files are in the directory now.
    fn files_present(&self) -> BTreeSet<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return BTreeSet::new() };
        entries.filter_map(|e| e.ok()).filter_map(|e| backend_of_file(&e.path()).map(str::to_owned)).collect()
    }

    /// Loads every plugin file in the directory (and drops backends whose file is gone).
    pub async fn load_all(&self) -> Vec<(String, Result<LoadOutcome, PluginError>)> {
        let mut names = self.files_present();
        names.extend(self.loaded().keys().cloned());
        let mut outcomes = vec![];
        for backend in names {
            let outcome = self.reload(&backend).await;
            outcomes.push((backend, outcome));
        }
        outcomes
    }

    /// (Re)loads one backend's file; the old module keeps serving unless the new one validates.
    /// Every swap and refusal is logged with the old and new version and sha256.
    pub async fn reload(&self, backend: &str) -> Result<LoadOutcome, PluginError> {
        let _one_load = self.loading.lock().await;
        let result = self.try_reload(backend).await;
        if let Err(err) = &result {
            let old = self.get(backend);
            let file = self.file_of(backend);
            let new_sha256 = match self.read_capped(&file).await {
                Ok(Some(bytes)) => hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))[..12].to_string(),
                _ => "-".into(),
            };
            tracing::error!(
                backend,
                file = %file.display(),
                new_sha256,
                old_version = old.as_ref().map(|p| p.description.version.as_str()).unwrap_or("-"),
                old_sha256 = old.as_ref().map(|p| &p.sha256[..12]).unwrap_or("-"),
                %err,
                "plugin refused; the previous module (if any) keeps serving"
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
    pub fn set_observer(&self, observer: impl Fn(&str, bool) + Send + Sync + 'static) {
        self.observer.store(Some(Arc::new(Box::new(observer))));
    }

    /// Watches the plugin directory (the directory, so a file replaced by rename is seen) and
    /// SIGHUP, reloading what changed. Runs until the process ends.
    pub async fn watch(self: Arc<Self>) -> anyhow::Result<()> {
        use notify::Watcher;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
        let fs_tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in &event.paths {
                // Only plugin names count: editor temp files and `.x.wasm.swap-tmp` do not.
                if let Some(backend) = backend_of_file(path) {
                    let _ = fs_tx.send(Some(backend.to_owned()));
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
        self.watching.store(true, std::sync::atomic::Ordering::Release);
        // A file that arrived before the watch began is picked up too.
        let _ = tx.send(None);
        while let Some(first) = rx.recv().await {
            // A copy over the file arrives as several events: let it settle, then load once.
            let mut pending = BTreeSet::new();
            let mut rescan = false;
            match first {
                Some(b) => {
                    pending.insert(b);
                }
                None => rescan = true,
            }
            tokio::time::sleep(SETTLE).await;
            while let Ok(more) = rx.try_recv() {
                match more {
                    Some(b) => {
                        pending.insert(b);
                    }
                    None => rescan = true,
                }
            }
            if rescan {
                pending.extend(self.files_present());
                pending.extend(self.loaded().keys().cloned());
            }
            for backend in pending {
                let _ = self.reload(&backend).await;
            }
        }
        drop(watcher);
        Ok(())
    }

    async fn try_reload(&self, backend: &str) -> Result<LoadOutcome, PluginError> {
        // What a load frees (the module read, the compile cache entry, the compiler's heap when it
        // runs here, the serialised artifact, the self-test's turns) is given back at once, not
        // held by the allocator for later: a bot that has just loaded its plugins then idles.
        let _purging = crate::memory::PurgeWhileLoading::start();
        let path = self.file_of(backend);
        let Some(bytes) = self.read_capped(&path).await? else {
            return Ok(match self.remove(backend) {
                Some(old) => {
                    tracing::warn!(
                        backend,
                        old_version = %old.description.version,
                        old_sha256 = &old.sha256[..12],
                        "plugin file removed: backend taken out of service (turns in flight finish on it)"
                    );
                    LoadOutcome::Removed
                }
                None => LoadOutcome::Missing,
            });
        };
        let started = Instant::now();
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let old = self.get(backend);
        if old.as_ref().is_some_and(|p| p.sha256 == sha256) {
            return Ok(LoadOutcome::Unchanged);
        }
        let (plugin, cached) =
            compile_cache::compile_cached(&self.runtime, &self.compiler, self.cache_dir.as_deref(), &bytes, &sha256, backend)
                .await?;
        self.check_id_map(backend, &plugin)?;
        self.self_test(backend, &plugin).await?;
        let plugin = Arc::new(plugin);
        let outcome = LoadOutcome::Loaded {
            backend: backend.to_owned(),
            version: plugin.description.version.clone(),
            sha256: sha256.clone(),
            cached,
            millis: started.elapsed().as_millis(),
        };
        tracing::info!(
            backend,
            old_version = old.as_ref().map(|p| p.description.version.as_str()).unwrap_or("-"),
            old_sha256 = old.as_ref().map(|p| &p.sha256[..12]).unwrap_or("-"),
            new_version = %plugin.description.version,
            new_sha256 = &sha256[..12],
            contract = %plugin.description.contract,
            cached,
            load_ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        self.install(backend, plugin);
        Ok(outcome)
    }

    /// The id map a plugin names is a plain `.json` file directly under `DATA_DIR`, not one of the
    /// host's own files and not another backend's: a plugin must not read or overwrite anything
    /// but its own sessions.
    fn check_id_map(&self, backend: &str, plugin: &LoadedPlugin) -> Result<(), PluginError> {
        let Some(map) = plugin.description.id_map.as_deref() else { return Ok(()) };
        let refuse = |reason: String| Err(PluginError::IdMap { map: map.to_owned(), reason });
        let plain = !map.is_empty()
            && map.len() <= 100
            && map.ends_with(".json")
            && !map.starts_with('.')
            && map.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !map.contains("..");
        if !plain {
            return refuse("is not a plain file name ending in .json directly under DATA_DIR".into());
        }
        if RESERVED_FILES.contains(&map) || map.starts_with(crate::state::GROUP_MAP_PREFIX) {
            return refuse("is one of the host's own files".into());
        }
        if let Some((other, _)) = self
            .loaded()
            .iter()
            .find(|(name, p)| name.as_str() != backend && p.description.id_map.as_deref() == Some(map))
        {
            return refuse(format!("is backend {other}'s id map"));
        }
        Ok(())
    }

    /// Runs the harness cases shipped beside the module (`PLUGIN_DIR/<backend>.cases/*.json`).
    async fn self_test(&self, backend: &str, plugin: &LoadedPlugin) -> Result<(), PluginError> {
        let dir = self.dir.join(format!("{backend}.cases"));
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
            tracing::info!(backend, cases = files.len(), "plugin self-test passed");
        }
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plugin_names_are_backends() {
        let of = |name: &str| backend_of_file(Path::new("/plugins").join(name).as_path()).map(str::to_owned);
        assert_eq!(of("chat.wasm").as_deref(), Some("chat"));
        assert_eq!(of("echo-2.wasm").as_deref(), Some("echo-2"));
        for ignored in [".chat.wasm.swap-tmp", ".chat.wasm", "chat.wasm~", "chat.wasm.tmp", "Chat.wasm", "chat.txt", "4chat.wasm", "chat"] {
            assert_eq!(of(ignored), None, "{ignored}");
        }
    }
}
