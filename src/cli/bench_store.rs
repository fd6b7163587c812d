//! `tern bench store`: committed proposals per second and commit latency of
//! the replicated store, 1 voter or 3 voters on loopback (threads in this
//! process, real TCP between them, real fdatasync on the data dir's disk).
//!
//! Owns: the load generator, the raw fdatasync probe, the report. Must not
//! touch: store internals beyond `store::driver`'s public API.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::store::driver::{
    filler_account_command, no_op_command, FillerCommands, PendingReply, Store, StoreConfig,
    StoreHandle,
};

/// What the proposers propose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// A message `Accept` per proposal: realistic apply, the state grows.
    Accept,
    /// A command that changes nothing: consensus, log and batching alone.
    NoOp,
}

/// What `tern bench store` was asked to do.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchStoreArgs {
    /// 1 (a single appliance) or 3 (three voters on loopback TCP in this process).
    #[arg(long, default_value_t = 1)]
    pub voters: u8,
    /// Size of each proposed command in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Proposer threads.
    #[arg(long, default_value_t = 4)]
    pub proposers: usize,
    /// Proposals each proposer keeps in flight.
    #[arg(long, default_value_t = 4096)]
    pub window: usize,
    /// What is proposed: `accept` (a message Accept each, the state grows)
    /// or `no-op` (a command that changes nothing: the replication path alone).
    #[arg(long, value_enum, default_value_t = Workload::Accept)]
    pub workload: Workload,
    /// Raft entry (proposal batch) size limit in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_batch_bytes: usize,
    /// Where the nodes' data goes (a scratch directory inside it is removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The figures of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchStoreReport {
    pub voters: u8,
    pub workload: Workload,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub commits: u64,
    pub commits_per_s: f64,
    pub retries: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub fsyncs_per_s: f64,
    pub entries_per_fsync: f64,
    pub proposals_per_fsync: f64,
    pub raw_fdatasync_per_s: f64,
}

/// Runs the benchmark; returns the process exit code.
pub fn run(args: BenchStoreArgs) -> i32 {
    match bench(&args) {
        Ok(report) => {
            print_report(&report, args.json);
            0
        }
        Err(e) => {
            eprintln!("tern bench store: {e}");
            1
        }
    }
}

fn print_report(report: &BenchStoreReport, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("tern bench store: cannot encode the report: {e}"),
        }
        return;
    }
    println!("voters                 {}", report.voters);
    println!("workload               {:?}", report.workload);
    println!("payload                {} bytes", report.payload_bytes);
    println!("duration               {:.1} s", report.duration_s);
    println!(
        "committed              {} ({:.0}/s)",
        report.commits, report.commits_per_s
    );
    println!("retries                {}", report.retries);
    println!(
        "commit latency         p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        report.p50_us, report.p99_us, report.p999_us, report.max_us
    );
    println!("log fsyncs             {:.0}/s", report.fsyncs_per_s);
    println!("entries per fsync      {:.2}", report.entries_per_fsync);
    println!("proposals per fsync    {:.1}", report.proposals_per_fsync);
    println!(
        "raw fdatasync (4 KiB)  {:.0}/s on the same disk",
        report.raw_fdatasync_per_s
    );
}

/// Removes the bench's data directory however the run ends.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn bench(args: &BenchStoreArgs) -> Result<BenchStoreReport, String> {
    if args.voters != 1 && args.voters != 3 {
        return Err(format!("--voters must be 1 or 3, not {}", args.voters));
    }
    if args.duration_s == 0 || args.proposers == 0 || args.window == 0 {
        return Err("--duration-s, --proposers and --window must be positive".into());
    }
    let base = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = ScratchDir(base.join(format!("tern-bench-store-{}", std::process::id())));
    fs::create_dir_all(&scratch.0)
        .map_err(|e| format!("cannot create {}: {e}", scratch.0.display()))?;

    // The physical limit batching works against, measured first so the store's
    // own traffic does not disturb it.
    let raw_fdatasync_per_s = raw_fdatasync_rate(&scratch.0, Duration::from_secs(1))
        .map_err(|e| format!("fdatasync probe: {e}"))?;

    let stores = start_cluster(args.voters, args.max_batch_bytes, &scratch.0)?;
    let leader = wait_for_leader(&stores, Duration::from_secs(10))?;
    let handle = stores[leader].handle();
    handle
        .propose_blocking(filler_account_command())
        .map_err(|e| format!("provisioning the bench account: {e}"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(args.proposers);
    for worker in 0..args.proposers {
        let handle = handle.clone();
        let stop = Arc::clone(&stop);
        let committed = Arc::clone(&committed);
        let payload_bytes = args.payload_bytes;
        let window = args.window;
        let workload = args.workload;
        workers.push(
            thread::Builder::new()
                .name(format!("bench-proposer-{worker}"))
                .spawn(move || {
                    proposer(
                        handle,
                        worker as u64,
                        payload_bytes,
                        window,
                        workload,
                        &stop,
                        &committed,
                    )
                })
                .map_err(|e| format!("cannot spawn a proposer: {e}"))?,
        );
    }

    let metrics_before = handle.metrics();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    let mut last_report = (started, 0u64);
    while Instant::now() < deadline {
        thread::sleep(
            Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now())),
        );
        let now = Instant::now();
        if now.duration_since(last_report.0) >= Duration::from_secs(1) {
            let total = committed.load(Ordering::Relaxed);
            let rate =
                (total - last_report.1) as f64 / now.duration_since(last_report.0).as_secs_f64();
            eprint!(
                "\r[{:>4.0}s/{}s] committed {total} ({rate:.0}/s)   ",
                now.duration_since(started).as_secs_f64(),
                args.duration_s
            );
            last_report = (now, total);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let metrics_after = handle.metrics();
    eprintln!();

    let mut latencies = new_histogram()?;
    let mut commits = 0u64;
    let mut retries = 0u64;
    for worker in workers {
        let outcome = worker
            .join()
            .map_err(|_| "a proposer panicked".to_string())?;
        latencies
            .add(&outcome.latencies)
            .map_err(|e| e.to_string())?;
        commits += outcome.commits;
        retries += outcome.retries;
    }
    for store in stores {
        store
            .shutdown()
            .map_err(|e| format!("store shutdown: {e}"))?;
    }

    let seconds = elapsed.as_secs_f64();
    let fsyncs = metrics_after
        .log_syncs
        .saturating_sub(metrics_before.log_syncs);
    let entries = metrics_after
        .log_entries_synced
        .saturating_sub(metrics_before.log_entries_synced);
    let proposals = metrics_after
        .proposals_synced
        .saturating_sub(metrics_before.proposals_synced);
    let per_fsync = |n: u64| {
        if fsyncs == 0 {
            0.0
        } else {
            n as f64 / fsyncs as f64
        }
    };
    Ok(BenchStoreReport {
        voters: args.voters,
        workload: args.workload,
        payload_bytes: args.payload_bytes,
        duration_s: seconds,
        commits,
        commits_per_s: commits as f64 / seconds,
        retries,
        p50_us: latencies.value_at_quantile(0.50),
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
        max_us: latencies.max(),
        fsyncs_per_s: fsyncs as f64 / seconds,
        entries_per_fsync: per_fsync(entries),
        proposals_per_fsync: per_fsync(proposals),
        raw_fdatasync_per_s,
    })
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    // 1 us .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

/// Writes 4 KiB and fdatasyncs, in a loop, for about `duration`.
pub fn raw_fdatasync_rate(dir: &Path, duration: Duration) -> std::io::Result<f64> {
    let path = dir.join("fdatasync-probe");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let block = [0x5au8; 4096];
    // Cycle over a small preallocated region: each sync then flushes data,
    // not file-size metadata, like the log's steady state.
    const SLOTS: u64 = 256;
    for slot in 0..SLOTS {
        file.write_all_at(&block, slot * 4096)?;
    }
    file.sync_all()?;
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < duration {
        file.write_all_at(&block, (syncs % SLOTS) * 4096)?;
        file.sync_data()?;
        syncs += 1;
    }
    let rate = syncs as f64 / started.elapsed().as_secs_f64();
    drop(file);
    fs::remove_file(&path)?;
    Ok(rate)
}

fn free_loopback_port() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map_err(|e| e.to_string())
}

fn start_cluster(voters: u8, max_batch_bytes: usize, dir: &Path) -> Result<Vec<Store>, String> {
    let ids: Vec<u64> = (1..=u64::from(voters)).collect();
    let mut addrs = Vec::with_capacity(ids.len());
    for id in &ids {
        addrs.push((*id, free_loopback_port()?));
    }
    let secret: Vec<u8> = b"tern bench store shared secret!!".to_vec();
    let mut stores = Vec::with_capacity(ids.len());
    for (id, addr) in &addrs {
        let mut config =
            StoreConfig::new(*id, *addr, dir.join(format!("node-{id}")), secret.clone());
        config.peers = addrs
            .iter()
            .filter(|(peer, _)| peer != id)
            .copied()
            .collect();
        config.initial_voters = ids.clone();
        config.max_batch_bytes = max_batch_bytes;
        stores.push(Store::start(config).map_err(|e| format!("node {id}: {e}"))?);
    }
    Ok(stores)
}

fn wait_for_leader(stores: &[Store], timeout: Duration) -> Result<usize, String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for (position, store) in stores.iter().enumerate() {
            let metrics = store.handle().metrics();
            if metrics.leader_id == metrics.node_id && metrics.node_id != 0 {
                return Ok(position);
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err("no leader elected within the timeout".into())
}

struct ProposerOutcome {
    latencies: Histogram<u64>,
    commits: u64,
    retries: u64,
}

fn proposer(
    handle: StoreHandle,
    worker: u64,
    payload_bytes: usize,
    window: usize,
    workload: Workload,
    stop: &AtomicBool,
    committed: &AtomicU64,
) -> ProposerOutcome {
    let mut outcome = ProposerOutcome {
        latencies: new_histogram()
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid")),
        commits: 0,
        retries: 0,
    };
    let mut in_flight: VecDeque<(Instant, PendingReply)> = VecDeque::with_capacity(window);
    let mut sequence = 0u64;
    let mut commands = FillerCommands::new(payload_bytes);
    let no_op = no_op_command(payload_bytes);
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while !stopping && in_flight.len() < window {
            let command = match workload {
                Workload::Accept => commands.command(worker, sequence),
                Workload::NoOp => no_op.clone(),
            };
            sequence += 1;
            match handle.try_propose(command) {
                Ok(pending) => in_flight.push_back((Instant::now(), pending)),
                Err(_) => {
                    outcome.retries += 1;
                    break;
                }
            }
        }
        let Some((sent_at, pending)) = in_flight.pop_front() else {
            if stopping {
                return outcome;
            }
            thread::sleep(Duration::from_millis(1));
            continue;
        };
        match pending.wait() {
            Ok(_) => {
                let micros = u64::try_from(sent_at.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let _ = outcome.latencies.record(micros.min(60_000_000));
                outcome.commits += 1;
                committed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => outcome.retries += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdatasync_probe_measures_a_positive_rate() {
        let dir = std::env::temp_dir().join(format!("tern-fdatasync-probe-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let rate = raw_fdatasync_rate(&dir, Duration::from_millis(100)).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(rate > 0.0);
    }
}
