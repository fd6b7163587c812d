//! The dispatcher: takes this node's messages to submit (from `Effect::Dispatch`
//! and from rescans of `owned_unsubmitted`), routes them, hands them to a
//! connector's binds, and decides what a failure means.
//!
//! Owns: the node's in-flight table (bounded by `upstream.max_in_flight`),
//! retry timing (exponential backoff with jitter), the routing table's and
//! the connector fleet's refresh from the store (both read in one query, so
//! a route never sees a connector set older than itself), and the
//! `SubmitFailed` proposals. Must not touch:
//! sockets (binds do the SMPP), or `Effect::Deliver` (passed on untouched).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use super::bind::{propose_until_committed, MAX_QUEUED_MS};
use super::fleet::Fleet;
use super::{is_temporary, status, unix_now_ms, Job, Outcome};
use crate::config::UpstreamSection;
use crate::metrics::Counter;
use crate::routing::{candidates, RoutingTable};
use crate::store::command::{Accept, Command, Connector, Route};
use crate::store::driver::StoreHandle;
use crate::store::id::MessageId;
use crate::store::state::{Effect, MessageState};

/// How often routes and connectors are looked at (a cheap comparison on the
/// store thread; copied only when they changed) and the in-flight table checked.
const TICK: Duration = Duration::from_millis(200);
/// Rescan of `owned_unsubmitted` even without lost effects: catches work a
/// failed proposal or a full table left in the store.
const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// A message handed to a connector without any outcome after this long is
/// forgotten (the next rescan picks it up if it is still unsubmitted).
const SENT_WATCHDOG: Duration = Duration::from_secs(60);
/// Wait before looking again when no connector of the route is up: the
/// first, doubled per look up to the max (a large backlog for a dead
/// operator must not spin the dispatcher).
const NO_CONNECTOR_WAIT: Duration = Duration::from_millis(100);
const NO_CONNECTOR_WAIT_MAX: Duration = Duration::from_secs(3);
/// How often a backlog waiting for queue room is looked at (binds taking
/// work do not wake the dispatcher).
const BACKLOG_POLL: Duration = Duration::from_millis(1);
/// How often a message held back while this node is cut off from the
/// cluster is looked at again.
const CUT_OFF_WAIT: Duration = Duration::from_millis(200);
/// Effects taken per wake-up.
const EFFECT_BATCH: usize = 1024;

pub struct DispatchStart {
    pub node_id: u64,
    pub store: StoreHandle,
    /// Starts and retires binds as the connector records change.
    pub fleet: Fleet,
    pub settings: UpstreamSection,
    pub outcomes_rx: flume::Receiver<Outcome>,
}

enum FlightState {
    /// Waiting for its turn (first try or after a backoff); holds the message.
    Waiting(Box<Accept>),
    /// Handed to a connector at this instant.
    Sent(Instant),
    /// A `SubmitFailed` proposal is on its way.
    Finishing,
}

struct Flight {
    generation: u32,
    failures: u32,
    /// Consecutive looks that found no usable connector.
    idle_looks: u32,
    /// The connector instance (key) that failed last: the next attempt
    /// prefers another.
    avoid: Option<u64>,
    state: FlightState,
}

struct Dispatcher {
    start: DispatchStart,
    table: RoutingTable,
    routes_seen: Arc<Vec<Route>>,
    connectors_seen: Arc<Vec<Connector>>,
    flights: HashMap<MessageId, Flight>,
    timers: BinaryHeap<Reverse<(Instant, MessageId, u32)>>,
    candidates: Vec<usize>,
    /// Routed messages waiting for room in their connectors' queues, oldest
    /// first; tried again whenever binds may have taken work.
    backlog: std::collections::VecDeque<MessageId>,
    finished_tx: flume::Sender<MessageId>,
    finished_rx: flume::Receiver<MessageId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handed {
    Queued,
    /// Routed, but every usable connector's queue is full: goes to the backlog.
    QueuesFull,
    /// Failed, scheduled for later, or not waiting at all.
    Other,
}

enum Wake {
    Effect(Option<Effect>),
    Outcome(Option<Outcome>),
    Finished(Option<MessageId>),
    Tick,
}

pub async fn run(start: DispatchStart, stop: Arc<AtomicBool>) {
    // Unbounded in type, bounded in fact: at most one message per flight, and
    // flights are capped by `max_in_flight`.
    let (finished_tx, finished_rx) = flume::unbounded();
    let mut d = Dispatcher {
        start,
        table: RoutingTable::default(),
        routes_seen: Arc::new(Vec::new()),
        connectors_seen: Arc::new(Vec::new()),
        flights: HashMap::new(),
        timers: BinaryHeap::new(),
        candidates: Vec::new(),
        backlog: std::collections::VecDeque::new(),
        finished_tx,
        finished_rx,
    };
    d.refresh().await;
    d.rescan().await;
    let mut last_rescan = Instant::now();
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let effects = d.start.store.dispatch_effects().receiver().clone();
        let outcomes = d.start.outcomes_rx.clone();
        let finished = d.finished_rx.clone();
        let wait = d
            .timers
            .peek()
            .map_or(TICK, |Reverse((at, _, _))| {
                at.saturating_duration_since(Instant::now())
            })
            .min(if d.backlog.is_empty() {
                TICK
            } else {
                BACKLOG_POLL
            });
        let wake = futures_lite::future::or(
            async { Wake::Effect(effects.recv_async().await.ok()) },
            futures_lite::future::or(
                async { Wake::Outcome(outcomes.recv_async().await.ok()) },
                futures_lite::future::or(
                    async { Wake::Finished(finished.recv_async().await.ok()) },
                    async {
                        glommio::timer::sleep(wait).await;
                        Wake::Tick
                    },
                ),
            ),
        )
        .await;
        match wake {
            Wake::Effect(Some(effect)) => {
                let mut ids = Vec::new();
                d.take_effect(effect, &mut ids);
                while ids.len() < EFFECT_BATCH {
                    match d.start.store.dispatch_effects().receiver().try_recv() {
                        Ok(effect) => d.take_effect(effect, &mut ids),
                        Err(_) => break,
                    }
                }
                d.load_and_dispatch(ids).await;
            }
            Wake::Outcome(Some(outcome)) => {
                d.on_outcome(outcome);
                while let Ok(outcome) = d.start.outcomes_rx.try_recv() {
                    d.on_outcome(outcome);
                }
            }
            Wake::Finished(Some(id)) => {
                d.flights.remove(&id);
            }
            Wake::Effect(None) | Wake::Outcome(None) | Wake::Finished(None) => {
                // A channel closed: the store or the cores are going away.
                glommio::timer::sleep(TICK).await;
            }
            Wake::Tick => {}
        }
        d.run_timers();
        d.drain_backlog();
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            d.refresh().await;
        }
        if d.start.fleet.has_retiring() {
            d.take_returned();
        }
        if d.start.store.dispatch_effects().take_lost() || last_rescan.elapsed() >= RESCAN_EVERY {
            last_rescan = Instant::now();
            d.rescan().await;
        }
    }
}

impl Dispatcher {
    fn take_effect(&self, effect: Effect, ids: &mut Vec<MessageId>) {
        match effect {
            Effect::Dispatch { id, node } if node == self.start.node_id => {
                if !self.flights.contains_key(&id) {
                    ids.push(id);
                }
            }
            // The dispatch queue carries only this node's dispatches; anything
            // else would be a driver bug, and the rescan covers it anyway.
            Effect::Dispatch { .. } | Effect::Deliver { .. } => {}
        }
    }

    /// Re-reads routes and connector records if they changed (compared on
    /// the store thread against what was seen: no copy when nothing did),
    /// then rebuilds the table and reconciles the fleet.
    async fn refresh(&mut self) {
        let routes_seen = Arc::clone(&self.routes_seen);
        let connectors_seen = Arc::clone(&self.connectors_seen);
        let Ok((routes, connectors)) = self
            .start
            .store
            .query(move |state| {
                let routes = (!state.routes().eq(routes_seen.iter()))
                    .then(|| state.routes().cloned().collect::<Vec<Route>>());
                let connectors = (!state.connectors().eq(connectors_seen.iter()))
                    .then(|| state.connectors().cloned().collect::<Vec<Connector>>());
                (routes, connectors)
            })
            .await
        else {
            return;
        };
        if let Some(connectors) = connectors {
            self.connectors_seen = Arc::new(connectors.clone());
            self.start.fleet.reconcile(connectors);
            self.take_returned();
        }
        if let Some(routes) = routes {
            self.table = RoutingTable::build(&routes);
            self.routes_seen = Arc::new(routes);
        }
    }

    /// Jobs queued on connectors that retired go back to be routed again.
    fn take_returned(&mut self) {
        let mut returned = Vec::new();
        self.start
            .fleet
            .take_returned(|job, connector| returned.push(Outcome::Unsent { job, connector }));
        for outcome in returned {
            self.on_outcome(outcome);
        }
    }

    async fn rescan(&mut self) {
        let room = self.room();
        if room == 0 || self.table.is_empty() {
            return;
        }
        let node = self.start.node_id;
        // Over-fetch a little: some of them are already in flight here.
        let limit = room.saturating_add(self.flights.len());
        let Ok(ids) = self
            .start
            .store
            .query(move |state| {
                state
                    .owned_unsubmitted(node)
                    .take(limit)
                    .map(|m| m.id())
                    .collect::<Vec<MessageId>>()
            })
            .await
        else {
            return;
        };
        let fresh: Vec<MessageId> = ids
            .into_iter()
            .filter(|id| !self.flights.contains_key(id))
            .take(room)
            .collect();
        self.load_and_dispatch(fresh).await;
    }

    fn room(&self) -> usize {
        usize::try_from(self.start.settings.max_in_flight)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.flights.len())
    }

    async fn load_and_dispatch(&mut self, mut ids: Vec<MessageId>) {
        ids.truncate(self.room());
        // No routing provisioned at all: messages wait in the store (a rescan
        // finds them once routes exist) rather than failing for want of one.
        if ids.is_empty() || self.table.is_empty() {
            return;
        }
        let Ok(loaded) = self
            .start
            .store
            .query(move |state| {
                ids.into_iter()
                    .filter_map(|id| {
                        let m = state.message(&id)?;
                        (m.state == MessageState::Accepted)
                            .then(|| (id, Box::new(m.accept.clone())))
                    })
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        for (id, accept) in loaded {
            if self.flights.contains_key(&id) {
                continue;
            }
            self.flights.insert(
                id,
                Flight {
                    generation: 0,
                    failures: 0,
                    idle_looks: 0,
                    avoid: None,
                    state: FlightState::Waiting(accept),
                },
            );
            self.enqueue(id);
        }
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(flight) = self.flights.get(&id) else {
                continue;
            };
            if flight.generation != generation {
                continue;
            }
            match flight.state {
                FlightState::Waiting(_) => self.enqueue(id),
                FlightState::Sent(since) if since.elapsed() >= SENT_WATCHDOG => {
                    tracing::warn!(%id, "no outcome from the connector; left to the next rescan");
                    self.flights.remove(&id);
                }
                _ => {}
            }
        }
    }

    fn schedule(&mut self, id: MessageId, generation: u32, after: Duration) {
        self.timers
            .push(Reverse((Instant::now() + after, id, generation)));
    }

    /// Sends what waits for queue room, oldest first, until a queue is full.
    fn drain_backlog(&mut self) {
        while let Some(id) = self.backlog.pop_front() {
            if self.try_send(id) == Handed::QueuesFull {
                self.backlog.push_front(id);
                break;
            }
        }
    }

    /// Queues a new or retried message behind those already waiting.
    fn enqueue(&mut self, id: MessageId) {
        if self.backlog.is_empty() {
            if self.try_send(id) == Handed::QueuesFull {
                self.backlog.push_back(id);
            }
        } else {
            self.backlog.push_back(id);
        }
    }

    /// Routes a waiting message and hands it to a connector, or schedules it.
    fn try_send(&mut self, id: MessageId) -> Handed {
        let Some(flight) = self.flights.get_mut(&id) else {
            return Handed::Other;
        };
        let FlightState::Waiting(accept) =
            std::mem::replace(&mut flight.state, FlightState::Finishing)
        else {
            return Handed::Other;
        };
        if !self.start.store.may_dispatch() {
            // Cut off from the cluster: another node may be taking this
            // message over (store::liveness); hold it and look again.
            let generation = flight.generation;
            flight.state = FlightState::Waiting(accept);
            self.schedule(id, generation, CUT_OFF_WAIT);
            return Handed::Other;
        }
        let now_ms = unix_now_ms();
        if let Some(wait_ms) = accept
            .scheduled_at_ms
            .map(|at| at.saturating_sub(now_ms))
            .filter(|&wait_ms| wait_ms > 0)
        {
            // Scheduled for later: it keeps its flight (and so counts against
            // `max_in_flight`) and looks again when its time comes, at least
            // once a minute so a clock step cannot strand it.
            let generation = flight.generation;
            flight.state = FlightState::Waiting(accept);
            self.schedule(id, generation, Duration::from_millis(wait_ms.min(60_000)));
            return Handed::Other;
        }
        if accept
            .validity_until_ms
            .is_some_and(|until| until <= now_ms)
        {
            self.fail(
                id,
                status::EXPIRED,
                "validity ended before an operator took it",
            );
            return Handed::Other;
        }
        let Some(rule) = self.table.rule_for(
            &accept.account,
            &accept.source.digits,
            &accept.destination.digits,
        ) else {
            let reason = format!(
                "no route for account {} to {}",
                accept.account,
                crate::mask::Masked(&accept.destination.digits)
            );
            self.fail(id, status::NO_ROUTE, &reason);
            return Handed::Other;
        };
        let fleet = &self.start.fleet;
        let running = fleet.running();
        let position = |name: &str| running.iter().position(|c| c.name == name);
        if rule.targets.iter().all(|t| !fleet.knows(&t.connector)) {
            let reason = format!("route {} names no known connector", rule.name);
            self.fail(id, status::NO_CONNECTOR, &reason);
            return Handed::Other;
        }
        candidates(
            rule,
            id.stable_hash(),
            |name| position(name).is_some_and(|p| running.get(p).is_some_and(|c| c.is_usable())),
            &mut self.candidates,
        );
        // Candidate targets → positions in the running list, in place (no
        // allocation); valid until the next refresh, which cannot happen
        // before this call returns.
        for slot in self.candidates.iter_mut() {
            *slot = rule
                .targets
                .get(*slot)
                .and_then(|t| position(&t.connector))
                .unwrap_or(usize::MAX);
        }
        self.candidates.retain(|&c| c != usize::MAX);
        let Some(flight) = self.flights.get_mut(&id) else {
            return Handed::Other;
        };
        flight.generation = flight.generation.wrapping_add(1);
        let generation = flight.generation;
        // Prefer a connector other than the one that just failed (stable
        // sort: the rest keep the routing order).
        if let Some(avoid) = flight.avoid {
            if self.candidates.len() > 1 {
                self.candidates
                    .sort_by_key(|&c| running.get(c).is_some_and(|c| c.key == avoid));
            }
        }
        let mut job = Job {
            id,
            generation,
            accept,
            queued_at: Instant::now(),
        };
        for &connector in &self.candidates {
            let Some(shared) = running.get(connector) else {
                continue;
            };
            match shared.jobs_tx.try_send(job) {
                Ok(()) => {
                    flight.idle_looks = 0;
                    flight.state = FlightState::Sent(Instant::now());
                    let watchdog = SENT_WATCHDOG + Duration::from_millis(MAX_QUEUED_MS);
                    self.schedule(id, generation, watchdog);
                    return Handed::Queued;
                }
                Err(flume::TrySendError::Full(back) | flume::TrySendError::Disconnected(back)) => {
                    job = back
                }
            }
        }
        // Nothing usable, or every queue full: wait, without counting a failure.
        flight.state = FlightState::Waiting(job.accept);
        if self.candidates.is_empty() {
            flight.idle_looks = flight.idle_looks.saturating_add(1);
            let wait = NO_CONNECTOR_WAIT
                .saturating_mul(1 << flight.idle_looks.min(8))
                .min(NO_CONNECTOR_WAIT_MAX);
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            let jitter_ms = rand::thread_rng().gen_range(0..=wait_ms / 4);
            self.schedule(id, generation, wait + Duration::from_millis(jitter_ms));
            Handed::Other
        } else {
            Handed::QueuesFull
        }
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Submitted { id } | Outcome::Lost { id } => {
                self.flights.remove(&id);
            }
            Outcome::Unsent { job, connector } => {
                let Some(flight) = self.current(&job) else {
                    return;
                };
                flight.avoid = Some(connector);
                flight.state = FlightState::Waiting(job.accept);
                self.enqueue(job.id);
            }
            Outcome::Failed {
                job,
                connector,
                status,
            } => {
                let max_attempts = self.start.settings.max_attempts;
                let (min_ms, max_ms) = (
                    self.start.settings.retry_min_ms,
                    self.start.settings.retry_max_ms,
                );
                let id = job.id;
                let Some(flight) = self.current(&job) else {
                    return;
                };
                flight.failures = flight.failures.saturating_add(1);
                if !is_temporary(status) || flight.failures >= max_attempts {
                    let reason = format!(
                        "operator status 0x{status:08X} after {} attempt(s)",
                        flight.failures
                    );
                    self.fail(id, status, &reason);
                    return;
                }
                flight.avoid = Some(connector);
                let generation = flight.generation;
                flight.state = FlightState::Waiting(job.accept);
                let exponent = flight.failures.saturating_sub(1).min(20);
                let delay_ms = min_ms.saturating_mul(1 << exponent).min(max_ms);
                let jitter = rand::thread_rng().gen_range(0..=delay_ms / 2);
                self.schedule(id, generation, Duration::from_millis(delay_ms / 2 + jitter));
            }
        }
    }

    /// The flight a job belongs to, if the job is its current dispatch.
    fn current(&mut self, job: &Job) -> Option<&mut Flight> {
        self.flights
            .get_mut(&job.id)
            .filter(|f| f.generation == job.generation && matches!(f.state, FlightState::Sent(_)))
    }

    /// Ends a message: `Expire` for an ended validity, otherwise
    /// `SubmitFailed{permanent}`.
    fn fail(&mut self, id: MessageId, status: u32, reason: &str) {
        tracing::warn!(%id, status = format_args!("0x{status:08X}"), "message failed: {reason}");
        crate::metrics::count(if status == status::EXPIRED {
            Counter::MessagesExpired
        } else {
            Counter::MessagesFailed
        });
        let at_ms = unix_now_ms();
        // An ended validity is the state machine's EXPIRED (the customer's
        // DLR says so); everything else is a failed submission.
        let command = if status == status::EXPIRED {
            Command::Expire { id, at_ms }
        } else {
            Command::SubmitFailed {
                id,
                status,
                permanent: true,
                at_ms,
                retry_at_ms: None,
            }
        };
        self.finish(id, command);
    }

    /// Proposes the command that ends a message; the flight stays until the
    /// proposal is answered so that a rescan meanwhile does not retry it.
    fn finish(&mut self, id: MessageId, command: Command) {
        if let Some(flight) = self.flights.get_mut(&id) {
            flight.state = FlightState::Finishing;
        }
        let store = self.start.store.clone();
        let finished = self.finished_tx.clone();
        glommio::spawn_local(async move {
            let _ = propose_until_committed(&store, &command).await;
            let _ = finished.send(id);
        })
        .detach();
    }
}
