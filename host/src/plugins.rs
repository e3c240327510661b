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

use crate::plugin::{LoadedPlugin, PluginError, PluginRuntime};
use crate::router::Backend;

pub struct PluginSet {
    runtime: PluginRuntime,
    dir: PathBuf,
    cache_dir: Option<PathBuf>,
    slots: [ArcSwapOption<LoadedPlugin>; 2],
}

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
        Self { runtime, dir: dir.into(), cache_dir, slots: [ArcSwapOption::empty(), ArcSwapOption::empty()] }
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
    pub async fn reload(&self, backend: Backend) -> Result<LoadOutcome, PluginError> {
        let path = self.dir.join(backend.file_name());
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(LoadOutcome::Missing),
            Err(err) => return Err(PluginError::Compile(format!("cannot read {}: {err}", path.display()))),
        };
        let started = Instant::now();
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let old = self.get(backend);
        if old.as_ref().is_some_and(|p| p.sha256 == sha256) {
            return Ok(LoadOutcome::Unchanged);
        }
        let (plugin, cached) = self.compile_cached(&bytes, &sha256, backend).await?;
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

    async fn compile_cached(&self, bytes: &[u8], sha256: &str, backend: Backend) -> Result<(LoadedPlugin, bool), PluginError> {
        let name = Some(backend.name());
        let Some(cache_dir) = &self.cache_dir else {
            return Ok((self.runtime.load(bytes, name).await?, false));
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.runtime.engine().precompile_compatibility_hash().hash(&mut hasher);
        let artifact = cache_dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()));
        if artifact.exists() {
            // Safety: the file name binds the artifact to this module's bytes and this engine's
            // compatibility; wasmtime checks the header again and refuses a mismatch.
            match unsafe { self.runtime.load_precompiled(&artifact, sha256.into(), bytes.len(), name).await } {
                Ok(plugin) => return Ok((plugin, true)),
                Err(err) => tracing::warn!(artifact = %artifact.display(), %err, "compile cache entry unusable, recompiling"),
            }
        }
        let plugin = self.runtime.load(bytes, name).await?;
        // A cache write failure only costs a recompile at the next start.
        match PluginRuntime::serialize(&plugin) {
            Ok(serialized) => {
                if let Err(err) = crate::storage::write_atomic(&artifact, &serialized) {
                    tracing::warn!(%err, "could not write the compile cache");
                }
            }
            Err(err) => tracing::warn!(%err, "could not serialise the compiled plugin"),
        }
        Ok((plugin, false))
    }
}
