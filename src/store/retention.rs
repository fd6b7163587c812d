//! Retention: what keeps the replicated in-memory state bounded, and the
//! node-local archive that finished messages move to.
//!
//! Owns: the leader's schedule of `Evict` (hot window) and `Purge` (long
//! retention) proposals (`RetentionSchedule`, pure: the store thread asks it
//! what to propose), the archive thread (writes removed messages to the
//! node's sled `MessageArchive`, prunes it, answers lookups) and the lookup
//! handle other modules call (`ArchiveHandle`). Must not touch: what the
//! commands do to the state (the state machine decides), raft (the driver
//! proposes what the schedule returns), or sessions.
//!
//! Why through the log: every replica must drop the same records at the same
//! index, or snapshots would differ. The clock is read here, by the proposer,
//! and travels in the command; two leaders proposing in a term change only
//! make the second command find less to do.
//!
//! Why off the store thread: the store thread hands whole `Message`s over a
//! bounded channel (a move, no copy) and goes on; encoding, sled writes and
//! freeing the records happen here. When the channel is full the records are
//! dropped and counted: the archive is a lookup convenience, never part of the
//! no-loss guarantee (the log and the replicated state are).

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::command::Command;
use super::id::MessageId;
use super::kv::{ArchivedMessage, KvStore, MessageArchive, SledStore};
use super::state::{AppState, Message};
use super::StoreError;

/// Retention settings of one node (from `[store]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// A finished message owing nothing leaves the hot state this long after
    /// it finished.
    pub hot_window_ms: u64,
    /// Anything finished, even owing a DLR, leaves this long after it was
    /// received (`Purge`).
    pub retention_ms: u64,
    /// Archived records are pruned this long after they were archived.
    pub archive_retention_ms: u64,
    /// Records one `Evict` drops at most: bounds the time one apply takes.
    pub evict_batch: u32,
    /// How often the leader proposes `Evict` while the backlog is below
    /// one batch (a full batch is followed at once by the next).
    pub evict_interval_ms: u64,
    pub purge_interval_ms: u64,
}

impl RetentionConfig {
    pub fn new(hot_window_s: u64, retention_s: u64, archive_retention_days: u64) -> Self {
        let hot_window_ms = hot_window_s.saturating_mul(1000);
        RetentionConfig {
            hot_window_ms,
            retention_ms: retention_s.saturating_mul(1000),
            archive_retention_ms: archive_retention_days.saturating_mul(24 * 3600 * 1000),
            evict_batch: 2_000,
            // A tenth of the window keeps the overshoot small; a second at
            // most keeps idle logs quiet and the log small.
            evict_interval_ms: (hot_window_ms / 10).clamp(100, 1_000),
            purge_interval_ms: 60_000,
        }
    }
}

/// The leader's retention proposals: when, and with which cut-offs.
#[derive(Debug)]
pub struct RetentionSchedule {
    config: RetentionConfig,
    next_evict_at_ms: u64,
    next_purge_at_ms: u64,
}

impl RetentionSchedule {
    pub fn new(config: RetentionConfig) -> RetentionSchedule {
        RetentionSchedule {
            config,
            next_evict_at_ms: 0,
            next_purge_at_ms: 0,
        }
    }

    /// The command to propose now, if any. Call only on the leader, and not
    /// while the previous one is still uncommitted.
    pub fn next(&mut self, now_ms: u64, state: &AppState) -> Option<Command> {
        if now_ms >= self.next_purge_at_ms {
            self.next_purge_at_ms = now_ms.saturating_add(self.config.purge_interval_ms);
            let before_ms = now_ms.saturating_sub(self.config.retention_ms);
            if before_ms > 0 {
                return Some(Command::Purge {
                    before_ms,
                    account: None,
                });
            }
        }
        if now_ms < self.next_evict_at_ms {
            return None;
        }
        let finished_before_ms = now_ms.saturating_sub(self.config.hot_window_ms);
        if !state.has_evictable(finished_before_ms) {
            self.next_evict_at_ms = now_ms.saturating_add(self.config.evict_interval_ms);
            return None;
        }
        let batch = self.config.evict_batch.max(1);
        // More than a batch waiting: the next one goes as soon as this one
        // commits, so eviction keeps up with any sustained load.
        let backlog = state
            .evictable_before(finished_before_ms)
            .nth(usize::try_from(batch).unwrap_or(usize::MAX))
            .is_some();
        self.next_evict_at_ms = if backlog {
            now_ms
        } else {
            now_ms.saturating_add(self.config.evict_interval_ms)
        };
        Some(Command::Evict {
            finished_before_ms,
            max: batch,
        })
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a lookup got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveLookupError {
    /// Too many lookups queued: try later.
    #[error("archive busy")]
    Busy,
    /// This node runs no archive, or it stopped.
    #[error("archive unavailable")]
    Unavailable,
    #[error("archive: {0}")]
    Failed(String),
}

pub type ArchiveLookup = Result<Option<ArchivedMessage>, ArchiveLookupError>;

struct LookupRequest {
    id: MessageId,
    reply: flume::Sender<ArchiveLookup>,
}

/// Counts of the archive thread, readable from any thread.
#[derive(Debug, Default)]
pub struct ArchiveCounters {
    pub archived: AtomicU64,
    pub pruned: AtomicU64,
    /// Records that never reached the archive (channel full or write failed).
    pub dropped: AtomicU64,
}

/// Finds messages that left the hot state. Cheap to clone, `Send`; lookups
/// run on the archive thread, so the futures never block an executor.
#[derive(Clone)]
pub struct ArchiveHandle {
    lookups: Sender<LookupRequest>,
    counters: Arc<ArchiveCounters>,
}

impl ArchiveHandle {
    /// The archived record of `id` on this node, if it still holds one.
    pub fn lookup(&self, id: MessageId) -> impl Future<Output = ArchiveLookup> + Send + 'static {
        let pending = self.send(id);
        async move {
            pending?
                .into_recv_async()
                .await
                .map_err(|_| ArchiveLookupError::Unavailable)?
        }
    }

    pub fn lookup_blocking(&self, id: MessageId) -> ArchiveLookup {
        self.send(id)?
            .recv()
            .map_err(|_| ArchiveLookupError::Unavailable)?
    }

    fn send(&self, id: MessageId) -> Result<flume::Receiver<ArchiveLookup>, ArchiveLookupError> {
        let (reply, rx) = flume::bounded(1);
        match self.lookups.try_send(LookupRequest { id, reply }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(ArchiveLookupError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(ArchiveLookupError::Unavailable),
        }
    }

    pub fn counters(&self) -> &ArchiveCounters {
        &self.counters
    }
}

/// The store thread's end: hands removed messages over without waiting.
pub struct ArchiveFeed {
    records: Sender<Vec<Arc<Message>>>,
    counters: Arc<ArchiveCounters>,
    last_warning: Option<Instant>,
}

impl ArchiveFeed {
    pub fn send(&mut self, batch: Vec<Arc<Message>>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        if let Err(e) = self.records.try_send(batch) {
            let total = self.counters.dropped.fetch_add(count, Ordering::Relaxed) + count;
            let due = self
                .last_warning
                .map_or(true, |at| at.elapsed() >= WARNING_INTERVAL);
            if due {
                self.last_warning = Some(Instant::now());
                let reason = match e {
                    TrySendError::Full(_) => "archive behind",
                    TrySendError::Disconnected(_) => "archive stopped",
                };
                tracing::warn!(
                    dropped_total = total,
                    "{reason}: finished messages left the state without being archived"
                );
            }
        }
    }
}

/// The archive thread; joins when the feed is dropped (the store stopped).
pub struct ArchiveWorker {
    thread: Option<JoinHandle<()>>,
}

impl ArchiveWorker {
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("archive thread panicked");
            }
        }
    }
}

/// Batches of removed messages queued towards the archive thread.
const FEED_CAPACITY_BATCHES: usize = 256;
const LOOKUP_QUEUE_CAPACITY: usize = 4096;
/// Records pruned per sled batch: keeps each write and each pause short.
const PRUNE_BATCH: usize = 1_000;
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
const WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// sled page cache of the archive: lookups are rare, writes sequential.
const ARCHIVE_CACHE_BYTES: u64 = 64 << 20;

/// Opens (or creates) the archive in `dir` and starts its thread.
pub fn start_archive(
    dir: &Path,
    archive_retention_ms: u64,
    node_id: u64,
) -> Result<(ArchiveFeed, ArchiveHandle, ArchiveWorker), StoreError> {
    std::fs::create_dir_all(dir)?;
    let archive = MessageArchive::new(SledStore::open_with_cache(dir, ARCHIVE_CACHE_BYTES)?);
    let (records_tx, records) = crossbeam_channel::bounded(FEED_CAPACITY_BATCHES);
    let (lookups_tx, lookups) = crossbeam_channel::bounded(LOOKUP_QUEUE_CAPACITY);
    let counters = Arc::new(ArchiveCounters::default());
    let worker_counters = Arc::clone(&counters);
    let thread = thread::Builder::new()
        .name(format!("tern-archive-{node_id}"))
        .spawn(move || {
            ArchiveLoop {
                archive,
                records,
                lookups,
                counters: worker_counters,
                archive_retention_ms,
                next_prune: Instant::now(),
            }
            .run()
        })?;
    Ok((
        ArchiveFeed {
            records: records_tx,
            counters: Arc::clone(&counters),
            last_warning: None,
        },
        ArchiveHandle {
            lookups: lookups_tx,
            counters,
        },
        ArchiveWorker {
            thread: Some(thread),
        },
    ))
}

struct ArchiveLoop {
    archive: MessageArchive<SledStore>,
    records: Receiver<Vec<Arc<Message>>>,
    lookups: Receiver<LookupRequest>,
    counters: Arc<ArchiveCounters>,
    archive_retention_ms: u64,
    next_prune: Instant,
}

impl ArchiveLoop {
    fn run(mut self) {
        loop {
            let timeout = self.next_prune.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(self.lookups) -> request => {
                    if let Ok(request) = request {
                        self.answer(request);
                    }
                }
                recv(self.records) -> batch => match batch {
                    Ok(batch) => self.write(&batch),
                    // The store thread is gone: nothing more will come.
                    Err(_) => break,
                },
                default(timeout) => {}
            }
            if Instant::now() >= self.next_prune {
                self.prune();
            }
        }
        if let Err(e) = self.archive.store().sync() {
            tracing::warn!("archive not flushed at shutdown: {e}");
        }
    }

    fn answer(&self, request: LookupRequest) {
        let result = self
            .archive
            .get(request.id)
            .map_err(|e| ArchiveLookupError::Failed(e.to_string()));
        let _ = request.reply.send(result);
    }

    fn write(&self, batch: &[Arc<Message>]) {
        // Lookups waiting go first: a batch write takes milliseconds.
        while let Ok(request) = self.lookups.try_recv() {
            self.answer(request);
        }
        let records: Vec<ArchivedMessage> = batch
            .iter()
            .map(|m| ArchivedMessage::from_message(m))
            .collect();
        match self.archive.archive(&records, unix_now_ms()) {
            Ok(count) => {
                self.counters
                    .archived
                    .fetch_add(count as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters
                    .dropped
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                tracing::warn!(records = records.len(), "archive write failed: {e}");
            }
        }
    }

    /// One bounded batch per call; the next call comes at once while more
    /// is due (after the channels were served), else after the interval.
    fn prune(&mut self) {
        let before_ms = unix_now_ms().saturating_sub(self.archive_retention_ms);
        match self.archive.prune(before_ms, PRUNE_BATCH) {
            Ok(pruned) => {
                self.counters
                    .pruned
                    .fetch_add(pruned as u64, Ordering::Relaxed);
                self.next_prune = if pruned == PRUNE_BATCH {
                    Instant::now()
                } else {
                    Instant::now() + PRUNE_INTERVAL
                };
            }
            Err(e) => {
                tracing::warn!("archive pruning failed: {e}");
                self.next_prune = Instant::now() + PRUNE_INTERVAL;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::command::tests::sample_accept;
    use crate::store::command::{Account, Receipt};
    use crate::store::StateMachine;

    fn config() -> RetentionConfig {
        RetentionConfig {
            hot_window_ms: 1_000,
            retention_ms: 100_000,
            archive_retention_ms: 1_000_000,
            evict_batch: 2,
            evict_interval_ms: 500,
            purge_interval_ms: 60_000,
        }
    }

    /// A state with `count` messages delivered (no DLR asked) at `done_at_ms`.
    fn finished_state(count: u64, done_at_ms: u64) -> AppState {
        let mut commands = vec![Command::UpsertAccount(Account {
            name: "acme".into(),
            password_hash: "h".into(),
            max_binds: 0,
            throughput_per_s: 0,
            allowed_ips: vec![],
            allowed_senders: vec![],
            retention_s: 0,
            enabled: true,
            webhook_url: None,
            api_key_hash: None,
            webhook_secret: None,
            window: 0,
        })];
        for n in 0..count {
            let mut accept = sample_accept();
            accept.id = MessageId::from_parts(1, 1, 0, n).unwrap();
            accept.registered_delivery = 0;
            commands.push(Command::Accept(accept.clone()));
            commands.push(Command::Submitted {
                id: accept.id,
                connector: "op1".into(),
                upstream_id: format!("U{n}"),
                at_ms: done_at_ms,
            });
            commands.push(Command::Receipt(Receipt {
                connector: "op1".into(),
                upstream_id: format!("U{n}"),
                state: 2,
                err: 0,
                done_at_ms,
                raw: None,
            }));
        }
        let encoded: Vec<Vec<u8>> = commands.iter().map(Command::encode).collect();
        let slices: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let mut state = AppState::new();
        state.apply(1, &slices);
        state
    }

    #[test]
    fn purge_first_then_evict_only_past_the_window() {
        let state = finished_state(1, 10_000);
        let mut schedule = RetentionSchedule::new(config());
        // Before the clock passed the retention, no purge cut-off exists.
        assert_eq!(schedule.next(10_500, &state), None);
        let mut schedule = RetentionSchedule::new(config());
        assert_eq!(
            schedule.next(200_000, &state),
            Some(Command::Purge {
                before_ms: 100_000,
                account: None
            })
        );
        assert_eq!(
            schedule.next(200_000, &state),
            Some(Command::Evict {
                finished_before_ms: 199_000,
                max: 2
            })
        );
        // Not a full batch: the next round waits for the interval.
        assert_eq!(schedule.next(200_100, &state), None);
        assert!(schedule.next(200_500, &state).is_some());
        // Within the window nothing is due; the purge waits its interval.
        let mut schedule = RetentionSchedule::new(config());
        schedule.next(10_900, &state);
        assert_eq!(schedule.next(10_900, &state), None);
        assert_eq!(schedule.next(11_100, &state), None);
        assert!(schedule.next(11_400, &state).is_some());
    }

    #[test]
    fn a_backlog_is_evicted_batch_after_batch() {
        let state = finished_state(5, 10_000);
        let mut schedule = RetentionSchedule::new(config());
        schedule.next_purge_at_ms = u64::MAX;
        for _ in 0..3 {
            assert!(matches!(
                schedule.next(20_000, &state),
                Some(Command::Evict { max: 2, .. })
            ));
        }
    }

    #[test]
    fn archive_thread_archives_answers_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = finished_state(3, 10_000);
        state.keep_removed();
        let evict = Command::Evict {
            finished_before_ms: u64::MAX,
            max: 10,
        }
        .encode();
        state.apply(2, &[evict.as_slice()]);
        let mut removed = Vec::new();
        state.drain_removed(&mut removed);
        assert_eq!(removed.len(), 3);
        let ids: Vec<MessageId> = removed.iter().map(|m| m.id()).collect();
        let (mut feed, handle, worker) = start_archive(dir.path(), 1_000_000, 1).unwrap();
        feed.send(removed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.counters().archived.load(Ordering::Relaxed) < 3 {
            assert!(Instant::now() < deadline, "archive thread wrote nothing");
            thread::sleep(Duration::from_millis(10));
        }
        for id in &ids {
            let record = handle.lookup_blocking(*id).unwrap().expect("archived");
            assert_eq!(record.state, crate::store::state::MessageState::Delivered);
            assert_eq!(record.connector.as_deref(), Some("op1"));
        }
        let unknown = MessageId::from_parts(7, 7, 7, 7).unwrap();
        assert_eq!(handle.lookup_blocking(unknown), Ok(None));
        drop(feed);
        worker.join();
        assert_eq!(
            handle.lookup_blocking(ids[0]),
            Err(ArchiveLookupError::Unavailable)
        );
        // Reopened, the records are still there.
        let (_feed, handle, _worker) = start_archive(dir.path(), 1_000_000, 1).unwrap();
        assert!(handle.lookup_blocking(ids[2]).unwrap().is_some());
    }
}
