//! The plugin runtime: compiles backend components once, and runs each turn in a fresh
//! `Store` built from a prebuilt `InstancePre`, under CPU, memory and wall-clock limits.
//!
//! A plugin gets a WASI context with nothing in it (no files, env, args, stdio or sockets)
//! and the `host` interface of the contract; every effect goes through [`effects::HostEffects`].

pub mod effects;
mod host_impl;
pub mod since_v0_1;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use effects::{EventSource, HostEffects, StreamStart};

/// The contract version this host implements (the `package` line of `wit/backend.wit`).
pub const CONTRACT_VERSION: &str = "0.2.0";
/// Every version served, newest first: the latest, then one `since_v0_*` module per older one.
pub const SERVED_VERSIONS: [&str; 2] = [CONTRACT_VERSION, since_v0_1::VERSION];
const CONTRACT_PACKAGE: &str = "swapbot:backend";

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "backend",
        imports: { default: async },
        exports: { default: async },
        with: {
            "swapbot:backend/host.event-stream": super::effects::EventStreamHandle,
        },
    });
}

host_impl::impl_host_interface!(
    crate::runtime::bindings::swapbot::backend::host,
    crate::runtime::bindings::swapbot::backend::types,
    {
        async fn session_started(&mut self, session_id: String) {
            self.effects.session_started(session_id);
            self.returned_from_host();
        }
    }
);

pub use bindings::swapbot::backend::types::{
    Answer, ChatError, ContextChunk, Description, ErrorKind, HistoryMessage, Role, Settings, Turn,
    Usage,
};

impl ErrorKind {
    /// The kind's name in logs, metrics and case files: the WIT spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::RateLimited => "rate-limited",
            ErrorKind::Quota => "quota",
            ErrorKind::Server => "server",
            ErrorKind::SessionBusy => "session-busy",
            ErrorKind::SessionGone => "session-gone",
            ErrorKind::ApiGone => "api-gone",
            ErrorKind::Auth => "auth",
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::BadResponse => "bad-response",
            ErrorKind::StreamCut => "stream-cut",
            ErrorKind::ModelFailed => "model-failed",
            ErrorKind::Config => "config",
            ErrorKind::ContextOverflow => "context-overflow",
        }
    }
}

/// Why the runtime could not run or accept a plugin (as opposed to a backend error the plugin
/// reported itself, which is a [`ChatError`]).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("not a valid component: {0}")]
    Compile(String),
    #[error("plugin built for contract {plugin}, this host implements {host} (and serves {})", SERVED_VERSIONS[1..].join(", "))]
    ContractMismatch { plugin: String, host: String },
    #[error("plugin does not fit the contract: {0}")]
    Link(String),
    #[error("plugin describes itself as {found:?}, expected {expected:?}")]
    WrongName { expected: String, found: String },
    #[error("plugin's id map {map:?} {reason}")]
    IdMap { map: String, reason: String },
    #[error("plugin failed its self-test: {0}")]
    SelfTest(String),
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin exceeded its CPU budget ({0:?} without returning to the host)")]
    CpuLimit(Duration),
    #[error("plugin exceeded its memory limit of {0} MiB")]
    MemoryLimit(usize),
    #[error("turn took longer than {0:?}")]
    Timeout(Duration),
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// Linear memory per instance.
    pub memory_bytes: usize,
    /// Continuous guest CPU time between two host calls.
    pub cpu_slice: Duration,
    /// The whole turn, host calls included.
    pub turn_timeout: Duration,
    /// Use the pooling instance allocator (faster instantiation, memory reserved up front).
    pub pooling: bool,
    /// With pooling: how many turns may run at once; further turns wait for a slot.
    pub pool_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            cpu_slice: Duration::from_secs(2),
            turn_timeout: Duration::from_secs(120),
            // Pooling with copy-on-write memory images: a turn's instance reuses a slot's mappings
            // (no mmap/munmap per turn); a turn waits for a free slot, so it is never refused.
            pooling: true,
            pool_size: 256,
        }
    }
}

const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What a store holds for one turn.
pub struct TurnState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: TurnLimiter,
    effects: Box<dyn HostEffects>,
    /// Epoch ticks the guest has run since a call of the contract's imports last returned.
    ticks_in_guest: u64,
}

impl TurnState {
    /// A call of the contract's imports returned: the guest's next CPU slice starts. Counted
    /// here rather than in a `Store::call_hook`, which ran on every crossing of the boundary
    /// (four per host call, two more per string the host wrote into the guest); a WASI call
    /// does not start a new slice, so a guest cannot spin on the clock past its budget.
    fn returned_from_host(&mut self) {
        self.ticks_in_guest = 0;
    }
}

/// The guest asked for more linear memory than its limit: the turn ends with a typed error.
#[derive(Debug, thiserror::Error)]
#[error("swapbot: guest memory limit of {limit} bytes reached (asked for {desired})")]
struct MemoryLimitReached {
    limit: usize,
    desired: usize,
}

/// The guest ran its whole CPU slice without returning to the host.
#[derive(Debug, thiserror::Error)]
#[error("swapbot: guest CPU slice exhausted")]
struct CpuSliceExhausted;

/// The store's limits; memory growth past the limit fails with [`MemoryLimitReached`], so a
/// trap is classified by its type, not by the text wasmtime gives it.
struct TurnLimiter {
    memory_bytes: usize,
    others: StoreLimits,
}

impl wasmtime::ResourceLimiter for TurnLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryLimitReached { limit: self.memory_bytes, desired }));
        }
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.others.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.others.instances()
    }

    fn tables(&self) -> usize {
        self.others.tables()
    }

    fn memories(&self) -> usize {
        self.others.memories()
    }
}

impl WasiView for TurnState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A component ready to instantiate, in the bindings of the contract version it was built for.
enum Pre {
    Latest(bindings::BackendPre<TurnState>),
    V0_1(since_v0_1::bindings::BackendPre<TurnState>),
}

/// One turn's instance; its calls take and give the latest types whatever its version.
enum Instance {
    Latest(bindings::Backend),
    V0_1(since_v0_1::bindings::Backend),
}

impl Pre {
    async fn instantiate(&self, store: &mut Store<TurnState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Pre::Latest(pre) => Instance::Latest(pre.instantiate_async(store).await?),
            Pre::V0_1(pre) => Instance::V0_1(pre.instantiate_async(store).await?),
        })
    }
}

impl Instance {
    async fn describe(&self, store: &mut Store<TurnState>) -> wasmtime::Result<Description> {
        match self {
            Instance::Latest(b) => b.call_describe(store).await,
            Instance::V0_1(b) => b.call_describe(store).await.map(since_v0_1::description),
        }
    }

    async fn chat(&self, store: &mut Store<TurnState>, turn: &Turn) -> wasmtime::Result<Result<Answer, ChatError>> {
        match self {
            Instance::Latest(b) => b.call_chat(store, turn).await,
            Instance::V0_1(b) => Ok(b
                .call_chat(store, &since_v0_1::turn(turn))
                .await?
                .map(since_v0_1::answer)
                .map_err(since_v0_1::error)),
        }
    }
}

/// A compiled, validated plugin ready to serve turns.
pub struct LoadedPlugin {
    pre: Pre,
    component: Component,
    pub description: Description,
    pub sha256: String,
    pub size: usize,
    pub compile_time: Duration,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.description.name)
            .field("version", &self.description.version)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// The engine, the linker with the host's imports, and the epoch ticker.
#[derive(Clone)]
pub struct PluginRuntime {
    engine: Engine,
    linker: Arc<Linker<TurnState>>,
    limits: Limits,
    /// With pooling, one permit per pool slot: a turn waits for a slot instead of failing.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    ticker: Arc<EpochTicker>,
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while a plugin call is in flight, and sleeps
/// (parked, no wake-ups) while none is: an idle bot would otherwise wake 100 times a second.
struct EpochTicker {
    state: Arc<TickerState>,
    thread: std::thread::Thread,
}

struct TickerState {
    stop: std::sync::atomic::AtomicBool,
    /// Plugin calls in flight.
    busy: std::sync::atomic::AtomicUsize,
    /// Epochs advanced so far.
    ticks: std::sync::atomic::AtomicU64,
}

impl EpochTicker {
    fn start(engine: &Engine) -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering;
        let engine = engine.weak();
        let state = Arc::new(TickerState {
            stop: std::sync::atomic::AtomicBool::new(false),
            busy: std::sync::atomic::AtomicUsize::new(0),
            ticks: std::sync::atomic::AtomicU64::new(0),
        });
        let shared = state.clone();
        let thread = std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                if shared.busy.load(Ordering::Acquire) == 0 {
                    // `CallInFlight::new` and the ticker's drop unpark it; an unpark that comes
                    // before the park is not lost, and a spurious return parks again.
                    std::thread::park();
                    continue;
                }
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
                shared.ticks.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        Ok(EpochTicker { state, thread: thread.thread().clone() })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.state.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.unpark();
    }
}

/// Keeps the epoch ticking for as long as it lives (one per plugin call).
struct CallInFlight<'a>(&'a EpochTicker);

impl<'a> CallInFlight<'a> {
    fn new(ticker: &'a EpochTicker) -> Self {
        if ticker.state.busy.fetch_add(1, std::sync::atomic::Ordering::AcqRel) == 0 {
            ticker.thread.unpark();
        }
        CallInFlight(ticker)
    }
}

impl Drop for CallInFlight<'_> {
    fn drop(&mut self) {
        self.0.state.busy.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl PluginRuntime {
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        let config = engine_config(&limits);
        let engine = Engine::new(&config).map_err(anyhow_of)?;
        let mut linker = Linker::<TurnState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow_of)?;
        bindings::Backend::add_to_linker::<TurnState, wasmtime::component::HasSelf<TurnState>>(
            &mut linker,
            |state| state,
        )
        .map_err(anyhow_of)?;
        since_v0_1::bindings::Backend::add_to_linker::<TurnState, wasmtime::component::HasSelf<TurnState>>(
            &mut linker,
            |state| state,
        )
        .map_err(anyhow_of)?;

        let ticker = Arc::new(EpochTicker::start(&engine)?);

        let slots = limits.pooling.then(|| Arc::new(tokio::sync::Semaphore::new(limits.pool_size.max(1) as usize)));
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            slots,
            limits,
            ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles and validates a module: its contract version, its fit to the contract, and
    /// its `describe` answer. `expected_name` (the file's stem) guards against a file holding
    /// another backend than its name says.
    pub async fn load(&self, bytes: &[u8], expected_name: Option<&str>) -> Result<LoadedPlugin, PluginError> {
        let started = Instant::now();
        let sha256 = hex::encode(Sha256::digest(bytes));
        let engine = self.engine.clone();
        let owned = bytes.to_vec();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &owned))
            .await
            .map_err(|e| PluginError::Compile(e.to_string()))?
            .map_err(|e| PluginError::Compile(first_line(&e)))?;
        self.finish_load(component, sha256, bytes.len(), started, expected_name).await
    }

    /// Like [`load`], from a precompiled artifact of [`Component::serialize`] (the disk cache).
    /// Bytes, not a path: what was checked is what is deserialized.
    ///
    /// # Safety
    /// The bytes must come from `serialize` of this wasmtime version for this module, as the
    /// cache guarantees by checking each entry's MAC.
    pub async unsafe fn load_precompiled(
        &self,
        artifact: &[u8],
        sha256: String,
        size: usize,
        expected_name: Option<&str>,
    ) -> Result<LoadedPlugin, PluginError> {
        let started = Instant::now();
        let component = unsafe { Component::deserialize(&self.engine, artifact) }
            .map_err(|e| PluginError::Compile(first_line(&e)))?;
        self.finish_load(component, sha256, size, started, expected_name).await
    }

    async fn finish_load(
        &self,
        component: Component,
        sha256: String,
        size: usize,
        started: Instant,
        expected_name: Option<&str>,
    ) -> Result<LoadedPlugin, PluginError> {
        let version = contract_version(&self.engine, &component)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link(first_line(&e)))?;
        let link = |e: wasmtime::Error| PluginError::Link(first_line(&e));
        let pre = if version == since_v0_1::VERSION {
            Pre::V0_1(since_v0_1::bindings::BackendPre::new(instance_pre).map_err(link)?)
        } else {
            Pre::Latest(bindings::BackendPre::new(instance_pre).map_err(link)?)
        };
        let compile_time = started.elapsed();
        let mut plugin = LoadedPlugin {
            pre,
            component: component.clone(),
            description: Description {
                name: String::new(),
                version: String::new(),
                contract: String::new(),
                id_map: None,
                session_label: String::new(),
                turn_label: String::new(),
            },
            sha256,
            size,
            compile_time,
        };
        let description = self
            .call(&plugin, Box::new(effects::NoEffects), |backend, store| {
                Box::pin(async move { backend.describe(store).await })
            })
            .await?;
        // The description must name the version the component was built against.
        if description.contract != version {
            return Err(PluginError::ContractMismatch {
                plugin: format!("{} (its imports are {version})", description.contract),
                host: CONTRACT_VERSION.into(),
            });
        }
        if let Some(expected) = expected_name {
            if description.name != expected {
                return Err(PluginError::WrongName { expected: expected.into(), found: description.name });
            }
        }
        plugin.description = description;
        Ok(plugin)
    }

    /// Serialises a compiled plugin for the on-disk cache.
    pub fn serialize(plugin: &LoadedPlugin) -> anyhow::Result<Vec<u8>> {
        plugin.component.serialize().map_err(anyhow_of)
    }

    /// One turn in a fresh store.
    pub async fn chat(
        &self,
        plugin: &LoadedPlugin,
        turn: Turn,
        effects: Box<dyn HostEffects>,
    ) -> Result<Result<Answer, ChatError>, PluginError> {
        self.call(plugin, effects, move |backend, store| {
            Box::pin(async move { backend.chat(store, &turn).await })
        })
        .await
    }

    async fn call<R: Send + 'static>(
        &self,
        plugin: &LoadedPlugin,
        effects: Box<dyn HostEffects>,
        f: impl for<'a> FnOnce(
            &'a Instance,
            &'a mut Store<TurnState>,
        ) -> std::pin::Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>
        + Send,
    ) -> Result<R, PluginError> {
        // Declared before the store, so it is released after the store (and its slot) is gone.
        let _slot = match &self.slots {
            Some(slots) => Some(slots.clone().acquire_owned().await.map_err(|e| PluginError::Trap(e.to_string()))?),
            None => None,
        };
        let _ticking = CallInFlight::new(&self.ticker);
        let mut store = self.new_store(effects);
        let limits = &self.limits;
        let run = async {
            let backend = plugin.pre.instantiate(&mut store).await.map_err(|e| classify_trap(&e, limits))?;
            let result = f(&backend, &mut store).await;
            result.map_err(|e| classify_trap(&e, limits))
        };
        match tokio::time::timeout(self.limits.turn_timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(PluginError::Timeout(self.limits.turn_timeout)),
        }
    }

    fn new_store(&self, effects: Box<dyn HostEffects>) -> Store<TurnState> {
        // Nothing ambient: no args, env, preopened dirs, stdio or network.
        let wasi = WasiCtx::builder().allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).build();
        let others = StoreLimitsBuilder::new().instances(16).tables(16).memories(4).trap_on_grow_failure(true).build();
        let limits = TurnLimiter { memory_bytes: self.limits.memory_bytes, others };
        let state = TurnState { wasi, table: ResourceTable::new(), limits, effects, ticks_in_guest: 0 };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        let cpu_ticks = cpu_ticks(&self.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            state.ticks_in_guest += 1;
            if state.ticks_in_guest > cpu_ticks {
                return Err(wasmtime::Error::new(CpuSliceExhausted));
            }
            // Yield at every tick so a busy guest does not hold a runtime worker for its whole slice,
            // and so that the turn's timeout (checked only when the call is pending) is seen even by a
            // guest whose quick host calls keep restarting its slice. tokio's `yield_now` lets the
            // worker poll its IO and timers before the guest resumes (a plain self-wake may not).
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
        });
        store
    }
}

/// The engine's configuration for these limits: [`PluginRuntime::new`] and [`precompile`] must
/// agree on it, or the precompiled artifact is refused when it is loaded.
fn engine_config(limits: &Limits) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    // For `perf`: names the guest's compiled functions in /tmp/perf-PID.map.
    if std::env::var_os("SWAPBOT_WASM_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if limits.pooling {
        let slots = limits.pool_size.max(1);
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(slots);
        pool.total_core_instances(slots * 8);
        pool.total_memories(slots * 2);
        pool.total_tables(slots * 4);
        pool.max_memory_size(limits.memory_bytes);
        // Reset a slot between turns by rewriting only the pages the turn dirtied (found with
        // Linux's PAGEMAP_SCAN, 6.7+), up to this much, and keep them resident: a turn then
        // neither madvises (a TLB shootdown on every core) nor page-faults its memory back
        // in. Without PAGEMAP_SCAN the first this-many bytes are memset instead.
        pool.pagemap_scan(wasmtime::Enabled::Auto);
        pool.linear_memory_keep_resident(64 << 10);
        pool.table_keep_resident(16 << 10);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Compiles a module to the artifact [`PluginRuntime::load_precompiled`] takes, with the engine
/// a runtime with these limits has; nothing is instantiated. What `swapbot compile-plugin` (the
/// child process a bot compiles its plugins in) runs.
pub fn precompile(limits: &Limits, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    let engine = Engine::new(&engine_config(limits)).map_err(anyhow_of)?;
    engine.precompile_component(wasm).map_err(anyhow_of)
}

fn cpu_ticks(limits: &Limits) -> u64 {
    (limits.cpu_slice.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}

/// Whether `err` is, or was caused by, an `E`.
fn caused_by<E: std::error::Error + Send + Sync + 'static>(err: &wasmtime::Error) -> bool {
    err.downcast_ref::<E>().is_some() || err.chain().any(|cause| cause.downcast_ref::<E>().is_some())
}

fn classify_trap(err: &wasmtime::Error, limits: &Limits) -> PluginError {
    if caused_by::<CpuSliceExhausted>(err) {
        return PluginError::CpuLimit(EPOCH_TICK * cpu_ticks(limits) as u32);
    }
    if caused_by::<MemoryLimitReached>(err) {
        return PluginError::MemoryLimit(limits.memory_bytes >> 20);
    }
    PluginError::Trap(first_line(err))
}

/// The contract version a component's imports name, if the host serves it; otherwise refused,
/// naming both versions. A component that imports nothing of the contract is taken as latest
/// (linking then checks its exports).
fn contract_version(engine: &Engine, component: &Component) -> Result<&'static str, PluginError> {
    let ty = component.component_type();
    let mut found: Option<&'static str> = None;
    for (name, _) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix(CONTRACT_PACKAGE) {
            // e.g. "swapbot:backend/host@0.2.0"
            let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("unversioned");
            let Some(served) = SERVED_VERSIONS.into_iter().find(|v| *v == version) else {
                return Err(PluginError::ContractMismatch { plugin: version.into(), host: CONTRACT_VERSION.into() });
            };
            if found.is_some_and(|f| f != served) {
                return Err(PluginError::Link(format!("imports two contract versions ({} and {served})", found.unwrap())));
            }
            found = Some(served);
        }
    }
    Ok(found.unwrap_or(CONTRACT_VERSION))
}

fn first_line(err: &wasmtime::Error) -> String {
    // The root cause is usually the informative part.
    let mut text = err.to_string();
    if let Some(root) = err.chain().last() {
        let root = root.to_string();
        if root != text {
            text = format!("{text}: {root}");
        }
    }
    text.lines().next().unwrap_or_default().to_string()
}

/// Since wasmtime 42 its error is not `anyhow::Error`; convert at the edge, keeping the chain.
pub fn anyhow_of(err: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{err:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn ticks(runtime: &PluginRuntime) -> u64 {
        runtime.ticker.state.ticks.load(Ordering::Relaxed)
    }

    /// The CPU slice of a call is counted in epochs, so the epoch must advance while a call is in
    /// flight; while none is, the ticker must not wake at all.
    #[test]
    fn the_epoch_advances_only_while_a_plugin_call_is_in_flight() {
        let runtime = PluginRuntime::new(Limits { pooling: false, ..Limits::default() }).unwrap();
        std::thread::sleep(EPOCH_TICK * 8);
        assert_eq!(ticks(&runtime), 0, "ticked with no call in flight");

        let call = CallInFlight::new(&runtime.ticker);
        let second = CallInFlight::new(&runtime.ticker);
        let deadline = Instant::now() + Duration::from_secs(10);
        while ticks(&runtime) < 3 && Instant::now() < deadline {
            std::thread::sleep(EPOCH_TICK);
        }
        assert!(ticks(&runtime) >= 3, "the epoch did not advance during a call");
        drop(call);
        let before = ticks(&runtime);
        std::thread::sleep(EPOCH_TICK * 3);
        assert!(ticks(&runtime) > before, "one call ended, the other is still in flight");

        drop(second);
        // The tick already under way may land after the last call ends (later still on a busy
        // machine): wait until the count holds still, then it must stay so.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut idle = ticks(&runtime);
        loop {
            std::thread::sleep(EPOCH_TICK * 3);
            let now = ticks(&runtime);
            if now == idle || Instant::now() > deadline {
                break;
            }
            idle = now;
        }
        std::thread::sleep(EPOCH_TICK * 10);
        assert_eq!(ticks(&runtime), idle, "kept ticking after the last call ended");

        // And it starts again for the next call.
        let _call = CallInFlight::new(&runtime.ticker);
        let deadline = Instant::now() + Duration::from_secs(10);
        while ticks(&runtime) == idle && Instant::now() < deadline {
            std::thread::sleep(EPOCH_TICK);
        }
        assert!(ticks(&runtime) > idle, "did not wake for a call after an idle spell");
    }
}
