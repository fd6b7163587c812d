//! The metrics registry: counters, gauges and histograms every module bumps,
//! and their Prometheus text exposition (format 0.0.4).
//!
//! Owns: the metric names and help texts, label interning with its caps, the
//! per-thread storage and the scrape that sums it. Must not touch: sockets
//! (the HTTP server serves [`render_prometheus`]), the store or sessions; the
//! modules it measures call in, never the other way round.
//!
//! Hot-path rule: recording a value takes no lock and writes no cache line
//! another thread writes. Each thread is given a shard of its own (a run of
//! whole cache lines, allocated on its first use) and bumps it with Relaxed
//! atomics; a scrape, from any thread, sums the shards. Label values are
//! interned into lock-free read tables: only the first sight of a new value
//! takes a mutex, once per value for the life of the process.
//!
//! Cardinality: account, connector, status and receipt-stat label values come
//! from configuration, replicated state or even an operator's bytes, so every
//! label dimension has a cap (1,000 accounts, for instance). Values beyond it
//! are counted under `other`: a scrape stays a few hundred kilobytes and the
//! per-thread storage a fixed size, whatever an operator or customer sends.

use std::borrow::Borrow;
use std::cell::Cell;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::smpp::CommandStatus;

/// The label value that stands for every value beyond a dimension's cap.
pub const OTHER_LABEL: &str = "other";
/// Distinct accounts with series of their own; one per configured account
/// is the expectation, a thousand is far beyond a single appliance.
pub const ACCOUNT_LABEL_CAP: usize = 1000;
/// Distinct connectors (operator links) with series of their own.
pub const CONNECTOR_LABEL_CAP: usize = 256;
/// Distinct command_status values; operators invent vendor codes.
pub const STATUS_LABEL_CAP: usize = 64;
/// Distinct receipt `stat:` values; the text comes from the operator.
pub const STAT_LABEL_CAP: usize = 32;
/// Distinct label pairs of one two-label family (account × status, ...):
/// bounds the product, which the per-dimension caps alone would not.
pub const PAIR_SERIES_CAP: usize = 2000;
/// Status codes of HTTP answers with a series of their own; any other code
/// counts under its class (`2xx` ... `5xx`), or `other` outside 100..=599.
pub const HTTP_CODES: [u16; 15] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 413, 422, 429, 500, 503,
];
const HTTP_CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Series per route of `tern_http_requests_total`: codes, classes, `other`.
const HTTP_CODE_SERIES: usize = HTTP_CODES.len() + HTTP_CODE_CLASSES.len() + 1;
/// Executors with a load series (one per core).
pub const EXECUTOR_CAP: usize = 256;
/// Threads with a shard of their own; further threads share one (still
/// correct, the cells are atomic, only no longer uncontended).
const MAX_SHARDS: usize = 64;
/// Probes before a lookup gives up on the lock-free path.
const MAX_PROBES: usize = 32;

/// Counters by account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountCounter {
    Accepted,
    Throttled,
    DlrsDelivered,
    MosDelivered,
}

impl AccountCounter {
    const ALL: [AccountCounter; 4] = [
        AccountCounter::Accepted,
        AccountCounter::Throttled,
        AccountCounter::DlrsDelivered,
        AccountCounter::MosDelivered,
    ];
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            AccountCounter::Accepted => (
                "tern_messages_accepted_total",
                "Customer messages committed and acknowledged with OK.",
            ),
            AccountCounter::Throttled => (
                "tern_messages_throttled_total",
                "Customer submits answered ESME_RTHROTTLED (rate or window).",
            ),
            AccountCounter::DlrsDelivered => (
                "tern_dlrs_delivered_total",
                "Delivery receipts the customer acknowledged.",
            ),
            AccountCounter::MosDelivered => (
                "tern_mos_delivered_total",
                "Mobile-originated messages the customer acknowledged.",
            ),
        }
    }
}

/// Families with two labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairFamily {
    Rejected,
    SubmitFailed,
    Receipts,
    BindsOpen,
}

impl PairFamily {
    const ALL: [PairFamily; 4] = [
        PairFamily::Rejected,
        PairFamily::SubmitFailed,
        PairFamily::Receipts,
        PairFamily::BindsOpen,
    ];
}

/// Unlabelled counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    MessagesFailed,
    MessagesExpired,
    Fsyncs,
    WebhookAttempts,
    WebhookSuccesses,
    WebhookFailures,
    BindsRevoked,
    WebhookDropped,
}

impl Counter {
    const ALL: [Counter; 8] = [
        Counter::MessagesFailed,
        Counter::MessagesExpired,
        Counter::Fsyncs,
        Counter::WebhookAttempts,
        Counter::WebhookSuccesses,
        Counter::WebhookFailures,
        Counter::BindsRevoked,
        Counter::WebhookDropped,
    ];
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Counter::MessagesFailed => (
                "tern_messages_failed_total",
                "Messages given up on upstream (permanent error or attempts exhausted).",
            ),
            Counter::MessagesExpired => (
                "tern_messages_expired_total",
                "Messages that reached their validity period undelivered.",
            ),
            Counter::Fsyncs => ("tern_fsyncs_total", "fdatasync calls on the raft log."),
            // Unlabelled: an account label would cost every recording thread
            // a slot per account; per-account successes show in
            // tern_dlrs_delivered_total / tern_mos_delivered_total.
            Counter::WebhookAttempts => (
                "tern_webhook_attempts_total",
                "Webhook POSTs started (DLR and MO), retries included.",
            ),
            Counter::WebhookSuccesses => (
                "tern_webhook_successes_total",
                "Webhook POSTs answered with a 2xx.",
            ),
            Counter::WebhookFailures => (
                "tern_webhook_failures_total",
                "Webhook POSTs answered otherwise, timed out or not connected (each is retried).",
            ),
            Counter::BindsRevoked => (
                "tern_binds_revoked_total",
                "Customer binds closed because their account was removed, disabled or its password changed.",
            ),
            Counter::WebhookDropped => (
                "tern_webhook_dropped_total",
                "Webhook retries dropped because the store no longer owes them (message purged by retention).",
            ),
        }
    }
}

/// What an HTTP request was routed to: the `route` label, a fixed set, so a
/// client's paths never become label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRoute {
    Submit,
    Lookup,
    OpenApi,
    Metrics,
    Health,
    Ready,
    Admin,
    NotFound,
    MethodNotAllowed,
}

impl HttpRoute {
    pub const ALL: [HttpRoute; 9] = [
        HttpRoute::Submit,
        HttpRoute::Lookup,
        HttpRoute::OpenApi,
        HttpRoute::Metrics,
        HttpRoute::Health,
        HttpRoute::Ready,
        HttpRoute::Admin,
        HttpRoute::NotFound,
        HttpRoute::MethodNotAllowed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HttpRoute::Submit => "submit",
            HttpRoute::Lookup => "lookup",
            HttpRoute::OpenApi => "openapi",
            HttpRoute::Metrics => "metrics",
            HttpRoute::Health => "health",
            HttpRoute::Ready => "ready",
            HttpRoute::Admin => "admin",
            HttpRoute::NotFound => "not_found",
            HttpRoute::MethodNotAllowed => "method_not_allowed",
        }
    }
}

/// The series of `code` within a route: its own, its class's, or `other`.
fn http_code_series(code: u16) -> usize {
    if let Some(at) = HTTP_CODES.iter().position(|&c| c == code) {
        return at;
    }
    match code {
        100..=599 => HTTP_CODES.len() + usize::from(code / 100 - 1),
        _ => HTTP_CODE_SERIES - 1,
    }
}

fn http_code_label(series: usize) -> String {
    match HTTP_CODES.get(series) {
        Some(code) => code.to_string(),
        None => HTTP_CODE_CLASSES
            .get(series - HTTP_CODES.len())
            .map_or(OTHER_LABEL, |class| class)
            .to_string(),
    }
}

/// Gauges moved by +1/-1 from whichever thread opens or closes the thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    ConnectionsOpen,
}

/// Histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Histogram {
    SubmitLatency,
    CommitLatency,
    FsyncLatency,
    SnapshotDuration,
    BatchEntries,
    BatchBytes,
    WindowOccupancy,
}

/// Latency buckets in nanoseconds (rendered in seconds): 100 µs to 10 s.
const LATENCY_BUCKETS_NS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];
/// Snapshots take longer: 1 ms to 60 s.
const SNAPSHOT_BUCKETS_NS: &[u64] = &[
    1_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];
const POWERS_OF_TWO_TO_4096: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
const BYTES_BUCKETS: &[u64] = &[
    256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216,
];

impl Histogram {
    const ALL: [Histogram; 7] = [
        Histogram::SubmitLatency,
        Histogram::CommitLatency,
        Histogram::FsyncLatency,
        Histogram::SnapshotDuration,
        Histogram::BatchEntries,
        Histogram::BatchBytes,
        Histogram::WindowOccupancy,
    ];

    /// Name, help, bucket bounds, and whether values are nanoseconds shown
    /// as seconds.
    fn describe(self) -> (&'static str, &'static str, &'static [u64], bool) {
        match self {
            Histogram::SubmitLatency => (
                "tern_submit_latency_seconds",
                "Customer submit_sm received to submit_sm_resp sent.",
                LATENCY_BUCKETS_NS,
                true,
            ),
            Histogram::CommitLatency => (
                "tern_commit_latency_seconds",
                "Store proposal made to its outcome (committed and applied).",
                LATENCY_BUCKETS_NS,
                true,
            ),
            Histogram::FsyncLatency => (
                "tern_fsync_latency_seconds",
                "Duration of one fdatasync of the raft log.",
                LATENCY_BUCKETS_NS,
                true,
            ),
            Histogram::SnapshotDuration => (
                "tern_snapshot_duration_seconds",
                "Duration of writing one durable state snapshot (count = snapshots taken).",
                SNAPSHOT_BUCKETS_NS,
                true,
            ),
            Histogram::BatchEntries => (
                "tern_raft_batch_entries",
                "Log entries appended per log write (group commit batch).",
                POWERS_OF_TWO_TO_4096,
                false,
            ),
            Histogram::BatchBytes => (
                "tern_raft_batch_bytes",
                "Bytes appended per log write (group commit batch).",
                BYTES_BUCKETS,
                false,
            ),
            Histogram::WindowOccupancy => (
                "tern_upstream_window_occupancy",
                "Requests outstanding on an operator bind when one more is sent.",
                POWERS_OF_TWO_TO_4096,
                false,
            ),
        }
    }

    fn buckets(self) -> &'static [u64] {
        self.describe().2
    }

    /// Cells one histogram takes in a shard: a count per bucket, one for
    /// +Inf, one for the sum.
    const fn cells_for(bucket_count: usize) -> usize {
        bucket_count + 2
    }
}

/// The raft gauges, written by the store thread alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftStatus {
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// 0 while no leader is known.
    pub leader_id: u64,
}

// ---- interning -----------------------------------------------------------

/// A bounded map from label value to a dense index, read without locks.
///
/// Open addressing over write-once slots: a lookup hashes and probes, which
/// touches only cache lines nobody writes after their insert. A miss takes
/// the mutex, probes again and inserts. Indexes `0..cap` are real values;
/// `cap` is [`OTHER_LABEL`]. Values past the cap are remembered (mapped to
/// `cap`) while the table has room, so they stop taking the mutex too; once a
/// probe window is full the table is marked saturated and unknown values go
/// to `cap` at once.
struct Interner<K> {
    cap: usize,
    slots: Box<[OnceLock<(K, usize)>]>,
    names: Mutex<Vec<K>>,
    saturated: AtomicBool,
    hasher: std::hash::RandomState,
}

impl<K: Hash + Eq + Clone> Interner<K> {
    fn new(cap: usize) -> Interner<K> {
        let len = (cap * 4).next_power_of_two().max(64);
        Interner {
            cap,
            slots: (0..len).map(|_| OnceLock::new()).collect(),
            names: Mutex::new(Vec::with_capacity(cap)),
            saturated: AtomicBool::new(false),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn index<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwned<Owned = K>,
    {
        let start = self.hasher.hash_one(key) as usize;
        let mask = self.slots.len() - 1;
        for probe in 0..MAX_PROBES {
            match self.slots[(start + probe) & mask].get() {
                Some((k, index)) if k.borrow() == key => return *index,
                Some(_) => continue,
                None => break,
            }
        }
        if self.saturated.load(Ordering::Relaxed) {
            return self.cap;
        }
        self.insert(key, start)
    }

    #[cold]
    fn insert<Q>(&self, key: &Q, start: usize) -> usize
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwned<Owned = K>,
    {
        // A poisoned lock only means a panic elsewhere mid-insert; the slots
        // are write-once, so the data is still consistent.
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let mask = self.slots.len() - 1;
        for probe in 0..MAX_PROBES {
            let slot = &self.slots[(start + probe) & mask];
            match slot.get() {
                Some((k, index)) if k.borrow() == key => return *index,
                Some(_) => continue,
                None => {
                    let index = if names.len() < self.cap {
                        names.push(key.to_owned());
                        names.len() - 1
                    } else {
                        self.cap
                    };
                    let set = slot.set((key.to_owned(), index));
                    debug_assert!(set.is_ok(), "interner slots are only set under the mutex");
                    return index;
                }
            }
        }
        self.saturated.store(true, Ordering::Relaxed);
        self.cap
    }

    /// Index to value, for the scrape.
    fn names(&self) -> Vec<K> {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn pair_key(a: usize, b: usize) -> u64 {
    ((a as u64) << 32) | b as u64
}

fn unpair_key(key: u64) -> (usize, usize) {
    ((key >> 32) as usize, (key & 0xFFFF_FFFF) as usize)
}

// ---- per-thread shards ---------------------------------------------------

/// 128 bytes: two 64-byte lines, since adjacent-line prefetch pairs them.
#[repr(align(128))]
struct Line([AtomicU64; 16]);

const CELLS_PER_LINE: usize = 16;

/// Where each family lives inside a shard.
struct Layout {
    account_counters: usize,
    connector_submitted: usize,
    connector_binds_open: usize,
    pairs: [usize; 4],
    counters: usize,
    gauges: usize,
    histograms: [usize; 7],
    http_requests: usize,
    http_durations: usize,
    total: usize,
}

impl Layout {
    fn new() -> Layout {
        let mut at = 0;
        let mut take = |n: usize| {
            let start = at;
            at += n;
            start
        };
        let account_counters = take(AccountCounter::ALL.len() * (ACCOUNT_LABEL_CAP + 1));
        let connector_submitted = take(CONNECTOR_LABEL_CAP + 1);
        let connector_binds_open = take(CONNECTOR_LABEL_CAP + 1);
        let pairs = PairFamily::ALL.map(|_| take(PAIR_SERIES_CAP + 1));
        let counters = take(Counter::ALL.len());
        let gauges = take(1);
        let histograms = Histogram::ALL.map(|h| take(Histogram::cells_for(h.buckets().len())));
        let http_requests = take(HttpRoute::ALL.len() * HTTP_CODE_SERIES);
        let http_durations =
            take(HttpRoute::ALL.len() * Histogram::cells_for(LATENCY_BUCKETS_NS.len()));
        Layout {
            account_counters,
            connector_submitted,
            connector_binds_open,
            pairs,
            counters,
            gauges,
            histograms,
            http_requests,
            http_durations,
            total: at,
        }
    }
}

struct Shard {
    lines: Box<[Line]>,
}

impl Shard {
    fn new(cells: usize) -> Shard {
        let lines = cells.div_ceil(CELLS_PER_LINE);
        Shard {
            lines: (0..lines)
                .map(|_| Line(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    fn cell(&self, index: usize) -> &AtomicU64 {
        &self.lines[index / CELLS_PER_LINE].0[index % CELLS_PER_LINE]
    }

    fn add(&self, index: usize, delta: u64) {
        self.cell(index).fetch_add(delta, Ordering::Relaxed);
    }
}

static NEXT_THREAD_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn thread_shard_index() -> usize {
    THREAD_SHARD.with(|slot| {
        let mut index = slot.get();
        if index == usize::MAX {
            index = NEXT_THREAD_SHARD.fetch_add(1, Ordering::Relaxed) % MAX_SHARDS;
            slot.set(index);
        }
        index
    })
}

// ---- the registry --------------------------------------------------------

/// Every metric of one process. [`global`] is the one the appliance uses;
/// tests build their own.
pub struct Registry {
    layout: Layout,
    shards: Box<[OnceLock<Shard>]>,
    accounts: Interner<String>,
    connectors: Interner<String>,
    statuses: Interner<String>,
    stats: Interner<String>,
    pairs: [Interner<u64>; 4],
    raft: [AtomicU64; 4],
    executor_busy_ns: Box<[AtomicU64]>,
    executor_tasks: Box<[AtomicU64]>,
    executors_seen: AtomicUsize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            layout: Layout::new(),
            shards: (0..MAX_SHARDS).map(|_| OnceLock::new()).collect(),
            accounts: Interner::new(ACCOUNT_LABEL_CAP),
            connectors: Interner::new(CONNECTOR_LABEL_CAP),
            statuses: Interner::new(STATUS_LABEL_CAP),
            stats: Interner::new(STAT_LABEL_CAP),
            pairs: PairFamily::ALL.map(|_| Interner::new(PAIR_SERIES_CAP)),
            raft: std::array::from_fn(|_| AtomicU64::new(0)),
            executor_busy_ns: (0..EXECUTOR_CAP).map(|_| AtomicU64::new(0)).collect(),
            executor_tasks: (0..EXECUTOR_CAP).map(|_| AtomicU64::new(0)).collect(),
            executors_seen: AtomicUsize::new(0),
        }
    }

    fn shard(&self) -> &Shard {
        self.shards[thread_shard_index()].get_or_init(|| Shard::new(self.layout.total))
    }

    fn pair_index(&self, family: PairFamily, a: usize, b: usize) -> usize {
        self.pairs[family as usize].index(&pair_key(a, b))
    }

    fn status_index(&self, status: CommandStatus) -> usize {
        match status.name() {
            Some(name) => self.statuses.index(name),
            None => {
                let mut buf = [0u8; 10];
                self.statuses.index(status_hex(status.0, &mut buf))
            }
        }
    }

    pub fn inc_account(&self, counter: AccountCounter, account: &str) {
        let series = self.accounts.index(account);
        let at = self.layout.account_counters + counter as usize * (ACCOUNT_LABEL_CAP + 1);
        self.shard().add(at + series, 1);
    }

    pub fn inc(&self, counter: Counter) {
        self.shard().add(self.layout.counters + counter as usize, 1);
    }

    /// `delta` is +1 or -1 in practice; the shards hold two's complement and
    /// only their sum is meaningful.
    pub fn gauge_add(&self, gauge: Gauge, delta: i64) {
        self.shard()
            .add(self.layout.gauges + gauge as usize, delta as u64);
    }

    pub fn rejected(&self, account: &str, status: CommandStatus) {
        let pair = self.pair_index(
            PairFamily::Rejected,
            self.accounts.index(account),
            self.status_index(status),
        );
        self.shard()
            .add(self.layout.pairs[PairFamily::Rejected as usize] + pair, 1);
    }

    pub fn submitted(&self, connector: &str) {
        let series = self.connectors.index(connector);
        self.shard()
            .add(self.layout.connector_submitted + series, 1);
    }

    pub fn submit_failed(&self, connector: &str, status: CommandStatus) {
        let pair = self.pair_index(
            PairFamily::SubmitFailed,
            self.connectors.index(connector),
            self.status_index(status),
        );
        self.shard().add(
            self.layout.pairs[PairFamily::SubmitFailed as usize] + pair,
            1,
        );
    }

    pub fn receipt(&self, connector: &str, stat: &str) {
        let pair = self.pair_index(
            PairFamily::Receipts,
            self.connectors.index(connector),
            self.stats.index(stat),
        );
        self.shard()
            .add(self.layout.pairs[PairFamily::Receipts as usize] + pair, 1);
    }

    /// A customer bind opened (+1) or closed (-1).
    pub fn binds_open_add(&self, account: &str, bind_type: BindType, delta: i64) {
        let pair = self.pair_index(
            PairFamily::BindsOpen,
            self.accounts.index(account),
            bind_type as usize,
        );
        self.shard().add(
            self.layout.pairs[PairFamily::BindsOpen as usize] + pair,
            delta as u64,
        );
    }

    /// An operator bind came up (+1) or went down (-1).
    pub fn upstream_binds_open_add(&self, connector: &str, delta: i64) {
        let series = self.connectors.index(connector);
        self.shard()
            .add(self.layout.connector_binds_open + series, delta as u64);
    }

    pub fn observe(&self, histogram: Histogram, value: u64) {
        let buckets = histogram.buckets();
        let bucket = buckets.partition_point(|&bound| bound < value);
        let at = self.layout.histograms[histogram as usize];
        let shard = self.shard();
        shard.add(at + bucket, 1);
        shard.add(at + buckets.len() + 1, value);
    }

    /// One HTTP request routed to `route` was answered with `code` after
    /// `elapsed` (request head read to response handed to the connection).
    pub fn http_request(&self, route: HttpRoute, code: u16, elapsed: Duration) {
        let shard = self.shard();
        let route_index = route as usize;
        shard.add(
            self.layout.http_requests + route_index * HTTP_CODE_SERIES + http_code_series(code),
            1,
        );
        let cells = Histogram::cells_for(LATENCY_BUCKETS_NS.len());
        let at = self.layout.http_durations + route_index * cells;
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_NS.partition_point(|&bound| bound < nanos);
        shard.add(at + bucket, 1);
        shard.add(at + LATENCY_BUCKETS_NS.len() + 1, nanos);
    }

    pub fn observe_duration(&self, histogram: Histogram, elapsed: Duration) {
        self.observe(
            histogram,
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    pub fn set_raft(&self, status: RaftStatus) {
        let values = [
            status.term,
            status.commit_index,
            status.applied_index,
            status.leader_id,
        ];
        for (cell, value) in self.raft.iter().zip(values) {
            cell.store(value, Ordering::Relaxed);
        }
    }

    /// Adds busy time and tasks executor `executor_id` ran since its last
    /// report; each executor writes only its own cells.
    pub fn add_executor_load(&self, executor_id: usize, busy: Duration, tasks: u64) {
        let (Some(busy_cell), Some(tasks_cell)) = (
            self.executor_busy_ns.get(executor_id),
            self.executor_tasks.get(executor_id),
        ) else {
            return;
        };
        busy_cell.fetch_add(
            u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        tasks_cell.fetch_add(tasks, Ordering::Relaxed);
        self.executors_seen
            .fetch_max(executor_id + 1, Ordering::Relaxed);
    }

    fn sum(&self, index: usize) -> u64 {
        self.shards
            .iter()
            .filter_map(OnceLock::get)
            .fold(0u64, |total, shard| {
                total.wrapping_add(shard.cell(index).load(Ordering::Relaxed))
            })
    }

    /// Every family with its current samples, summed over the threads.
    pub fn snapshot(&self) -> Vec<Family> {
        let mut families = Vec::new();
        let accounts = label_names(&self.accounts);
        let connectors = label_names(&self.connectors);
        let statuses = label_names(&self.statuses);
        let stats = label_names(&self.stats);
        let bind_types: Vec<String> = BindType::ALL
            .iter()
            .map(|b| b.label().to_string())
            .collect();

        for counter in AccountCounter::ALL {
            let (name, help) = counter.describe();
            let at = self.layout.account_counters + counter as usize * (ACCOUNT_LABEL_CAP + 1);
            let samples = accounts
                .iter()
                .enumerate()
                .filter_map(|(series, account)| {
                    let value = self.sum(at + series);
                    // `other` (last) only once something was counted under it.
                    (value != 0 || series + 1 < accounts.len())
                        .then(|| Sample::labelled(name, &[("account", account)], value as f64))
                })
                .collect();
            families.push(Family::new(name, help, Kind::Counter, samples));
        }

        let rejected = self.pair_samples(
            PairFamily::Rejected,
            "tern_messages_rejected_total",
            ("account", &accounts),
            ("status", &statuses),
            false,
        );
        families.push(Family::new(
            "tern_messages_rejected_total",
            "Customer submits answered with an error status (throttling included).",
            Kind::Counter,
            rejected,
        ));

        let submitted = self.connector_samples(
            "tern_messages_submitted_total",
            self.layout.connector_submitted,
            &connectors,
            false,
        );
        families.push(Family::new(
            "tern_messages_submitted_total",
            "Messages an operator accepted (submit_sm_resp OK).",
            Kind::Counter,
            submitted,
        ));
        let failed = self.pair_samples(
            PairFamily::SubmitFailed,
            "tern_submit_failures_total",
            ("connector", &connectors),
            ("status", &statuses),
            false,
        );
        families.push(Family::new(
            "tern_submit_failures_total",
            "Submits an operator refused or that got no answer, by status.",
            Kind::Counter,
            failed,
        ));
        let receipts = self.pair_samples(
            PairFamily::Receipts,
            "tern_receipts_received_total",
            ("connector", &connectors),
            ("stat", &stats),
            false,
        );
        families.push(Family::new(
            "tern_receipts_received_total",
            "Delivery receipts received from operators, by receipt stat.",
            Kind::Counter,
            receipts,
        ));

        for counter in Counter::ALL {
            let (name, help) = counter.describe();
            let value = self.sum(self.layout.counters + counter as usize) as f64;
            families.push(Family::new(
                name,
                help,
                Kind::Counter,
                vec![Sample::labelled(name, &[], value)],
            ));
        }

        let connections = self.sum(self.layout.gauges + Gauge::ConnectionsOpen as usize) as i64;
        families.push(Family::new(
            "tern_connections_open",
            "Customer TCP connections open.",
            Kind::Gauge,
            vec![Sample::labelled(
                "tern_connections_open",
                &[],
                connections as f64,
            )],
        ));
        let binds = self.pair_samples(
            PairFamily::BindsOpen,
            "tern_binds_open",
            ("account", &accounts),
            ("bind_type", &bind_types),
            true,
        );
        families.push(Family::new(
            "tern_binds_open",
            "Customer SMPP binds open, by account and bind type.",
            Kind::Gauge,
            binds,
        ));
        let upstream_binds = self.connector_samples(
            "tern_upstream_binds_open",
            self.layout.connector_binds_open,
            &connectors,
            true,
        );
        families.push(Family::new(
            "tern_upstream_binds_open",
            "Operator binds up, by connector.",
            Kind::Gauge,
            upstream_binds,
        ));

        for histogram in Histogram::ALL {
            families.push(self.histogram_family(histogram));
        }
        families.push(self.http_requests_family());
        families.push(self.http_durations_family());

        let raft = [
            ("tern_raft_term", "Current raft term."),
            (
                "tern_raft_commit_index",
                "Highest log index known committed.",
            ),
            (
                "tern_raft_applied_index",
                "Highest log index applied to the state.",
            ),
            (
                "tern_raft_leader_id",
                "Node id of the known leader, 0 when none.",
            ),
        ];
        for ((name, help), cell) in raft.into_iter().zip(&self.raft) {
            let value = cell.load(Ordering::Relaxed) as f64;
            families.push(Family::new(
                name,
                help,
                Kind::Gauge,
                vec![Sample::labelled(name, &[], value)],
            ));
        }

        let executors = self
            .executors_seen
            .load(Ordering::Relaxed)
            .min(EXECUTOR_CAP);
        let mut busy = Vec::with_capacity(executors);
        let mut tasks = Vec::with_capacity(executors);
        for id in 0..executors {
            let label = id.to_string();
            let busy_ns = self.executor_busy_ns[id].load(Ordering::Relaxed);
            busy.push(Sample::labelled(
                "tern_executor_busy_seconds_total",
                &[("executor", &label)],
                busy_ns as f64 / 1e9,
            ));
            tasks.push(Sample::labelled(
                "tern_executor_tasks_total",
                &[("executor", &label)],
                self.executor_tasks[id].load(Ordering::Relaxed) as f64,
            ));
        }
        families.push(Family::new(
            "tern_executor_busy_seconds_total",
            "Time each connection executor spent running tasks and polling I/O.",
            Kind::Counter,
            busy,
        ));
        families.push(Family::new(
            "tern_executor_tasks_total",
            "Tasks each connection executor ran.",
            Kind::Counter,
            tasks,
        ));

        let process = read_process();
        families.push(Family::new(
            "process_resident_memory_bytes",
            "Resident set size of the process.",
            Kind::Gauge,
            vec![Sample::labelled(
                "process_resident_memory_bytes",
                &[],
                process.resident_bytes as f64,
            )],
        ));
        families.push(Family::new(
            "process_open_fds",
            "File descriptors the process holds open.",
            Kind::Gauge,
            vec![Sample::labelled(
                "process_open_fds",
                &[],
                process.open_fds as f64,
            )],
        ));
        families
    }

    fn connector_samples(
        &self,
        name: &str,
        at: usize,
        connectors: &[String],
        signed: bool,
    ) -> Vec<Sample> {
        // `other` (last) only once something was counted under it.
        connectors
            .iter()
            .enumerate()
            .filter_map(|(series, connector)| {
                let raw = self.sum(at + series);
                let value = if signed {
                    raw as i64 as f64
                } else {
                    raw as f64
                };
                (raw != 0 || series + 1 < connectors.len())
                    .then(|| Sample::labelled(name, &[("connector", connector)], value))
            })
            .collect()
    }

    fn pair_samples(
        &self,
        family: PairFamily,
        name: &str,
        (a_name, a_values): (&str, &[String]),
        (b_name, b_values): (&str, &[String]),
        signed: bool,
    ) -> Vec<Sample> {
        let at = self.layout.pairs[family as usize];
        let value_of = |series: usize| {
            let raw = self.sum(at + series);
            if signed {
                raw as i64 as f64
            } else {
                raw as f64
            }
        };
        let label = |values: &[String], index: usize| {
            values
                .get(index)
                .cloned()
                .unwrap_or_else(|| OTHER_LABEL.to_string())
        };
        let mut samples: Vec<Sample> = self.pairs[family as usize]
            .names()
            .into_iter()
            .enumerate()
            .map(|(series, key)| {
                let (a, b) = unpair_key(key);
                Sample::labelled(
                    name,
                    &[(a_name, &label(a_values, a)), (b_name, &label(b_values, b))],
                    value_of(series),
                )
            })
            .collect();
        let overflow = value_of(PAIR_SERIES_CAP);
        if overflow != 0.0 {
            samples.push(Sample::labelled(
                name,
                &[(a_name, OTHER_LABEL), (b_name, OTHER_LABEL)],
                overflow,
            ));
        }
        samples
    }

    fn histogram_family(&self, histogram: Histogram) -> Family {
        let (name, help, buckets, seconds) = histogram.describe();
        let at = self.layout.histograms[histogram as usize];
        let scale = |v: u64| if seconds { v as f64 / 1e9 } else { v as f64 };
        let bucket_name = format!("{name}_bucket");
        let mut samples = Vec::with_capacity(buckets.len() + 3);
        let mut cumulative = 0u64;
        for (i, bound) in buckets.iter().enumerate() {
            cumulative = cumulative.wrapping_add(self.sum(at + i));
            let le = scale(*bound).to_string();
            samples.push(Sample::labelled(
                &bucket_name,
                &[("le", &le)],
                cumulative as f64,
            ));
        }
        cumulative = cumulative.wrapping_add(self.sum(at + buckets.len()));
        samples.push(Sample::labelled(
            &bucket_name,
            &[("le", "+Inf")],
            cumulative as f64,
        ));
        let sum = scale(self.sum(at + buckets.len() + 1));
        samples.push(Sample::labelled(&format!("{name}_sum"), &[], sum));
        samples.push(Sample::labelled(
            &format!("{name}_count"),
            &[],
            cumulative as f64,
        ));
        Family::new(name, help, Kind::Histogram, samples)
    }

    fn http_requests_family(&self) -> Family {
        const NAME: &str = "tern_http_requests_total";
        let mut samples = Vec::new();
        for route in HttpRoute::ALL {
            let at = self.layout.http_requests + route as usize * HTTP_CODE_SERIES;
            for series in 0..HTTP_CODE_SERIES {
                // Only codes seen: the route × code product is mostly empty.
                let value = self.sum(at + series);
                if value != 0 {
                    samples.push(Sample::labelled(
                        NAME,
                        &[("route", route.label()), ("code", &http_code_label(series))],
                        value as f64,
                    ));
                }
            }
        }
        Family::new(
            NAME,
            "HTTP requests answered, by route and status code.",
            Kind::Counter,
            samples,
        )
    }

    fn http_durations_family(&self) -> Family {
        const NAME: &str = "tern_http_request_duration_seconds";
        let buckets = LATENCY_BUCKETS_NS;
        let cells = Histogram::cells_for(buckets.len());
        let bucket_name = format!("{NAME}_bucket");
        let sum_name = format!("{NAME}_sum");
        let count_name = format!("{NAME}_count");
        let mut samples = Vec::new();
        for route in HttpRoute::ALL {
            let at = self.layout.http_durations + route as usize * cells;
            let label = route.label();
            let mut cumulative = 0u64;
            for (i, bound) in buckets.iter().enumerate() {
                cumulative = cumulative.wrapping_add(self.sum(at + i));
                let le = (*bound as f64 / 1e9).to_string();
                samples.push(Sample::labelled(
                    &bucket_name,
                    &[("route", label), ("le", &le)],
                    cumulative as f64,
                ));
            }
            cumulative = cumulative.wrapping_add(self.sum(at + buckets.len()));
            samples.push(Sample::labelled(
                &bucket_name,
                &[("route", label), ("le", "+Inf")],
                cumulative as f64,
            ));
            let sum = self.sum(at + buckets.len() + 1) as f64 / 1e9;
            samples.push(Sample::labelled(&sum_name, &[("route", label)], sum));
            samples.push(Sample::labelled(
                &count_name,
                &[("route", label)],
                cumulative as f64,
            ));
        }
        Family::new(
            NAME,
            "HTTP request read to response handed to the connection, by route.",
            Kind::Histogram,
            samples,
        )
    }

    /// The Prometheus text exposition (format 0.0.4) of every family.
    pub fn render_prometheus(&self, out: &mut String) {
        for family in self.snapshot() {
            family.render(out);
        }
    }
}

/// The values of a dimension in index order, with `other` last.
fn label_names(interner: &Interner<String>) -> Vec<String> {
    let mut names = interner.names();
    names.push(OTHER_LABEL.to_string());
    names
}

fn status_hex(value: u32, buf: &mut [u8; 10]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    buf[0] = b'0';
    buf[1] = b'x';
    for i in 0..8 {
        let nibble = (value >> (28 - 4 * i)) & 0xF;
        buf[2 + i] = DIGITS[nibble as usize];
    }
    // Only ASCII was written.
    std::str::from_utf8(buf).unwrap_or("0x????????")
}

/// The kind of customer bind, a label of `tern_binds_open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindType {
    Transmitter,
    Receiver,
    Transceiver,
}

impl From<crate::store::command::BindKind> for BindType {
    fn from(kind: crate::store::command::BindKind) -> BindType {
        use crate::store::command::BindKind;
        match kind {
            BindKind::Transmitter => BindType::Transmitter,
            BindKind::Receiver => BindType::Receiver,
            BindKind::Transceiver => BindType::Transceiver,
        }
    }
}

impl BindType {
    const ALL: [BindType; 3] = [
        BindType::Transmitter,
        BindType::Receiver,
        BindType::Transceiver,
    ];
    pub fn label(self) -> &'static str {
        match self {
            BindType::Transmitter => "transmitter",
            BindType::Receiver => "receiver",
            BindType::Transceiver => "transceiver",
        }
    }
}

// ---- snapshot types and rendering -----------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family as a scrape sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

/// One line of the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn labelled(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    /// The label's value, if the sample carries it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: Kind, samples: Vec<Sample>) -> Family {
        Family {
            name,
            help,
            kind,
            samples,
        }
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        for sample in &self.samples {
            out.push_str(&sample.name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (key, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(key);
                    out.push_str("=\"");
                    escape_label_value(value, out);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            write_value(sample.value, out);
            out.push('\n');
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_value(value: f64, out: &mut String) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

// ---- the process ---------------------------------------------------------

struct ProcessFigures {
    resident_bytes: u64,
    open_fds: u64,
}

/// RSS from /proc/self/statm (pages) and the entries of /proc/self/fd; zeros
/// where /proc is unreadable rather than failing the scrape.
fn read_process() -> ProcessFigures {
    // SAFETY: sysconf only reads a system constant.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page_bytes = u64::try_from(page_bytes).unwrap_or(4096);
    let resident_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count() as u64)
        .unwrap_or(0);
    ProcessFigures {
        resident_bytes: resident_pages.saturating_mul(page_bytes),
        open_fds,
    }
}

// ---- the global registry and the one-line calls --------------------------

/// The process-wide registry every instrumentation call writes.
pub fn global() -> &'static Registry {
    static GLOBAL: OnceLock<Registry> = OnceLock::new();
    GLOBAL.get_or_init(Registry::new)
}

/// Renders the global registry (what `GET /metrics` serves).
pub fn render_prometheus(out: &mut String) {
    global().render_prometheus(out);
}

/// The global registry's families, for tests and tools.
pub fn snapshot() -> Vec<Family> {
    global().snapshot()
}

pub fn accepted(account: &str) {
    global().inc_account(AccountCounter::Accepted, account);
}

pub fn rejected(account: &str, status: CommandStatus) {
    global().rejected(account, status);
}

/// A customer submit answered with an error `status`; throttling is also
/// counted on its own.
pub fn submit_refused(account: &str, status: CommandStatus) {
    let registry = global();
    registry.rejected(account, status);
    if status == CommandStatus::ESME_RTHROTTLED {
        registry.inc_account(AccountCounter::Throttled, account);
    }
}

pub fn submitted(connector: &str) {
    global().submitted(connector);
}

pub fn submit_failed(connector: &str, status: CommandStatus) {
    global().submit_failed(connector, status);
}

pub fn receipt_received(connector: &str, stat: &str) {
    global().receipt(connector, stat);
}

/// The customer acknowledged a receipt or MO delivered to `account`.
pub fn delivered_to_customer(account: &str, kind: crate::store::state::DeliveryKind) {
    let counter = match kind {
        crate::store::state::DeliveryKind::Dlr => AccountCounter::DlrsDelivered,
        crate::store::state::DeliveryKind::Mo => AccountCounter::MosDelivered,
    };
    global().inc_account(counter, account);
}

/// A webhook POST started.
pub fn webhook_attempt() {
    global().inc(Counter::WebhookAttempts);
}

/// A webhook POST to `account` got a 2xx: the delivery counts as acknowledged.
pub fn webhook_succeeded(account: &str, kind: crate::store::state::DeliveryKind) {
    global().inc(Counter::WebhookSuccesses);
    delivered_to_customer(account, kind);
}

/// A webhook POST failed (status, timeout or connection); it is retried.
pub fn webhook_failed() {
    global().inc(Counter::WebhookFailures);
}

/// A webhook retry was dropped: the store no longer owes the delivery.
pub fn webhook_dropped() {
    global().inc(Counter::WebhookDropped);
}

pub fn count(counter: Counter) {
    global().inc(counter);
}

pub fn gauge_add(gauge: Gauge, delta: i64) {
    global().gauge_add(gauge, delta);
}

pub fn binds_open_add(account: &str, bind_type: BindType, delta: i64) {
    global().binds_open_add(account, bind_type, delta);
}

pub fn upstream_binds_open_add(connector: &str, delta: i64) {
    global().upstream_binds_open_add(connector, delta);
}

/// One HTTP request answered (see [`Registry::http_request`]).
pub fn http_request(route: HttpRoute, code: u16, elapsed: Duration) {
    global().http_request(route, code, elapsed);
}

pub fn observe(histogram: Histogram, value: u64) {
    global().observe(histogram, value);
}

pub fn observe_duration(histogram: Histogram, elapsed: Duration) {
    global().observe_duration(histogram, elapsed);
}

/// One fdatasync of the raft log took `elapsed`.
pub fn fsync_done(elapsed: Duration) {
    let registry = global();
    registry.inc(Counter::Fsyncs);
    registry.observe_duration(Histogram::FsyncLatency, elapsed);
}

/// One log write (all the log thread took in one go, made durable by one
/// sync) carried `entries` entries in `bytes` bytes. Writes of hard state
/// alone carry no entries and are not a batch.
pub fn log_batch(entries: u64, bytes: u64) {
    if entries == 0 {
        return;
    }
    let registry = global();
    registry.observe(Histogram::BatchEntries, entries);
    registry.observe(Histogram::BatchBytes, bytes);
}

pub fn set_raft(status: RaftStatus) {
    global().set_raft(status);
}

/// Every `period`, adds the calling glommio executor's run time (tasks plus
/// I/O polling) and tasks executed to its load counters, for as long as the
/// executor runs. Spawn it detached on each connection executor. glommio's
/// `executor_stats()` hands over and resets the figures, so this must be the
/// executor's only reader of them.
pub async fn sample_executor_load(period: Duration) {
    loop {
        glommio::timer::sleep(period).await;
        let executor = glommio::executor();
        let stats = executor.executor_stats();
        global().add_executor_load(executor.id(), stats.total_runtime(), stats.tasks_executed());
    }
}

#[cfg(test)]
mod tests;
