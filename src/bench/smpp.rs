//! `tern bench smpp`: a customer load generator over SMPP.
//!
//! Owns: N binds spread across cores (transceivers by default; transmitters
//! to leave receipts waiting in the server, receivers to collect them later),
//! each keeping a window of submit_sm outstanding (optionally paced by a
//! token bucket), submit latency histograms, error counts, and the matching
//! of delivery receipts to the message ids of their submit_sm_resp. Must not touch: the server under test
//! beyond SMPP, the store, the engine.
//!
//! Why receipts are matched after the run: a receipt may arrive on any bind
//! of the system_id, on any core. Each bind keeps the 128-bit hashes of the
//! ids it saw (acknowledged and receipted); sorting and merging them at the
//! end needs no shared map or lock while the load runs.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::peer::{Event, PduConnection, PeerConfig, PeerError};
use crate::smpp::frame::Frame;
use crate::smpp::pdu::{Address, Bind, Body, DeliverSmResp, Password, Pdu, SubmitSm, SystemId};
use crate::smpp::receipt::{identify_receipt, IdFormat, ReceiptKind, ReceiptSyntax};
use crate::smpp::session::{ResponseMatch, SequenceNumbers, Window};
use crate::smpp::status::CommandStatus;
use crate::smpp::CommandId;

/// How the bench's binds bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindAs {
    /// Submits and takes receipts on the same bind.
    #[default]
    Transceiver,
    /// Submits only: receipts stay with the server until a receiver binds.
    Transmitter,
    /// Takes receipts only (the run submits nothing): with
    /// `expect_receipts`, the time until a backlog has arrived.
    Receiver,
}

impl BindAs {
    pub fn parse(text: &str) -> Option<BindAs> {
        match text {
            "transceiver" => Some(BindAs::Transceiver),
            "transmitter" => Some(BindAs::Transmitter),
            "receiver" => Some(BindAs::Receiver),
            _ => None,
        }
    }
}

/// Everything `tern bench smpp` can be told.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub target: SocketAddr,
    pub system_id: String,
    pub password: String,
    pub binds: usize,
    pub window: usize,
    /// Submit this many in total (split across binds) ...
    pub count: Option<u64>,
    /// ... or for this long.
    pub duration_s: Option<f64>,
    /// Target submit_sm per second over all binds.
    pub rate_per_s: Option<f64>,
    pub dlr: bool,
    pub dlr_wait_s: f64,
    pub text: String,
    pub source: String,
    pub destination: String,
    pub cores: Vec<usize>,
    pub timeout_ms: u64,
    /// How the server writes ids in submit_sm_resp and receipts.
    pub id_format: IdFormat,
    /// Print a progress line on stderr every second.
    pub progress: bool,
    pub bind_as: BindAs,
    /// Receipts to wait for over all binds before the run ends (at most
    /// `dlr_wait_s` after the last submit); None: one per acknowledged
    /// submit that asked for one.
    pub expect_receipts: Option<u64>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            target: SocketAddr::from(([127, 0, 0, 1], 2775)),
            system_id: "trial".into(),
            password: "trial".into(),
            binds: 1,
            window: 64,
            count: Some(1000),
            duration_s: None,
            rate_per_s: None,
            dlr: false,
            dlr_wait_s: 10.0,
            text: "Hello from tern bench".into(),
            source: "TERN".into(),
            destination: "447900000001".into(),
            cores: Vec::new(),
            timeout_ms: 10_000,
            id_format: IdFormat::AsIs,
            progress: true,
            bind_as: BindAs::Transceiver,
            expect_receipts: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReceiptCounts {
    /// Acknowledged submits that asked for a receipt.
    pub expected: u64,
    pub matched: u64,
    pub missing: u64,
    /// Receipts beyond the first for the same message.
    pub duplicated: u64,
    /// Receipts whose id matched no acknowledged submit.
    pub unknown: u64,
}

/// The outcome of a run, as printed (and as `--json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchReport {
    pub binds: usize,
    pub window: usize,
    pub submitted: u64,
    /// submit_sm_resp with ESME_ROK.
    pub acknowledged: u64,
    /// Submit phase: first submit to last response.
    pub elapsed_s: f64,
    /// Acknowledged (OK) submit_sm per second over the submit phase.
    pub tps: f64,
    pub latency_us: LatencyUs,
    /// Error responses by status name (hex for unnamed statuses).
    pub errors: BTreeMap<String, u64>,
    /// Submits that got no response within the timeout.
    pub timeouts: u64,
    pub receipts: ReceiptCounts,
    /// Seconds from the start of the run to the last receipt received (0:
    /// none): with a receiver bind, how long a backlog took to arrive.
    pub last_receipt_s: f64,
    pub mo_received: u64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "bench smpp: {} bind(s) x window {}: {} submitted in {:.2} s",
            self.binds, self.window, self.submitted, self.elapsed_s
        )?;
        writeln!(
            f,
            "  acknowledged OK: {} ({:.0} submit_sm/s), timeouts: {}",
            self.acknowledged, self.tps, self.timeouts
        )?;
        let l = &self.latency_us;
        writeln!(
            f,
            "  submit latency us: p50 {} p99 {} p99.9 {} max {}",
            l.p50, l.p99, l.p999, l.max
        )?;
        if self.errors.is_empty() {
            writeln!(f, "  errors: none")?;
        } else {
            write!(f, "  errors:")?;
            for (name, n) in &self.errors {
                write!(f, " {name}={n}")?;
            }
            writeln!(f)?;
        }
        let r = &self.receipts;
        write!(
            f,
            "  receipts: expected {} matched {} missing {} duplicated {} unknown {}, last at {:.2} s; MO received {}",
            r.expected, r.matched, r.missing, r.duplicated, r.unknown, self.last_receipt_s,
            self.mo_received
        )
    }
}

/// Counters the progress line reads while the binds run.
#[derive(Debug, Default)]
struct Progress {
    submitted: AtomicU64,
    acknowledged: AtomicU64,
    errors: AtomicU64,
    receipts: AtomicU64,
    expected_receipts: AtomicU64,
    binds_finished_submitting: AtomicU64,
    executors_finished: AtomicU64,
    /// ms since start when the last bind finished submitting (0: not yet).
    all_submitted_at_ms: AtomicU64,
}

/// What one bind brings back.
struct BindResult {
    latency: Histogram<u64>,
    statuses: HashMap<u32, u64>,
    submitted: u64,
    acknowledged: u64,
    timeouts: u64,
    expected_ids: Vec<u128>,
    receipt_ids: Vec<u128>,
    mo_received: u64,
    first_submit: Option<Instant>,
    last_response: Option<Instant>,
    last_receipt: Option<Instant>,
}

/// Runs the load and returns the report. An error means the run could not
/// happen at all (no executor, no connection, bind refused).
pub fn run(config: BenchConfig) -> Result<BenchReport, String> {
    if config.binds == 0 || config.window == 0 {
        return Err("--binds and --window must be at least 1".into());
    }
    if config.count.is_none() == config.duration_s.is_none() {
        return Err("give exactly one of --count and --duration-s".into());
    }
    if config.bind_as == BindAs::Receiver && config.count != Some(0) {
        return Err("a receiver bind submits nothing: give --count 0".into());
    }
    if config.text.len() > crate::smpp::pdu::MAX_SHORT_MESSAGE_LEN {
        return Err(format!(
            "--text is {} octets; a short_message holds at most {}",
            config.text.len(),
            crate::smpp::pdu::MAX_SHORT_MESSAGE_LEN
        ));
    }
    for (flag, address) in [
        ("--source", &config.source),
        ("--destination", &config.destination),
    ] {
        if Address::from_text(address).is_none() {
            return Err(format!("{flag} `{address}` is longer than 20 characters"));
        }
    }
    let cores = if config.cores.is_empty() {
        crate::runtime::available_cores()
    } else {
        config.cores.clone()
    };
    let executors = cores.len().min(config.binds).max(1);
    crate::runtime::check_host(executors).map_err(|e| e.to_string())?;
    let config = Arc::new(config);
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let mut handles = Vec::new();
    for (slot, &cpu) in cores.iter().take(executors).enumerate() {
        let bind_indexes: Vec<usize> = (0..config.binds)
            .filter(|b| b % executors == slot)
            .collect();
        let config = config.clone();
        let progress = progress.clone();
        let handle = crate::runtime::spawn_pinned(&format!("bench-{slot}"), cpu, move || {
            run_binds(bind_indexes, config, progress, started)
        })
        .map_err(|e| format!("cannot start executor on core {cpu}: {e}"))?;
        handles.push(handle);
    }
    let mut results = Vec::new();
    let mut last_line = (Instant::now(), 0u64);
    let mut pending = handles;
    while !pending.is_empty() {
        std::thread::sleep(Duration::from_millis(20));
        if config.progress && last_line.0.elapsed() >= Duration::from_secs(1) {
            let acked = progress.acknowledged.load(Ordering::Relaxed);
            eprintln!(
                "bench: {:.0}s submitted={} acked={} ({:.0}/s) errors={} receipts={}",
                started.elapsed().as_secs_f64(),
                progress.submitted.load(Ordering::Relaxed),
                acked,
                (acked - last_line.1) as f64 / last_line.0.elapsed().as_secs_f64(),
                progress.errors.load(Ordering::Relaxed),
                progress.receipts.load(Ordering::Relaxed),
            );
            last_line = (Instant::now(), acked);
        }
        // Executor join handles cannot be polled: wait for the count of
        // finished executors, then join (which no longer blocks).
        if progress.executors_finished.load(Ordering::SeqCst) as usize >= pending.len() {
            for handle in pending.drain(..) {
                let outcome = handle
                    .join()
                    .map_err(|e| format!("executor failed: {e:?}"))?;
                results.extend(outcome?);
            }
        }
    }
    Ok(summarise(&config, results, started))
}

fn summarise(config: &BenchConfig, results: Vec<BindResult>, started: Instant) -> BenchReport {
    let mut report = BenchReport {
        binds: config.binds,
        window: config.window,
        ..BenchReport::default()
    };
    let mut latency = new_histogram();
    let mut expected = Vec::new();
    let mut receipts = Vec::new();
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let mut last_receipt: Option<Instant> = None;
    for r in results {
        last_receipt = last_receipt.max(r.last_receipt);
        let _ = latency.add(&r.latency);
        report.submitted += r.submitted;
        report.acknowledged += r.acknowledged;
        report.timeouts += r.timeouts;
        report.mo_received += r.mo_received;
        for (status, n) in r.statuses {
            let status = CommandStatus(status);
            let name = status
                .name()
                .map_or_else(|| format!("0x{:08X}", status.0), str::to_owned);
            *report.errors.entry(name).or_insert(0) += n;
        }
        expected.extend(r.expected_ids);
        receipts.extend(r.receipt_ids);
        first = match (first, r.first_submit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(r.last_response);
    }
    report.elapsed_s = match (first, last) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    if report.elapsed_s > 0.0 {
        report.tps = report.acknowledged as f64 / report.elapsed_s;
    }
    report.latency_us = LatencyUs {
        p50: latency.value_at_quantile(0.50),
        p99: latency.value_at_quantile(0.99),
        p999: latency.value_at_quantile(0.999),
        max: latency.max(),
    };
    report.receipts = match_receipts(expected, receipts);
    report.last_receipt_s = last_receipt.map_or(0.0, |at| {
        at.saturating_duration_since(started).as_secs_f64()
    });
    report
}

/// Merges sorted id hashes: each expected id matched once, the rest counted.
fn match_receipts(mut expected: Vec<u128>, mut receipts: Vec<u128>) -> ReceiptCounts {
    expected.sort_unstable();
    expected.dedup();
    receipts.sort_unstable();
    let mut counts = ReceiptCounts {
        expected: expected.len() as u64,
        ..ReceiptCounts::default()
    };
    let mut e = expected.iter().peekable();
    let mut previous: Option<u128> = None;
    for &id in &receipts {
        while e.next_if(|&&x| x < id).is_some() {}
        let known = e.peek().is_some_and(|&&x| x == id);
        match (known, previous == Some(id)) {
            (true, false) => counts.matched += 1,
            (true, true) => counts.duplicated += 1,
            (false, _) => counts.unknown += 1,
        }
        previous = Some(id);
    }
    counts.missing = counts.expected - counts.matched;
    counts
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|e| unreachable!("constant histogram bounds are valid: {e}"))
}

/// 128 bits from two differently-salted SipHash runs: collisions among a
/// few million ids are vanishingly unlikely, and 16 octets per id keep a
/// long run's memory in check.
fn id_hash(key: &str) -> u128 {
    let mut a = std::hash::DefaultHasher::new();
    key.hash(&mut a);
    let mut b = std::hash::DefaultHasher::new();
    0xA5u8.hash(&mut b);
    key.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

async fn run_binds(
    bind_indexes: Vec<usize>,
    config: Arc<BenchConfig>,
    progress: Arc<Progress>,
    started: Instant,
) -> Result<Vec<BindResult>, String> {
    let tasks: Vec<_> = bind_indexes
        .into_iter()
        .map(|index| {
            let config = config.clone();
            let progress = progress.clone();
            glommio::spawn_local(async move {
                let mut bind = BindLoad::new(index, config, progress, started);
                let outcome = bind.run().await;
                if !bind.finished_submitting {
                    bind.finish_submitting();
                }
                outcome.map(|()| bind.into_result())
            })
        })
        .collect();
    let mut results = Vec::new();
    let mut first_error = None;
    let _finished = FinishGuard(progress.clone());
    for task in tasks {
        match task.await {
            Ok(r) => results.push(r),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

/// Counts the executor as finished however `run_binds` ends.
struct FinishGuard(Arc<Progress>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0.executors_finished.fetch_add(1, Ordering::SeqCst);
    }
}

struct BindLoad {
    index: usize,
    config: Arc<BenchConfig>,
    progress: Arc<Progress>,
    started: Instant,
    sequence: SequenceNumbers,
    window: Window<Instant>,
    template: SubmitSm,
    /// Submits left to send (None: until the duration ends).
    remaining: Option<u64>,
    submit_until: Option<Instant>,
    rate_per_s: Option<f64>,
    tokens: f64,
    refilled: Instant,
    finished_submitting: bool,
    result: BindResult,
}

impl BindLoad {
    fn new(
        index: usize,
        config: Arc<BenchConfig>,
        progress: Arc<Progress>,
        started: Instant,
    ) -> BindLoad {
        let binds = config.binds as u64;
        let remaining = config
            .count
            .map(|count| count / binds + u64::from((index as u64) < count % binds));
        let template = SubmitSm {
            source_addr_ton: 5,
            source_addr_npi: 0,
            source_addr: Address::from_text(&config.source).unwrap_or_default(),
            dest_addr_ton: 1,
            dest_addr_npi: 1,
            destination_addr: Address::from_text(&config.destination).unwrap_or_default(),
            registered_delivery: u8::from(config.dlr),
            short_message: Bytes::copy_from_slice(config.text.as_bytes()),
            ..SubmitSm::default()
        };
        let capacity = NonZeroUsize::new(config.window).unwrap_or(NonZeroUsize::MIN);
        let expected_capacity = match (config.dlr, remaining) {
            (true, Some(n)) => usize::try_from(n).unwrap_or(0).min(1 << 24),
            _ => 0,
        };
        BindLoad {
            index,
            sequence: SequenceNumbers::new(),
            window: Window::new(capacity, config.timeout_ms),
            template,
            remaining,
            submit_until: config
                .duration_s
                .map(|s| started + Duration::from_secs_f64(s.max(0.0))),
            rate_per_s: config.rate_per_s.map(|r| r / config.binds as f64),
            tokens: 1.0,
            refilled: Instant::now(),
            finished_submitting: false,
            result: BindResult {
                latency: new_histogram(),
                statuses: HashMap::new(),
                submitted: 0,
                acknowledged: 0,
                timeouts: 0,
                // Sized for the whole run when it is known, so it never regrows.
                expected_ids: Vec::with_capacity(expected_capacity),
                receipt_ids: Vec::with_capacity(expected_capacity),
                mo_received: 0,
                first_submit: None,
                last_response: None,
                last_receipt: None,
            },
            config,
            progress,
            started,
        }
    }

    fn into_result(self) -> BindResult {
        self.result
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(&mut self) -> Result<(), String> {
        let target = self.config.target;
        let mut conn = PduConnection::connect(target, PeerConfig::default())
            .await
            .map_err(|e| format!("bind {}: cannot connect to {target}: {e}", self.index))?;
        self.bind(&mut conn).await?;
        let outcome = self.load(&mut conn).await;
        // A polite goodbye; the run's figures do not depend on it.
        let seq = self.sequence.allocate();
        if conn.send(&Pdu::new(seq, Body::Unbind)).is_ok() {
            let _ = glommio::timer::timeout(Duration::from_secs(1), async {
                loop {
                    match conn.read_pdu().await {
                        Ok(Some(Frame::Pdu(p))) if p.command_id() == CommandId::UnbindResp => break,
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
                Ok(())
            })
            .await;
        }
        conn.close().await;
        outcome.map_err(|e| format!("bind {}: {e}", self.index))
    }

    async fn bind(&mut self, conn: &mut PduConnection) -> Result<(), String> {
        let bind = Bind {
            system_id: SystemId::from_text(&self.config.system_id)
                .ok_or("--system-id is longer than 15 characters")?,
            password: Password::from_text(&self.config.password)
                .ok_or("--password is longer than 8 characters")?,
            interface_version: 0x34,
            ..Bind::default()
        };
        let seq = self.sequence.allocate();
        let body = match self.config.bind_as {
            BindAs::Transceiver => Body::BindTransceiver(bind),
            BindAs::Transmitter => Body::BindTransmitter(bind),
            BindAs::Receiver => Body::BindReceiver(bind),
        };
        conn.send(&Pdu::new(seq, body)).map_err(|e| e.to_string())?;
        let answer = glommio::timer::timeout(Duration::from_secs(10), async {
            loop {
                match conn.read_pdu().await {
                    Ok(Some(Frame::Pdu(p))) if p.sequence_number == seq => return Ok(Ok(p)),
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(Err("connection closed during bind".to_string())),
                    Err(e) => return Ok(Err(e.to_string())),
                }
            }
        })
        .await
        .map_err(|_| format!("bind {}: no bind response in 10 s", self.index))?;
        let pdu = answer.map_err(|e| format!("bind {}: {e}", self.index))?;
        if !pdu.command_status.is_ok() {
            return Err(format!(
                "bind {} refused: {}",
                self.index,
                pdu.command_status.name().unwrap_or("unknown status")
            ));
        }
        Ok(())
    }

    fn finish_submitting(&mut self) {
        self.finished_submitting = true;
        let done = self
            .progress
            .binds_finished_submitting
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        if done as usize == self.config.binds {
            self.progress
                .all_submitted_at_ms
                .store(self.now_ms().max(1), Ordering::SeqCst);
        }
    }

    fn may_submit_more(&self, now: Instant) -> bool {
        match (self.remaining, self.submit_until) {
            (Some(left), _) => left > 0,
            (None, Some(until)) => now < until,
            (None, None) => false,
        }
    }

    /// Sends submits while the window, the count and the rate allow.
    fn submit(&mut self, conn: &mut PduConnection) -> Result<(), PeerError> {
        let now = Instant::now();
        if let Some(rate) = self.rate_per_s {
            let burst = (self.config.window as f64).max(1.0);
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(burst);
            self.refilled = now;
        }
        let now_ms = self.now_ms();
        while !self.window.is_full() && self.may_submit_more(now) && !conn.is_write_congested() {
            if self.rate_per_s.is_some() {
                if self.tokens < 1.0 {
                    break;
                }
                self.tokens -= 1.0;
            }
            let seq = self.sequence.allocate();
            if self
                .window
                .try_reserve(seq, CommandId::SubmitSm, now_ms, now)
                .is_err()
            {
                break;
            }
            conn.send(&Pdu::new(seq, Body::SubmitSm(self.template.clone())))?;
            self.result.submitted += 1;
            self.result.first_submit.get_or_insert(now);
            self.progress.submitted.fetch_add(1, Ordering::Relaxed);
            if let Some(left) = &mut self.remaining {
                *left -= 1;
            }
        }
        Ok(())
    }

    /// True once this bind has nothing more to wait for.
    fn run_is_over(&mut self) -> bool {
        if !self.finished_submitting {
            if self.may_submit_more(Instant::now()) || !self.window.is_empty() {
                return false;
            }
            self.finish_submitting();
        }
        let all_at_ms = self.progress.all_submitted_at_ms.load(Ordering::SeqCst);
        if all_at_ms == 0 {
            return false;
        }
        let expected = match (self.config.bind_as, self.config.expect_receipts) {
            // No receipt can reach a transmitter bind.
            (BindAs::Transmitter, _) => return true,
            (_, Some(expected)) => expected,
            (BindAs::Receiver, None) => u64::MAX,
            (BindAs::Transceiver, None) if self.config.dlr => {
                self.progress.expected_receipts.load(Ordering::SeqCst)
            }
            (BindAs::Transceiver, None) => return true,
        };
        let received = self.progress.receipts.load(Ordering::SeqCst);
        let waited_ms = self.now_ms().saturating_sub(all_at_ms);
        received >= expected || waited_ms as f64 >= self.config.dlr_wait_s * 1000.0
    }

    async fn load(&mut self, conn: &mut PduConnection) -> Result<(), PeerError> {
        loop {
            let now_ms = self.now_ms();
            let expired = self.window.expire(now_ms).count() as u64;
            if expired > 0 {
                self.result.timeouts += expired;
                self.progress.errors.fetch_add(expired, Ordering::Relaxed);
            }
            self.submit(conn)?;
            if self.run_is_over() {
                return conn.flush().await;
            }
            let wait = self.next_wait();
            match conn.next_event(glommio::timer::sleep(wait)).await? {
                Event::Frame(frame) => {
                    self.on_frame(conn, frame)?;
                    while let Some(frame) = conn.buffered_frame()? {
                        self.on_frame(conn, frame)?;
                    }
                }
                Event::Closed => {
                    return Err(PeerError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the server closed the connection",
                    )))
                }
                Event::Woken(()) => {}
            }
        }
    }

    fn next_wait(&self) -> Duration {
        let mut wait_ms = 50u64;
        if let Some(deadline) = self.window.next_deadline_ms() {
            wait_ms = wait_ms.min(deadline.saturating_sub(self.now_ms()));
        }
        if let Some(rate) = self.rate_per_s {
            if self.tokens < 1.0 && rate > 0.0 {
                let ms = ((1.0 - self.tokens) / rate * 1000.0).ceil() as u64;
                wait_ms = wait_ms.min(ms);
            }
        }
        Duration::from_millis(wait_ms.max(1))
    }

    fn on_frame(&mut self, conn: &mut PduConnection, frame: Frame) -> Result<(), PeerError> {
        let pdu = match frame {
            Frame::Pdu(pdu) => pdu,
            Frame::Rejected { reply, .. } => {
                if let Some(reply) = reply {
                    conn.send(&reply)?;
                }
                return Ok(());
            }
        };
        let seq = pdu.sequence_number;
        match pdu.body {
            Body::SubmitSmResp(resp) => {
                self.on_submit_resp(
                    seq,
                    CommandId::SubmitSmResp,
                    pdu.command_status,
                    resp.message_id.as_bytes(),
                );
                Ok(())
            }
            Body::GenericNack => {
                self.on_submit_resp(seq, CommandId::GenericNack, pdu.command_status, &[]);
                Ok(())
            }
            Body::DeliverSm(sm) => {
                conn.send(&Pdu::new(
                    seq,
                    Body::DeliverSmResp(DeliverSmResp::default()),
                ))?;
                self.on_deliver(&sm);
                Ok(())
            }
            Body::EnquireLink => conn.send(&Pdu::new(seq, Body::EnquireLinkResp)),
            Body::Unbind => {
                conn.send(&Pdu::new(seq, Body::UnbindResp))?;
                Err(PeerError::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the server unbound",
                )))
            }
            _ => Ok(()),
        }
    }

    fn on_submit_resp(
        &mut self,
        seq: u32,
        command: CommandId,
        status: CommandStatus,
        message_id: &[u8],
    ) {
        let sent = match self.window.complete(seq, command) {
            ResponseMatch::Matched(o) | ResponseMatch::Nacked(o) => o.tag,
            ResponseMatch::Mismatched { .. } | ResponseMatch::Unknown { .. } => return,
        };
        let now = Instant::now();
        let micros =
            u64::try_from(now.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX);
        self.result.latency.saturating_record(micros.max(1));
        self.result.last_response = Some(now);
        if !status.is_ok() {
            *self.result.statuses.entry(status.0).or_insert(0) += 1;
            self.progress.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.result.acknowledged += 1;
        self.progress.acknowledged.fetch_add(1, Ordering::Relaxed);
        if self.config.dlr {
            let id = String::from_utf8_lossy(message_id);
            if let Ok(key) = self.config.id_format.key_from_submit_resp(&id) {
                self.result.expected_ids.push(id_hash(key.as_str()));
                self.progress
                    .expected_receipts
                    .fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn on_deliver(&mut self, sm: &SubmitSm) {
        if ReceiptKind::from_esm_class(sm.esm_class).is_none() {
            self.result.mo_received += 1;
            return;
        }
        let hash = match receipt_id(sm) {
            Some(id) => self
                .config
                .id_format
                .key_from_receipt(&id)
                .map_or(UNREADABLE_ID, |k| id_hash(k.as_str())),
            // An unreadable id still counts, as a receipt matching nothing.
            None => UNREADABLE_ID,
        };
        self.result.receipt_ids.push(hash);
        self.result.last_receipt = Some(Instant::now());
        self.progress.receipts.fetch_add(1, Ordering::SeqCst);
    }
}

/// Stands for a receipt whose id could not be read.
const UNREADABLE_ID: u128 = u128::MAX;

/// The id a receipt reports: receipted_message_id when present (it wins over
/// the text, as in `identify_receipt`, and reading it skips parsing the text
/// at a hundred thousand receipts a second), else the text's `id:`.
fn receipt_id(sm: &SubmitSm) -> Option<String> {
    let from_tlv = sm
        .tlvs
        .get(crate::smpp::tlv::tag::RECEIPTED_MESSAGE_ID)
        .map(|raw| {
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(raw.get(..end).unwrap_or_default())
                .trim()
                .to_owned()
        })
        .filter(|id| !id.is_empty());
    if from_tlv.is_some() {
        return from_tlv;
    }
    identify_receipt(
        sm.esm_class,
        &sm.short_message,
        None,
        sm.tlvs.message_state(),
        None,
        ReceiptSyntax::default(),
    )
    .ok()
    .flatten()
    .map(|r| r.receipt.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_match_once_and_the_rest_is_counted() {
        let expected = vec![id_hash("1"), id_hash("2"), id_hash("3"), id_hash("4")];
        let receipts = vec![
            id_hash("2"),
            id_hash("1"),
            id_hash("2"),
            id_hash("9"),
            id_hash("3"),
        ];
        let counts = match_receipts(expected, receipts);
        assert_eq!(counts.expected, 4);
        assert_eq!(counts.matched, 3);
        assert_eq!(counts.duplicated, 1);
        assert_eq!(counts.unknown, 1);
        assert_eq!(counts.missing, 1);
    }

    #[test]
    fn the_receipt_id_comes_from_the_tlv_or_else_the_text() {
        let mut sm = SubmitSm {
            esm_class: 0x04,
            short_message: Bytes::from_static(b"id:abc sub:001 dlvrd:001 stat:DELIVRD err:000"),
            ..SubmitSm::default()
        };
        assert_eq!(receipt_id(&sm).as_deref(), Some("abc"));
        let id = crate::smpp::pdu::MessageId::from_text("7f").expect("id");
        sm.tlvs.set_receipted_message_id(&id).expect("tlv");
        assert_eq!(receipt_id(&sm).as_deref(), Some("7f"));
        sm.tlvs = Default::default();
        sm.short_message = Bytes::from_static(b"no id here");
        assert_eq!(receipt_id(&sm), None);
    }

    #[test]
    fn hashes_differ_for_different_ids() {
        assert_ne!(id_hash("abc"), id_hash("abd"));
        assert_eq!(id_hash("abc"), id_hash("abc"));
    }

    #[test]
    fn counts_split_evenly_across_binds() {
        let config = Arc::new(BenchConfig {
            binds: 3,
            count: Some(10),
            ..BenchConfig::default()
        });
        let shares: Vec<u64> = (0..3)
            .map(|i| {
                BindLoad::new(i, config.clone(), Arc::default(), Instant::now())
                    .remaining
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(shares, vec![4, 3, 3]);
    }

    #[test]
    fn bind_kinds_parse_and_a_receiver_submits_nothing() {
        assert_eq!(BindAs::parse("receiver"), Some(BindAs::Receiver));
        assert_eq!(BindAs::parse("transmitter"), Some(BindAs::Transmitter));
        assert_eq!(BindAs::parse("transceiver"), Some(BindAs::Transceiver));
        assert_eq!(BindAs::parse("trx"), None);
        let config = BenchConfig {
            bind_as: BindAs::Receiver,
            count: Some(5),
            ..BenchConfig::default()
        };
        let error = run(config).err().unwrap_or_default();
        assert!(error.contains("--count 0"), "{error}");
    }

    #[test]
    fn a_report_prints_every_figure() {
        let mut report = BenchReport {
            binds: 2,
            window: 8,
            submitted: 10,
            acknowledged: 9,
            ..BenchReport::default()
        };
        report.errors.insert("ESME_RTHROTTLED".into(), 1);
        let text = report.to_string();
        assert!(text.contains("ESME_RTHROTTLED=1"), "{text}");
        assert!(text.contains("acknowledged OK: 9"), "{text}");
    }
}
