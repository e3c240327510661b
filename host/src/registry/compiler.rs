//! Where a plugin is compiled: in this process, or in a child process of this same binary
//! (`swapbot compile-plugin`), which hands back the artifact the compile cache stores.
//!
//! Why a child: cranelift allocates tens of MiB while it compiles, and an allocator keeps much
//! of what it freed (mimalloc in the compiling threads' heaps). A bot that compiled its plugins
//! at start idled ~20 MiB above one that loaded them from the cache; compiled in a child, that
//! heap goes away with the child, and a cold start idles like a warm one.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::runtime::{LoadedPlugin, PluginError, PluginRuntime};

/// A compile that takes longer is given up (the child killed) and done in this process.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// How plugins are compiled. Library users and tests compile in-process; `swapbot run` names
/// its own executable.
#[derive(Clone, Debug, Default)]
pub enum Compiler {
    #[default]
    InProcess,
    /// `<exe> compile-plugin …`: the module on stdin, the artifact on stdout.
    Child(PathBuf),
}

/// A compiled plugin and, when the compile produced one, its serialised artifact (what the
/// cache stores, so it is not serialised again).
pub(super) struct Compiled {
    pub plugin: LoadedPlugin,
    pub artifact: Option<Vec<u8>>,
}

impl Compiler {
    pub(super) async fn compile(&self, runtime: &PluginRuntime, bytes: &[u8], sha256: &str, name: &str) -> Result<Compiled, PluginError> {
        if let Compiler::Child(exe) = self {
            match compile_in_child(exe, runtime, bytes).await {
                Ok(artifact) => {
                    // Safety: the artifact is `precompile`'s output from this same executable;
                    // wasmtime checks its header (version and engine settings) again.
                    match unsafe { runtime.load_precompiled(&artifact, sha256.to_owned(), bytes.len(), Some(name)).await } {
                        Ok(plugin) => return Ok(Compiled { plugin, artifact: Some(artifact) }),
                        Err(PluginError::Compile(err)) => {
                            tracing::warn!(backend = name, %err, "the compiler process's artifact does not load; compiling in this process")
                        }
                        // Refused by the contract checks or its `describe`: the plugin's doing,
                        // whoever compiled it.
                        Err(err) => return Err(err),
                    }
                }
                Err(err) => tracing::warn!(backend = name, exe = %exe.display(), err = %format!("{err:#}"), "compiling in a child process failed; compiling in this process"),
            }
        }
        Ok(Compiled { plugin: runtime.load(bytes, Some(name)).await?, artifact: None })
    }
}

async fn compile_in_child(exe: &std::path::Path, runtime: &PluginRuntime, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let limits = runtime.limits();
    let mut command = tokio::process::Command::new(exe);
    // Nothing of the bot's environment (its keys and tokens) but what the engine's settings read.
    command.env_clear();
    if let Some(perfmap) = std::env::var_os("SWAPBOT_WASM_PERFMAP") {
        command.env("SWAPBOT_WASM_PERFMAP", perfmap);
    }
    let mut child = command
        .arg("compile-plugin")
        .args(["--memory-bytes", &limits.memory_bytes.to_string()])
        .args(["--pool-size", &limits.pool_size.to_string()])
        .args(if limits.pooling { &[][..] } else { &["--no-pooling"][..] })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start it: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let module = bytes.to_vec();
    // Written while the output is read: a pipe holds less than a module.
    let feed = tokio::spawn(async move {
        let written = stdin.write_all(&module).await;
        drop(stdin);
        written
    });
    let output = tokio::time::timeout(CHILD_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("no answer in {CHILD_TIMEOUT:?}"))??;
    if !output.status.success() {
        let why = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!("{}: {}", output.status, why.lines().last().unwrap_or("").trim());
    }
    feed.await??;
    Ok(output.stdout)
}
