//! The running appliance: start-up, the connection cores and shutdown.
//!
//! Owns: the order of start-up (host check, store thread, `NodeUp` for this
//! boot's incarnation, account provisioning from the configuration, one
//! pinned glommio executor per configured core with its SMPP and HTTP
//! listeners) and
//! of shutdown (stop flag, cores unbind and drain, store stopped cleanly).
//! Must not touch: SMPP session rules (see `session`), the store's internals
//! (only `StoreHandle`), operator connectors, or delivery to customers (see
//! `delivery`; its hub starts here on the first core).
//!
//! Nothing assumes one node: bind counts and accounts come from the
//! replicated state, ids carry the node id and a boot epoch committed through
//! the log, and binds are registered through the log.

pub mod auth;
pub mod delivery;
pub mod session;
pub mod shard;
pub mod throttle;
pub mod webhook;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{AccountConfig, NumberRangeConfig, Resolved};
use crate::runtime;
use crate::store::command::{Account, Command, NumberRange};
use crate::store::driver::{ProposeError, Store, StoreConfig, StoreHandle};
use crate::store::retention::RetentionConfig;
use crate::store::state::ApplyOutcome;

/// The largest per-bind window a bind gets, whatever the configuration or
/// the admin API say: the requests one bind may have awaiting an answer
/// (the admin API refuses more; SMPP sequence numbers allow far more, but
/// memory per bind grows with it).
pub const MAX_WINDOW: usize = 65_535;

/// How long start-up waits for the store to elect a leader and commit.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Session settings every connection core applies.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub max_command_length: u32,
    pub enquire_link_interval_ms: u64,
    pub dead_after_ms: u64,
    pub bind_timeout_ms: u64,
    pub default_window: usize,
    /// Per-account windows from the configuration (system_id → window).
    pub account_windows: HashMap<String, usize>,
    pub max_in_flight_per_core: usize,
    pub shutdown_grace_ms: u64,
    pub max_connections_per_core: usize,
}

impl SessionSettings {
    pub fn from_config(resolved: &Resolved) -> SessionSettings {
        let smpp = &resolved.config.smpp;
        SessionSettings {
            max_command_length: smpp.max_command_length,
            enquire_link_interval_ms: smpp.enquire_link_interval_s.saturating_mul(1000),
            dead_after_ms: smpp.dead_after_s.saturating_mul(1000),
            bind_timeout_ms: smpp.bind_timeout_s.saturating_mul(1000),
            default_window: smpp.window as usize,
            account_windows: resolved
                .config
                .accounts
                .iter()
                .filter(|a| a.window > 0)
                .map(|a| (a.system_id.clone(), a.window as usize))
                .collect(),
            max_in_flight_per_core: smpp.max_in_flight_per_core as usize,
            shutdown_grace_ms: smpp.shutdown_grace_ms,
            max_connections_per_core: smpp.max_connections_per_core as usize,
        }
    }

    /// The window of a bind of `account` whose replicated record names none.
    pub fn window_for(&self, account: &str) -> usize {
        self.account_windows
            .get(account)
            .copied()
            .unwrap_or(self.default_window)
            .clamp(1, MAX_WINDOW)
    }
}

#[derive(Debug)]
pub enum EngineError {
    Host(runtime::HostProblem),
    Store(String),
    Listen(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Host(problem) => write!(f, "{problem}"),
            EngineError::Store(message) => write!(f, "store: {message}"),
            EngineError::Listen(message) => write!(f, "listener: {message}"),
        }
    }
}

impl std::error::Error for EngineError {}

/// Runs the node until `stop` is set (the signal handler sets it), then
/// shuts down gracefully. `on_ready` is called once every core listens.
pub fn run(
    resolved: Resolved,
    stop: Arc<AtomicBool>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), EngineError> {
    run_with_store(resolved, stop, |addr, _| on_ready(addr))
}

/// [`run`], with the store handle given to `on_ready` as well: for tests and
/// embedders that drive the state directly (e.g. commit an operator's
/// receipt without an operator).
pub fn run_with_store(
    resolved: Resolved,
    stop: Arc<AtomicBool>,
    on_ready: impl FnOnce(SocketAddr, StoreHandle),
) -> Result<(), EngineError> {
    crate::mask::set_masking(resolved.config.log.mask_personal_data);
    let node = &resolved.config.node;
    let cores = if node.cores.is_empty() {
        runtime::available_cores()
    } else {
        node.cores.clone()
    };
    if cores.is_empty() || cores.len() > 256 {
        return Err(EngineError::Listen(format!(
            "{} cores configured; 1..=256 are supported",
            cores.len()
        )));
    }
    let report = runtime::check_host(cores.len()).map_err(EngineError::Host)?;
    if report.memlock_raised {
        tracing::info!("raised the locked-memory soft limit for io_uring");
    }

    let store = start_store(&resolved)?;
    let handle = store.handle();
    let result = serve_with_store(&resolved, &handle, &cores, &stop, on_ready);
    // Connections are gone (or never started): nothing proposes any more.
    if let Err(e) = store.shutdown() {
        tracing::error!("store did not stop cleanly: {e}");
    }
    result
}

fn start_store(resolved: &Resolved) -> Result<Store, EngineError> {
    let config = &resolved.config;
    let mut store_config = StoreConfig::new(
        config.node.id,
        resolved.store_listen,
        config.node.data_dir.join("store"),
        config.store.secret.as_bytes().to_vec(),
    );
    store_config.peers = resolved.peers.clone();
    store_config.initial_voters = std::iter::once(config.node.id)
        .chain(resolved.peers.iter().map(|(id, _)| *id))
        .collect();
    store_config.tick_interval_ms = config.store.tick_ms;
    store_config.node_down_after_ms = (config.store.node_down_after_s != 0)
        .then(|| config.store.node_down_after_s.saturating_mul(1000));
    store_config.retention = Some(RetentionConfig::new(
        config.store.hot_window_s,
        config.store.retention_s,
        config.store.archive_retention_days,
    ));
    std::fs::create_dir_all(&store_config.data_dir)
        .map_err(|e| EngineError::Store(format!("{}: {e}", store_config.data_dir.display())))?;
    Store::start(store_config).map_err(|e| EngineError::Store(e.to_string()))
}

fn serve_with_store(
    resolved: &Resolved,
    handle: &StoreHandle,
    cores: &[usize],
    stop: &Arc<AtomicBool>,
    on_ready: impl FnOnce(SocketAddr, StoreHandle),
) -> Result<(), EngineError> {
    let node_id = resolved.config.node.id;
    let epoch = announce_node(handle, node_id, stop)?;
    handle.watch_for_declared_down(epoch);
    let fence_watch = watch_fence(handle.clone(), Arc::clone(stop));
    provision_accounts(handle, &resolved.config.accounts, stop)?;
    provision_number_ranges(handle, &resolved.config.number_ranges, stop)?;
    let settings = SessionSettings::from_config(resolved);
    let http = crate::http::HttpSettings::from_config(resolved);

    let mut executors = Vec::with_capacity(cores.len());
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(cores.len());
    let (delivery_link, delivery_inbox) = delivery::DeliveryLink::new();
    let mut hub = Some(delivery::HubStart {
        node_id,
        webhook_tls: Arc::clone(&resolved.webhook_tls),
        store: handle.clone(),
        inbox: delivery_inbox,
        link: delivery_link.clone(),
        stop: Arc::clone(stop),
    });
    for (index, &core) in cores.iter().enumerate() {
        let start = shard::ShardStart {
            index: u8::try_from(index).unwrap_or(u8::MAX),
            node_id,
            cores: cores.len(),
            epoch,
            listen: resolved.smpp_listen,
            store: handle.clone(),
            settings: settings.clone(),
            stop: Arc::clone(stop),
            delivery: delivery_link.clone(),
            hub: hub.take(),
            http: http.clone(),
            ready: ready_tx.clone(),
        };
        match runtime::spawn_pinned(&format!("tern-core-{core}"), core, move || {
            shard::run(start)
        }) {
            Ok(join) => executors.push(join),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                join_all(executors);
                return Err(EngineError::Listen(format!("executor on core {core}: {e}")));
            }
        }
    }
    drop(ready_tx);
    let mut listening = None;
    let mut failure = None;
    for _ in 0..cores.len() {
        match ready_rx.recv() {
            Ok(Ok(addr)) => listening = Some(addr),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a core exited during start-up".into()),
        }
    }
    if let Some(e) = failure {
        stop.store(true, Ordering::Relaxed);
        join_all(executors);
        return Err(EngineError::Listen(e));
    }
    // Operator connectors and the dispatcher of this node's messages.
    let upstream = crate::upstream::start(resolved, handle, cores, epoch, stop).map_err(|e| {
        stop.store(true, Ordering::Relaxed);
        EngineError::Listen(e)
    });
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(e) => {
            join_all(executors);
            return Err(e);
        }
    };
    if let Some(addr) = listening {
        tracing::info!(
            node = node_id,
            incarnation = epoch,
            cores = cores.len(),
            %addr,
            http = ?http.as_ref().map(|h| h.listen),
            "tern serve ready: SMPP listening"
        );
        on_ready(addr, handle.clone());
    }
    join_all(executors);
    upstream.join();
    tracing::info!("connection cores stopped");
    if let Some(watch) = fence_watch {
        let _ = watch.join();
    }
    if handle.declared_down() {
        return Err(EngineError::Store(
            "the cluster declared this node down while it was unreachable; start it again \
             to rejoin (a service manager restarts it)"
                .into(),
        ));
    }
    Ok(())
}

/// Stops the node when the cluster declared it down (see `store::liveness`):
/// its binds and messages belong to other nodes now.
fn watch_fence(handle: StoreHandle, stop: Arc<AtomicBool>) -> Option<std::thread::JoinHandle<()>> {
    const POLL: Duration = Duration::from_millis(100);
    let spawned = std::thread::Builder::new()
        .name("tern-fence".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if handle.declared_down() {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                std::thread::sleep(POLL);
            }
        });
    // A thread that cannot start leaves the node running as before, loudly.
    spawned
        .map_err(|e| tracing::error!("cannot start the declared-down watch: {e}"))
        .ok()
}

fn join_all(executors: Vec<glommio::ExecutorJoinHandle<()>>) {
    for executor in executors {
        if let Err(e) = executor.join() {
            tracing::error!("a connection core failed: {e}");
        }
    }
}

/// Proposes a command until it commits (leader elections, restarts of the
/// proposal after a term change), within [`START_TIMEOUT`].
fn propose_until_committed(
    handle: &StoreHandle,
    command: &Command,
    stop: &AtomicBool,
) -> Result<ApplyOutcome, EngineError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let bytes = command.encode();
    loop {
        match handle.propose_blocking(bytes.clone()) {
            Ok(outcome) => return Ok(outcome),
            Err(ProposeError::Stopped) => return Err(EngineError::Store("store stopped".into())),
            Err(e) => {
                if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                    return Err(EngineError::Store(format!(
                        "no commit within {} s ({e}); is a quorum of peers reachable?",
                        START_TIMEOUT.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Commits `NodeUp` with this boot's incarnation, which becomes the epoch of
/// every message id this boot hands out (never reused, even after a crash).
fn announce_node(
    handle: &StoreHandle,
    node_id: u64,
    stop: &AtomicBool,
) -> Result<u32, EngineError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let incarnation = handle
            .query_blocking(move |state| state.next_incarnation(node_id))
            .map_err(|e| EngineError::Store(e.to_string()))?;
        let up = Command::NodeUp {
            node: node_id,
            incarnation,
        };
        match propose_until_committed(handle, &up, stop)? {
            ApplyOutcome::Applied => return Ok(incarnation),
            // Another proposal of ours (an earlier boot's, replayed) won: ask again.
            ApplyOutcome::Rejected(_) if Instant::now() < deadline => continue,
            other => {
                return Err(EngineError::Store(format!(
                    "NodeUp for incarnation {incarnation} was not applied: {other:?}"
                )))
            }
        }
    }
}

/// Makes the replicated accounts match the configuration for every account
/// the configuration names (others, e.g. made through an admin API, stay).
fn provision_accounts(
    handle: &StoreHandle,
    accounts: &[AccountConfig],
    stop: &AtomicBool,
) -> Result<(), EngineError> {
    for wanted in accounts {
        let name = wanted.system_id.clone();
        let existing = handle
            .query_blocking(move |state| state.account(&name).cloned())
            .map_err(|e| EngineError::Store(e.to_string()))?;
        if existing
            .as_ref()
            .is_some_and(|e| account_matches(e, wanted))
        {
            continue;
        }
        let password_hash = match (&wanted.password, &wanted.password_hash) {
            (_, Some(hash)) => hash.clone(),
            (Some(password), None) => auth::hash_password(password),
            (None, None) => String::new(),
        };
        let api_key_hash = match (&wanted.api_key, &wanted.api_key_hash) {
            (_, Some(hash)) => Some(hash.clone()),
            (Some(key), None) => Some(auth::hash_password(key)),
            (None, None) => None,
        };
        let account = Account {
            name: wanted.system_id.clone(),
            password_hash,
            max_binds: wanted.max_binds,
            throughput_per_s: wanted.max_tps,
            allowed_ips: wanted.allowed_ips.clone(),
            allowed_senders: wanted.allowed_senders.clone(),
            retention_s: existing.as_ref().map_or(0, |e| e.retention_s),
            enabled: wanted.enabled,
            webhook_url: wanted.webhook_url.clone(),
            api_key_hash,
            webhook_secret: wanted.webhook_secret.clone(),
            window: wanted.window,
        };
        match propose_until_committed(handle, &Command::UpsertAccount(account), stop)? {
            ApplyOutcome::Applied => {
                tracing::info!(account = wanted.system_id.as_str(), "account provisioned")
            }
            other => {
                return Err(EngineError::Store(format!(
                    "account {}: {other:?}",
                    wanted.system_id
                )))
            }
        }
    }
    Ok(())
}

/// Makes the replicated number ranges match the configuration for every
/// range it names (others, e.g. made through an admin API, stay).
fn provision_number_ranges(
    handle: &StoreHandle,
    ranges: &[NumberRangeConfig],
    stop: &AtomicBool,
) -> Result<(), EngineError> {
    for wanted in ranges {
        let record = NumberRange {
            name: wanted.name.clone(),
            prefix: wanted.prefix.clone(),
            account: wanted.account.clone(),
        };
        let name = wanted.name.clone();
        let stored = handle
            .query_blocking(move |state| state.number_ranges().find(|r| r.name == name).cloned())
            .map_err(|e| EngineError::Store(e.to_string()))?;
        if stored.as_ref() == Some(&record) {
            continue;
        }
        match propose_until_committed(handle, &Command::UpsertNumberRange(record), stop)? {
            ApplyOutcome::Applied => {
                tracing::info!(range = wanted.name.as_str(), "number range provisioned")
            }
            other => {
                return Err(EngineError::Store(format!(
                    "number range {}: {other:?}",
                    wanted.name
                )))
            }
        }
    }
    Ok(())
}

/// Whether the stored account already says what the configuration says (a
/// plain password is checked against the stored hash, whose salt differs).
fn account_matches(stored: &Account, wanted: &AccountConfig) -> bool {
    let password_same = match (&wanted.password, &wanted.password_hash) {
        (_, Some(hash)) => &stored.password_hash == hash,
        (Some(password), None) => auth::verify_password(password.as_bytes(), &stored.password_hash),
        (None, None) => false,
    };
    let api_key_same = match (&wanted.api_key, &wanted.api_key_hash, &stored.api_key_hash) {
        (_, Some(hash), Some(stored_hash)) => hash == stored_hash,
        (Some(key), None, Some(stored_hash)) => auth::verify_password(key.as_bytes(), stored_hash),
        (None, None, None) => true,
        _ => false,
    };
    password_same
        && api_key_same
        && stored.webhook_url == wanted.webhook_url
        && stored.webhook_secret == wanted.webhook_secret
        && stored.window == wanted.window
        && stored.max_binds == wanted.max_binds
        && stored.throughput_per_s == wanted.max_tps
        && stored.allowed_ips == wanted.allowed_ips
        && stored.allowed_senders == wanted.allowed_senders
        && stored.enabled == wanted.enabled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn account_comparison_sees_changes() {
        let wanted = Config::embedded_default().accounts.remove(0);
        let stored = Account {
            name: "trial".into(),
            password_hash: auth::hash_password("trial"),
            max_binds: 0,
            throughput_per_s: 0,
            allowed_ips: wanted.allowed_ips.clone(),
            allowed_senders: Vec::new(),
            retention_s: 0,
            enabled: true,
            webhook_url: None,
            api_key_hash: Some(auth::hash_password("trial")),
            webhook_secret: None,
            window: 0,
        };
        assert!(account_matches(&stored, &wanted));
        let mut changed = wanted.clone();
        changed.api_key = Some("rotated".into());
        assert!(!account_matches(&stored, &changed));
        let mut changed = wanted.clone();
        changed.password = Some("other".into());
        assert!(!account_matches(&stored, &changed));
        let mut changed = wanted.clone();
        changed.max_tps = 5;
        assert!(!account_matches(&stored, &changed));
    }

    #[test]
    fn windows_per_account() {
        let mut config = Config::embedded_default();
        config.accounts[0].window = 7;
        let resolved = config.resolve_embedded().unwrap();
        let settings = SessionSettings::from_config(&resolved);
        assert_eq!(settings.window_for("trial"), 7);
        assert_eq!(settings.window_for("other"), 100);
        let mut huge = settings.clone();
        huge.default_window = usize::MAX;
        assert_eq!(huge.window_for("other"), MAX_WINDOW);
    }
}
