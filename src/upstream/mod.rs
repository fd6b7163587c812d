//! Operator connectors: SMPP client binds to SMSCs, the dispatcher that
//! hands this node's accepted messages to them, and receipts coming back.
//!
//! Owns: start-up of the upstream side of a node (connector and route
//! provisioning into the store, one pinned glommio executor per engine core
//! running that core's share of binds, the dispatcher on the first one, the
//! embedded simulated operator when asked for) and its shutdown (the stop
//! flag, then joining the executors). Must not touch: customer sessions,
//! DLR delivery to customers, or the store's internals (`StoreHandle` only).
//!
//! Every state change goes through the log: `Submitted`, `SubmitFailed`,
//! `Receipt` and `MoReceived` are proposed here and nothing is remembered
//! locally that a restart would need: at start the dispatcher rescans
//! `owned_unsubmitted(node)`.

pub mod bind;
pub mod dispatch;
pub mod embedded;
pub mod fleet;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{
    parse_bind_type, parse_default_alphabet, parse_host, parse_id_format, parse_long_messages,
    ConnectorConfig, LongMessages, Resolved, RouteConfig, UpstreamBindType,
};
use crate::smpp::receipt::IdFormat;
use crate::smpp::text::DefaultAlphabet;
use crate::store::command::{Accept, Command, Connector, Route, RouteTarget};
use crate::store::driver::{ProposeError, StoreHandle};
use crate::store::id::MessageId;
use crate::store::state::ApplyOutcome;

/// Local `SubmitFailed` status codes (SMPP's vendor-specific range 0x400..):
/// what happened when no operator said anything.
pub mod status {
    /// No submit_sm_resp within the connector's `submit_timeout_ms`.
    pub const RESPONSE_TIMEOUT: u32 = 0x0000_0400;
    /// The bind was lost with the submit_sm outstanding.
    pub const BIND_LOST: u32 = 0x0000_0401;
    /// No route covers the message (account, source, destination).
    pub const NO_ROUTE: u32 = 0x0000_0402;
    /// The message's validity ended before an operator took it (proposed as
    /// `Expire`, so the message ends EXPIRED).
    pub const EXPIRED: u32 = 0x0000_0403;
    /// The route names no connector that the store knows.
    pub const NO_CONNECTOR: u32 = 0x0000_0404;
}

/// Whether a submit failure is worth another attempt.
pub fn is_temporary(status: u32) -> bool {
    status == status::RESPONSE_TIMEOUT
        || status == status::BIND_LOST
        || crate::smpp::status::CommandStatus(status).is_temporary()
}

/// A message on its way to a connector's binds.
#[derive(Debug)]
pub struct Job {
    pub id: MessageId,
    /// Which dispatch of this message it is; stale outcomes are ignored.
    pub generation: u32,
    pub accept: Box<Accept>,
    pub queued_at: Instant,
}

/// What a bind reports back to the dispatcher. `connector` is the
/// `ConnectorShared::key` of the instance that had the job.
#[derive(Debug)]
pub enum Outcome {
    /// `Submitted` committed.
    Submitted { id: MessageId },
    /// The operator refused it, or no response came: `status` says which.
    Failed {
        job: Job,
        connector: u64,
        status: u32,
    },
    /// Never sent (stale in the queue, or the bind went away first).
    Unsent { job: Job, connector: u64 },
    /// Submitted, but the commit could not be confirmed: forget it, the next
    /// rescan finds it if it is still unsubmitted.
    Lost { id: MessageId },
}

/// Upper bound of `bind_count` in a replicated record (as in the config).
pub const MAX_BINDS_PER_CONNECTOR: u16 = 256;

/// One replicated connector record, parsed, as every core sees it. A changed
/// record makes a new instance (a new `key`); the old one retires: its binds
/// unbind and its queued jobs go back to the dispatcher.
pub struct ConnectorShared {
    /// Unique within this process: outcomes and retries name the instance,
    /// so a job never returns to a connector's successor by mistake.
    pub key: u64,
    pub name: String,
    /// The record as committed; binds read their settings from it.
    pub record: Connector,
    pub hosts: Vec<SocketAddr>,
    pub bind_type: UpstreamBindType,
    pub id_format: IdFormat,
    /// What data_coding 0 means to this operator.
    pub default_alphabet: DefaultAlphabet,
    pub long_messages: LongMessages,
    /// Binds that can submit right now; the router skips a connector at 0.
    pub up_binds: AtomicUsize,
    /// Bound sessions of any role (receivers included), for the status.
    pub bound: AtomicUsize,
    /// Bind tasks alive; a retired instance is forgotten once this is 0.
    pub running_binds: AtomicUsize,
    retired: AtomicBool,
    /// submit_sm accepted / refused (or unanswered) by the operator, parts
    /// counted one by one.
    pub submitted: AtomicU64,
    pub failed: AtomicU64,
    /// Set on connection and bind failures only, never per message.
    last_error: Mutex<Option<String>>,
    pub jobs_tx: flume::Sender<Job>,
    pub jobs_rx: flume::Receiver<Job>,
}

impl ConnectorShared {
    /// Parses a replicated record; the error names the bad field.
    pub fn from_record(record: &Connector, key: u64) -> Result<ConnectorShared, String> {
        if record.name.is_empty() || record.name.len() > 64 {
            return Err("name must be 1..=64 characters".into());
        }
        if record.hosts.is_empty() {
            return Err("hosts: needs at least one IP:PORT".into());
        }
        let hosts = record
            .hosts
            .iter()
            .map(|h| parse_host(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("hosts: {e}"))?;
        let bind_type = parse_bind_type(&record.bind_type)
            .ok_or_else(|| format!("bind_type `{}` unknown", record.bind_type))?;
        let id_format = parse_id_format(&record.id_format)
            .ok_or_else(|| format!("id_format `{}` unknown", record.id_format))?;
        let default_alphabet = parse_default_alphabet(&record.default_alphabet)
            .ok_or_else(|| format!("default_alphabet `{}` unknown", record.default_alphabet))?;
        let long_messages = parse_long_messages(&record.long_messages)
            .ok_or_else(|| format!("long_messages `{}` unknown", record.long_messages))?;
        if record.bind_count == 0 || record.bind_count > MAX_BINDS_PER_CONNECTOR {
            return Err(format!(
                "bind_count {} not in 1..={MAX_BINDS_PER_CONNECTOR}",
                record.bind_count
            ));
        }
        if record.window == 0 {
            return Err("window must be at least 1".into());
        }
        // Room for one more window per bind: a bind never waits on the dispatcher.
        let capacity = usize::from(record.window)
            .saturating_mul(usize::from(record.bind_count))
            .saturating_mul(2)
            .clamp(16, 1 << 16);
        let (jobs_tx, jobs_rx) = flume::bounded(capacity);
        Ok(ConnectorShared {
            key,
            name: record.name.clone(),
            record: record.clone(),
            hosts,
            bind_type,
            id_format,
            default_alphabet,
            long_messages,
            up_binds: AtomicUsize::new(0),
            bound: AtomicUsize::new(0),
            running_binds: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            submitted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            jobs_tx,
            jobs_rx,
        })
    }

    pub fn is_usable(&self) -> bool {
        !self.is_retired() && self.up_binds.load(Ordering::Relaxed) > 0
    }

    /// Removed, disabled or replaced: binds finish what is outstanding and unbind.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// The roles one configured bind opens.
    pub fn roles(&self) -> &'static [bind::Role] {
        match self.bind_type {
            UpstreamBindType::Transceiver => &[bind::Role::Transceiver],
            UpstreamBindType::TransmitterReceiver => {
                &[bind::Role::Transmitter, bind::Role::Receiver]
            }
        }
    }

    /// Sessions this connector opens when all are up.
    pub fn binds_configured(&self) -> usize {
        usize::from(self.record.bind_count).saturating_mul(self.roles().len())
    }

    pub fn set_last_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }
}

/// One connector as an operator sees it (`GET` of the admin API).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectorStatus {
    pub name: String,
    /// The record's `enabled` (a disabled connector runs no binds).
    pub enabled: bool,
    /// Sessions the record asks for (bind_count, twice for
    /// transmitter+receiver); 0 when the record is disabled or invalid.
    pub binds_configured: u32,
    /// Sessions bound right now.
    pub binds_up: u32,
    /// The last connection or bind failure, or why the record is invalid.
    pub last_error: Option<String>,
    /// submit_sm the operator accepted / refused or left unanswered since
    /// this node started (parts of split messages counted one by one).
    pub submitted: u64,
    pub failed: u64,
}

/// What the status shows of one store record; live counters come from the
/// running instance, if any.
#[derive(Clone)]
struct StatusEntry {
    name: String,
    enabled: bool,
    live: Option<Arc<ConnectorShared>>,
    /// Why the record runs no binds although enabled.
    invalid: Option<String>,
    /// Counters of instances that retired (kept across changes).
    carried: (u64, u64),
}

/// The node's connector status, readable from any thread: the list changes
/// only when the connector records do; numbers are read live from atomics.
#[derive(Clone, Default)]
pub struct StatusHandle(Arc<Mutex<Vec<StatusEntry>>>);

impl StatusHandle {
    pub fn snapshot(&self) -> Vec<ConnectorStatus> {
        let Ok(entries) = self.0.lock() else {
            return Vec::new();
        };
        entries
            .iter()
            .map(|e| {
                let live = e.live.as_deref();
                let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                ConnectorStatus {
                    name: e.name.clone(),
                    enabled: e.enabled,
                    binds_configured: live.map_or(0, |c| count(c.binds_configured())),
                    binds_up: live.map_or(0, |c| count(c.bound.load(Ordering::Relaxed))),
                    last_error: e
                        .invalid
                        .clone()
                        .or_else(|| live.and_then(|c| c.last_error())),
                    submitted: live.map_or(e.carried.0, |c| c.submitted.load(Ordering::Relaxed)),
                    failed: live.map_or(e.carried.1, |c| c.failed.load(Ordering::Relaxed)),
                }
            })
            .collect()
    }

    fn publish(&self, entries: Vec<StatusEntry>) {
        if let Ok(mut current) = self.0.lock() {
            *current = entries;
        }
    }
}

/// The status handle of the upstream side started last in this process.
static LATEST_STATUS: Mutex<Option<StatusHandle>> = Mutex::new(None);

/// Connector status of this node (the upstream side started last in this
/// process; empty before it started). Cheap: no store access.
pub fn status() -> Vec<ConnectorStatus> {
    LATEST_STATUS
        .lock()
        .ok()
        .and_then(|latest| latest.clone())
        .map_or_else(Vec::new, |handle| handle.snapshot())
}

/// The running upstream side; `join` after the stop flag is set.
pub struct Upstream {
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    simulator: Option<embedded::Simulator>,
    status: StatusHandle,
}

impl Upstream {
    /// This node's connector status, for the HTTP layer.
    pub fn status_handle(&self) -> StatusHandle {
        self.status.clone()
    }

    pub fn join(self) {
        for executor in self.executors {
            if let Err(e) = executor.join() {
                tracing::error!("an upstream core failed: {e}");
            }
        }
        if let Some(simulator) = self.simulator {
            simulator.stop();
        }
    }
}

/// How long start-up waits for each provisioning proposal.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a core waits at shutdown for its binds to unbind.
const UNBIND_WAIT: Duration = Duration::from_secs(5);
/// How often a core's bind spawner looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Starts connectors and the dispatcher of this node on `cores`. Blocking
/// (provisioning commits first); call from the engine's start-up thread.
/// The configured connectors and routes are provisioned into the store;
/// from then on the binds follow the replicated records (see `fleet`).
pub fn start(
    resolved: &Resolved,
    store: &StoreHandle,
    cores: &[usize],
    epoch: u32,
    stop: &Arc<AtomicBool>,
) -> Result<Upstream, String> {
    let config = &resolved.config;
    let mut connectors = config.connectors.clone();
    let mut routes = config.routes.clone();
    let mut simulator = None;
    if connectors.is_empty() && config.upstream.embedded_simulator {
        let sim = embedded::Simulator::start()?;
        let (connector, route) = embedded::default_connector_and_route(sim.addr());
        connectors.push(connector);
        routes.push(route);
        simulator = Some(sim);
    }
    provision(store, &connectors, &routes, stop)?;

    let status = StatusHandle::default();
    if let Ok(mut latest) = LATEST_STATUS.lock() {
        *latest = Some(status.clone());
    }
    let mut spawners = Vec::with_capacity(cores.len());
    let mut spawn_rxs = Vec::with_capacity(cores.len());
    for _ in cores {
        // Unbounded in type, bounded in fact: at most the binds of the
        // connector records, sent once per change.
        let (tx, rx) = flume::unbounded();
        spawners.push(tx);
        spawn_rxs.push(rx);
    }
    // Unbounded in type, bounded in fact: one outcome per job handed out, and
    // jobs are capped by the dispatcher's `max_in_flight`.
    let (outcomes_tx, outcomes_rx) = flume::unbounded();
    let mut dispatcher = Some(dispatch::DispatchStart {
        node_id: config.node.id,
        store: store.clone(),
        fleet: fleet::Fleet::new(spawners, status.clone()),
        settings: config.upstream.clone(),
        outcomes_rx,
    });
    let mut executors = Vec::with_capacity(cores.len());
    for ((index, &core), spawn_rx) in cores.iter().enumerate().zip(spawn_rxs) {
        let context = bind::CoreStart {
            // Shards above the engine's connection cores: ids never collide.
            id_shard: u8::try_from(128 + index).unwrap_or(u8::MAX),
            node_id: config.node.id,
            epoch,
            store: store.clone(),
            outcomes: outcomes_tx.clone(),
            stop: Arc::clone(stop),
        };
        let dispatch_start = dispatcher.take();
        let stop_flag = Arc::clone(stop);
        let spawned = crate::runtime::spawn_pinned(&format!("tern-up-{core}"), core, move || {
            run_core(context, spawn_rx, dispatch_start, stop_flag)
        });
        match spawned {
            Ok(handle) => executors.push(handle),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                Upstream {
                    executors,
                    simulator,
                    status,
                }
                .join();
                return Err(format!("upstream executor on core {core}: {e}"));
            }
        }
    }
    tracing::info!(
        configured = connectors.len(),
        cores = cores.len(),
        "upstream started; connectors follow the replicated records"
    );
    Ok(Upstream {
        executors,
        simulator,
        status,
    })
}

enum CoreWake {
    Spawn(Option<bind::BindSpec>),
    Poll,
}

/// One upstream core: runs the binds the fleet sends it (and the dispatcher
/// on the first core) until the stop flag, then waits for them to unbind.
async fn run_core(
    context: bind::CoreStart,
    spawn_rx: flume::Receiver<bind::BindSpec>,
    dispatcher: Option<dispatch::DispatchStart>,
    stop: Arc<AtomicBool>,
) {
    let context = match bind::CoreContext::new(context) {
        Ok(context) => std::rc::Rc::new(context),
        Err(e) => {
            tracing::error!("upstream core cannot start: {e}");
            return;
        }
    };
    glommio::spawn_local(crate::metrics::sample_executor_load(
        std::time::Duration::from_secs(1),
    ))
    .detach();
    let dispatch_task =
        dispatcher.map(|start| glommio::spawn_local(dispatch::run(start, Arc::clone(&stop))));
    let live_binds = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let mut spawner_open = true;
    while !stop.load(Ordering::Relaxed) {
        let wake = futures_lite::future::or(
            async {
                if spawner_open {
                    CoreWake::Spawn(spawn_rx.recv_async().await.ok())
                } else {
                    std::future::pending().await
                }
            },
            async {
                glommio::timer::sleep(STOP_POLL).await;
                CoreWake::Poll
            },
        )
        .await;
        match wake {
            CoreWake::Spawn(Some(spec)) => {
                live_binds.set(live_binds.get() + 1);
                let live = std::rc::Rc::clone(&live_binds);
                let context = std::rc::Rc::clone(&context);
                glommio::spawn_local(async move {
                    bind::run(context, spec).await;
                    live.set(live.get().saturating_sub(1));
                })
                .detach();
            }
            CoreWake::Spawn(None) => spawner_open = false,
            CoreWake::Poll => {}
        }
    }
    if let Some(task) = dispatch_task {
        task.await;
    }
    let deadline = Instant::now() + UNBIND_WAIT;
    while live_binds.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

/// The replicated form of a configured connector.
pub fn connector_record(c: &ConnectorConfig) -> Connector {
    Connector {
        name: c.name.clone(),
        hosts: c.hosts.clone(),
        system_id: c.system_id.clone(),
        password: c.password.clone(),
        system_type: c.system_type.clone(),
        bind_type: c.bind_type.clone(),
        bind_count: c.binds,
        window: c.window,
        throughput_per_s: c.max_tps,
        enquire_link_s: c.enquire_link_s,
        reconnect_min_ms: c.reconnect_min_ms,
        reconnect_max_ms: c.reconnect_max_ms,
        submit_timeout_ms: c.submit_timeout_ms,
        id_format: c.id_format.clone(),
        default_alphabet: c.default_alphabet.clone(),
        long_messages: c.long_messages.clone(),
        tls: false,
        enabled: c.enabled,
    }
}

/// The replicated form of a configured route.
pub fn route_record(r: &RouteConfig) -> Route {
    Route {
        name: r.name.clone(),
        account: r.account.clone(),
        destination_prefix: r.prefix.clone(),
        source_prefix: r.source.clone(),
        priority: r.priority,
        targets: r
            .resolved_targets()
            .into_iter()
            .map(|t| RouteTarget {
                connector: t.connector,
                priority: t.priority,
                weight: t.weight,
            })
            .collect(),
    }
}

/// Makes the replicated connectors and routes match the configuration for
/// every one it names (others, e.g. made through an admin API, stay).
fn provision(
    store: &StoreHandle,
    connectors: &[ConnectorConfig],
    routes: &[RouteConfig],
    stop: &AtomicBool,
) -> Result<(), String> {
    let (stored_connectors, stored_routes) = store
        .query_blocking(|state| {
            let connectors: HashMap<String, Connector> = state
                .connectors()
                .map(|c| (c.name.clone(), c.clone()))
                .collect();
            let routes: HashMap<String, Route> = state
                .routes()
                .map(|r| (r.name.clone(), r.clone()))
                .collect();
            (connectors, routes)
        })
        .map_err(|e| format!("store: {e}"))?;
    let mut commands = Vec::new();
    for c in connectors {
        let wanted = connector_record(c);
        if stored_connectors.get(&c.name) != Some(&wanted) {
            commands.push(Command::UpsertConnector(wanted));
        }
    }
    for r in routes {
        let wanted = route_record(r);
        if stored_routes.get(&r.name) != Some(&wanted) {
            commands.push(Command::UpsertRoute(wanted));
        }
    }
    for command in commands {
        let deadline = Instant::now() + PROVISION_TIMEOUT;
        let bytes = command.encode();
        loop {
            match store.propose_blocking(bytes.clone()) {
                Ok(ApplyOutcome::Applied) => break,
                Ok(other) => return Err(format!("provisioning {command:?}: {other:?}")),
                Err(ProposeError::Stopped) => return Err("store stopped".into()),
                Err(e) if Instant::now() < deadline && !stop.load(Ordering::Relaxed) => {
                    tracing::debug!("provisioning retried: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("provisioning did not commit: {e}")),
            }
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch (timestamps that travel in commands).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteTargetConfig;

    #[test]
    fn temporary_statuses() {
        assert!(is_temporary(status::RESPONSE_TIMEOUT));
        assert!(is_temporary(status::BIND_LOST));
        assert!(is_temporary(0x58), "ESME_RTHROTTLED");
        assert!(is_temporary(0x14), "ESME_RMSGQFUL");
        assert!(!is_temporary(0x0B), "ESME_RINVDSTADR");
        assert!(!is_temporary(status::NO_ROUTE));
    }

    #[test]
    fn route_record_keeps_priorities_and_weights() {
        let r = RouteConfig {
            name: "r".into(),
            account: None,
            prefix: "44".into(),
            source: String::new(),
            priority: 3,
            connectors: Vec::new(),
            targets: vec![
                RouteTargetConfig {
                    connector: "backup".into(),
                    priority: 1,
                    weight: 1,
                },
                RouteTargetConfig {
                    connector: "a".into(),
                    priority: 0,
                    weight: 2,
                },
                RouteTargetConfig {
                    connector: "b".into(),
                    priority: 0,
                    weight: 1,
                },
            ],
        };
        let route = route_record(&r);
        let targets: Vec<_> = route
            .targets
            .iter()
            .map(|t| (t.connector.as_str(), t.priority, t.weight))
            .collect();
        assert_eq!(targets, [("backup", 1, 1), ("a", 0, 2), ("b", 0, 1)]);
        assert_eq!(route.destination_prefix, "44");
        assert_eq!(route.priority, 3);
    }
}
