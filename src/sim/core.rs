//! One simulator executor: its listener, its receipt schedule and the routing
//! of receipts (and MO messages) to receiver binds, on this core or another.
//!
//! Owns: per-core state (ids, PRNG, throttle counters, the receipt schedule,
//! held receipts, the directory of which core has receivers for which
//! system_id) and the channels between cores. Must not touch: the bytes of a
//! connection (that is `conn`) or the process-wide start-up (that is `mod`).
//!
//! Why a directory fed by broadcasts: a receipt's receiver may be bound on
//! another core. Each core announces its receiver count per system_id when
//! it changes (rare), so routing a receipt is a local map lookup, with no
//! lock or shared map on the hot path.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use glommio::net::TcpListener;

use super::{Counter, Counters, SimConfig, MAX_TRACKED_DESTINATIONS};
use crate::peer::LocalNotify;
use crate::rng::SplitMix64;
use crate::smpp::pdu::{Address, SystemId};

/// Messages between cores; each channel is bounded.
#[derive(Debug)]
pub(super) enum CoreMsg {
    /// `core` now has `receivers` receiver binds for `system_id`.
    Receivers {
        system_id: SystemId,
        core: usize,
        receivers: u32,
    },
    Receipt(ReceiptJob),
}

const CHANNEL_CAPACITY: usize = 65_536;

/// The channels between all cores, built before the executors start.
pub(super) struct Mesh {
    senders: Vec<Sender<CoreMsg>>,
    receivers: Vec<Receiver<CoreMsg>>,
}

pub(super) struct CoreLinks {
    inbox: Receiver<CoreMsg>,
    peers: Vec<Sender<CoreMsg>>,
}

impl Mesh {
    pub(super) fn new(cores: usize) -> Mesh {
        let (senders, receivers) = (0..cores)
            .map(|_| crossbeam_channel::bounded(CHANNEL_CAPACITY))
            .unzip();
        Mesh { senders, receivers }
    }

    pub(super) fn links_for(&self, index: usize) -> CoreLinks {
        let inbox = self.receivers.get(index).cloned();
        let inbox = inbox.unwrap_or_else(|| unreachable!("core {index} is in the mesh"));
        CoreLinks {
            inbox,
            peers: self.senders.clone(),
        }
    }
}

/// A receipt waiting to be delivered.
#[derive(Debug, Clone)]
pub(super) struct ReceiptJob {
    pub system_id: SystemId,
    pub message_id: u64,
    /// The original destination: the receipt's source_addr.
    pub from: Address,
    pub from_ton: u8,
    pub from_npi: u8,
    /// The original source: the receipt's destination_addr.
    pub to: Address,
    pub to_ton: u8,
    pub to_npi: u8,
    pub submit_unix_ms: i64,
    /// message_state value of the outcome.
    pub state: u8,
    pub text: [u8; 20],
    pub text_len: u8,
    pub attempts: u32,
    pub hops: u8,
}

/// An MO message for any receiver.
#[derive(Debug, Clone)]
pub(super) struct MoJob {
    pub from: Address,
    pub to: Address,
    pub number: u64,
    pub attempts: u32,
}

#[derive(Debug, Clone)]
pub(super) enum Outbound {
    Receipt(ReceiptJob),
    Mo(MoJob),
}

/// What a receiver bind offers the router: a queue it drains and a flag.
#[derive(Debug)]
pub(super) struct ReceiverQueue {
    pub system_id: SystemId,
    pub queue: RefCell<VecDeque<Outbound>>,
    pub notify: LocalNotify,
}

struct Scheduled {
    due_ms: u64,
    order: u64,
    job: ReceiptJob,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ms, self.order) == (other.due_ms, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: BinaryHeap is a max-heap and the earliest due must come first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due_ms, other.order).cmp(&(self.due_ms, self.order))
    }
}

/// One executor's simulator state. Single-threaded: `Cell`/`RefCell` only,
/// never borrowed across an await.
pub(super) struct Core {
    pub index: usize,
    pub config: Arc<SimConfig>,
    pub counters: Arc<Counters>,
    pub stop: Arc<AtomicBool>,
    pub rng: RefCell<SplitMix64>,
    started: Instant,
    next_id: Cell<u64>,
    submits_seen: Cell<u64>,
    tps_tokens: Cell<f64>,
    tps_refilled_ms: Cell<u64>,
    pub live_connections: Cell<usize>,
    receivers: RefCell<HashMap<SystemId, Vec<Rc<ReceiverQueue>>>>,
    round_robin: Cell<usize>,
    directory: RefCell<HashMap<SystemId, Vec<u32>>>,
    schedule: RefCell<BinaryHeap<Scheduled>>,
    schedule_order: Cell<u64>,
    held: RefCell<HashMap<SystemId, VecDeque<ReceiptJob>>>,
    held_count: Cell<usize>,
    per_destination: RefCell<HashMap<Address, u64>>,
    per_destination_overflow: Cell<u64>,
    links: CoreLinks,
    unsent_announcements: RefCell<Vec<(usize, SystemId)>>,
}

impl Core {
    fn new(
        index: usize,
        config: Arc<SimConfig>,
        counters: Arc<Counters>,
        links: CoreLinks,
        stop: Arc<AtomicBool>,
    ) -> Core {
        let seed = config.seed ^ (index as u64).wrapping_mul(0xA076_1D64_78BD_642F);
        Core {
            index,
            counters,
            stop,
            rng: RefCell::new(SplitMix64::new(seed)),
            started: Instant::now(),
            // Ids carry the core in their top bits so cores never collide.
            next_id: Cell::new(((index as u64) << 40) + 1),
            submits_seen: Cell::new(0),
            tps_tokens: Cell::new(0.0),
            tps_refilled_ms: Cell::new(0),
            live_connections: Cell::new(0),
            receivers: RefCell::default(),
            round_robin: Cell::new(0),
            directory: RefCell::default(),
            schedule: RefCell::default(),
            schedule_order: Cell::new(0),
            held: RefCell::default(),
            held_count: Cell::new(0),
            per_destination: RefCell::default(),
            per_destination_overflow: Cell::new(0),
            links,
            unsent_announcements: RefCell::default(),
            config,
        }
    }

    pub fn cores(&self) -> usize {
        self.links.peers.len()
    }

    pub fn count(&self, counter: Counter) {
        self.counters.add(counter, 1);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Milliseconds since this core started: the clock of every timer here.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn unix_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    pub fn allocate_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        id
    }

    /// The throttling verdict for one more submit_sm: true to answer
    /// ESME_RTHROTTLED. `--max-tps` is split evenly across cores.
    pub fn should_throttle(&self) -> bool {
        let seen = self.submits_seen.get() + 1;
        self.submits_seen.set(seen);
        let every = self.config.throttle_every;
        if every > 0 && seen % every == 0 {
            return true;
        }
        if self.config.max_tps == 0 {
            return false;
        }
        let per_core_tps = self.config.max_tps as f64 / self.cores().max(1) as f64;
        let now = self.now_ms();
        let elapsed_s = now.saturating_sub(self.tps_refilled_ms.get()) as f64 / 1000.0;
        self.tps_refilled_ms.set(now);
        // A bucket of one tenth of a second's worth absorbs small bursts.
        let burst = (per_core_tps / 10.0).max(1.0);
        let tokens = (self.tps_tokens.get() + elapsed_s * per_core_tps).min(burst);
        if tokens >= 1.0 {
            self.tps_tokens.set(tokens - 1.0);
            false
        } else {
            self.tps_tokens.set(tokens);
            true
        }
    }

    pub fn count_destination(&self, destination: &Address) {
        let mut map = self.per_destination.borrow_mut();
        if let Some(n) = map.get_mut(destination) {
            *n += 1;
        } else if map.len() < MAX_TRACKED_DESTINATIONS {
            map.insert(*destination, 1);
        } else {
            self.per_destination_overflow
                .set(self.per_destination_overflow.get() + 1);
        }
    }

    /// Queues a receipt to go out `delay_ms` from now (at once when 0).
    pub fn schedule_receipt(&self, job: ReceiptJob, delay_ms: u64) {
        self.count(Counter::ReceiptsScheduled);
        if delay_ms == 0 {
            self.route(job);
            return;
        }
        let mut schedule = self.schedule.borrow_mut();
        if schedule.len() >= self.config.held_max {
            self.count(Counter::ReceiptsDropped);
            return;
        }
        let order = self.schedule_order.get();
        self.schedule_order.set(order.wrapping_add(1));
        schedule.push(Scheduled {
            due_ms: self.now_ms().saturating_add(delay_ms),
            order,
            job,
        });
    }

    /// Sends a receipt to a receiver of its system_id: on this core if there
    /// is one, else on a core that announced one, else holds it.
    pub fn route(&self, job: ReceiptJob) {
        if let Some(queue) = self.local_receiver(&job.system_id) {
            if queue.queue.borrow().len() < self.config.held_max {
                queue.queue.borrow_mut().push_back(Outbound::Receipt(job));
                queue.notify.notify();
                return;
            }
        }
        let job = match self.forward(job) {
            Ok(()) => return,
            Err(job) => job,
        };
        self.hold(job);
    }

    fn local_receiver(&self, system_id: &SystemId) -> Option<Rc<ReceiverQueue>> {
        let receivers = self.receivers.borrow();
        let list = receivers.get(system_id)?;
        if list.is_empty() {
            return None;
        }
        let turn = self.round_robin.get();
        self.round_robin.set(turn.wrapping_add(1));
        list.get(turn % list.len()).cloned()
    }

    fn forward(&self, mut job: ReceiptJob) -> Result<(), ReceiptJob> {
        if usize::from(job.hops) >= self.cores() {
            return Err(job);
        }
        let target = {
            let directory = self.directory.borrow();
            let Some(counts) = directory.get(&job.system_id) else {
                return Err(job);
            };
            let n = counts.len();
            (1..n)
                .map(|step| (self.index + step) % n)
                .find(|&core| counts.get(core).copied().unwrap_or(0) > 0)
        };
        let Some(target) = target else {
            return Err(job);
        };
        let Some(sender) = self.links.peers.get(target) else {
            return Err(job);
        };
        job.hops += 1;
        match sender.try_send(CoreMsg::Receipt(job)) {
            Ok(()) => {
                self.count(Counter::ReceiptsForwarded);
                Ok(())
            }
            Err(TrySendError::Full(CoreMsg::Receipt(job)))
            | Err(TrySendError::Disconnected(CoreMsg::Receipt(job))) => Err(job),
            Err(_) => unreachable!("try_send returns the message it was given"),
        }
    }

    fn hold(&self, job: ReceiptJob) {
        if self.held_count.get() >= self.config.held_max {
            self.count(Counter::ReceiptsDropped);
            return;
        }
        self.count(Counter::ReceiptsHeld);
        self.held_count.set(self.held_count.get() + 1);
        self.held
            .borrow_mut()
            .entry(job.system_id)
            .or_default()
            .push_back(job);
    }

    /// Routes again every receipt held for `system_id` (a receiver appeared).
    fn release(&self, system_id: &SystemId) {
        let Some(jobs) = self.held.borrow_mut().remove(system_id) else {
            return;
        };
        self.held_count
            .set(self.held_count.get().saturating_sub(jobs.len()));
        for mut job in jobs {
            job.hops = 0;
            self.route(job);
        }
    }

    /// Receipts held while a receiver existed but its queue was full: retried
    /// a slice per router pass, so a full queue costs little per pass.
    fn retry_held(&self) {
        const SLICE: usize = 4096;
        if self.held_count.get() == 0 {
            return;
        }
        let reachable: Vec<SystemId> = {
            let held = self.held.borrow();
            let receivers = self.receivers.borrow();
            let directory = self.directory.borrow();
            held.keys()
                .filter(|id| {
                    receivers.get(*id).is_some_and(|l| !l.is_empty())
                        || directory
                            .get(*id)
                            .is_some_and(|counts| counts.iter().any(|&n| n > 0))
                })
                .copied()
                .collect()
        };
        for system_id in reachable {
            let jobs: Vec<ReceiptJob> = {
                let mut held = self.held.borrow_mut();
                let Some(queue) = held.get_mut(&system_id) else {
                    continue;
                };
                let take = queue.len().min(SLICE);
                let jobs = queue.drain(..take).collect();
                if queue.is_empty() {
                    held.remove(&system_id);
                }
                jobs
            };
            self.held_count
                .set(self.held_count.get().saturating_sub(jobs.len()));
            for mut job in jobs {
                job.hops = 0;
                self.route(job);
            }
        }
    }

    pub fn register_receiver(&self, queue: Rc<ReceiverQueue>) {
        let system_id = queue.system_id;
        let count = {
            let mut receivers = self.receivers.borrow_mut();
            let list = receivers.entry(system_id).or_default();
            list.push(queue);
            list.len()
        };
        self.announce(system_id, count);
        self.release(&system_id);
    }

    /// Removes a receiver; what it had not delivered is routed again.
    pub fn unregister_receiver(
        &self,
        queue: &Rc<ReceiverQueue>,
        undelivered: impl IntoIterator<Item = Outbound>,
    ) {
        let count = {
            let mut receivers = self.receivers.borrow_mut();
            let list = receivers.entry(queue.system_id).or_default();
            list.retain(|q| !Rc::ptr_eq(q, queue));
            let count = list.len();
            if count == 0 {
                receivers.remove(&queue.system_id);
            }
            count
        };
        self.announce(queue.system_id, count);
        let queued: Vec<Outbound> = queue.queue.borrow_mut().drain(..).collect();
        for item in queued.into_iter().chain(undelivered) {
            match item {
                Outbound::Receipt(mut job) => {
                    job.hops = 0;
                    self.route(job);
                }
                // MO traffic is synthetic: one that lost its bind is not kept.
                Outbound::Mo(_) => self.count(Counter::MoDropped),
            }
        }
    }

    fn announce(&self, system_id: SystemId, receivers: usize) {
        let cores = self.cores();
        {
            let mut directory = self.directory.borrow_mut();
            let counts = directory.entry(system_id).or_insert_with(|| vec![0; cores]);
            if let Some(slot) = counts.get_mut(self.index) {
                *slot = u32::try_from(receivers).unwrap_or(u32::MAX);
            }
        }
        for core in (0..cores).filter(|&c| c != self.index) {
            if !self.send_announcement(core, system_id) {
                let mut unsent = self.unsent_announcements.borrow_mut();
                if !unsent.contains(&(core, system_id)) {
                    unsent.push((core, system_id));
                }
            }
        }
    }

    /// Tells `core` our current receiver count for `system_id`; false when
    /// its inbox is full (the caller retries later).
    fn send_announcement(&self, core: usize, system_id: SystemId) -> bool {
        let receivers = self
            .directory
            .borrow()
            .get(&system_id)
            .and_then(|counts| counts.get(self.index).copied())
            .unwrap_or(0);
        let Some(sender) = self.links.peers.get(core) else {
            return true;
        };
        !matches!(
            sender.try_send(CoreMsg::Receivers {
                system_id,
                core: self.index,
                receivers,
            }),
            Err(TrySendError::Full(_))
        )
    }

    /// Every local receiver, for MO traffic (any system_id), in turn.
    fn any_local_receiver(&self) -> Option<Rc<ReceiverQueue>> {
        let receivers = self.receivers.borrow();
        let total: usize = receivers.values().map(Vec::len).sum();
        if total == 0 {
            return None;
        }
        let turn = self.round_robin.get();
        self.round_robin.set(turn.wrapping_add(1));
        receivers.values().flatten().nth(turn % total).cloned()
    }

    /// One pass of the router: due receipts, the inbox, retried announcements.
    /// Returns when it next needs to run, in ms from now.
    fn route_due(&self) -> u64 {
        let now = self.now_ms();
        loop {
            let job = {
                let mut schedule = self.schedule.borrow_mut();
                match schedule.peek() {
                    Some(next) if next.due_ms <= now => schedule.pop().map(|s| s.job),
                    _ => None,
                }
            };
            let Some(job) = job else { break };
            self.route(job);
        }
        for msg in self.links.inbox.try_iter().take(CHANNEL_CAPACITY) {
            match msg {
                CoreMsg::Receivers {
                    system_id,
                    core,
                    receivers,
                } => {
                    let cores = self.cores();
                    if let Some(slot) = self
                        .directory
                        .borrow_mut()
                        .entry(system_id)
                        .or_insert_with(|| vec![0; cores])
                        .get_mut(core)
                    {
                        *slot = receivers;
                    }
                    if receivers > 0 {
                        self.release(&system_id);
                    }
                }
                CoreMsg::Receipt(job) => self.route(job),
            }
        }
        self.retry_held();
        let unsent = std::mem::take(&mut *self.unsent_announcements.borrow_mut());
        for (core, system_id) in unsent {
            if !self.send_announcement(core, system_id) {
                self.unsent_announcements
                    .borrow_mut()
                    .push((core, system_id));
            }
        }
        self.schedule
            .borrow()
            .peek()
            .map_or(u64::MAX, |next| next.due_ms.saturating_sub(now))
    }
}

/// Polls the inbox at least this often: cross-core messages arrive by a
/// lock-free channel that cannot wake a glommio executor by itself.
const ROUTER_TICK_MS: u64 = 2;

async fn router_loop(core: Rc<Core>) {
    while !core.stopping() {
        let next_ms = core.route_due();
        glommio::timer::sleep(Duration::from_millis(next_ms.clamp(1, ROUTER_TICK_MS))).await;
    }
}

async fn mo_loop(core: Rc<Core>) {
    let per_core_rate = core.config.mo_rate_per_s / core.cores().max(1) as f64;
    let Some(to) = Address::from_text(&core.config.mo_to) else {
        return;
    };
    let mut tokens = 0.0f64;
    let mut last = Instant::now();
    let mut number = 0u64;
    while !core.stopping() {
        glommio::timer::sleep(Duration::from_millis(10)).await;
        let now = Instant::now();
        // At most one second of backlog: a stalled core does not burst later.
        tokens = (tokens + now.duration_since(last).as_secs_f64() * per_core_rate)
            .min(per_core_rate.max(1.0));
        last = now;
        while tokens >= 1.0 {
            tokens -= 1.0;
            let Some(receiver) = core.any_local_receiver() else {
                core.count(Counter::MoUnrouted);
                continue;
            };
            let suffix = core.rng.borrow_mut().below(100_000_000);
            let from = format!("4479{suffix:08}");
            let Some(from) = Address::from_text(&from) else {
                continue;
            };
            number += 1;
            receiver.queue.borrow_mut().push_back(Outbound::Mo(MoJob {
                from,
                to,
                number,
                attempts: 0,
            }));
            receiver.notify.notify();
        }
    }
}

/// Per-destination counts (as text) and the overflow count.
pub(super) type CoreOutcome = Result<(HashMap<String, u64>, u64), String>;

/// One executor of the simulator, until `stop`.
pub(super) async fn run_core(
    index: usize,
    config: Arc<SimConfig>,
    counters: Arc<Counters>,
    links: CoreLinks,
    stop: Arc<AtomicBool>,
    listening: std::sync::mpsc::Sender<Result<std::net::SocketAddr, String>>,
) -> CoreOutcome {
    let bound = TcpListener::bind(config.listen).and_then(|l| Ok((l.local_addr()?, l)));
    let listener = match bound {
        Ok((addr, listener)) => {
            let _ = listening.send(Ok(addr));
            listener
        }
        Err(e) => {
            let message = format!("cannot listen on {}: {e}", config.listen);
            let _ = listening.send(Err(message.clone()));
            return Err(message);
        }
    };
    let core = Rc::new(Core::new(index, config, counters, links, stop));
    let router = glommio::spawn_local(router_loop(core.clone()));
    let mo = (core.config.mo_rate_per_s > 0.0).then(|| glommio::spawn_local(mo_loop(core.clone())));
    let acceptor = glommio::spawn_local({
        let core = core.clone();
        async move {
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        core.count(Counter::Connections);
                        glommio::spawn_local(super::conn::serve(core.clone(), stream)).detach();
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off, keep serving.
                        eprintln!("sim core {}: accept failed: {e}", core.index);
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    })
    .detach();
    while !core.stopping() {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    acceptor.cancel();
    // Connections notice the stop within their idle tick; give them time to close.
    let deadline = Instant::now() + Duration::from_secs(3);
    while core.live_connections.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    router.await;
    if let Some(mo) = mo {
        mo.await;
    }
    let destinations = core
        .per_destination
        .borrow()
        .iter()
        .map(|(dest, n)| (dest.to_string(), *n))
        .collect();
    Ok((destinations, core.per_destination_overflow.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(system_id: &str, message_id: u64) -> ReceiptJob {
        ReceiptJob {
            system_id: SystemId::from_text(system_id).expect("system_id"),
            message_id,
            from: Address::from_text("447900000001").expect("address"),
            from_ton: 1,
            from_npi: 1,
            to: Address::from_text("TERN").expect("address"),
            to_ton: 5,
            to_npi: 0,
            submit_unix_ms: 0,
            state: 2,
            text: [0; 20],
            text_len: 0,
            attempts: 0,
            hops: 0,
        }
    }

    fn cores(n: usize, held_max: usize) -> Vec<Core> {
        let mesh = Mesh::new(n);
        let config = Arc::new(SimConfig {
            held_max,
            ..SimConfig::default()
        });
        (0..n)
            .map(|i| {
                Core::new(
                    i,
                    config.clone(),
                    Arc::default(),
                    mesh.links_for(i),
                    Arc::default(),
                )
            })
            .collect()
    }

    fn receiver(system_id: &str) -> Rc<ReceiverQueue> {
        Rc::new(ReceiverQueue {
            system_id: SystemId::from_text(system_id).expect("system_id"),
            queue: RefCell::default(),
            notify: LocalNotify::new(),
        })
    }

    fn queued_ids(queue: &ReceiverQueue) -> Vec<u64> {
        queue
            .queue
            .borrow()
            .iter()
            .map(|item| match item {
                Outbound::Receipt(job) => job.message_id,
                Outbound::Mo(_) => u64::MAX,
            })
            .collect()
    }

    #[test]
    fn receipts_are_held_bounded_until_a_receiver_binds() {
        let all = cores(1, 2);
        let core = &all[0];
        for id in 1..=3 {
            core.route(job("acme", id));
        }
        assert_eq!(core.counters.get(Counter::ReceiptsHeld), 2);
        assert_eq!(
            core.counters.get(Counter::ReceiptsDropped),
            1,
            "over held_max"
        );
        let other = receiver("other");
        core.register_receiver(other.clone());
        assert!(
            other.queue.borrow().is_empty(),
            "another system_id gets nothing"
        );
        let acme = receiver("acme");
        core.register_receiver(acme.clone());
        assert_eq!(queued_ids(&acme), vec![1, 2]);
        // A receiver's queue is bounded too: a full one makes the router hold.
        core.route(job("acme", 4));
        assert_eq!(queued_ids(&acme), vec![1, 2]);
        assert_eq!(core.counters.get(Counter::ReceiptsHeld), 3);
        acme.queue.borrow_mut().pop_front();
        core.route_due();
        assert_eq!(
            queued_ids(&acme),
            vec![2, 4],
            "the router retries what it held"
        );
        acme.queue.borrow_mut().pop_front();
        core.route(job("acme", 5));
        assert_eq!(
            queued_ids(&acme),
            vec![4, 5],
            "room again: delivered at once"
        );
    }

    #[test]
    fn a_receiver_on_another_core_gets_the_receipts_by_channel() {
        let all = cores(2, 100);
        let (a, b) = (&all[0], &all[1]);
        a.route(job("acme", 7));
        assert_eq!(a.counters.get(Counter::ReceiptsHeld), 1);
        let queue = receiver("acme");
        b.register_receiver(queue.clone());
        // Core a learns of the receiver, releases and forwards what it held.
        a.route_due();
        assert_eq!(a.counters.get(Counter::ReceiptsForwarded), 1);
        a.route(job("acme", 8));
        b.route_due();
        assert_eq!(queued_ids(&queue), vec![7, 8]);
        // The receiver goes: what it had not delivered is held again on b.
        b.unregister_receiver(&queue, std::iter::empty());
        assert_eq!(b.counters.get(Counter::ReceiptsHeld), 2);
    }

    #[test]
    fn scheduled_receipts_wait_for_their_time() {
        let all = cores(1, 100);
        let core = &all[0];
        let queue = receiver("acme");
        core.register_receiver(queue.clone());
        core.schedule_receipt(job("acme", 1), 60_000);
        core.schedule_receipt(job("acme", 2), 0);
        let next_ms = core.route_due();
        assert_eq!(queued_ids(&queue), vec![2]);
        assert!(next_ms > 59_000 && next_ms <= 60_000, "{next_ms}");
    }
}
