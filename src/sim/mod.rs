//! `tern sim`: an operator SMSC simulator for tests and benchmarks.
//!
//! Owns: the simulator's configuration, its thread-per-core start-up and
//! shutdown, its counters and the report it writes. `core` holds one
//! executor's state (receipt scheduling and routing across executors),
//! `conn` one SMPP connection. Must not touch: the engine, the store, the
//! configuration file of `tern serve`; it only speaks SMPP over `peer`.

mod conn;
mod core;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::smpp::receipt::MessageState;
use crate::smpp::status::CommandStatus;

/// How the simulator writes the message ids it hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimIdFormat {
    /// Lowercase hex in submit_sm_resp and in the receipt.
    Hex,
    /// Decimal in submit_sm_resp and in the receipt.
    Dec,
    /// Decimal in submit_sm_resp, hex in the receipt: a quirk real SMSCs have
    /// that the engine's id normalisation must absorb.
    DecRespHexReceipt,
}

impl SimIdFormat {
    pub fn parse(text: &str) -> Option<SimIdFormat> {
        match text {
            "hex" => Some(SimIdFormat::Hex),
            "dec" => Some(SimIdFormat::Dec),
            "dec-resp-hex-receipt" => Some(SimIdFormat::DecRespHexReceipt),
            _ => None,
        }
    }
}

/// Receipt outcomes and their relative weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeMix {
    /// (message_state value, weight); weights sum to more than 0.
    weighted: Vec<(u8, u32)>,
    total: u64,
}

impl OutcomeMix {
    /// `DELIVRD=90,UNDELIV=7,EXPIRED=3`: stat names as receipts write them.
    pub fn parse(text: &str) -> Result<OutcomeMix, String> {
        let mut weighted = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected STAT=WEIGHT"))?;
            let state = MessageState::from_stat_text(name.trim());
            let value = state
                .message_state()
                .ok_or_else(|| format!("`{name}` is not a receipt stat (DELIVRD, UNDELIV, ...)"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{weight}`: weight must be a whole number"))?;
            if weighted.len() >= 16 {
                return Err("at most 16 outcomes".into());
            }
            weighted.push((value, weight));
        }
        let total = weighted.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return Err("outcome weights must sum to more than 0".into());
        }
        Ok(OutcomeMix { weighted, total })
    }

    /// The message_state value for a draw uniform in [0, total).
    fn pick(&self, draw: u64) -> u8 {
        let mut left = draw % self.total;
        for (state, weight) in &self.weighted {
            if left < u64::from(*weight) {
                return *state;
            }
            left -= u64::from(*weight);
        }
        unreachable!("draw {draw} below total {} always lands", self.total)
    }
}

impl Default for OutcomeMix {
    fn default() -> Self {
        OutcomeMix::parse("DELIVRD=100").unwrap_or_else(|e| unreachable!("built-in mix: {e}"))
    }
}

/// Everything `tern sim` can be told.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub cores: Vec<usize>,
    /// When set, binds must carry these credentials; otherwise any are accepted.
    pub system_id: Option<String>,
    pub password: Option<String>,
    pub id_format: SimIdFormat,
    pub receipt_delay_ms: u64,
    /// Each receipt waits an extra uniform [0, jitter] ms.
    pub receipt_jitter_ms: u64,
    pub outcomes: OutcomeMix,
    /// Answer ESME_RTHROTTLED to every Nth submit_sm on each core (0: never).
    pub throttle_every: u64,
    /// Probability in [0, 1] of answering `fail_status` instead of OK.
    pub fail_rate: f64,
    pub fail_status: CommandStatus,
    pub resp_delay_ms: u64,
    /// Close a connection once it has submitted this many (0: never).
    pub drop_after: u64,
    /// submit_sm per second over all cores beyond which ESME_RTHROTTLED is
    /// answered (0: no limit).
    pub max_tps: u64,
    pub mo_rate_per_s: f64,
    pub mo_to: String,
    pub seed: u64,
    /// deliver_sm outstanding per receiver bind.
    pub deliver_window: usize,
    pub deliver_timeout_ms: u64,
    /// A receipt is dropped (and counted) after this many unanswered sends.
    pub deliver_max_attempts: u32,
    /// Receipts kept per core while no receiver is bound.
    pub held_max: usize,
    pub summary_every_ms: u64,
    pub report_json: Option<PathBuf>,
    /// Period of the enquire_link the simulator sends on every bound
    /// connection, as real SMSCs do (0: never). One left unanswered for a
    /// whole period closes the connection.
    pub enquire_link_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2776)),
            cores: Vec::new(),
            system_id: None,
            password: None,
            id_format: SimIdFormat::Hex,
            receipt_delay_ms: 0,
            receipt_jitter_ms: 0,
            outcomes: OutcomeMix::default(),
            throttle_every: 0,
            fail_rate: 0.0,
            fail_status: CommandStatus::ESME_RSYSERR,
            resp_delay_ms: 0,
            drop_after: 0,
            max_tps: 0,
            mo_rate_per_s: 0.0,
            mo_to: "12345".into(),
            seed: 1,
            deliver_window: 256,
            deliver_timeout_ms: 10_000,
            deliver_max_attempts: 5,
            held_max: 1_000_000,
            summary_every_ms: 1_000,
            report_json: None,
            enquire_link_ms: 0,
        }
    }
}

macro_rules! counters {
    ($( $variant:ident => $name:literal, )*) => {
        /// What the simulator counts, one atomic each per core.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Counter { $( $variant, )* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[ $( Counter::$variant, )* ];

            pub fn name(self) -> &'static str {
                match self { $( Counter::$variant => $name, )* }
            }
        }
    };
}

counters! {
    Connections => "connections",
    Binds => "binds",
    BindsRefused => "binds_refused",
    Submits => "submits",
    SubmitsOk => "submits_ok",
    Throttled => "throttled",
    Failed => "failed",
    Rejected => "rejected",
    ReceiptsScheduled => "receipts_scheduled",
    ReceiptsSent => "receipts_sent",
    ReceiptsRetried => "receipts_retried",
    ReceiptsAcked => "receipts_acked",
    ReceiptsForwarded => "receipts_forwarded",
    ReceiptsHeld => "receipts_held",
    ReceiptsDropped => "receipts_dropped",
    MoSent => "mo_sent",
    MoAcked => "mo_acked",
    MoUnrouted => "mo_unrouted",
    MoRetried => "mo_retried",
    MoDropped => "mo_dropped",
    GenericNacks => "generic_nacks",
    EnquireLinks => "enquire_links",
    EnquireLinksSent => "enquire_links_sent",
    EnquireLinkResps => "enquire_link_resps",
    EnquireLinksUnanswered => "enquire_links_unanswered",
    ConnectionsDropped => "connections_dropped",
}

/// One core's counters. Only its own executor writes them (relaxed adds on a
/// cache line no other core writes); the reporter reads them all.
#[derive(Debug)]
pub struct Counters([AtomicU64; Counter::ALL.len()]);

impl Default for Counters {
    fn default() -> Self {
        Counters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Counters {
    pub fn add(&self, counter: Counter, n: u64) {
        if let Some(c) = self.0.get(counter as usize) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.0
            .get(counter as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

fn sum(all: &[Arc<Counters>], counter: Counter) -> u64 {
    all.iter().map(|c| c.get(counter)).sum()
}

/// Totals and per-destination counts, as written to `--report-json`.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub elapsed_s: f64,
    pub totals: std::collections::BTreeMap<&'static str, u64>,
    /// submit_sm answered OK, by destination_addr.
    pub per_destination: std::collections::BTreeMap<String, u64>,
    /// Destinations beyond the tracked maximum, counted together.
    pub per_destination_overflow: u64,
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sim: {:.1}s", self.elapsed_s)?;
        for (name, value) in &self.totals {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

/// Destinations tracked per core; beyond this they are counted together so
/// a test sending to random numbers cannot grow the map without limit.
pub const MAX_TRACKED_DESTINATIONS: usize = 100_000;

/// Set by SIGINT/SIGTERM; read by every executor.
static STOP_SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_SIGNALLED.store(true, Ordering::SeqCst);
}

fn install_stop_handlers() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Runs the simulator until SIGINT/SIGTERM, or until `stop` is set; prints a
/// summary line every `summary_every_ms` on stderr; returns the report (also
/// written to `report_json` when configured).
pub fn run(config: SimConfig, stop: Arc<AtomicBool>) -> Result<SimReport, String> {
    let cores = if config.cores.is_empty() {
        crate::runtime::available_cores()
    } else {
        config.cores.clone()
    };
    crate::runtime::check_host(cores.len()).map_err(|e| e.to_string())?;
    install_stop_handlers();
    let counters: Vec<Arc<Counters>> = cores.iter().map(|_| Arc::default()).collect();
    let mesh = core::Mesh::new(cores.len());
    let started = Instant::now();
    let mut handles = Vec::new();
    let mut config = Arc::new(config);
    for (index, &cpu) in cores.iter().enumerate() {
        let (listening_tx, listening_rx) = std::sync::mpsc::channel();
        let handle = {
            let config = config.clone();
            let counters = counters[index].clone();
            let stop = stop.clone();
            let links = mesh.links_for(index);
            crate::runtime::spawn_pinned(&format!("sim-{index}"), cpu, move || {
                core::run_core(index, config, counters, links, stop, listening_tx)
            })
            .map_err(|e| format!("cannot start executor on core {cpu}: {e}"))?
        };
        // The first core resolves port 0; the others share its port through
        // SO_REUSEPORT. A busy address stops the start-up here, by name.
        let bound = listening_rx
            .recv()
            .map_err(|_| format!("executor on core {cpu} ended before listening"))
            .and_then(|bound| bound);
        let bound = match bound {
            Ok(bound) => bound,
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                for handle in handles.into_iter().chain(std::iter::once(handle)) {
                    let _ = handle.join();
                }
                return Err(e);
            }
        };
        handles.push(handle);
        if config.listen != bound {
            config = Arc::new(SimConfig {
                listen: bound,
                ..(*config).clone()
            });
        }
    }
    eprintln!(
        "sim: listening on {} with {} core(s) {:?}",
        config.listen,
        cores.len(),
        cores
    );
    let mut last = (Instant::now(), 0u64);
    let tick = Duration::from_millis(config.summary_every_ms.clamp(50, 60_000));
    while !stop.load(Ordering::SeqCst) && !STOP_SIGNALLED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if last.0.elapsed() >= tick {
            let submits = sum(&counters, Counter::Submits);
            let rate = (submits - last.1) as f64 / last.0.elapsed().as_secs_f64();
            eprintln!(
                "sim: binds={} submits={} ({:.0}/s) throttled={} receipts sent={} acked={} held={}",
                sum(&counters, Counter::Binds),
                submits,
                rate,
                sum(&counters, Counter::Throttled),
                sum(&counters, Counter::ReceiptsSent),
                sum(&counters, Counter::ReceiptsAcked),
                sum(&counters, Counter::ReceiptsHeld),
            );
            last = (Instant::now(), submits);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut per_destination = std::collections::BTreeMap::new();
    let mut overflow = 0;
    for handle in handles {
        let outcome = handle
            .join()
            .map_err(|e| format!("executor failed: {e:?}"))?;
        let (destinations, core_overflow): (HashMap<String, u64>, u64) = outcome?;
        overflow += core_overflow;
        for (dest, n) in destinations {
            *per_destination.entry(dest).or_insert(0) += n;
        }
    }
    let report = SimReport {
        elapsed_s: started.elapsed().as_secs_f64(),
        totals: Counter::ALL
            .iter()
            .map(|&c| (c.name(), sum(&counters, c)))
            .collect(),
        per_destination,
        per_destination_overflow: overflow,
    };
    eprintln!("{report}");
    if let Some(path) = &config.report_json {
        let json = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json)
            .map_err(|e| format!("cannot write report {}: {e}", path.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_mix_parses_and_picks_by_weight() {
        let mix = OutcomeMix::parse("DELIVRD=90, UNDELIV=7,EXPIRED=3").expect("parse");
        assert_eq!(mix.total, 100);
        assert_eq!(mix.pick(0), 2);
        assert_eq!(mix.pick(89), 2);
        assert_eq!(mix.pick(90), 5);
        assert_eq!(mix.pick(97), 3);
        assert_eq!(mix.pick(199), 3, "draws wrap around the total");
        assert!(OutcomeMix::parse("DELIVRD").is_err());
        assert!(OutcomeMix::parse("NOPE=3").is_err());
        assert!(OutcomeMix::parse("DELIVRD=0").is_err());
        assert!(OutcomeMix::parse("DELIVRD=x").is_err());
    }

    #[test]
    fn id_formats_parse() {
        assert_eq!(SimIdFormat::parse("hex"), Some(SimIdFormat::Hex));
        assert_eq!(SimIdFormat::parse("dec"), Some(SimIdFormat::Dec));
        assert_eq!(SimIdFormat::parse("octal"), None);
    }

    #[test]
    fn counters_sum_across_cores() {
        let all: Vec<Arc<Counters>> = vec![Arc::default(), Arc::default()];
        all[0].add(Counter::Submits, 3);
        all[1].add(Counter::Submits, 4);
        assert_eq!(sum(&all, Counter::Submits), 7);
        assert_eq!(sum(&all, Counter::MoSent), 0);
    }
}
