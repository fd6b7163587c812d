//! The I/O-free raft core: events in, actions out.
//!
//! Owns: the raft-rs `RawNode` and an in-memory copy of the log tail it reads
//! through `raft::Storage` ([`MemLog`]), proposal batching (group commit: every
//! proposal made since the last [`RaftCore::ready`] travels in ONE raft entry),
//! matching replies to this node's own proposals by request id, applying
//! committed entries to the state machine, membership changes, snapshot
//! generation and installation, and choosing the log compaction point.
//!
//! Must not touch: files, sockets, clocks or threads. The driver (production or
//! simulated) owns the durable log, the transport and time: it feeds ticks,
//! peer messages and proposals in, and executes the [`Actions`] that come out in
//! the order documented there.
//!
//! Persistence model: raft-rs's asynchronous form. Each `ready()` hands out the
//! entries and hard state to append; the core marks them written into its
//! in-memory log at once (`advance_append_async`), so the next batch can form
//! and replicate while the driver's fsync is in flight. Once the driver has
//! synced everything up to the [`Actions::number`] it calls
//! [`RaftCore::persisted`]; only then do that action's `persisted_messages` go
//! out and does the local copy count toward the commit quorum. Committed
//! entries handed to the state machine are always already synced locally
//! (raft-rs caps them at the persisted index).

use std::cell::Cell;
use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    HardState, Message, Snapshot, SnapshotMetadata,
};
use raft::{GetEntriesContext, RaftState, RawNode, SnapshotStatus, StateRole, Storage};

use super::wal::Recovered;
use super::{StateMachine, StoreError};

// Batch envelope (the data of every normal entry this core proposes), all
// integers little-endian:
//   u8 version (1) | u64 origin node | u64 origin incarnation | u64 batch seq |
//   u32 count | count x (u64 request id | u32 length | command bytes)
// Any other entry data (the leader's empty entry, a future version, garbage)
// is applied as an entry without commands.

/// Version byte that opens every batch envelope; a newer binary keeps reading
/// older versions, an unknown version is applied as an empty entry.
const ENVELOPE_VERSION: u8 = 1;
/// version (1) + origin node (8) + origin incarnation (8) + batch sequence (8) + count (4).
const ENVELOPE_HEADER_BYTES: usize = 29;
/// Offset of the command count, patched in when the batch is sealed.
const ENVELOPE_COUNT_OFFSET: usize = 25;
/// request id (8) + command length (4).
const RECORD_HEADER_BYTES: usize = 12;

/// Tunables of one node's core. Ticks are whatever period the driver chooses.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's raft id (never 0).
    pub id: u64,
    /// Distinguishes this process lifetime from earlier ones of the same node
    /// id, so an entry proposed before a restart is never matched to a proposal
    /// made after it. The driver picks a value it never reuses (e.g. a boot
    /// counter kept next to the log, or the start time in nanoseconds).
    pub incarnation: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Election timeouts are drawn from `[min, max)` ticks; `None` is raft's
    /// `[election_ticks, 2 * election_ticks)`. raft-rs draws them from its
    /// thread-local RNG, so a simulation that must replay exactly from a seed
    /// gives each node a seeded one-tick range (`(t, t + 1)`), which makes the
    /// draw deterministic while nodes still differ.
    pub election_timeout_range_ticks: Option<(usize, usize)>,
    /// A batch is sealed early once its envelope reaches this size.
    pub max_batch_bytes: usize,
    /// Proposals accepted but not yet answered; beyond this `propose` answers
    /// `Retry(Busy)` at once, which keeps every queue bounded.
    pub max_pending_proposals: usize,
    /// A proposal not applied after this many ticks is answered `Retry(Timeout)`
    /// (covers a forwarded batch lost on the network with no term change).
    pub proposal_timeout_ticks: u64,
    /// Entries kept behind the applied index when compacting, so a briefly
    /// lagging follower catches up from the log instead of a snapshot.
    pub compact_keep_entries: u64,
    /// Compaction is only reported once it would drop at least this many
    /// entries, so the driver does not rewrite log metadata on every ready.
    pub compact_min_entries: u64,
    /// A learner is promoted once its matched index is within this many entries
    /// of the leader's last index.
    pub learner_catch_up_entries: u64,
    pub max_size_per_msg_bytes: u64,
    /// Committed entries handed to the state machine per ready (a restart
    /// replaying a long log applies it in slices, not in one allocation).
    pub max_apply_bytes_per_ready: u64,
    /// Proposed but uncommitted bytes a leader holds before it refuses new
    /// batches (`Retry(Dropped)`): bounds memory while followers lag.
    pub max_uncommitted_bytes: u64,
    pub max_inflight_msgs: usize,
    pub check_quorum: bool,
    pub pre_vote: bool,
}

impl CoreConfig {
    /// Defaults suited to a 3-node LAN cluster ticking every ~100 ms.
    pub fn new(id: u64, incarnation: u64) -> Self {
        CoreConfig {
            id,
            incarnation,
            election_ticks: 10,
            heartbeat_ticks: 2,
            election_timeout_range_ticks: None,
            max_batch_bytes: 1 << 20,
            max_pending_proposals: 1 << 20,
            proposal_timeout_ticks: 50,
            compact_keep_entries: 1_000,
            compact_min_entries: 256,
            learner_catch_up_entries: 64,
            max_size_per_msg_bytes: 1 << 20,
            max_apply_bytes_per_ready: 16 << 20,
            max_uncommitted_bytes: 256 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
        }
    }
}

/// What the driver recovered before starting the core: the durable raft log's
/// contents (the fields of the log's `Recovered`) plus, when it has one, the
/// metadata it saved next to the durable state snapshot.
#[derive(Debug, Clone, Default)]
pub struct LogStart {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    /// Entries after `snapshot_index`, contiguous and ascending.
    pub entries: Vec<Entry>,
    /// Metadata saved with the durable state snapshot. Needed only when the
    /// state machine is ahead of the log: a crash after an installed snapshot's
    /// state was saved but before the log recorded it.
    pub state_snapshot: Option<SnapshotMetadata>,
}

impl LogStart {
    /// What `RaftLog::open` recovered, plus the metadata saved with the
    /// durable state snapshot (if any).
    pub fn from_recovered(recovered: Recovered, state_snapshot: Option<SnapshotMetadata>) -> Self {
        LogStart {
            hard_state: recovered.hard_state,
            conf_state: recovered.conf_state,
            snapshot_index: recovered.snapshot_index,
            snapshot_term: recovered.snapshot_term,
            entries: recovered.entries,
            state_snapshot,
        }
    }

    /// True when nothing was ever recorded (a node's very first start).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.snapshot_index == 0
            && self.hard_state == HardState::default()
            && self.conf_state == ConfState::default()
    }

    /// A brand-new node of a new cluster whose initial voters are `voters`.
    ///
    /// The membership is written as log entries (one AddNode per voter, term
    /// 1, identical on every bootstrapping node), not only as a conf state: a
    /// node that joins later and replays the log from index 1 must rebuild the
    /// same configuration. The hard state stays empty, which tells the core
    /// that these entries are not on disk yet; it hands them to the driver in
    /// its first [`Actions`], and they commit with the first leader's entry.
    ///
    /// A node that joins an existing cluster starts from an empty `LogStart`
    /// instead and learns everything from the leader.
    pub fn bootstrap(voters: &[u64]) -> Self {
        let conf_state = ConfState {
            voters: voters.to_vec(),
            ..ConfState::default()
        };
        let entries = (1u64..)
            .zip(voters)
            .map(|(index, id)| {
                let data = single_change(*id, ConfChangeType::AddNode)
                    .write_to_bytes()
                    .expect("a ConfChangeV2 always encodes");
                let mut entry = Entry {
                    term: 1,
                    index,
                    data: data.into(),
                    ..Entry::default()
                };
                entry.set_entry_type(EntryType::EntryConfChangeV2);
                entry
            })
            .collect();
        LogStart {
            conf_state,
            entries,
            ..LogStart::default()
        }
    }
}

/// Why a proposal must be proposed again. The command may still be applied
/// later (e.g. the old leader's entry survives into the new term): commands are
/// idempotent in the state machine (dedup by message id), so a retry is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// No leader is known; try again after an election.
    NoLeader,
    /// The term changed or the leader changed while the proposal was pending.
    LeaderChanged,
    /// raft refused the batch (e.g. a leader transfer is in progress).
    Dropped,
    /// Not applied within `proposal_timeout_ticks`.
    Timeout,
    /// Too many proposals pending.
    Busy,
    /// A snapshot replaced the log that the proposal was waiting in.
    SnapshotInstalled,
    /// The command alone exceeds `max_batch_bytes`; proposing it again fails
    /// the same way.
    TooLarge,
}

/// The outcome of one proposal made on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalResult<O> {
    /// Committed and applied at `index`; `output` is what apply returned.
    Committed {
        index: u64,
        output: O,
    },
    Retry(RetryReason),
}

/// A reply to the proposal with `request_id` (the id the caller gave `propose`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<O> {
    pub request_id: u64,
    pub result: ProposalResult<O>,
}

/// A log compaction point: the driver records it as the log's snapshot marker
/// (`log.set_snapshot(index, term, &conf_state)`) and then compacts the log up
/// to `index` (`log.compact(index)`).
#[derive(Debug, Clone, PartialEq)]
pub struct Compaction {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
}

/// The work one `ready()` call hands the driver. Execute in this order:
///
/// 1. send `messages` now (leader appends go out in parallel with its own fsync);
/// 2. if `installed_snapshot` is set, the state machine was just restored from
///    it: save the state machine durably with this metadata FIRST, then record
///    it in the log (`set_snapshot` + `compact(index)`) and drop every log
///    entry after it (the entries that follow in later actions replace them);
/// 3. append `entries`, write `hard_state` and `conf_state` if set; then, if
///    `must_sync` (or whenever the driver chooses to group several actions),
///    `sync()` the log;
/// 4. after the sync covering this action: send `persisted_messages` and call
///    [`RaftCore::persisted`] with `number`;
/// 5. deliver `replies`; apply `compaction` to the log whenever convenient.
///
/// Committed entries were already applied to the state machine inside
/// `ready()`: the action only reports the new `applied_index`.
#[derive(Debug)]
pub struct Actions<O> {
    /// raft-rs ready number; 0 when this action holds no raft ready.
    pub number: u64,
    pub messages: Vec<Message>,
    pub installed_snapshot: Option<SnapshotMetadata>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub conf_state: Option<ConfState>,
    pub must_sync: bool,
    pub persisted_messages: Vec<Message>,
    pub replies: Vec<Reply<O>>,
    pub compaction: Option<Compaction>,
    pub applied_index: u64,
}

impl<O> Default for Actions<O> {
    fn default() -> Self {
        Actions {
            number: 0,
            messages: Vec::new(),
            installed_snapshot: None,
            entries: Vec::new(),
            hard_state: None,
            conf_state: None,
            must_sync: false,
            persisted_messages: Vec::new(),
            replies: Vec::new(),
            compaction: None,
            applied_index: 0,
        }
    }
}

impl<O> Actions<O> {
    /// True when there is nothing to execute.
    pub fn is_empty(&self) -> bool {
        self.number == 0
            && self.messages.is_empty()
            && self.installed_snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.conf_state.is_none()
            && self.persisted_messages.is_empty()
            && self.replies.is_empty()
            && self.compaction.is_none()
    }
}

/// Counters and gauges for observability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreMetrics {
    pub term: u64,
    pub leader_id: u64,
    pub is_leader: bool,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub first_index: u64,
    pub pending_proposals: u64,
    /// Proposals sealed into batches since start.
    pub proposals_batched: u64,
    /// Batches (raft entries) proposed since start; proposals_batched /
    /// batches_proposed is the mean number of commands per entry.
    pub batches_proposed: u64,
    pub last_batch_proposals: u64,
    pub retries: u64,
    pub snapshots_built: u64,
    pub snapshots_installed: u64,
}

/// In-memory copy of the log tail that raft-rs reads through `raft::Storage`.
///
/// The durable copy lives in the driver's log; this one is filled from it at
/// start and kept in step by the core (appends from each ready, installs,
/// compaction).
struct MemLog {
    hard_state: HardState,
    conf_state: ConfState,
    /// The compaction point: entries up to here are gone.
    snapshot_index: u64,
    snapshot_term: u64,
    /// `entries[i].index == snapshot_index + 1 + i`.
    entries: VecDeque<Entry>,
    /// The latest state snapshot built for a follower that needs one.
    snapshot_cache: Option<Snapshot>,
    /// Set when raft asked for a snapshot that is not built yet; `snapshot()`
    /// takes `&self`, hence the cell.
    snapshot_wanted: Cell<bool>,
}

impl MemLog {
    fn new(start: &LogStart) -> Result<Self, StoreError> {
        for (expected, entry) in (start.snapshot_index + 1..).zip(&start.entries) {
            if entry.index != expected {
                return Err(StoreError::Corrupt(format!(
                    "recovered log is not contiguous: expected index {expected}, found {}",
                    entry.index
                )));
            }
        }
        Ok(MemLog {
            hard_state: start.hard_state.clone(),
            conf_state: start.conf_state.clone(),
            snapshot_index: start.snapshot_index,
            snapshot_term: start.snapshot_term,
            entries: start.entries.iter().cloned().collect(),
            snapshot_cache: None,
            snapshot_wanted: Cell::new(false),
        })
    }

    fn first(&self) -> u64 {
        self.snapshot_index + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index {
            return None;
        }
        let offset = usize::try_from(index - self.first()).ok()?;
        self.entries.get(offset).map(|e| e.term)
    }

    /// Appends entries from a ready; an entry at an index already present
    /// replaces that suffix (raft's conflict resolution).
    fn append(&mut self, new_entries: &[Entry]) {
        let Some(first_new) = new_entries.first() else {
            return;
        };
        assert!(
            first_new.index > self.snapshot_index && first_new.index <= self.last() + 1,
            "raft appended index {} outside ({}, {}]",
            first_new.index,
            self.snapshot_index,
            self.last() + 1
        );
        let keep = (first_new.index - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend(new_entries.iter().cloned());
    }

    /// Drops entries up to and including `index` (which must be in the log).
    fn compact(&mut self, index: u64) {
        if index <= self.snapshot_index {
            return;
        }
        let Some(term) = self.term_of(index) else {
            debug_assert!(false, "compaction point {index} is past the last index");
            return;
        };
        let drop_count = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop_count.min(self.entries.len()));
        self.snapshot_index = index;
        self.snapshot_term = term;
        if self
            .snapshot_cache
            .as_ref()
            .is_some_and(|s| s.get_metadata().index < index)
        {
            self.snapshot_cache = None;
        }
    }

    /// Replaces the whole log with an installed snapshot.
    fn install(&mut self, meta: &SnapshotMetadata) {
        self.entries.clear();
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.conf_state = meta.get_conf_state().clone();
        if self.hard_state.commit < meta.index {
            self.hard_state.commit = meta.index;
        }
        self.snapshot_cache = None;
    }
}

fn store_err(e: raft::StorageError) -> raft::Error {
    raft::Error::Store(e)
}

impl Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(store_err(raft::StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(store_err(raft::StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let start = (low - self.first()) as usize;
        let end = (high - self.first()) as usize;
        let mut out = Vec::with_capacity(end - start);
        let mut size: u64 = 0;
        for entry in self.entries.range(start..end) {
            size = size.saturating_add(u64::from(entry.compute_size()));
            // raft requires at least one entry even if it alone is too big.
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snapshot_index {
            return Err(store_err(raft::StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or_else(|| store_err(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot_cache {
            Some(snap)
                if snap.get_metadata().index >= request_index
                    && snap.get_metadata().index >= self.snapshot_index =>
            {
                Ok(snap.clone())
            }
            _ => {
                // Built by the core (which owns the state machine) at the next
                // ready; raft retries on the follower's next heartbeat response.
                self.snapshot_wanted.set(true);
                Err(store_err(
                    raft::StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

/// A batch sealed into a raft entry whose commands still await their reply.
struct PendingBatch {
    seq: u64,
    proposed_tick: u64,
    request_ids: Vec<u64>,
}

/// Commands decoded from one entry's envelope, borrowing the entry's bytes.
struct DecodedBatch<'a> {
    origin_node: u64,
    origin_incarnation: u64,
    seq: u64,
    request_ids: Vec<u64>,
    commands: Vec<&'a [u8]>,
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let raw = bytes.get(at..at.checked_add(8)?)?;
    let mut buf = [0u8; 8];
    buf.copy_from_slice(raw);
    Some(u64::from_le_bytes(buf))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    let mut buf = [0u8; 4];
    buf.copy_from_slice(raw);
    Some(u32::from_le_bytes(buf))
}

/// Decodes a batch envelope; `None` for anything malformed (never panics).
fn decode_batch(data: &[u8]) -> Option<DecodedBatch<'_>> {
    if *data.first()? != ENVELOPE_VERSION {
        return None;
    }
    let origin_node = read_u64(data, 1)?;
    let origin_incarnation = read_u64(data, 9)?;
    let seq = read_u64(data, 17)?;
    let count = read_u32(data, ENVELOPE_COUNT_OFFSET)? as usize;
    // Every record needs at least its header, which bounds `count` by the data.
    if count > (data.len() - ENVELOPE_HEADER_BYTES) / RECORD_HEADER_BYTES {
        return None;
    }
    let mut request_ids = Vec::with_capacity(count);
    let mut commands = Vec::with_capacity(count);
    let mut at = ENVELOPE_HEADER_BYTES;
    for _ in 0..count {
        let request_id = read_u64(data, at)?;
        let len = read_u32(data, at + 8)? as usize;
        let start = at + RECORD_HEADER_BYTES;
        let end = start.checked_add(len)?;
        commands.push(data.get(start..end)?);
        request_ids.push(request_id);
        at = end;
    }
    if at != data.len() {
        return None;
    }
    Some(DecodedBatch {
        origin_node,
        origin_incarnation,
        seq,
        request_ids,
        commands,
    })
}

/// The raft node of one replica, free of I/O. See the module header.
///
/// A driver's loop, in outline:
///
/// ```text
/// start:   (log, recovered) = RaftLog::open(..); restore the state machine from
///          its durable snapshot (if any); start = LogStart::from_recovered(..),
///          or LogStart::bootstrap(voters) for a new cluster's empty node;
///          core = RaftCore::new(config, start, sm)
/// loop:    feed inputs: core.propose(request_id, bytes) / core.step(msg) /
///          core.tick() every tick / core.report_snapshot(..)
///          while core.has_ready():
///              a = core.ready()?        // seals the batch, applies commits
///              execute `a` in the order documented on `Actions`
///              (sync now, or keep `a.number` + `a.persisted_messages` until
///              a later sync covers them, then send them and
///              core.persisted(a.number))
///          now and then: save the state machine durably at
///          core.applied_snapshot_metadata(), then
///          core.set_durable_snapshot_index(index)
/// ```
pub struct RaftCore<SM: StateMachine> {
    raw: RawNode<MemLog>,
    sm: SM,
    config: CoreConfig,
    /// Envelope being filled by `propose`; sealed at the next `ready()`.
    open_batch: Vec<u8>,
    open_request_ids: Vec<u64>,
    next_batch_seq: u64,
    /// Sealed batches awaiting apply, ascending by `seq`.
    pending: VecDeque<PendingBatch>,
    pending_count: usize,
    replies: Vec<Reply<SM::Output>>,
    applied_index: u64,
    /// Highest index the state machine holds durably (driver-reported).
    durable_snapshot_index: u64,
    /// Leadership as last observed, to fail pending proposals on change.
    observed_term: u64,
    observed_leader: u64,
    ticks: u64,
    /// Learners to promote once caught up, with the tick of the last attempt.
    promotions: Vec<(u64, Option<u64>)>,
    /// Conf state to hand the driver at the next ready.
    unreported_conf_state: Option<ConfState>,
    /// Snapshot metadata to hand the driver at the next ready (start-up repair).
    unreported_install: Option<SnapshotMetadata>,
    /// Entries the core started with that may not be on disk (bootstrap).
    unreported_entries: Vec<Entry>,
    metrics: CoreMetrics,
}

impl<SM: StateMachine> RaftCore<SM> {
    /// Starts the core from the recovered log and a state machine already
    /// restored from its durable state (at `sm.applied_index()`).
    pub fn new(config: CoreConfig, start: LogStart, sm: SM) -> Result<Self, StoreError> {
        if config.id == 0 {
            return Err(StoreError::Raft("node id 0 is reserved".into()));
        }
        let mut log = MemLog::new(&start)?;
        let state_applied = sm.applied_index();
        let mut unreported_install = None;
        if state_applied > log.last() {
            // Crash between saving an installed snapshot's state and syncing the
            // log: the state snapshot's metadata stands in for the log's marker.
            let meta = match &start.state_snapshot {
                Some(meta) if meta.index == state_applied => meta.clone(),
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "state machine applied index {state_applied} is past the log's last \
                         index {} and no matching state snapshot metadata was given",
                        log.last()
                    )))
                }
            };
            log.install(&meta);
            unreported_install = Some(meta);
        } else if state_applied < log.snapshot_index {
            return Err(StoreError::Corrupt(format!(
                "state machine applied index {state_applied} is behind the log's snapshot at {}: \
                 restore a newer state snapshot",
                log.snapshot_index
            )));
        }
        // The commit index is persisted lazily; what the state machine applied
        // was certainly committed. It never exceeds the log (raft-rs would
        // panic): lowering it is always safe, the leader repeats it.
        let known_committed = state_applied.max(log.snapshot_index);
        if log.hard_state.commit < known_committed {
            log.hard_state.commit = known_committed;
        }
        if log.hard_state.commit > log.last() {
            log.hard_state.commit = log.last();
        }
        // Entries with a never-written hard state come from `bootstrap` (or a
        // log whose hard state record was torn off): write them (again).
        let unreported_entries = if log.hard_state.term == 0 {
            log.entries.iter().cloned().collect()
        } else {
            Vec::new()
        };
        let applied = state_applied.max(log.snapshot_index);
        let (min_election_tick, max_election_tick) =
            config.election_timeout_range_ticks.unwrap_or((0, 0));
        let raft_config = raft::Config {
            id: config.id,
            min_election_tick,
            max_election_tick,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            max_size_per_msg: config.max_size_per_msg_bytes,
            max_committed_size_per_ready: config.max_apply_bytes_per_ready,
            max_uncommitted_size: config.max_uncommitted_bytes,
            max_inflight_msgs: config.max_inflight_msgs,
            check_quorum: config.check_quorum,
            pre_vote: config.pre_vote,
            ..raft::Config::default()
        };
        raft_config
            .validate()
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        let initial_conf = log.conf_state.clone();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config, log, &logger)
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        let observed_term = raw.raft.term;
        let observed_leader = raw.raft.leader_id;
        let mut core = RaftCore {
            raw,
            sm,
            open_batch: Vec::new(),
            open_request_ids: Vec::new(),
            next_batch_seq: 1,
            pending: VecDeque::new(),
            pending_count: 0,
            replies: Vec::new(),
            applied_index: applied,
            durable_snapshot_index: state_applied,
            observed_term,
            observed_leader,
            ticks: 0,
            promotions: Vec::new(),
            unreported_conf_state: (initial_conf != ConfState::default()).then_some(initial_conf),
            unreported_install,
            unreported_entries,
            metrics: CoreMetrics::default(),
            config,
        };
        core.refresh_metrics();
        Ok(core)
    }

    /// Queues a command; it is sealed with every other command proposed before
    /// the next `ready()` into one raft entry. The answer arrives as a
    /// [`Reply`] with this `request_id` in some later [`Actions::replies`];
    /// the caller keeps request ids unique among its pending proposals.
    pub fn propose(&mut self, request_id: u64, command: &[u8]) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            self.retry_one(request_id, RetryReason::NoLeader);
            return;
        }
        if self.pending_count + self.open_request_ids.len() >= self.config.max_pending_proposals {
            self.retry_one(request_id, RetryReason::Busy);
            return;
        }
        let record_bytes = RECORD_HEADER_BYTES + command.len();
        let Some(len) = u32::try_from(command.len())
            .ok()
            .filter(|_| ENVELOPE_HEADER_BYTES + record_bytes <= self.config.max_batch_bytes)
        else {
            self.retry_one(request_id, RetryReason::TooLarge);
            return;
        };
        // Seal first rather than overflow: an entry never exceeds the limit.
        if !self.open_batch.is_empty()
            && self.open_batch.len() + record_bytes > self.config.max_batch_bytes
        {
            self.seal_batch();
        }
        if self.open_batch.is_empty() {
            self.open_batch
                .reserve(ENVELOPE_HEADER_BYTES + record_bytes);
            self.open_batch.push(ENVELOPE_VERSION);
            self.open_batch
                .extend_from_slice(&self.config.id.to_le_bytes());
            self.open_batch
                .extend_from_slice(&self.config.incarnation.to_le_bytes());
            self.open_batch
                .extend_from_slice(&self.next_batch_seq.to_le_bytes());
            self.open_batch.extend_from_slice(&0u32.to_le_bytes());
        }
        self.open_batch.extend_from_slice(&request_id.to_le_bytes());
        self.open_batch.extend_from_slice(&len.to_le_bytes());
        self.open_batch.extend_from_slice(command);
        self.open_request_ids.push(request_id);
    }

    /// Feeds a message from a peer. Messages raft rejects (unknown peer,
    /// local-only types) are dropped: the network may carry anything.
    pub fn step(&mut self, message: Message) {
        // raft-rs steps an unknown sender's non-response message as well; a
        // message whose sender is this node itself can only be forged or looped.
        if message.from == self.config.id || message.to != self.config.id {
            return;
        }
        let _ = self.raw.step(message);
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.raw.tick();
        self.expire_pending();
        self.drive_promotions();
    }

    /// Reports that the driver's log synced everything handed out up to and
    /// including the action with this `number`.
    pub fn persisted(&mut self, number: u64) {
        if number == 0 {
            return;
        }
        self.raw.on_persist_ready(number);
    }

    /// Starts an election now (e.g. a single voter at start, or a test).
    pub fn campaign(&mut self) -> Result<(), StoreError> {
        self.raw
            .campaign()
            .map_err(|e| StoreError::Raft(e.to_string()))
    }

    /// Asks the leader (this node) to hand leadership to `transferee`.
    pub fn transfer_leader(&mut self, transferee: u64) {
        self.raw.transfer_leader(transferee);
    }

    /// Proposes a membership change (single-step changes only recommended:
    /// add/remove voter, add learner, promote). Only a leader can propose.
    pub fn propose_conf_change(&mut self, change: ConfChangeV2) -> Result<(), StoreError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(StoreError::Raft("not the leader".into()));
        }
        self.raw
            .propose_conf_change(Vec::new(), change)
            .map_err(|e| StoreError::Raft(e.to_string()))
    }

    /// Adds `id` as a learner and promotes it to voter once it has caught up.
    /// Does nothing for a node that is already a voter (adding it as a
    /// learner would demote it).
    pub fn add_voter_via_learner(&mut self, id: u64) -> Result<(), StoreError> {
        if self.raw.store().conf_state.voters.contains(&id) {
            return Ok(());
        }
        let is_learner = self.raw.store().conf_state.learners.contains(&id);
        if !is_learner {
            self.propose_conf_change(single_change(id, ConfChangeType::AddLearnerNode))?;
        }
        self.promote_when_caught_up(id);
        Ok(())
    }

    /// Promotes learner `id` once its matched index is within
    /// `learner_catch_up_entries` of the leader's last index; checked every tick
    /// while this node leads.
    pub fn promote_when_caught_up(&mut self, id: u64) {
        if !self.promotions.iter().any(|(p, _)| *p == id) {
            self.promotions.push((id, None));
        }
    }

    /// Removes `id` from the configuration (voter or learner).
    /// The leader refuses to remove itself: transfer leadership first, so
    /// the group never waits out an election for a leader that left.
    pub fn remove_node(&mut self, id: u64) -> Result<(), StoreError> {
        if id == self.config.id {
            return Err(StoreError::Raft(
                "the leader cannot remove itself: transfer leadership first".into(),
            ));
        }
        self.promotions.retain(|(p, _)| *p != id);
        self.propose_conf_change(single_change(id, ConfChangeType::RemoveNode))
    }

    /// Tells raft a message to `id` could not be delivered.
    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    /// Tells raft whether a snapshot message to `id` was delivered; required
    /// for every sent `MsgSnapshot`, or the follower stays paused.
    pub fn report_snapshot(&mut self, id: u64, delivered: bool) {
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id, status);
    }

    /// The driver saved the state machine durably as of `index`: the log may be
    /// compacted up to there (minus the kept tail).
    pub fn set_durable_snapshot_index(&mut self, index: u64) {
        debug_assert!(
            index <= self.applied_index,
            "durable snapshot {index} is past applied {}",
            self.applied_index
        );
        if index > self.durable_snapshot_index {
            self.durable_snapshot_index = index;
        }
    }

    /// Metadata describing the state machine as it stands (applied index, its
    /// term, the applied configuration): save it with a durable state snapshot.
    pub fn applied_snapshot_metadata(&self) -> SnapshotMetadata {
        let store = self.raw.store();
        let mut meta = SnapshotMetadata {
            index: self.applied_index,
            term: store.term_of(self.applied_index).unwrap_or(0),
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(store.conf_state.clone());
        meta
    }

    /// True when `ready()` would return a non-empty action.
    pub fn has_ready(&self) -> bool {
        !self.open_request_ids.is_empty()
            || !self.replies.is_empty()
            || self.raw.store().snapshot_wanted.get()
            || self.unreported_conf_state.is_some()
            || self.unreported_install.is_some()
            || !self.unreported_entries.is_empty()
            || self.leadership_changed()
            || self.raw.has_ready()
    }

    /// Seals the open batch into a raft entry, applies what committed, and
    /// returns everything the driver must do (see [`Actions`]).
    ///
    /// An error means the state machine refused an installed snapshot: this
    /// replica cannot continue and the driver must stop it.
    pub fn ready(&mut self) -> Result<Actions<SM::Output>, StoreError> {
        self.seal_batch();
        if self.raw.store().snapshot_wanted.replace(false) {
            self.build_snapshot();
        }
        let mut actions = Actions {
            installed_snapshot: self.unreported_install.take(),
            entries: std::mem::take(&mut self.unreported_entries),
            ..Actions::default()
        };
        actions.must_sync = !actions.entries.is_empty();
        if self.raw.has_ready() {
            let mut rd = self.raw.ready();
            actions.number = rd.number();
            actions.messages = rd.take_messages();
            let installed = if rd.snapshot().is_empty() {
                None
            } else {
                let snapshot = rd.snapshot().clone();
                self.install_snapshot(&snapshot)?;
                Some(snapshot.get_metadata().clone())
            };
            let entries = rd.take_entries();
            self.raw.mut_store().append(&entries);
            if installed.is_some() {
                // The snapshot supersedes whatever was still unreported.
                actions.entries.clear();
            }
            actions.entries.extend(entries);
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().hard_state = hs.clone();
                actions.hard_state = Some(hs.clone());
            }
            actions.must_sync |= rd.must_sync();
            actions.persisted_messages = rd.take_persisted_messages();
            let committed = rd.take_committed_entries();
            self.raw.advance_append_async(rd);
            if let Some(meta) = &installed {
                // raft-rs reads the log from its applied index on (e.g. when
                // campaigning), and the installed snapshot replaced everything
                // up to its index: raft's applied index must move to it now,
                // which raft only allows once the snapshot counts as persisted.
                // Marking it so early is safe: the state machine already holds
                // it, nothing this node says about it leaves before the
                // driver's sync (those are persisted messages), and every
                // earlier unsynced ready is superseded by the snapshot.
                self.raw.on_persist_ready(actions.number);
                actions.installed_snapshot = Some(meta.clone());
            }
            for entry in &committed {
                self.apply_entry(entry);
            }
            if self.applied_index > self.raw.raft.raft_log.applied {
                self.raw.advance_apply_to(self.applied_index);
            }
        }
        self.check_leadership();
        actions.conf_state = self.unreported_conf_state.take();
        actions.compaction = self.choose_compaction();
        actions.applied_index = self.applied_index;
        actions.replies = std::mem::take(&mut self.replies);
        self.refresh_metrics();
        Ok(actions)
    }

    /// The state machine, for queries. Mutation happens only through the log.
    pub fn state_machine(&self) -> &SM {
        &self.sm
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The known leader, or 0.
    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The configuration as last applied on this node.
    pub fn conf_state(&self) -> &ConfState {
        &self.raw.store().conf_state
    }

    /// The matched index of peer `id` as the leader sees it (None elsewhere).
    pub fn peer_matched(&self, id: u64) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        self.raw.raft.prs().get(id).map(|p| p.matched)
    }

    pub fn metrics(&self) -> &CoreMetrics {
        &self.metrics
    }

    fn refresh_metrics(&mut self) {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        self.metrics.term = raft.term;
        self.metrics.leader_id = raft.leader_id;
        self.metrics.is_leader = raft.state == StateRole::Leader;
        self.metrics.commit_index = raft.raft_log.committed;
        self.metrics.applied_index = self.applied_index;
        self.metrics.last_index = store.last();
        self.metrics.first_index = store.first();
        self.metrics.pending_proposals = (self.pending_count + self.open_request_ids.len()) as u64;
    }

    fn retry_one(&mut self, request_id: u64, reason: RetryReason) {
        self.metrics.retries += 1;
        self.replies.push(Reply {
            request_id,
            result: ProposalResult::Retry(reason),
        });
    }

    fn retry_batch(&mut self, batch: PendingBatch, reason: RetryReason) {
        self.pending_count -= batch.request_ids.len();
        for request_id in batch.request_ids {
            self.retry_one(request_id, reason);
        }
    }

    fn retry_all_pending(&mut self, reason: RetryReason) {
        while let Some(batch) = self.pending.pop_front() {
            self.retry_batch(batch, reason);
        }
        debug_assert_eq!(self.pending_count, 0, "pending count out of step");
    }

    /// Proposes the open envelope as one raft entry.
    fn seal_batch(&mut self) {
        if self.open_request_ids.is_empty() {
            return;
        }
        let count = self.open_request_ids.len() as u32;
        self.open_batch[ENVELOPE_COUNT_OFFSET..ENVELOPE_HEADER_BYTES]
            .copy_from_slice(&count.to_le_bytes());
        // The next batch starts at this one's size: entries keep their
        // buffer's spare capacity, so reserving the high-water mark for every
        // batch would pin memory in the in-memory log.
        let next_capacity = self.open_batch.len();
        let data = std::mem::replace(&mut self.open_batch, Vec::with_capacity(next_capacity));
        let request_ids = std::mem::take(&mut self.open_request_ids);
        let seq = self.next_batch_seq;
        self.next_batch_seq += 1;
        let batch = PendingBatch {
            seq,
            proposed_tick: self.ticks,
            request_ids,
        };
        self.pending_count += batch.request_ids.len();
        self.metrics.proposals_batched += u64::from(count);
        self.metrics.batches_proposed += 1;
        self.metrics.last_batch_proposals = u64::from(count);
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => self.pending.push_back(batch),
            Err(raft::Error::ProposalDropped) => {
                let reason = if self.raw.raft.leader_id == raft::INVALID_ID {
                    RetryReason::NoLeader
                } else {
                    RetryReason::Dropped
                };
                self.retry_batch(batch, reason);
            }
            Err(_) => self.retry_batch(batch, RetryReason::Dropped),
        }
    }

    fn leadership_changed(&self) -> bool {
        self.raw.raft.term != self.observed_term || self.raw.raft.leader_id != self.observed_leader
    }

    /// A pending entry may be overwritten once the term or leader changes:
    /// answer every pending proposal with Retry rather than risk silence.
    fn check_leadership(&mut self) {
        if self.leadership_changed() {
            self.observed_term = self.raw.raft.term;
            self.observed_leader = self.raw.raft.leader_id;
            self.retry_all_pending(RetryReason::LeaderChanged);
        }
    }

    fn expire_pending(&mut self) {
        while let Some(front) = self.pending.front() {
            if front.proposed_tick + self.config.proposal_timeout_ticks > self.ticks {
                break;
            }
            if let Some(batch) = self.pending.pop_front() {
                self.retry_batch(batch, RetryReason::Timeout);
            }
        }
    }

    fn drive_promotions(&mut self) {
        if self.promotions.is_empty() {
            return;
        }
        let conf = self.raw.store().conf_state.clone();
        // Done once the applied configuration lists it as a voter.
        self.promotions.retain(|(id, _)| !conf.voters.contains(id));
        if !self.is_leader() {
            return;
        }
        let last_index = self.raw.raft.raft_log.last_index();
        let retry_ticks = self.config.election_ticks as u64;
        let now = self.ticks;
        let mut to_propose = Vec::new();
        for (id, last_try) in &mut self.promotions {
            if !conf.learners.contains(id) {
                continue;
            }
            if last_try.is_some_and(|t| now < t + retry_ticks) {
                continue;
            }
            let matched = self.raw.raft.prs().get(*id).map_or(0, |p| p.matched);
            if matched + self.config.learner_catch_up_entries >= last_index {
                *last_try = Some(now);
                to_propose.push(*id);
            }
        }
        for id in to_propose {
            // A refusal (e.g. another change still pending) is retried later.
            let _ = self.propose_conf_change(single_change(id, ConfChangeType::AddNode));
        }
    }

    fn build_snapshot(&mut self) {
        let data = self.sm.snapshot();
        debug_assert_eq!(
            self.sm.applied_index(),
            self.applied_index,
            "state machine and core disagree on the applied index"
        );
        let meta = self.applied_snapshot_metadata();
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(meta);
        snapshot.data = data.into();
        self.raw.mut_store().snapshot_cache = Some(snapshot);
        self.metrics.snapshots_built += 1;
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        self.sm.restore(meta.index, &snapshot.data)?;
        self.raw.mut_store().install(meta);
        self.applied_index = meta.index;
        self.durable_snapshot_index = self.durable_snapshot_index.min(meta.index);
        self.unreported_conf_state = Some(meta.get_conf_state().clone());
        self.metrics.snapshots_installed += 1;
        // Whatever this node proposed is either inside the snapshot or lost;
        // neither can be answered precisely.
        self.retry_all_pending(RetryReason::SnapshotInstalled);
        Ok(())
    }

    fn apply_entry(&mut self, entry: &Entry) {
        debug_assert_eq!(
            entry.index,
            self.applied_index + 1,
            "committed entries must arrive in order"
        );
        match entry.get_entry_type() {
            EntryType::EntryNormal => self.apply_normal(entry),
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                self.apply_conf_change(entry);
                let _ = self.sm.apply(entry.index, &[]);
            }
        }
        self.applied_index = entry.index;
    }

    fn apply_normal(&mut self, entry: &Entry) {
        let Some(batch) = decode_batch(&entry.data) else {
            // The leader's empty entry at a new term, or bytes this version
            // cannot read: the index still advances on every replica alike.
            let _ = self.sm.apply(entry.index, &[]);
            return;
        };
        let outputs = self.sm.apply(entry.index, &batch.commands);
        debug_assert_eq!(
            outputs.len(),
            batch.commands.len(),
            "state machine must return one output per command"
        );
        if batch.origin_node != self.config.id
            || batch.origin_incarnation != self.config.incarnation
        {
            return;
        }
        let Ok(position) = self.pending.binary_search_by_key(&batch.seq, |b| b.seq) else {
            // Already answered (retried after a leader change) or duplicated.
            return;
        };
        let Some(pending) = self.pending.remove(position) else {
            return;
        };
        self.pending_count -= pending.request_ids.len();
        let mut outputs = outputs.into_iter();
        for request_id in batch.request_ids {
            let result = match outputs.next() {
                Some(output) => ProposalResult::Committed {
                    index: entry.index,
                    output,
                },
                None => ProposalResult::Retry(RetryReason::Dropped),
            };
            self.replies.push(Reply { request_id, result });
        }
    }

    fn apply_conf_change(&mut self, entry: &Entry) {
        let change = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_bytes(&entry.data).ok()
        } else {
            ConfChange::parse_from_bytes(&entry.data)
                .ok()
                .map(|cc| single_change(cc.node_id, cc.get_change_type()))
        };
        let Some(change) = change else {
            return;
        };
        // A change raft refuses (e.g. removing the last voter) is refused
        // identically on every replica, so skipping it keeps them equal.
        if let Ok(conf_state) = self.raw.apply_conf_change(&change) {
            self.raw.mut_store().conf_state = conf_state.clone();
            self.unreported_conf_state = Some(conf_state);
        }
    }

    fn choose_compaction(&mut self) -> Option<Compaction> {
        let target = self.durable_snapshot_index.min(self.applied_index).min(
            self.applied_index
                .saturating_sub(self.config.compact_keep_entries),
        );
        let store = self.raw.store();
        if target < store.snapshot_index + self.config.compact_min_entries.max(1) {
            return None;
        }
        let term = store.term_of(target)?;
        let conf_state = store.conf_state.clone();
        self.raw.mut_store().compact(target);
        Some(Compaction {
            index: target,
            term,
            conf_state,
        })
    }
}

/// A single-step ConfChangeV2 (no joint consensus).
pub fn single_change(id: u64, change_type: ConfChangeType) -> ConfChangeV2 {
    let mut single = ConfChangeSingle {
        node_id: id,
        ..ConfChangeSingle::default()
    };
    single.set_change_type(change_type);
    let mut change = ConfChangeV2::default();
    change.mut_changes().push(single);
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every applied command; output is the command's position in the
    /// applied history, so tests can see exactly what was applied where.
    #[derive(Default)]
    struct Recorder {
        applied: u64,
        commands: Vec<(u64, Vec<u8>)>,
    }

    impl StateMachine for Recorder {
        type Output = usize;
        fn apply(&mut self, index: u64, commands: &[&[u8]]) -> Vec<usize> {
            self.applied = index;
            commands
                .iter()
                .map(|c| {
                    self.commands.push((index, c.to_vec()));
                    self.commands.len()
                })
                .collect()
        }
        fn applied_index(&self) -> u64 {
            self.applied
        }
        fn snapshot(&self) -> Vec<u8> {
            self.applied.to_le_bytes().to_vec()
        }
        fn restore(&mut self, index: u64, _snapshot: &[u8]) -> Result<(), StoreError> {
            self.applied = index;
            self.commands.clear();
            Ok(())
        }
    }

    /// Counts commands only; for measuring the core, not the state machine.
    #[derive(Default)]
    struct Counter {
        applied: u64,
        commands: u64,
    }

    impl StateMachine for Counter {
        type Output = u64;
        fn apply(&mut self, index: u64, commands: &[&[u8]]) -> Vec<u64> {
            self.applied = index;
            commands
                .iter()
                .map(|_| {
                    self.commands += 1;
                    self.commands
                })
                .collect()
        }
        fn applied_index(&self) -> u64 {
            self.applied
        }
        fn snapshot(&self) -> Vec<u8> {
            self.commands.to_le_bytes().to_vec()
        }
        fn restore(&mut self, index: u64, _snapshot: &[u8]) -> Result<(), StoreError> {
            self.applied = index;
            Ok(())
        }
    }

    /// Runs a single voter: every ready is "synced" at once.
    fn settle<SM: StateMachine>(core: &mut RaftCore<SM>, replies: &mut Vec<Reply<SM::Output>>) {
        for _ in 0..20 {
            if !core.has_ready() {
                return;
            }
            let actions = core.ready().expect("recorder never fails");
            replies.extend(actions.replies);
            core.persisted(actions.number);
        }
        panic!("single voter did not settle");
    }

    fn single_voter() -> RaftCore<Recorder> {
        single_voter_with(Recorder::default())
    }

    fn single_voter_with<SM: StateMachine>(sm: SM) -> RaftCore<SM> {
        let mut core = RaftCore::new(CoreConfig::new(1, 7), LogStart::bootstrap(&[1]), sm)
            .expect("valid start");
        core.campaign().expect("campaign");
        let mut replies = Vec::new();
        settle(&mut core, &mut replies);
        assert!(core.is_leader(), "a single voter elects itself");
        core
    }

    #[test]
    fn single_voter_commits_a_batch_in_one_entry_and_replies_by_request_id() {
        let mut core = single_voter();
        let before = core.metrics().batches_proposed;
        core.propose(42, b"a");
        core.propose(7, b"bb");
        core.propose(1000, b"");
        let mut replies = Vec::new();
        settle(&mut core, &mut replies);
        assert_eq!(core.metrics().batches_proposed, before + 1);
        let mut got: Vec<(u64, usize)> = replies
            .iter()
            .map(|r| match r.result {
                ProposalResult::Committed { output, .. } => (r.request_id, output),
                ProposalResult::Retry(reason) => panic!("unexpected retry {reason:?}"),
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![(7, 2), (42, 1), (1000, 3)]);
        let sm = core.state_machine();
        assert_eq!(sm.commands.len(), 3);
        assert!(sm.commands.iter().all(|(i, _)| *i == sm.commands[0].0));
        assert_eq!(core.metrics().pending_proposals, 0);
    }

    #[test]
    fn proposal_without_leader_is_retried_at_once() {
        let mut core = RaftCore::new(
            CoreConfig::new(2, 1),
            LogStart::bootstrap(&[1, 2, 3]),
            Recorder::default(),
        )
        .expect("valid start");
        core.propose(5, b"x");
        let actions = core.ready().expect("ready");
        assert_eq!(
            actions.replies,
            vec![Reply {
                request_id: 5,
                result: ProposalResult::Retry(RetryReason::NoLeader)
            }]
        );
    }

    #[test]
    fn nothing_commits_before_the_driver_reports_the_sync() {
        let mut core = single_voter();
        core.propose(1, b"x");
        let actions = core.ready().expect("ready");
        assert_eq!(actions.entries.len(), 1);
        assert!(actions.must_sync);
        // A second ready before the sync: nothing committed, nothing applied.
        let again = core.ready().expect("ready");
        assert!(again.replies.is_empty());
        assert!(core.state_machine().commands.is_empty());
        core.persisted(actions.number);
        let mut replies = Vec::new();
        settle(&mut core, &mut replies);
        assert_eq!(replies.len(), 1);
    }

    #[test]
    fn pending_proposals_time_out_with_retry() {
        let mut core = single_voter();
        core.propose(9, b"x");
        let actions = core.ready().expect("ready");
        assert!(actions.replies.is_empty());
        // Never report the sync: the entry cannot commit.
        let mut replies = Vec::new();
        for _ in 0..core.config.proposal_timeout_ticks {
            core.tick();
            let actions = core.ready().expect("ready");
            replies.extend(actions.replies);
        }
        assert_eq!(
            replies,
            vec![Reply {
                request_id: 9,
                result: ProposalResult::Retry(RetryReason::Timeout)
            }]
        );
    }

    #[test]
    fn envelope_decoding_rejects_every_truncation_and_garbage() {
        let mut core = single_voter();
        core.propose(3, b"hello");
        core.propose(4, b"world!");
        let actions = core.ready().expect("ready");
        let data = actions
            .entries
            .iter()
            .find(|e| !e.data.is_empty())
            .map(|e| e.data.to_vec())
            .expect("batch entry");
        let batch = decode_batch(&data).expect("valid envelope");
        assert_eq!(batch.origin_node, 1);
        assert_eq!(batch.origin_incarnation, 7);
        assert_eq!(batch.request_ids, vec![3, 4]);
        assert_eq!(batch.commands, vec![&b"hello"[..], &b"world!"[..]]);
        for cut in 0..data.len() {
            assert!(decode_batch(&data[..cut]).is_none(), "cut at {cut}");
        }
        let mut huge_count = data.clone();
        huge_count[ENVELOPE_COUNT_OFFSET..ENVELOPE_HEADER_BYTES]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_batch(&huge_count).is_none());
        let mut trailing = data;
        trailing.push(0);
        assert!(decode_batch(&trailing).is_none());
    }

    #[test]
    fn mem_log_replaces_suffix_and_compacts() {
        let entry = |index, term| Entry {
            index,
            term,
            ..Entry::default()
        };
        let mut log = MemLog::new(&LogStart::default()).expect("empty");
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        log.append(&[entry(2, 2)]);
        assert_eq!(log.last(), 2);
        assert_eq!(log.term(2).ok(), Some(2));
        log.compact(1);
        assert_eq!(log.first(), 2);
        assert_eq!(log.term(1).ok(), Some(1));
        assert!(log.term(0).is_err());
        assert!(log
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .is_err());
        assert!(log
            .entries(2, 4, None, GetEntriesContext::empty(false))
            .is_err());
        let got = log
            .entries(2, 3, None, GetEntriesContext::empty(false))
            .expect("in range");
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn oversized_command_is_refused_and_batches_stay_under_the_limit() {
        let mut config = CoreConfig::new(1, 1);
        config.max_batch_bytes = 200;
        let mut core = RaftCore::new(config, LogStart::bootstrap(&[1]), Recorder::default())
            .expect("valid start");
        core.campaign().expect("campaign");
        let mut replies = Vec::new();
        settle(&mut core, &mut replies);
        core.propose(1, &[0u8; 200]);
        for id in 2..12 {
            core.propose(id, &[7u8; 50]);
        }
        let actions = core.ready().expect("ready");
        assert_eq!(
            actions.replies,
            vec![Reply {
                request_id: 1,
                result: ProposalResult::Retry(RetryReason::TooLarge)
            }]
        );
        let batches: Vec<&Entry> = actions
            .entries
            .iter()
            .filter(|e| !e.data.is_empty())
            .collect();
        assert!(
            batches.len() >= 4,
            "ten 62-byte records cannot share a 200-byte entry"
        );
        assert!(batches.iter().all(|e| e.data.len() <= 200));
    }

    /// Delivers every message between in-memory cores until quiet.
    fn route(cores: &mut [RaftCore<Recorder>], replies: &mut Vec<(u64, Reply<usize>)>) {
        for _ in 0..200 {
            let mut mail = Vec::new();
            for core in cores.iter_mut() {
                while core.has_ready() {
                    let actions = core.ready().expect("ready");
                    mail.extend(actions.messages);
                    mail.extend(actions.persisted_messages);
                    replies.extend(actions.replies.into_iter().map(|r| (core.id(), r)));
                    core.persisted(actions.number);
                }
            }
            if mail.is_empty() {
                return;
            }
            for message in mail {
                if let Some(core) = cores.iter_mut().find(|c| c.id() == message.to) {
                    core.step(message);
                }
            }
        }
        panic!("cluster did not go quiet");
    }

    #[test]
    fn a_new_term_answers_every_pending_proposal_with_retry() {
        let mut cores: Vec<RaftCore<Recorder>> = (1..=3)
            .map(|id| {
                // No leader lease, so that node 3 can win an election at once.
                let mut config = CoreConfig::new(id, 1);
                config.check_quorum = false;
                config.pre_vote = false;
                RaftCore::new(config, LogStart::bootstrap(&[1, 2, 3]), Recorder::default())
                    .expect("valid start")
            })
            .collect();
        let mut replies = Vec::new();
        cores[0].campaign().expect("campaign");
        route(&mut cores, &mut replies);
        assert!(cores[0].is_leader());
        // Follower 2 forwards, leader 1 proposes; neither message is routed.
        cores[1].propose(21, b"via follower");
        cores[0].propose(11, b"at leader");
        for core in cores.iter_mut() {
            let actions = core.ready().expect("ready");
            core.persisted(actions.number);
        }
        // Node 3 takes over at a higher term before anything was delivered.
        cores[2].campaign().expect("campaign");
        route(&mut cores, &mut replies);
        assert!(cores[2].is_leader());
        let mut answered: Vec<(u64, u64, ProposalResult<usize>)> = replies
            .into_iter()
            .map(|(node, r)| (node, r.request_id, r.result))
            .collect();
        answered.sort_by_key(|(node, id, _)| (*node, *id));
        assert_eq!(
            answered,
            vec![
                (1, 11, ProposalResult::Retry(RetryReason::LeaderChanged)),
                (2, 21, ProposalResult::Retry(RetryReason::LeaderChanged)),
            ]
        );
        assert!(cores.iter().all(|c| c.metrics().pending_proposals == 0));
    }

    #[test]
    fn bootstrap_entries_are_written_and_a_joining_node_rebuilds_the_membership() {
        let mut first = RaftCore::new(
            CoreConfig::new(1, 1),
            LogStart::bootstrap(&[1]),
            Recorder::default(),
        )
        .expect("valid start");
        let actions = first.ready().expect("ready");
        assert_eq!(
            actions.entries.len(),
            1,
            "bootstrap membership goes to disk"
        );
        assert!(actions.must_sync);
        first.persisted(actions.number);
        first.campaign().expect("campaign");
        let joiner = RaftCore::new(
            CoreConfig::new(2, 1),
            LogStart::default(),
            Recorder::default(),
        )
        .expect("valid start");
        let mut cores = vec![first, joiner];
        let mut replies = Vec::new();
        route(&mut cores, &mut replies);
        cores[0].propose(1, b"data before the join");
        route(&mut cores, &mut replies);
        cores[0].add_voter_via_learner(2).expect("leader");
        for _ in 0..20 {
            for core in cores.iter_mut() {
                core.tick();
            }
            route(&mut cores, &mut replies);
        }
        for core in &cores {
            let mut voters = core.conf_state().voters.clone();
            voters.sort_unstable();
            assert_eq!(voters, vec![1, 2], "node {}", core.id());
            assert!(core.conf_state().learners.is_empty());
        }
        assert_eq!(cores[1].state_machine().commands.len(), 1);
        // Re-adding a voter must not demote it; the leader cannot remove itself.
        let leader = if cores[0].is_leader() { 0 } else { 1 };
        let other = cores[1 - leader].id();
        cores[leader].add_voter_via_learner(other).expect("no-op");
        let leader_id = cores[leader].id();
        assert!(cores[leader].remove_node(leader_id).is_err());
        route(&mut cores, &mut replies);
        for core in &cores {
            assert!(core.conf_state().learners.is_empty(), "node {}", core.id());
        }
    }

    proptest::proptest! {
        #[test]
        fn envelope_decoding_never_panics_and_round_trips(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            commands in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                1..8,
            ),
        ) {
            let _ = decode_batch(&garbage);
            let mut core = single_voter();
            for (id, command) in commands.iter().enumerate() {
                core.propose(id as u64, command);
            }
            let actions = core.ready().expect("ready");
            let data = actions
                .entries
                .iter()
                .find(|e| !e.data.is_empty())
                .map(|e| e.data.to_vec())
                .expect("batch entry");
            let batch = decode_batch(&data).expect("own envelope decodes");
            let decoded: Vec<Vec<u8>> = batch.commands.iter().map(|c| c.to_vec()).collect();
            proptest::prop_assert_eq!(decoded, commands);
        }
    }

    /// Raw core throughput for one voter with an instant disk:
    /// `cargo test --release --lib store::node::tests::single_voter_throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn single_voter_throughput() {
        let mut core = single_voter_with(Counter::default());
        let command = [0x5au8; 200];
        let batch = 1_000u64;
        let rounds = 2_000u64;
        let mut committed = 0u64;
        let started = std::time::Instant::now();
        let mut next_id = 0u64;
        for _ in 0..rounds {
            for _ in 0..batch {
                next_id += 1;
                core.propose(next_id, &command);
            }
            for _ in 0..4 {
                let actions = core.ready().expect("ready");
                committed += actions.replies.len() as u64;
                core.persisted(actions.number);
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{committed} proposals of 200 bytes in {elapsed:.3} s: {:.0} proposals/s, {} per batch",
            committed as f64 / elapsed,
            batch
        );
        assert_eq!(committed, batch * rounds);
    }

    #[test]
    fn state_ahead_of_the_log_is_repaired_from_the_state_snapshot_metadata() {
        let sm = Recorder {
            applied: 10,
            commands: Vec::new(),
        };
        let mut meta = SnapshotMetadata {
            index: 10,
            term: 3,
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(LogStart::bootstrap(&[1, 2, 3]).conf_state);
        let mut start = LogStart::bootstrap(&[1, 2, 3]);
        // Without the metadata the gap cannot be bridged.
        assert!(matches!(
            RaftCore::new(
                CoreConfig::new(1, 1),
                start.clone(),
                Recorder {
                    applied: 10,
                    commands: Vec::new()
                }
            ),
            Err(StoreError::Corrupt(_))
        ));
        start.state_snapshot = Some(meta.clone());
        let mut core = RaftCore::new(CoreConfig::new(1, 1), start, sm).expect("repaired start");
        assert_eq!(core.applied_index(), 10);
        let actions = core.ready().expect("ready");
        assert_eq!(actions.installed_snapshot, Some(meta));
        assert_eq!(core.metrics().first_index, 11);
    }

    #[test]
    fn start_rejects_a_gap_between_state_and_log() {
        let mut start = LogStart::bootstrap(&[1]);
        start.snapshot_index = 10;
        start.snapshot_term = 2;
        let err = RaftCore::new(CoreConfig::new(1, 1), start, Recorder::default());
        assert!(matches!(err, Err(StoreError::Corrupt(_))));
    }
}
