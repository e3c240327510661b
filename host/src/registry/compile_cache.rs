//! The on-disk compile cache: a module compiled once is reused across restarts, keyed by its
//! content hash and the engine's compatibility, each entry MAC'd with a key only this host holds
//! (a planted artifact is native code, so it must not be trusted because of its name).

use std::hash::{Hash, Hasher};
use std::path::Path;

use super::compiler::{Compiled, Compiler};
use crate::runtime::{LoadedPlugin, PluginError, PluginRuntime};

/// Compiles `bytes`, or loads the cached native code of the same module; `true` when cached.
pub(super) async fn compile_cached(
    runtime: &PluginRuntime,
    compiler: &Compiler,
    cache_dir: Option<&Path>,
    bytes: &[u8],
    sha256: &str,
    name: &str,
) -> Result<(LoadedPlugin, bool), PluginError> {
    let Some(cache_dir) = cache_dir else {
        return Ok((compiler.compile(runtime, bytes, sha256, name).await?.plugin, false));
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    runtime.engine().precompile_compatibility_hash().hash(&mut hasher);
    let engine = format!("{:016x}", hasher.finish());
    let artifact = cache_dir.join(format!("{sha256}-{engine}.cwasm"));
    let key = cache_key(cache_dir);
    match std::fs::read(&artifact) {
        Ok(entry) => match key.as_ref().and_then(|key| verified_entry(key, sha256, &engine, &entry)) {
            // Safety: the MAC, under a key only this host holds, binds the artifact to this
            // module's hash and this engine; wasmtime checks its header again.
            Some(native) => match unsafe { runtime.load_precompiled(native, sha256.into(), bytes.len(), Some(name)).await } {
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
    let Compiled { plugin, artifact: serialized } = compiler.compile(runtime, bytes, sha256, name).await?;
    // A cache write failure only costs a recompile at the next start.
    match serialized.map_or_else(|| PluginRuntime::serialize(&plugin), Ok) {
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
