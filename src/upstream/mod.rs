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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{ConnectorConfig, Resolved, RouteConfig, UpstreamBindType};
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
    /// The route names no connector that this node runs.
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

/// What a bind reports back to the dispatcher.
#[derive(Debug)]
pub enum Outcome {
    /// `Submitted` committed.
    Submitted { id: MessageId },
    /// The operator refused it, or no response came: `status` says which.
    Failed {
        job: Job,
        connector: usize,
        status: u32,
    },
    /// Never sent (stale in the queue, or the bind went away first).
    Unsent { job: Job, connector: usize },
    /// Submitted, but the commit could not be confirmed: forget it, the next
    /// rescan finds it if it is still unsubmitted.
    Lost { id: MessageId },
}

/// A connector as every core sees it.
pub struct ConnectorShared {
    pub index: usize,
    pub name: String,
    pub hosts: Vec<SocketAddr>,
    pub config: ConnectorConfig,
    pub bind_type: UpstreamBindType,
    pub id_format: IdFormat,
    /// What data_coding 0 means to this operator.
    pub default_alphabet: DefaultAlphabet,
    /// Binds that can submit right now; the router skips a connector at 0.
    pub up_binds: AtomicUsize,
    pub jobs_tx: flume::Sender<Job>,
    pub jobs_rx: flume::Receiver<Job>,
}

impl ConnectorShared {
    pub fn is_usable(&self) -> bool {
        self.config.enabled && self.up_binds.load(Ordering::Relaxed) > 0
    }
}

/// The running upstream side; `join` after the stop flag is set.
pub struct Upstream {
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    simulator: Option<embedded::Simulator>,
}

impl Upstream {
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

/// Starts connectors and the dispatcher of this node on `cores`. Blocking
/// (provisioning commits first); call from the engine's start-up thread.
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

    let mut shared = Vec::with_capacity(connectors.len());
    for (index, c) in connectors.iter().enumerate() {
        // Room for one more window per bind: a bind never waits on the dispatcher.
        let capacity = usize::from(c.window)
            .saturating_mul(usize::from(c.binds))
            .saturating_mul(2)
            .clamp(16, 1 << 16);
        let (jobs_tx, jobs_rx) = flume::bounded(capacity);
        shared.push(Arc::new(ConnectorShared {
            index,
            name: c.name.clone(),
            hosts: c.host_addrs(),
            bind_type: c
                .parsed_bind_type()
                .ok_or("bind_type checked by the config")?,
            id_format: c
                .parsed_id_format()
                .ok_or("id_format checked by the config")?,
            default_alphabet: c
                .parsed_default_alphabet()
                .ok_or("default_alphabet checked by the config")?,
            config: c.clone(),
            up_binds: AtomicUsize::new(0),
            jobs_tx,
            jobs_rx,
        }));
    }
    // Spread binds over the cores: bind i of the whole node goes to core i mod n.
    let mut per_core: Vec<Vec<bind::BindSpec>> = cores.iter().map(|_| Vec::new()).collect();
    let mut next = 0usize;
    for connector in &shared {
        if !connector.config.enabled {
            continue;
        }
        for bind_index in 0..usize::from(connector.config.binds) {
            let kinds: &[bind::Role] = match connector.bind_type {
                UpstreamBindType::Transceiver => &[bind::Role::Transceiver],
                UpstreamBindType::TransmitterReceiver => {
                    &[bind::Role::Transmitter, bind::Role::Receiver]
                }
            };
            for &role in kinds {
                if let Some(slot) = per_core.get_mut(next % cores.len().max(1)) {
                    slot.push(bind::BindSpec {
                        connector: Arc::clone(connector),
                        bind_index,
                        role,
                    });
                }
                next += 1;
            }
        }
    }
    // Unbounded in type, bounded in fact: one outcome per job handed out, and
    // jobs are capped by the dispatcher's `max_in_flight`.
    let (outcomes_tx, outcomes_rx) = flume::unbounded();
    let mut dispatcher = Some(dispatch::DispatchStart {
        node_id: config.node.id,
        store: store.clone(),
        connectors: shared.clone(),
        settings: config.upstream.clone(),
        outcomes_rx,
    });
    let mut executors = Vec::with_capacity(cores.len());
    for ((index, &core), binds) in cores.iter().enumerate().zip(per_core) {
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
            run_core(context, binds, dispatch_start, stop_flag)
        });
        match spawned {
            Ok(handle) => executors.push(handle),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                Upstream {
                    executors,
                    simulator,
                }
                .join();
                return Err(format!("upstream executor on core {core}: {e}"));
            }
        }
    }
    tracing::info!(
        connectors = shared.len(),
        cores = cores.len(),
        "upstream connectors started"
    );
    Ok(Upstream {
        executors,
        simulator,
    })
}

async fn run_core(
    context: bind::CoreStart,
    binds: Vec<bind::BindSpec>,
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
    let mut tasks = Vec::with_capacity(binds.len() + 1);
    for spec in binds {
        tasks.push(glommio::spawn_local(bind::run(
            std::rc::Rc::clone(&context),
            spec,
        )));
    }
    if let Some(start) = dispatcher {
        tasks.push(glommio::spawn_local(dispatch::run(
            start,
            Arc::clone(&stop),
        )));
    }
    for task in tasks {
        task.await;
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
