//! The production store thread: one plain thread per node that owns the raft
//! core, the durable log on real files, the application state and the peer
//! transport, and the [`StoreHandle`] through which everything else reaches it.
//!
//! Owns: the loop that executes the core's actions in raft-rs's order (send
//! `messages` at once; append + fdatasync; then `persisted_messages`; deliver
//! replies), ticks, start-up recovery (log, latest durable state snapshot,
//! replay), periodic durable state snapshots and log compaction, the
//! request/reply plumbing to callers, the hand-off of applied effects and
//! account changes (`watch_accounts`) to this node's consumers, and the
//! leader's `NodeDown` proposals and this node's fence (`store::liveness`
//! decides; `may_dispatch`, `declared_down`). Must not touch: raft logic
//! (the core decides), the log format (the wal decides), what commands mean
//! (the state machine decides), or sockets (the transport owns them).
//!
//! Group commit: the log lives on its own thread (raft-rs's asynchronous
//! persistence, `advance_append_async` / `on_persist_ready` in the core). While
//! one fdatasync runs, the store thread keeps sealing proposals into entries,
//! replicating and applying; every write queued meanwhile shares the next
//! sync, and messages that must follow a sync (`persisted_messages`) leave
//! only when the log thread reports it done.
//!
//! Data directory layout: `log/` (the raft log segments), `state/` (durable
//! state snapshots through `snapshot::PersistentState`) and `incarnation` (a
//! boot counter, so a proposal made before a restart is never matched to one
//! made after).

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, MessageType, SnapshotMetadata};

use super::command::{Accept, Account, Address, Command};
use super::id::MessageId;
use super::liveness::Liveness;
use super::node::{CoreConfig, LogStart, ProposalResult, RaftCore, RetryReason};
use super::retention::{
    start_archive, unix_now_ms, ArchiveFeed, ArchiveHandle, ArchiveLookup, ArchiveLookupError,
    ArchiveWorker, RetentionConfig, RetentionSchedule,
};
use super::snapshot::{FsSnapshotDisk, PersistentState};
use super::state::{AppState, ApplyOutcome, Effect, Message, SnapshotSource};
use super::transport::{Transport, TransportConfig};
use super::wal::{FsDisk, LogOptions, RaftLog};
use super::{StateMachine, StoreError};
use crate::metrics::{Histogram, RaftStatus};

/// Everything a node needs to run its store.
#[derive(Clone)]
pub struct StoreConfig {
    pub node_id: u64,
    pub cluster_id: u64,
    pub listen_addr: SocketAddr,
    /// Every other node this one may talk to (id, address). Nodes added later
    /// through [`StoreHandle::add_voter_blocking`] are dialed from then on.
    pub peers: Vec<(u64, SocketAddr)>,
    /// Voters of a brand-new cluster, used only when the log is empty. Leave
    /// empty on a node that joins an existing cluster: it waits for the leader.
    pub initial_voters: Vec<u64>,
    pub data_dir: PathBuf,
    pub secret: Vec<u8>,
    pub tick_interval_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Requests buffered towards the store thread; beyond it `try_propose`
    /// answers `Busy`.
    pub input_queue_capacity: usize,
    /// A durable state snapshot is taken once this many log bytes were
    /// appended since the last one (it bounds replay time and log size).
    pub snapshot_interval_log_bytes: u64,
    pub segment_size_bytes: u64,
    /// Raft entries kept behind the applied index when the log is compacted.
    pub compact_keep_entries: u64,
    /// The log is compacted only once that drops at least this many entries.
    pub compact_min_entries: u64,
    /// A batch of proposals (one raft entry) is sealed at this size. Modest
    /// batches keep the allocator reusing warm memory; a sync still covers
    /// every batch sealed while the previous one ran.
    pub max_batch_bytes: usize,
    /// Hot window, long retention and the node's archive (in `archive/`
    /// under `data_dir`); `None` keeps every record in the state forever.
    pub retention: Option<RetentionConfig>,
    /// The leader declares a voter down (`NodeDown`) after hearing nothing
    /// from it for this long; `None` never declares anyone down.
    pub node_down_after_ms: Option<u64>,
}

impl StoreConfig {
    pub fn new(node_id: u64, listen_addr: SocketAddr, data_dir: PathBuf, secret: Vec<u8>) -> Self {
        StoreConfig {
            node_id,
            cluster_id: 1,
            listen_addr,
            peers: Vec::new(),
            initial_voters: vec![node_id],
            data_dir,
            secret,
            tick_interval_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            input_queue_capacity: 1 << 16,
            snapshot_interval_log_bytes: 256 * 1024 * 1024,
            segment_size_bytes: 64 * 1024 * 1024,
            compact_keep_entries: 1000,
            compact_min_entries: 256,
            max_batch_bytes: 64 * 1024,
            retention: None,
            node_down_after_ms: None,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .field("listen_addr", &self.listen_addr)
            .field("peers", &self.peers)
            .field("initial_voters", &self.initial_voters)
            .field("data_dir", &self.data_dir)
            .field("secret", &"<redacted>")
            .field("tick_interval_ms", &self.tick_interval_ms)
            .finish_non_exhaustive()
    }
}

/// Why a proposal got no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposeError {
    /// Not committed (leadership changed, no leader, timeout...). The command
    /// may still apply later; commands are idempotent, so propose it again.
    Retry(RetryReason),
    /// The store's input queue is full: back off.
    Busy,
    /// The store thread stopped.
    Stopped,
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::Retry(reason) => write!(f, "retry ({reason:?})"),
            ProposeError::Busy => write!(f, "store busy"),
            ProposeError::Stopped => write!(f, "store stopped"),
        }
    }
}

impl std::error::Error for ProposeError {}

pub type ProposeResult = Result<ApplyOutcome, ProposeError>;

/// A proposal on its way; wait for it from a thread or await it from an executor.
#[must_use = "a proposal's result says whether it committed"]
pub struct PendingReply {
    rx: flume::Receiver<ProposeResult>,
}

impl PendingReply {
    /// Blocks the calling thread until the proposal is answered.
    pub fn wait(self) -> ProposeResult {
        self.rx.recv().unwrap_or(Err(ProposeError::Stopped))
    }

    /// Resolves when the proposal is answered, without blocking an async reactor.
    pub async fn outcome(self) -> ProposeResult {
        self.rx
            .into_recv_async()
            .await
            .unwrap_or(Err(ProposeError::Stopped))
    }
}

/// A node's view of the cluster, from [`StoreHandle::status_blocking`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    pub node_id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub applied_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// Counters and gauges, readable from any thread without a round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    pub node_id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// `sync` calls on the log that made something durable.
    pub log_syncs: u64,
    pub log_entries_synced: u64,
    /// Proposals (commands) sealed into log entries on this node.
    pub proposals_synced: u64,
    pub state_snapshots_saved: u64,
    /// Snapshots received from a leader and installed (catch-up by snapshot).
    pub snapshots_installed: u64,
    pub transport_dropped: u64,
}

#[derive(Default)]
struct SharedMetrics {
    node_id: AtomicU64,
    leader_id: AtomicU64,
    term: AtomicU64,
    commit_index: AtomicU64,
    applied_index: AtomicU64,
    log_syncs: AtomicU64,
    log_entries_synced: AtomicU64,
    proposals_synced: AtomicU64,
    state_snapshots_saved: AtomicU64,
    snapshots_installed: AtomicU64,
    log_bytes: AtomicU64,
    transport_dropped: AtomicU64,
}

impl SharedMetrics {
    fn read(&self) -> StoreMetrics {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreMetrics {
            node_id: get(&self.node_id),
            leader_id: get(&self.leader_id),
            term: get(&self.term),
            commit_index: get(&self.commit_index),
            applied_index: get(&self.applied_index),
            log_syncs: get(&self.log_syncs),
            log_entries_synced: get(&self.log_entries_synced),
            proposals_synced: get(&self.proposals_synced),
            state_snapshots_saved: get(&self.state_snapshots_saved),
            snapshots_installed: get(&self.snapshots_installed),
            transport_dropped: get(&self.transport_dropped),
        }
    }
}

/// Whether the cluster still counts this boot of the node as up, shared by
/// the store thread (which sees the `NodeDown`) and the engine (which stops).
#[derive(Default)]
struct NodeFence {
    /// The incarnation this boot announced with `NodeUp`; 0 = not yet.
    announced_incarnation: AtomicU64,
    declared_down: AtomicBool,
    /// Not heard from the leader (or, leading, from a quorum) lately: the
    /// others may be about to take this node's messages over.
    cut_off: AtomicBool,
}

type Query = Box<dyn FnOnce(&AppState) + Send>;

enum Input {
    Propose {
        command: Vec<u8>,
        reply: flume::Sender<ProposeResult>,
    },
    Query(Query),
    Status(flume::Sender<StoreStatus>),
    AddVoter {
        id: u64,
        addr: SocketAddr,
        reply: flume::Sender<Result<(), String>>,
    },
    RemoveNode {
        id: u64,
        reply: flume::Sender<Result<(), String>>,
    },
    TransferLeader(u64),
    Shutdown,
}

/// The caller's side of a store: cheap to clone, `Send`, usable from plain
/// threads (`*_blocking`) and from async executors (the futures never block
/// a reactor thread: they wait on an async channel).
#[derive(Clone)]
pub struct StoreHandle {
    inputs: Sender<Input>,
    metrics: Arc<SharedMetrics>,
    fence: Arc<NodeFence>,
    dispatch: EffectQueue,
    delivery: EffectQueue,
    archive: Option<ArchiveHandle>,
    accounts: Arc<AccountNotices>,
}

/// One kind of work applied commands hand to THIS node, in apply order.
/// Clones of the handle share the queue: each effect goes to one consumer.
/// Dispatch and delivery have a queue each, so neither consumer can take the
/// other's work and each learns on its own when it must rescan.
#[derive(Clone)]
pub struct EffectQueue {
    receiver: flume::Receiver<Effect>,
    lost: Arc<AtomicBool>,
}

impl EffectQueue {
    /// The effects; await with `recv_async` on an executor.
    pub fn receiver(&self) -> &flume::Receiver<Effect> {
        &self.receiver
    }

    /// True (once) when effects of this kind were dropped since the last call
    /// (queue full, or a snapshot replaced the state): the consumer must rescan
    /// the state (`owned_unsubmitted` or `deliveries_for_node` for this node).
    pub fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::AcqRel)
    }
}

/// What a watcher learns when account records change on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountChange {
    /// This account's record was written or removed.
    Account(String),
    /// Any account may have changed (a snapshot replaced the state, or
    /// notices were dropped): re-check everything.
    All,
}

/// Notices a watcher holds before it drains them; beyond this it gets
/// [`AccountChange::All`] instead.
const ACCOUNT_NOTICE_CAPACITY: usize = 1024;

/// The store thread's side of account notices: one bounded queue per
/// watcher, and a generation bumped after each publication. Watchers
/// subscribe once at start-up and the store thread publishes only when an
/// applied command wrote or removed an account, so the mutex is never on a
/// message's path.
struct AccountNotices {
    watchers: std::sync::Mutex<Vec<AccountSubscriber>>,
    generation: AtomicU64,
}

struct AccountSubscriber {
    sender: flume::Sender<AccountChange>,
    lost: Arc<AtomicBool>,
}

impl AccountNotices {
    fn new() -> AccountNotices {
        AccountNotices {
            watchers: std::sync::Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
        }
    }

    fn subscribe(self: &Arc<Self>) -> AccountWatcher {
        let (sender, receiver) = flume::bounded(ACCOUNT_NOTICE_CAPACITY);
        let lost = Arc::new(AtomicBool::new(false));
        // A poisoned lock only means a panic elsewhere mid-push; the list
        // is still a list.
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(AccountSubscriber {
                sender,
                lost: Arc::clone(&lost),
            });
        AccountWatcher {
            receiver,
            lost,
            notices: Arc::clone(self),
            seen_generation: std::cell::Cell::new(self.generation.load(Ordering::Acquire)),
        }
    }

    /// Hands `names` (and `All` when `lost`) to every watcher, then bumps the
    /// generation: a watcher that sees the new generation finds the notices.
    fn publish(&self, lost: bool, names: &[String]) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.retain(|watcher| {
            let changes = lost
                .then_some(AccountChange::All)
                .into_iter()
                .chain(names.iter().cloned().map(AccountChange::Account));
            for change in changes {
                match watcher.sender.try_send(change) {
                    Ok(()) => {}
                    Err(flume::TrySendError::Full(_)) => {
                        watcher.lost.store(true, Ordering::Release);
                        break;
                    }
                    Err(flume::TrySendError::Disconnected(_)) => return false,
                }
            }
            true
        });
        drop(watchers);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// One consumer's view of account changes applied on this node (one per
/// connection core). Not shared: each watcher gets every notice.
pub struct AccountWatcher {
    receiver: flume::Receiver<AccountChange>,
    lost: Arc<AtomicBool>,
    notices: Arc<AccountNotices>,
    seen_generation: std::cell::Cell<u64>,
}

impl AccountWatcher {
    /// Whether anything was published since the last [`drain`]: one atomic
    /// load, cheap enough to ask before every cache lookup. A change applied
    /// before a proposal's reply was sent is always seen.
    ///
    /// [`drain`]: AccountWatcher::drain
    pub fn has_news(&self) -> bool {
        self.notices.generation.load(Ordering::Acquire) != self.seen_generation.get()
    }

    /// Hands every notice waiting to `each` (`All` first when notices were
    /// dropped). Bounded by the queue's capacity.
    pub fn drain(&self, mut each: impl FnMut(AccountChange)) {
        self.seen_generation
            .set(self.notices.generation.load(Ordering::Acquire));
        if self.lost.swap(false, Ordering::AcqRel) {
            each(AccountChange::All);
        }
        for change in self.receiver.try_iter().take(ACCOUNT_NOTICE_CAPACITY) {
            each(change);
        }
    }

    /// Waits for the next notice; `None` once the store stopped.
    pub async fn next(&self) -> Option<AccountChange> {
        self.receiver.recv_async().await.ok()
    }
}

/// The sending half the store thread keeps for one effect queue.
struct EffectSender {
    sender: flume::Sender<Effect>,
    lost: Arc<AtomicBool>,
}

impl EffectSender {
    fn queue(capacity: usize) -> (EffectSender, EffectQueue) {
        let (sender, receiver) = flume::bounded(capacity);
        let lost = Arc::new(AtomicBool::new(false));
        (
            EffectSender {
                sender,
                lost: Arc::clone(&lost),
            },
            EffectQueue { receiver, lost },
        )
    }

    fn send(&self, effect: Effect) {
        if self.sender.try_send(effect).is_err() {
            self.lost.store(true, Ordering::Release);
        }
    }

    fn mark_lost(&self) {
        self.lost.store(true, Ordering::Release);
    }
}

impl StoreHandle {
    /// From now on, a `NodeDown` for this node, or a `NodeUp` of another
    /// incarnation, raises [`StoreHandle::declared_down`]. Called once this
    /// boot's `NodeUp` with `incarnation` committed.
    pub fn watch_for_declared_down(&self, incarnation: u32) {
        debug_assert!(incarnation > 0, "incarnations start at 1");
        self.fence
            .announced_incarnation
            .store(u64::from(incarnation), Ordering::Release);
    }

    /// True once the cluster declared this boot of the node down (see
    /// `store::liveness`): the node must stop, and a restart rejoins.
    pub fn declared_down(&self) -> bool {
        self.fence.declared_down.load(Ordering::Acquire)
    }

    /// Whether this node may hand its messages to operators now: false while
    /// it is cut off from the cluster or once it was declared down (see
    /// `store::liveness`). Always true for a lone voter.
    pub fn may_dispatch(&self) -> bool {
        !self.fence.cut_off.load(Ordering::Acquire) && !self.declared_down()
    }

    /// Queues a proposal without blocking; `Busy` when the queue is full.
    pub fn try_propose(&self, command: Vec<u8>) -> Result<PendingReply, ProposeError> {
        let (reply, rx) = flume::bounded(1);
        match self.inputs.try_send(Input::Propose { command, reply }) {
            Ok(()) => Ok(PendingReply { rx }),
            Err(TrySendError::Full(_)) => Err(ProposeError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(ProposeError::Stopped),
        }
    }

    /// Proposes `command` and resolves with what apply returned once it is
    /// committed on a quorum and applied here. The proposal is queued at call
    /// time; the future only waits.
    pub fn propose(
        &self,
        command: Vec<u8>,
    ) -> impl Future<Output = ProposeResult> + Send + 'static {
        let pending = self.try_propose(command);
        async move { pending?.outcome().await }
    }

    /// Blocking form of [`StoreHandle::propose`] for plain threads: waits for
    /// queue space instead of answering `Busy`.
    pub fn propose_blocking(&self, command: Vec<u8>) -> ProposeResult {
        let (reply, rx) = flume::bounded(1);
        if self.inputs.send(Input::Propose { command, reply }).is_err() {
            return Err(ProposeError::Stopped);
        }
        PendingReply { rx }.wait()
    }

    /// Runs `read` against the applied state on the store thread, between two
    /// batches, and returns its result. Keep `read` short: the store waits.
    pub fn query<R, F>(
        &self,
        read: F,
    ) -> impl Future<Output = Result<R, ProposeError>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(&AppState) -> R + Send + 'static,
    {
        let rx = self.send_query(read);
        async move {
            rx?.into_recv_async()
                .await
                .map_err(|_| ProposeError::Stopped)
        }
    }

    pub fn query_blocking<R, F>(&self, read: F) -> Result<R, ProposeError>
    where
        R: Send + 'static,
        F: FnOnce(&AppState) -> R + Send + 'static,
    {
        self.send_query(read)?
            .recv()
            .map_err(|_| ProposeError::Stopped)
    }

    fn send_query<R, F>(&self, read: F) -> Result<flume::Receiver<R>, ProposeError>
    where
        R: Send + 'static,
        F: FnOnce(&AppState) -> R + Send + 'static,
    {
        let (tx, rx) = flume::bounded(1);
        let query: Query = Box::new(move |state: &AppState| {
            let _ = tx.send(read(state));
        });
        match self.inputs.try_send(Input::Query(query)) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(ProposeError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(ProposeError::Stopped),
        }
    }

    pub fn status_blocking(&self) -> Result<StoreStatus, ProposeError> {
        let (tx, rx) = flume::bounded(1);
        self.inputs
            .send(Input::Status(tx))
            .map_err(|_| ProposeError::Stopped)?;
        rx.recv().map_err(|_| ProposeError::Stopped)
    }

    /// On the leader: dials `addr` for node `id`, adds it as a learner and
    /// promotes it to voter once it caught up (watch `status_blocking`).
    pub fn add_voter_blocking(&self, id: u64, addr: SocketAddr) -> Result<(), String> {
        let (reply, rx) = flume::bounded(1);
        self.inputs
            .send(Input::AddVoter { id, addr, reply })
            .map_err(|_| "store stopped".to_string())?;
        rx.recv().map_err(|_| "store stopped".to_string())?
    }

    /// On the leader: removes node `id` (voter or learner) from the group.
    pub fn remove_node_blocking(&self, id: u64) -> Result<(), String> {
        let (reply, rx) = flume::bounded(1);
        self.inputs
            .send(Input::RemoveNode { id, reply })
            .map_err(|_| "store stopped".to_string())?;
        rx.recv().map_err(|_| "store stopped".to_string())?
    }

    pub fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.inputs
            .send(Input::TransferLeader(to))
            .map_err(|_| ProposeError::Stopped)
    }

    pub fn metrics(&self) -> StoreMetrics {
        self.metrics.read()
    }

    /// Messages this node is to submit upstream (`Effect::Dispatch`).
    pub fn dispatch_effects(&self) -> &EffectQueue {
        &self.dispatch
    }

    /// DLRs and MOs this node is to deliver to customers (`Effect::Deliver`).
    pub fn delivery_effects(&self) -> &EffectQueue {
        &self.delivery
    }

    /// A new watcher of the accounts written or removed on this node from
    /// now on (each connection core keeps one, to close the binds and drop
    /// the cached keys of an account that changed).
    pub fn watch_accounts(&self) -> AccountWatcher {
        self.accounts.subscribe()
    }

    /// A message that left the hot state (see `retention`), from this node's
    /// archive: `Ok(None)` when the archive holds no such id. Look in the
    /// state first (`query` + `AppState::message`): a message still hot is
    /// not archived.
    pub fn archived(&self, id: MessageId) -> impl Future<Output = ArchiveLookup> + Send + 'static {
        let lookup = self
            .archive
            .as_ref()
            .map(|archive| archive.lookup(id))
            .ok_or(ArchiveLookupError::Unavailable);
        async move { lookup?.await }
    }

    /// Blocking form of [`StoreHandle::archived`] for plain threads.
    pub fn archived_blocking(&self, id: MessageId) -> ArchiveLookup {
        self.archive
            .as_ref()
            .ok_or(ArchiveLookupError::Unavailable)?
            .lookup_blocking(id)
    }
}

/// Effects buffered towards this node's consumers.
const EFFECT_QUEUE_CAPACITY: usize = 1 << 16;

/// The state machine as the store thread runs it: the replicated `AppState`
/// plus the node-local hand-off of its effects, drained right after each
/// apply (the core owns the state machine, so this is where `&mut` is).
struct NodeState {
    state: AppState,
    node_id: u64,
    dispatch: EffectSender,
    delivery: EffectSender,
    /// Reused buffer for draining.
    drained: Vec<Effect>,
    archive: Option<ArchiveFeed>,
    accounts: Arc<AccountNotices>,
    /// Reused buffer for draining account changes.
    changed_accounts: Vec<String>,
}

impl NodeState {
    fn forward_removed(&mut self) {
        if let Some(feed) = &mut self.archive {
            let mut removed: Vec<Arc<Message>> = Vec::new();
            self.state.drain_removed(&mut removed);
            feed.send(removed);
        }
    }

    fn forward_effects(&mut self) {
        if !self.state.drain_effects(&mut self.drained) {
            self.dispatch.mark_lost();
            self.delivery.mark_lost();
        }
        for effect in self.drained.drain(..) {
            match effect {
                Effect::Dispatch { node, .. } if node == self.node_id => self.dispatch.send(effect),
                Effect::Deliver { node, .. } if node == self.node_id => self.delivery.send(effect),
                _ => {}
            }
        }
    }
}

impl NodeState {
    /// Runs before the replies of the batch go out, so a caller whose
    /// account change committed finds every watcher told.
    fn forward_account_changes(&mut self) {
        let complete = self.state.drain_account_changes(&mut self.changed_accounts);
        if complete && self.changed_accounts.is_empty() {
            return;
        }
        self.accounts.publish(!complete, &self.changed_accounts);
        self.changed_accounts.clear();
    }
}

impl StateMachine for NodeState {
    type Output = ApplyOutcome;

    fn apply(&mut self, index: u64, commands: &[&[u8]]) -> Vec<ApplyOutcome> {
        let outputs = self.state.apply(index, commands);
        self.forward_effects();
        self.forward_removed();
        self.forward_account_changes();
        outputs
    }

    fn applied_index(&self) -> u64 {
        self.state.applied_index()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.state.snapshot()
    }

    fn restore(&mut self, index: u64, snapshot: &[u8]) -> Result<(), StoreError> {
        let restored = self.state.restore(index, snapshot);
        self.forward_effects();
        self.forward_account_changes();
        restored
    }
}

/// A running store thread.
pub struct Store {
    handle: StoreHandle,
    thread: Option<JoinHandle<Result<(), StoreError>>>,
    archive_worker: Option<ArchiveWorker>,
}

impl Store {
    /// Recovers the node from `config.data_dir` (log, latest durable state
    /// snapshot, replay of the rest happens as raft re-commits) and starts
    /// serving. Returns once recovery succeeded and the transport listens.
    pub fn start(config: StoreConfig) -> Result<Store, StoreError> {
        let (inputs, input_rx) = crossbeam_channel::bounded(config.input_queue_capacity.max(1));
        let metrics = Arc::new(SharedMetrics::default());
        let thread_metrics = Arc::clone(&metrics);
        let fence = Arc::new(NodeFence::default());
        let thread_fence = Arc::clone(&fence);
        let (dispatch_tx, dispatch) = EffectSender::queue(EFFECT_QUEUE_CAPACITY);
        let (delivery_tx, delivery) = EffectSender::queue(EFFECT_QUEUE_CAPACITY);
        let effects = (dispatch_tx, delivery_tx);
        let accounts = Arc::new(AccountNotices::new());
        let thread_accounts = Arc::clone(&accounts);
        let (archive_feed, archive, archive_worker) = match &config.retention {
            Some(retention) => {
                let (feed, handle, worker) = start_archive(
                    &config.data_dir.join("archive"),
                    retention.archive_retention_ms,
                    config.node_id,
                )?;
                (Some(feed), Some(handle), Some(worker))
            }
            None => (None, None, None),
        };
        let stats_archive = archive.clone();
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let thread = thread::Builder::new()
            .name(format!("tern-store-{}", config.node_id))
            .spawn(move || {
                let recovered = Driver::recover(
                    config,
                    input_rx,
                    thread_metrics,
                    thread_fence,
                    effects,
                    (archive_feed, stats_archive),
                    thread_accounts,
                );
                let mut driver = match recovered {
                    Ok(driver) => {
                        let _ = started_tx.send(Ok(()));
                        driver
                    }
                    Err(e) => {
                        let message = e.to_string();
                        let _ = started_tx.send(Err(e));
                        return Err(StoreError::Raft(format!("start-up failed: {message}")));
                    }
                };
                let result = driver.run();
                if let Err(e) = &result {
                    tracing::error!(node = driver.node_id, "store thread stopped: {e}");
                }
                result
            })?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok(Store {
                handle: StoreHandle {
                    inputs,
                    metrics,
                    fence,
                    dispatch,
                    delivery,
                    archive,
                    accounts,
                },
                thread: Some(thread),
                archive_worker,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                if let Some(worker) = archive_worker {
                    worker.join();
                }
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                if let Some(worker) = archive_worker {
                    worker.join();
                }
                Err(StoreError::Raft("store thread died during start-up".into()))
            }
        }
    }

    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Stops the thread after the batch in progress and waits for it. Pending
    /// proposals are answered `Stopped` (they may still commit elsewhere).
    pub fn shutdown(mut self) -> Result<(), StoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), StoreError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.handle.inputs.send(Input::Shutdown);
        let result = thread
            .join()
            .map_err(|_| StoreError::Raft("store thread panicked".into()))?;
        // The store thread dropped its feed: the archive drains and ends.
        if let Some(worker) = self.archive_worker.take() {
            worker.join();
        }
        result
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Inputs handled per loop iteration at most, so ticks and peer messages are
/// never starved by a flood of proposals.
const MAX_INPUTS_PER_ROUND: usize = 1 << 16;
const MAX_PEER_MESSAGES_PER_ROUND: usize = 4096;
/// Ticks caught up at once after a long stall; more would fire elections in a burst.
const MAX_CATCH_UP_TICKS: u32 = 3;

struct Driver {
    node_id: u64,
    core: RaftCore<NodeState>,
    log: LogWriter,
    transport: Transport,
    peer_rx: Receiver<raft::eraftpb::Message>,
    inputs: Receiver<Input>,
    metrics: Arc<SharedMetrics>,
    /// Callers waiting for their proposal, indexed by request id. Request ids
    /// are assigned here, so uniqueness needs no coordination.
    waiting: std::collections::HashMap<u64, flume::Sender<ProposeResult>>,
    next_request_id: u64,
    snapshots: SnapshotWriter,
    log_bytes_at_last_snapshot: u64,
    snapshot_interval_log_bytes: u64,
    tick_interval: Duration,
    next_tick: Instant,
    stopping: bool,
    retention: Option<Retention>,
    /// The leader's failure detector; `None` when nodes are never declared down.
    liveness: Option<Liveness>,
    fence: Arc<NodeFence>,
}

/// The store thread's side of retention: the leader's proposals and the
/// node's stats line.
struct Retention {
    schedule: RetentionSchedule,
    /// Our last retention proposal, until it is answered: one at a time, so
    /// the next cut-off is computed from the state that one left.
    in_flight: Option<flume::Receiver<ProposeResult>>,
    archive: Option<ArchiveHandle>,
    next_stats_at: Instant,
    last_stats: Option<RetentionLine>,
}

/// What the periodic retention stats line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RetentionLine {
    messages: usize,
    mos: usize,
    pending: usize,
    evicted: u64,
    evicted_mos: u64,
    purged: u64,
    purged_deliveries: u64,
    archived: u64,
    archive_dropped: u64,
    pruned: u64,
}

/// How often the stats line may be logged (only when something changed).
const RETENTION_STATS_INTERVAL: Duration = Duration::from_secs(1);

impl Driver {
    fn recover(
        config: StoreConfig,
        inputs: Receiver<Input>,
        metrics: Arc<SharedMetrics>,
        fence: Arc<NodeFence>,
        effects: (EffectSender, EffectSender),
        archive: (Option<ArchiveFeed>, Option<ArchiveHandle>),
        accounts: Arc<AccountNotices>,
    ) -> Result<Driver, StoreError> {
        fs::create_dir_all(&config.data_dir)?;
        let incarnation = next_incarnation(&config.data_dir)?;
        let disk = FsDisk::open(config.data_dir.join("log"))?;
        let options = LogOptions {
            segment_size_bytes: config.segment_size_bytes,
        };
        let (log, recovered) = RaftLog::open(disk, options)?;
        if recovered.dropped_bytes > 0 {
            tracing::warn!(
                node = config.node_id,
                dropped_bytes = recovered.dropped_bytes,
                "log recovery cut a torn or corrupt tail (unsynced writes from a crash)"
            );
        }
        let snapshots = PersistentState::new(FsSnapshotDisk::open(&config.data_dir.join("state"))?);
        let mut state = NodeState {
            state: AppState::new(),
            node_id: config.node_id,
            dispatch: effects.0,
            delivery: effects.1,
            drained: Vec::new(),
            archive: archive.0,
            accounts,
            changed_accounts: Vec::new(),
        };
        if state.archive.is_some() {
            state.state.keep_removed();
        }
        let mut state_snapshot = None;
        if let Some(saved) = snapshots.load_latest()? {
            let conf_state = ConfState::parse_from_bytes(&saved.conf_state).map_err(|e| {
                StoreError::Corrupt(format!("conf state in the state snapshot: {e}"))
            })?;
            state.restore(saved.index, &saved.state)?;
            let mut metadata = SnapshotMetadata {
                index: saved.index,
                term: saved.term,
                ..Default::default()
            };
            metadata.set_conf_state(conf_state);
            state_snapshot = Some(metadata);
        }
        let recovered_start = LogStart::from_recovered(recovered, state_snapshot.clone());
        let start = if recovered_start.is_empty()
            && state_snapshot.is_none()
            && !config.initial_voters.is_empty()
        {
            LogStart::bootstrap(&config.initial_voters)
        } else {
            recovered_start
        };
        tracing::info!(
            node = config.node_id,
            incarnation,
            state_index = state.applied_index(),
            log_snapshot_index = start.snapshot_index,
            log_entries = start.entries.len(),
            "store recovered"
        );
        let mut core_config = CoreConfig::new(config.node_id, incarnation);
        core_config.election_ticks = config.election_ticks;
        core_config.heartbeat_ticks = config.heartbeat_ticks;
        core_config.compact_keep_entries = config.compact_keep_entries;
        core_config.compact_min_entries = config.compact_min_entries;
        core_config.max_batch_bytes = config.max_batch_bytes.max(1);
        let mut core = RaftCore::new(core_config, start, state)?;
        if let Some(saved) = &state_snapshot {
            core.set_durable_snapshot_index(saved.index.min(core.applied_index()));
        }
        let mut transport_config = TransportConfig::new(
            config.node_id,
            config.cluster_id,
            config.listen_addr,
            config.secret.clone(),
        );
        transport_config.peers = config.peers.clone();
        let (transport, peer_rx) = Transport::start(transport_config)?;
        metrics.node_id.store(config.node_id, Ordering::Relaxed);
        let tick_interval = Duration::from_millis(config.tick_interval_ms.max(1));
        let log_bytes = log.stats().bytes;
        metrics.log_bytes.store(log_bytes, Ordering::Relaxed);
        let log = LogWriter::start(log, Arc::clone(&metrics), config.node_id)?;
        Ok(Driver {
            node_id: config.node_id,
            core,
            log,
            transport,
            peer_rx,
            inputs,
            metrics,
            waiting: std::collections::HashMap::new(),
            next_request_id: 1,
            snapshots: SnapshotWriter::start(snapshots, config.node_id)?,
            log_bytes_at_last_snapshot: log_bytes,
            snapshot_interval_log_bytes: config.snapshot_interval_log_bytes.max(1),
            tick_interval,
            next_tick: Instant::now() + tick_interval,
            stopping: false,
            retention: config.retention.map(|retention| Retention {
                schedule: RetentionSchedule::new(retention),
                in_flight: None,
                archive: archive.1,
                next_stats_at: Instant::now(),
                last_stats: None,
            }),
            liveness: config
                .node_down_after_ms
                .map(|ms| Liveness::new(config.node_id, Duration::from_millis(ms.max(1)))),
            fence,
        })
    }

    fn run(&mut self) -> Result<(), StoreError> {
        // Replay what the log holds, then let a lone voter lead at once
        // instead of after an election timeout (raft-rs refuses to campaign
        // while committed conf changes are unapplied, hence the order), and
        // settle that term change before taking proposals: the core fails
        // proposals pending across a term change.
        self.settle()?;
        if self.core.conf_state().voters == [self.node_id] && self.core.leader_id() == 0 {
            self.core.campaign()?;
            self.settle()?;
        }
        while !self.stopping {
            self.wait_for_work()?;
            self.drain_inputs();
            self.collect_log_completions()?;
            self.fire_ticks();
            self.collect_durable_snapshots();
            if self.core.has_ready() {
                let actions = self.core.ready()?;
                self.execute(actions)?;
            }
            self.maybe_snapshot();
            self.maybe_propose_retention();
            self.maybe_declare_down();
            self.update_contact();
            self.check_fence();
            self.publish_metrics();
        }
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
        Ok(())
    }

    /// Runs ready cycles until the core has nothing more to do (bounded: a
    /// core that keeps producing work is served by the main loop instead).
    fn settle(&mut self) -> Result<(), StoreError> {
        for _ in 0..64 {
            if !self.core.has_ready() {
                if self.log.outstanding == 0 {
                    break;
                }
                let completed = self.log.wait()?;
                self.on_log_completions(completed);
                continue;
            }
            let actions = self.core.ready()?;
            self.execute(actions)?;
        }
        Ok(())
    }

    /// Blocks until an input, a peer message or the next tick, unless the
    /// core already has work.
    fn wait_for_work(&mut self) -> Result<(), StoreError> {
        if self.core.has_ready() {
            return Ok(());
        }
        let timeout = self.next_tick.saturating_duration_since(Instant::now());
        crossbeam_channel::select! {
            recv(self.inputs) -> input => match input {
                Ok(input) => self.handle_input(input),
                Err(_) => self.stopping = true,
            },
            recv(self.peer_rx) -> message => {
                if let Ok(message) = message {
                    self.step_peer(message);
                }
            },
            recv(self.log.done) -> completed => {
                let completed = LogWriter::received(completed)?;
                self.log.outstanding -= completed.len();
                self.on_log_completions(completed);
            },
            default(timeout) => {},
        }
        Ok(())
    }

    /// Takes every batch the log thread finished since the last call.
    fn collect_log_completions(&mut self) -> Result<(), StoreError> {
        while let Some(completed) = self.log.try_completed()? {
            self.on_log_completions(completed);
        }
        Ok(())
    }

    /// Raft-rs's order: what needed the sync goes out only after it.
    fn on_log_completions(&mut self, completed: Vec<LogDone>) {
        for done in completed {
            self.send_messages(done.persisted_messages);
            self.core.persisted(done.number);
        }
    }

    fn drain_inputs(&mut self) {
        for _ in 0..MAX_PEER_MESSAGES_PER_ROUND {
            match self.peer_rx.try_recv() {
                Ok(message) => self.step_peer(message),
                Err(_) => break,
            }
        }
        for _ in 0..MAX_INPUTS_PER_ROUND {
            match self.inputs.try_recv() {
                Ok(input) => self.handle_input(input),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.stopping = true;
                    break;
                }
            }
        }
    }

    fn step_peer(&mut self, message: raft::eraftpb::Message) {
        if let Some(liveness) = &mut self.liveness {
            liveness.heard(message.from, Instant::now());
        }
        self.core.step(message);
    }

    /// On the leader: proposes `NodeDown` for a voter silent too long.
    fn maybe_declare_down(&mut self) {
        let Some(liveness) = &mut self.liveness else {
            return;
        };
        let now = Instant::now();
        let is_leader = self.core.leader_id() == self.node_id;
        let voters = &self.core.conf_state().voters;
        let state = &self.core.state_machine().state;
        let Some(node) = liveness.due(now, is_leader, voters, |n| {
            state.node(n).is_some_and(|record| record.up)
        }) else {
            return;
        };
        tracing::warn!(
            node = self.node_id,
            down = node,
            silent_ms = liveness.silent_for(node, now).map_or(0, |d| d.as_millis()),
            "a voter is unreachable: declaring it down, live nodes take over its messages \
             and the deliveries aimed at its binds"
        );
        // Nobody waits for the answer: a lost proposal is proposed again
        // once the detector's window has passed and the node is still up.
        let (reply, _) = flume::bounded(1);
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.waiting.insert(request_id, reply);
        self.core
            .propose(request_id, &Command::NodeDown { node }.encode());
    }

    /// Keeps `cut_off` current, logging each change.
    fn update_contact(&mut self) {
        let Some(liveness) = &self.liveness else {
            return;
        };
        let in_contact = liveness.in_contact(
            Instant::now(),
            self.core.leader_id(),
            &self.core.conf_state().voters,
        );
        let was_cut_off = self.fence.cut_off.swap(!in_contact, Ordering::AcqRel);
        if was_cut_off == in_contact {
            if in_contact {
                tracing::info!(
                    node = self.node_id,
                    "in contact with the cluster again: dispatching"
                );
            } else {
                tracing::warn!(
                    node = self.node_id,
                    leader = self.core.leader_id(),
                    "cut off from the cluster: holding this node's messages back from operators \
                     until it hears the cluster again"
                );
            }
        }
    }

    /// Raises `declared_down` once the applied state no longer counts this
    /// boot as up (see `store::liveness` for why the node then stops).
    fn check_fence(&mut self) {
        let announced = self.fence.announced_incarnation.load(Ordering::Acquire);
        if announced == 0 || self.fence.declared_down.load(Ordering::Relaxed) {
            return;
        }
        let record = self.core.state_machine().state.node(self.node_id);
        let still_up = record.is_some_and(|r| r.up && u64::from(r.incarnation) == announced);
        if !still_up {
            tracing::error!(
                node = self.node_id,
                incarnation = announced,
                ?record,
                "the cluster declared this node down (it was unreachable): its messages and \
                 binds were handed to other nodes; stopping so that a restart rejoins with a \
                 new incarnation"
            );
            self.fence.declared_down.store(true, Ordering::Release);
        }
    }

    fn handle_input(&mut self, input: Input) {
        match input {
            Input::Propose { command, reply } => {
                let request_id = self.next_request_id;
                self.next_request_id += 1;
                self.waiting.insert(request_id, reply);
                self.core.propose(request_id, &command);
            }
            Input::Query(query) => query(&self.core.state_machine().state),
            Input::Status(reply) => {
                let conf = self.core.conf_state();
                let _ = reply.send(StoreStatus {
                    node_id: self.node_id,
                    leader_id: self.core.leader_id(),
                    term: self.core.term(),
                    applied_index: self.core.applied_index(),
                    voters: conf.voters.clone(),
                    learners: conf.learners.clone(),
                });
            }
            Input::AddVoter { id, addr, reply } => {
                let result = self
                    .transport
                    .set_peer(id, addr)
                    .and_then(|()| self.core.add_voter_via_learner(id))
                    .map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            Input::RemoveNode { id, reply } => {
                let _ = reply.send(self.core.remove_node(id).map_err(|e| e.to_string()));
            }
            Input::TransferLeader(to) => self.core.transfer_leader(to),
            Input::Shutdown => self.stopping = true,
        }
    }

    fn fire_ticks(&mut self) {
        let now = Instant::now();
        let mut fired = 0;
        while now >= self.next_tick {
            if fired < MAX_CATCH_UP_TICKS {
                self.core.tick();
                fired += 1;
            }
            self.next_tick += self.tick_interval;
        }
    }

    fn send_messages(&mut self, messages: Vec<raft::eraftpb::Message>) {
        for message in messages {
            let to = message.to;
            let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let queued = self.transport.send(message);
            if is_snapshot {
                // The transport reports queueing, not delivery: a snapshot lost
                // later is noticed by raft through the follower's next reject.
                self.core.report_snapshot(to, queued);
            }
            if !queued {
                self.core.report_unreachable(to);
            }
        }
    }

    fn execute(&mut self, actions: super::node::Actions<ApplyOutcome>) -> Result<(), StoreError> {
        self.send_messages(actions.messages);
        if let Some(metadata) = &actions.installed_snapshot {
            tracing::info!(
                node = self.node_id,
                index = metadata.index,
                term = metadata.term,
                "installing a snapshot"
            );
            // The state must be durable before the log forgets the entries it
            // replaces: a crash in between would otherwise lose both.
            let state = self.core.state_machine().snapshot();
            self.snapshots.save_now(metadata, state)?;
            self.metrics
                .state_snapshots_saved
                .fetch_add(1, Ordering::Relaxed);
            self.log.submit(LogJob::Snapshot {
                index: metadata.index,
                term: metadata.term,
                conf_state: metadata.get_conf_state().clone(),
            })?;
            self.core.set_durable_snapshot_index(metadata.index);
            self.log_bytes_at_last_snapshot = self.metrics.log_bytes.load(Ordering::Relaxed);
        }
        let has_write = actions.number != 0
            || !actions.entries.is_empty()
            || actions.hard_state.is_some()
            || actions.conf_state.is_some();
        if has_write {
            // A bare commit-index change (raft-rs: `must_sync` false) rides
            // along with the next sync: losing it in a crash is harmless, the
            // leader repeats it. Entries, votes and configuration are synced.
            let must_sync =
                actions.must_sync || !actions.entries.is_empty() || actions.conf_state.is_some();
            self.log.submit(LogJob::Write {
                number: actions.number,
                entries: actions.entries,
                hard_state: actions.hard_state,
                conf_state: actions.conf_state,
                must_sync,
                persisted_messages: actions.persisted_messages,
            })?;
        }
        for reply in actions.replies {
            let Some(waiter) = self.waiting.remove(&reply.request_id) else {
                continue;
            };
            let result = match reply.result {
                ProposalResult::Committed { output, .. } => Ok(output),
                ProposalResult::Retry(reason) => Err(ProposeError::Retry(reason)),
            };
            let _ = waiter.send(result);
        }
        if let Some(compaction) = actions.compaction {
            tracing::debug!(
                node = self.node_id,
                index = compaction.index,
                "compacting the log"
            );
            self.log.submit(LogJob::Compact {
                index: compaction.index,
                term: compaction.term,
                conf_state: compaction.conf_state,
            })?;
        }
        Ok(())
    }

    /// Takes a durable state snapshot when enough log was written since the
    /// last one. The state is detached here, between two applies, so it is
    /// the state of exactly the applied index (a copy of the map nodes, the
    /// records shared); encoding, write and fsync happen on the snapshot
    /// thread while this one keeps applying.
    fn maybe_snapshot(&mut self) {
        let log_bytes = self.metrics.log_bytes.load(Ordering::Relaxed);
        let written = log_bytes.saturating_sub(self.log_bytes_at_last_snapshot);
        if written < self.snapshot_interval_log_bytes || self.snapshots.busy() {
            return;
        }
        let metadata = self.core.applied_snapshot_metadata();
        if metadata.index == 0 {
            return;
        }
        let started = Instant::now();
        let state = self.core.state_machine().state.snapshot_source();
        // The store thread stands still meanwhile: worth seeing in the log.
        tracing::info!(
            node = self.node_id,
            index = metadata.index,
            detach_ms = started.elapsed().as_millis() as u64,
            "state snapshot detached"
        );
        if self.snapshots.save_in_background(metadata, state) {
            self.log_bytes_at_last_snapshot = log_bytes;
        }
    }

    /// On the leader: proposes what the retention schedule says is due. On
    /// every node: logs the stats line when the counts moved.
    fn maybe_propose_retention(&mut self) {
        let Some(retention) = &mut self.retention else {
            return;
        };
        let state = &self.core.state_machine().state;
        if Instant::now() >= retention.next_stats_at {
            retention.next_stats_at = Instant::now() + RETENTION_STATS_INTERVAL;
            let stats = state.retention_stats();
            let counters = state.counters();
            let archive = retention.archive.as_ref().map(|a| a.counters());
            let read = |pick: fn(&super::retention::ArchiveCounters) -> &AtomicU64| {
                archive.map_or(0, |c| pick(c).load(Ordering::Relaxed))
            };
            let line = RetentionLine {
                messages: state.message_count(),
                mos: state.mo_count(),
                pending: state.pending_count(),
                evicted: stats.evicted_messages,
                evicted_mos: stats.evicted_mos,
                purged: counters.purged_messages,
                purged_deliveries: counters.purged_deliveries,
                archived: read(|c| &c.archived),
                archive_dropped: read(|c| &c.dropped) + stats.archive_dropped,
                pruned: read(|c| &c.pruned),
            };
            if retention.last_stats != Some(line) {
                if retention
                    .last_stats
                    .is_some_and(|last| last.purged_deliveries != line.purged_deliveries)
                {
                    tracing::warn!(
                        node = self.node_id,
                        purged_deliveries = line.purged_deliveries,
                        "retention dropped DLRs/MOs never delivered"
                    );
                }
                retention.last_stats = Some(line);
                tracing::info!(
                    node = self.node_id,
                    messages = line.messages,
                    mos = line.mos,
                    pending = line.pending,
                    evicted = line.evicted,
                    evicted_mos = line.evicted_mos,
                    purged = line.purged,
                    purged_deliveries = line.purged_deliveries,
                    archived = line.archived,
                    archive_dropped = line.archive_dropped,
                    archive_pruned = line.pruned,
                    "retention stats"
                );
            }
        }
        if let Some(reply) = &retention.in_flight {
            match reply.try_recv() {
                Err(flume::TryRecvError::Empty) => return,
                Ok(_) | Err(flume::TryRecvError::Disconnected) => retention.in_flight = None,
            }
        }
        if self.core.leader_id() != self.node_id {
            return;
        }
        let Some(command) = retention.schedule.next(unix_now_ms(), state) else {
            return;
        };
        let (reply, rx) = flume::bounded(1);
        retention.in_flight = Some(rx);
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.waiting.insert(request_id, reply);
        self.core.propose(request_id, &command.encode());
    }

    fn collect_durable_snapshots(&mut self) {
        while let Some(index) = self.snapshots.completed() {
            self.metrics
                .state_snapshots_saved
                .fetch_add(1, Ordering::Relaxed);
            self.core
                .set_durable_snapshot_index(index.min(self.core.applied_index()));
        }
    }

    fn publish_metrics(&self) {
        let core = self.core.metrics();
        let m = &self.metrics;
        m.leader_id.store(core.leader_id, Ordering::Relaxed);
        m.term.store(core.term, Ordering::Relaxed);
        m.commit_index.store(core.commit_index, Ordering::Relaxed);
        m.applied_index.store(core.applied_index, Ordering::Relaxed);
        crate::metrics::set_raft(RaftStatus {
            term: core.term,
            commit_index: core.commit_index,
            applied_index: core.applied_index,
            leader_id: core.leader_id,
        });
        m.proposals_synced
            .store(core.proposals_batched, Ordering::Relaxed);
        m.snapshots_installed
            .store(core.snapshots_installed, Ordering::Relaxed);
        let transport = self.transport.stats();
        m.transport_dropped.store(
            transport.dropped_queue_full
                + transport.dropped_disconnected
                + transport.dropped_inbound_full,
            Ordering::Relaxed,
        );
    }
}

/// Work for the log thread, executed in submission order.
enum LogJob {
    /// One raft ready's worth of log writes; completes after the sync that
    /// covers it (or at once, buffered, when nothing in it needs a sync).
    Write {
        number: u64,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
        conf_state: Option<ConfState>,
        must_sync: bool,
        persisted_messages: Vec<raft::eraftpb::Message>,
    },
    /// A snapshot installed from the leader (its state already durable):
    /// record it, sync, and drop what it covers.
    Snapshot {
        index: u64,
        term: u64,
        conf_state: ConfState,
    },
    /// Compaction chosen by the core: record the marker (synced) first.
    Compact {
        index: u64,
        term: u64,
        conf_state: ConfState,
    },
}

/// A finished `LogJob::Write`: its messages may go and raft may count it.
struct LogDone {
    number: u64,
    persisted_messages: Vec<raft::eraftpb::Message>,
}

/// Write jobs queued towards the log thread before the store thread waits.
const LOG_QUEUE_CAPACITY: usize = 256;
/// Jobs the log thread folds into one sync at most.
const MAX_JOBS_PER_SYNC: usize = 1024;

/// The raft log on its own thread (raft-rs's asynchronous persistence): the
/// store thread hands over each ready's writes and keeps batching, applying
/// and replicating while fdatasync runs; everything queued meanwhile shares
/// the next sync.
struct LogWriter {
    jobs: Option<Sender<LogJob>>,
    done: Receiver<Result<Vec<LogDone>, StoreError>>,
    /// Write jobs submitted and not yet reported done.
    outstanding: usize,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    fn start(
        log: RaftLog<FsDisk>,
        metrics: Arc<SharedMetrics>,
        node_id: u64,
    ) -> Result<LogWriter, StoreError> {
        let (jobs, job_rx) = crossbeam_channel::bounded(LOG_QUEUE_CAPACITY);
        // Unbounded in type, bounded in fact: one message per sync, and at
        // most LOG_QUEUE_CAPACITY jobs are ever outstanding.
        let (done_tx, done) = crossbeam_channel::unbounded();
        let thread = thread::Builder::new()
            .name(format!("tern-log-{node_id}"))
            .spawn(move || log_thread(log, &job_rx, &done_tx, &metrics))?;
        Ok(LogWriter {
            jobs: Some(jobs),
            done,
            outstanding: 0,
            thread: Some(thread),
        })
    }

    fn submit(&mut self, job: LogJob) -> Result<(), StoreError> {
        if matches!(job, LogJob::Write { .. }) {
            self.outstanding += 1;
        }
        let stopped = || StoreError::Raft("the log thread stopped".into());
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(job).map_err(|_| stopped())
    }

    fn received(
        completed: Result<Result<Vec<LogDone>, StoreError>, crossbeam_channel::RecvError>,
    ) -> Result<Vec<LogDone>, StoreError> {
        completed.map_err(|_| StoreError::Raft("the log thread stopped".into()))?
    }

    fn try_completed(&mut self) -> Result<Option<Vec<LogDone>>, StoreError> {
        match self.done.try_recv() {
            Ok(completed) => {
                let completed = completed?;
                self.outstanding -= completed.len();
                Ok(Some(completed))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => {
                Err(StoreError::Raft("the log thread stopped".into()))
            }
        }
    }

    fn wait(&mut self) -> Result<Vec<LogDone>, StoreError> {
        let completed = Self::received(self.done.recv())?;
        self.outstanding -= completed.len();
        Ok(completed)
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // The thread finishes (and syncs) what was queued, then exits.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn log_thread(
    mut log: RaftLog<FsDisk>,
    jobs: &Receiver<LogJob>,
    done: &Sender<Result<Vec<LogDone>, StoreError>>,
    metrics: &SharedMetrics,
) {
    let mut batch = Vec::with_capacity(MAX_JOBS_PER_SYNC);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_JOBS_PER_SYNC {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let before = log.stats();
        let result = run_log_jobs(&mut log, &mut batch);
        let stats = log.stats();
        crate::metrics::log_batch(
            stats.entries.saturating_sub(before.entries),
            stats.bytes.saturating_sub(before.bytes),
        );
        metrics.log_syncs.store(stats.syncs, Ordering::Relaxed);
        metrics
            .log_entries_synced
            .store(stats.entries, Ordering::Relaxed);
        metrics.log_bytes.store(stats.bytes, Ordering::Relaxed);
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

fn run_log_jobs(
    log: &mut RaftLog<FsDisk>,
    batch: &mut Vec<LogJob>,
) -> Result<Vec<LogDone>, StoreError> {
    let mut completed = Vec::with_capacity(batch.len());
    let mut need_sync = false;
    for job in batch.drain(..) {
        match job {
            LogJob::Write {
                number,
                entries,
                hard_state,
                conf_state,
                must_sync,
                persisted_messages,
            } => {
                if !entries.is_empty() {
                    log.append(&entries)?;
                }
                if let Some(hard_state) = &hard_state {
                    log.set_hard_state(hard_state)?;
                }
                if let Some(conf_state) = &conf_state {
                    log.set_conf_state(conf_state)?;
                }
                need_sync |= must_sync;
                completed.push(LogDone {
                    number,
                    persisted_messages,
                });
            }
            LogJob::Snapshot {
                index,
                term,
                conf_state,
            } => {
                log.set_snapshot(index, term, &conf_state)?;
                log.sync()?;
                need_sync = false;
                log.compact(index)?;
            }
            LogJob::Compact {
                index,
                term,
                conf_state,
            } => {
                if index > log.snapshot_index() {
                    log.set_snapshot(index, term, &conf_state)?;
                    log.sync()?;
                    need_sync = false;
                }
                log.compact(index)?;
            }
        }
    }
    if need_sync {
        log.sync()?;
    }
    Ok(completed)
}

/// Reads, increments and durably rewrites the node's boot counter.
fn next_incarnation(data_dir: &Path) -> Result<u64, StoreError> {
    let path = data_dir.join("incarnation");
    let previous = match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            StoreError::Corrupt(format!("{} does not hold a number", path.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    let next = previous + 1;
    write_durably(data_dir, "incarnation", next.to_string().as_bytes())?;
    Ok(next)
}

/// Writes `name` in `dir` atomically and durably: temp file, fsync, rename,
/// directory fsync.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, dir.join(name))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Durable state snapshots

/// Writes state snapshots on a helper thread so the store thread never waits
/// for their fsync in steady state; one write at a time.
/// What the snapshot thread saves: bytes already encoded, or a detached
/// state it encodes itself (so the store thread does not wait for that).
enum SnapshotPayload {
    Encoded(Vec<u8>),
    Detached(Box<SnapshotSource>),
}

struct SnapshotWriter {
    jobs: Sender<(SnapshotMetadata, SnapshotPayload)>,
    done: Receiver<Result<u64, String>>,
    in_flight: bool,
    /// A background write that finished while `save_now` waited for it.
    finished_meanwhile: Option<u64>,
    thread: Option<JoinHandle<()>>,
}

impl SnapshotWriter {
    fn start(
        mut snapshots: PersistentState<FsSnapshotDisk>,
        node_id: u64,
    ) -> Result<SnapshotWriter, StoreError> {
        let (jobs, job_rx) = crossbeam_channel::bounded::<(SnapshotMetadata, SnapshotPayload)>(1);
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let thread = thread::Builder::new()
            .name(format!("tern-snap-{node_id}"))
            .spawn(move || {
                for (metadata, payload) in job_rx {
                    let started = Instant::now();
                    let state = match payload {
                        SnapshotPayload::Encoded(bytes) => bytes,
                        SnapshotPayload::Detached(source) => {
                            let started = Instant::now();
                            let bytes = source.encode();
                            tracing::info!(
                                node = node_id,
                                index = metadata.index,
                                size_bytes = bytes.len(),
                                encode_ms = started.elapsed().as_millis() as u64,
                                "state snapshot encoded off the store thread"
                            );
                            // The detached maps are freed here too, not on
                            // the store thread.
                            drop(source);
                            bytes
                        }
                    };
                    let result = metadata
                        .get_conf_state()
                        .write_to_bytes()
                        .map_err(|e| StoreError::Corrupt(format!("conf state: {e}")))
                        .and_then(|conf| {
                            snapshots.save_snapshot(metadata.index, metadata.term, &conf, &state)
                        })
                        .map(|()| metadata.index)
                        .map_err(|e| e.to_string());
                    crate::metrics::observe_duration(
                        Histogram::SnapshotDuration,
                        started.elapsed(),
                    );
                    if done_tx.send(result).is_err() {
                        return;
                    }
                }
            })?;
        Ok(SnapshotWriter {
            jobs,
            done,
            in_flight: false,
            finished_meanwhile: None,
            thread: Some(thread),
        })
    }

    fn busy(&self) -> bool {
        self.in_flight
    }

    fn save_in_background(&mut self, metadata: SnapshotMetadata, state: SnapshotSource) -> bool {
        debug_assert!(!self.in_flight, "one background snapshot at a time");
        debug_assert_eq!(
            metadata.index,
            state.applied_index(),
            "a snapshot's metadata names the index its state was taken at"
        );
        self.in_flight = self
            .jobs
            .try_send((metadata, SnapshotPayload::Detached(Box::new(state))))
            .is_ok();
        self.in_flight
    }

    /// The index of a background snapshot that became durable, if one did.
    fn completed(&mut self) -> Option<u64> {
        if let Some(index) = self.finished_meanwhile.take() {
            return Some(index);
        }
        match self.done.try_recv() {
            Ok(result) => {
                self.in_flight = false;
                Self::report(result)
            }
            Err(_) => None,
        }
    }

    fn report(result: Result<u64, String>) -> Option<u64> {
        match result {
            Ok(index) => {
                tracing::debug!(index, "state snapshot durable");
                Some(index)
            }
            Err(e) => {
                tracing::error!("state snapshot failed (the log keeps its entries): {e}");
                None
            }
        }
    }

    /// Saves durably and returns only once the snapshot would survive a
    /// power cut (after any background write in progress).
    fn save_now(&mut self, metadata: &SnapshotMetadata, state: Vec<u8>) -> Result<(), StoreError> {
        let stopped = || StoreError::Raft("snapshot thread stopped".into());
        if self.in_flight {
            let result = self.done.recv().map_err(|_| stopped())?;
            self.in_flight = false;
            if let Some(index) = Self::report(result) {
                self.finished_meanwhile = Some(index);
            }
        }
        self.jobs
            .send((metadata.clone(), SnapshotPayload::Encoded(state)))
            .map_err(|_| stopped())?;
        match self.done.recv().map_err(|_| stopped())? {
            Ok(_) => Ok(()),
            Err(e) => Err(StoreError::Raft(format!(
                "saving an installed snapshot: {e}"
            ))),
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        // Closing the job channel ends the thread after its current write.
        let (closed, _) = crossbeam_channel::bounded(1);
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Commands for load generators and tests

/// The account that [`filler_command`]'s messages belong to; propose
/// [`filler_account_command`] once before them so they are accepted.
pub const FILLER_ACCOUNT: &str = "bench";

pub fn filler_account_command() -> Vec<u8> {
    Command::UpsertAccount(Account {
        name: FILLER_ACCOUNT.into(),
        password_hash: String::new(),
        max_binds: 0,
        throughput_per_s: 0,
        allowed_ips: Vec::new(),
        allowed_senders: Vec::new(),
        retention_s: 0,
        enabled: true,
        webhook_url: None,
        api_key_hash: None,
        webhook_secret: None,
        window: 0,
    })
    .encode()
}

/// Builds realistic `Accept` commands of a chosen encoded size quickly: the
/// payload length is worked out once, each command is then one encode.
pub struct FillerCommands {
    template: Accept,
}

impl FillerCommands {
    /// Commands whose encoding is `size_bytes` long (or as close as the fixed
    /// fields allow; ids and timestamps are varints, so a byte or two of drift).
    pub fn new(size_bytes: usize) -> FillerCommands {
        let mut template = Accept {
            id: filler_id(0, 0),
            account: FILLER_ACCOUNT.into(),
            source: Address {
                ton: 5,
                npi: 0,
                digits: "TERN".into(),
            },
            destination: Address {
                ton: 1,
                npi: 1,
                digits: "447700900123".into(),
            },
            data_coding: 0,
            esm_class: 0,
            protocol_id: 0,
            priority: 0,
            registered_delivery: 1,
            payload: Vec::new(),
            segment: None,
            received_at_ms: 1_700_000_000_000,
            validity_until_ms: None,
            owner_node: 1,
            client_ref: None,
            scheduled_at_ms: None,
        };
        // Varint lengths make the overhead depend on the payload size: converge.
        for _ in 0..4 {
            let encoded_len = Command::Accept(template.clone()).encode().len();
            if encoded_len == size_bytes {
                break;
            }
            let target = (template.payload.len() + size_bytes).saturating_sub(encoded_len);
            template.payload.resize(target, b'x');
        }
        FillerCommands { template }
    }

    /// The command for message (`worker`, `sequence`); ids are unique per pair.
    pub fn command(&mut self, worker: u64, sequence: u64) -> Vec<u8> {
        self.template.id = filler_id(worker, sequence);
        self.template.received_at_ms = 1_700_000_000_000 + sequence;
        // Encoding borrows the template through a temporary command; the
        // payload moves in and back out, so nothing is copied but the bytes
        // written.
        let command = Command::Accept(std::mem::replace(&mut self.template, empty_accept()));
        let bytes = command.encode();
        if let Command::Accept(accept) = command {
            self.template = accept;
        }
        bytes
    }
}

fn empty_accept() -> Accept {
    Accept {
        id: filler_id(0, 0),
        account: String::new(),
        source: Address {
            ton: 0,
            npi: 0,
            digits: String::new(),
        },
        destination: Address {
            ton: 0,
            npi: 0,
            digits: String::new(),
        },
        data_coding: 0,
        esm_class: 0,
        protocol_id: 0,
        priority: 0,
        registered_delivery: 0,
        payload: Vec::new(),
        segment: None,
        received_at_ms: 0,
        validity_until_ms: None,
        owner_node: 0,
        client_ref: None,
        scheduled_at_ms: None,
    }
}

/// The id of filler message (`worker`, `sequence`).
pub fn filler_id(worker: u64, sequence: u64) -> MessageId {
    MessageId::from_parts(1, worker.wrapping_add(1), 0, sequence)
        .or_else(|| MessageId::from_parts(1, 1, 0, sequence))
        .unwrap_or_else(|| unreachable!("small ids are always representable"))
}

/// A command of `size_bytes` that travels the whole replication path but
/// changes no state (removing a route that does not exist): isolates the cost
/// of consensus, log and batching from the cost of a growing state.
pub fn no_op_command(size_bytes: usize) -> Vec<u8> {
    let mut name = String::new();
    for _ in 0..4 {
        let encoded_len = Command::RemoveRoute { name: name.clone() }.encode().len();
        if encoded_len == size_bytes {
            break;
        }
        let target = (name.len() + size_bytes).saturating_sub(encoded_len);
        name = "n".repeat(target);
    }
    Command::RemoveRoute { name }.encode()
}

/// One filler command; see [`FillerCommands`] to make many.
pub fn filler_command(worker: u64, sequence: u64, size_bytes: usize) -> Vec<u8> {
    FillerCommands::new(size_bytes).command(worker, sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tern-driver-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn single_node(dir: &Path) -> Store {
        let mut config = StoreConfig::new(
            1,
            "127.0.0.1:0".parse().unwrap(),
            dir.to_path_buf(),
            b"driver unit test shared secret!!".to_vec(),
        );
        config.tick_interval_ms = 10;
        Store::start(config).unwrap()
    }

    fn accepted_count(handle: &StoreHandle) -> usize {
        handle
            .query_blocking(|state: &AppState| state.message_count())
            .unwrap()
    }

    /// Polls a future to completion on this thread, parking between wake-ups:
    /// enough to show the async API resolves through its waker.
    fn block_on<F: Future>(future: F) -> F::Output {
        use std::task::{Context, Poll, Wake, Waker};
        struct Unpark(thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        let mut context = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            match future.as_mut().poll(&mut context) {
                Poll::Ready(output) => return output,
                Poll::Pending => thread::park_timeout(Duration::from_secs(1)),
            }
        }
    }

    /// The store thread answers a proposal and drops its end of the reply
    /// channel at once, while the waiting task may be polled at any moment
    /// (hyper polls a request's future on every wake of its connection).
    /// A poll that finds the channel empty, then the sender gone, must still
    /// take the answer: flume 0.10 reported `Disconnected` there, which the
    /// HTTP API answered as 503 `store_unavailable` for a committed message
    /// (about 1 in 3,000 replies in this loop, 1 in 137k requests under load).
    #[test]
    fn an_answer_sent_as_the_store_drops_its_end_is_never_lost() {
        use std::task::{Context, Poll, Waker};
        const REPLIES: u64 = 100_000;
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<flume::Sender<ProposeResult>>();
        let answering = thread::spawn(move || {
            for (i, reply) in jobs_rx.iter().enumerate() {
                // A varying delay lands the send at every point of a poll.
                for _ in 0..i % 64 {
                    std::hint::spin_loop();
                }
                let _ = reply.send(Ok(ApplyOutcome::Applied));
            }
        });
        let mut context = Context::from_waker(Waker::noop());
        let mut lost = 0;
        for _ in 0..REPLIES {
            let (reply, rx) = flume::bounded(1);
            jobs_tx.send(reply).unwrap();
            let mut outcome = std::pin::pin!(PendingReply { rx }.outcome());
            // Polled without waiting for a wake-up: every poll is "spurious".
            let result = loop {
                if let Poll::Ready(result) = outcome.as_mut().poll(&mut context) {
                    break result;
                }
            };
            if result != Ok(ApplyOutcome::Applied) {
                lost += 1;
            }
        }
        drop(jobs_tx);
        answering.join().unwrap();
        assert_eq!(
            lost, 0,
            "answers taken for a stopped store out of {REPLIES}"
        );
    }

    #[test]
    fn async_propose_and_query_resolve_through_their_wakers() {
        let dir = temp_dir("async");
        let store = single_node(&dir);
        let handle = store.handle();
        assert_eq!(
            block_on(handle.propose(filler_account_command())),
            Ok(ApplyOutcome::Applied)
        );
        let futures: Vec<_> = (0..50)
            .map(|i| handle.propose(filler_command(2, i, 200)))
            .collect();
        for future in futures {
            assert!(matches!(block_on(future), Ok(ApplyOutcome::Accepted(_))));
        }
        let count = block_on(handle.query(|state: &AppState| state.message_count()));
        assert_eq!(count, Ok(50));
        store.shutdown().unwrap();
        // A stopped store answers at once instead of hanging.
        assert_eq!(
            block_on(handle.propose(filler_command(2, 99, 200))),
            Err(ProposeError::Stopped)
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_op_command_has_the_requested_size() {
        for size in [50, 200, 1000] {
            let bytes = no_op_command(size);
            assert_eq!(bytes.len(), size);
            assert!(matches!(
                Command::decode(&bytes),
                Ok(Command::RemoveRoute { .. })
            ));
        }
    }

    #[test]
    fn filler_command_has_the_requested_size_and_decodes() {
        for size in [120, 200, 300] {
            let mut commands = FillerCommands::new(size);
            for sequence in [0, 1, 1 << 20, 1 << 40] {
                let bytes = commands.command(3, sequence);
                assert!(
                    bytes.len().abs_diff(size) <= 4,
                    "{} for {size}",
                    bytes.len()
                );
                match Command::decode(&bytes) {
                    Ok(Command::Accept(accept)) => assert_eq!(accept.id, filler_id(3, sequence)),
                    other => panic!("filler did not decode: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn account_watchers_are_told_before_the_reply() {
        let dir = temp_dir("accounts");
        let store = single_node(&dir);
        let handle = store.handle();
        let first = handle.watch_accounts();
        let second = handle.watch_accounts();
        assert!(!first.has_news());
        assert_eq!(
            handle.propose_blocking(filler_account_command()),
            Ok(ApplyOutcome::Applied)
        );
        // The reply came after apply: both watchers already see the change.
        for watcher in [&first, &second] {
            assert!(watcher.has_news());
            let mut seen = Vec::new();
            watcher.drain(|change| seen.push(change));
            assert_eq!(seen, vec![AccountChange::Account(FILLER_ACCOUNT.into())]);
            assert!(!watcher.has_news());
        }
        // Messages are not account changes.
        assert!(matches!(
            handle.propose_blocking(filler_command(0, 1, 200)),
            Ok(ApplyOutcome::Accepted(_))
        ));
        assert!(!first.has_news());
        drop(second);
        let removal = Command::RemoveAccount {
            name: FILLER_ACCOUNT.into(),
        };
        assert_eq!(
            handle.propose_blocking(removal.encode()),
            Ok(ApplyOutcome::Applied)
        );
        assert_eq!(
            block_on(first.next()),
            Some(AccountChange::Account(FILLER_ACCOUNT.into()))
        );
        store.shutdown().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn single_voter_commits_and_recovers_after_restart() {
        let dir = temp_dir("restart");
        let store = single_node(&dir);
        let handle = store.handle();
        assert_eq!(
            handle.propose_blocking(filler_account_command()),
            Ok(ApplyOutcome::Applied)
        );
        let pending: Vec<PendingReply> = (0..500)
            .map(|i| handle.try_propose(filler_command(0, i, 200)).unwrap())
            .collect();
        for reply in pending {
            assert!(matches!(reply.wait(), Ok(ApplyOutcome::Accepted(_))));
        }
        assert_eq!(accepted_count(&handle), 500);
        // Each accepted message is handed to its owner (this node) to submit.
        let dispatches: Vec<Effect> = handle.dispatch_effects().receiver().try_iter().collect();
        assert_eq!(dispatches.len(), 500);
        assert!(dispatches
            .iter()
            .all(|e| matches!(e, Effect::Dispatch { node: 1, .. })));
        assert!(!handle.dispatch_effects().take_lost());
        assert!(handle.delivery_effects().receiver().is_empty());
        store.shutdown().unwrap();

        let store = single_node(&dir);
        let handle = store.handle();
        let deadline = Instant::now() + Duration::from_secs(10);
        while accepted_count(&handle) < 500 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(accepted_count(&handle), 500);
        // The same ids are duplicates now: the state came back, not just the count.
        let again = handle.propose_blocking(filler_command(0, 7, 200));
        assert!(matches!(again, Ok(ApplyOutcome::Duplicate(_))), "{again:?}");
        store.shutdown().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
