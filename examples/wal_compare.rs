//! Compares the raft log (`tern::store::wal`) with the raw fdatasync rate of
//! the same disk, sled 0.34 (insert + flush) and raft-engine 0.4, for 200-byte
//! entries in batches of 1, 16, 256 and 4096, one durable write per batch.
//!
//! Run: `cargo run --release --example wal_compare [-- --dir PATH --seconds S]`.
//! PATH (default `target/wal-compare`) decides which disk is measured; each
//! case runs for S seconds (default 2) in a fresh subdirectory that is removed
//! afterwards. Prints a markdown table for bench/README.md.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raft::eraftpb::{Entry, HardState};
use tern::store::wal::{FsDisk, LogOptions, RaftLog};

const PAYLOAD_BYTES: usize = 200;
const BATCH_SIZES: [usize; 4] = [1, 16, 256, 4096];

type BoxError = Box<dyn std::error::Error>;

struct Measured {
    system: &'static str,
    batch: usize,
    entries: u64,
    syncs: u64,
    elapsed: Duration,
    /// Time spent handing entries to the log (encoding) as opposed to syncing,
    /// where the system separates the two.
    append_share: Option<f64>,
}

impl Measured {
    fn row(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let share = self
            .append_share
            .map_or("-".to_string(), |s| format!("{:.1}%", s * 100.0));
        format!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {} |",
            self.system,
            self.batch,
            self.entries as f64 / secs,
            self.syncs as f64 / secs,
            secs * 1e6 / self.syncs.max(1) as f64,
            share
        )
    }
}

fn payload(index: u64) -> Vec<u8> {
    (0..PAYLOAD_BYTES)
        .map(|i| (index as u8).wrapping_mul(31) ^ (i as u8))
        .collect()
}

/// A reusable batch whose indexes are rewritten in place for each write, so
/// that building it costs nothing inside the measured loop.
fn template(batch: usize) -> Vec<Entry> {
    (0..batch as u64)
        .map(|i| Entry {
            term: 1,
            index: i + 1,
            data: payload(i).into(),
            ..Entry::default()
        })
        .collect()
}

fn renumber(batch: &mut [Entry], first_index: u64) {
    for (offset, entry) in batch.iter_mut().enumerate() {
        entry.index = first_index + offset as u64;
    }
}

fn fresh_dir(root: &Path, name: &str) -> Result<PathBuf, BoxError> {
    let dir = root.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The disk's own limit: 4 KiB writes each followed by fdatasync, either
/// appending (the file grows, so each sync also commits the new size) or
/// overwriting a file written and synced beforehand (data only).
fn raw_fdatasync(root: &Path, duration: Duration, overwrite: bool) -> Result<Measured, BoxError> {
    let dir = fresh_dir(root, "raw")?;
    let path = dir.join("raw");
    let block = [0x5au8; 4096];
    const OVERWRITE_BLOCKS: u64 = 4096;
    if overwrite {
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        for _ in 0..OVERWRITE_BLOCKS {
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)?;
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < duration {
        if overwrite {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&block, (syncs % OVERWRITE_BLOCKS) * 4096)?;
        } else {
            file.write_all(&block)?;
        }
        file.sync_data()?;
        syncs += 1;
    }
    let elapsed = started.elapsed();
    fs::remove_dir_all(&dir)?;
    Ok(Measured {
        system: if overwrite {
            "raw 4 KiB overwrite + fdatasync"
        } else {
            "raw 4 KiB append + fdatasync"
        },
        batch: 0,
        entries: 0,
        syncs,
        elapsed,
        append_share: None,
    })
}

fn tern_wal(root: &Path, batch_size: usize, duration: Duration) -> Result<Measured, BoxError> {
    let dir = fresh_dir(root, "tern-wal")?;
    let (mut log, _) = RaftLog::open(FsDisk::open(&dir)?, LogOptions::default())?;
    let mut batch = template(batch_size);
    let mut next = 1u64;
    let mut append_time = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < duration {
        renumber(&mut batch, next);
        next += batch_size as u64;
        let append_started = Instant::now();
        log.append(&batch)?;
        log.set_hard_state(&HardState {
            term: 1,
            vote: 1,
            commit: next - 1,
            ..HardState::default()
        })?;
        append_time += append_started.elapsed();
        log.sync()?;
    }
    let elapsed = started.elapsed();
    let stats = log.stats();
    drop(log);
    fs::remove_dir_all(&dir)?;
    Ok(Measured {
        system: "tern wal (fdatasync)",
        batch: batch_size,
        entries: stats.entries,
        syncs: stats.syncs,
        elapsed,
        append_share: Some(append_time.as_secs_f64() / elapsed.as_secs_f64()),
    })
}

fn sled_flush(root: &Path, batch_size: usize, duration: Duration) -> Result<Measured, BoxError> {
    let dir = fresh_dir(root, "sled")?;
    let db = sled::Config::new().path(&dir).flush_every_ms(None).open()?;
    let values: Vec<Vec<u8>> = (0..batch_size as u64).map(payload).collect();
    let mut next = 1u64;
    let mut entries = 0u64;
    let mut syncs = 0u64;
    let mut append_time = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < duration {
        let append_started = Instant::now();
        for value in &values {
            db.insert(next.to_be_bytes(), value.as_slice())?;
            next += 1;
        }
        append_time += append_started.elapsed();
        db.flush()?;
        entries += batch_size as u64;
        syncs += 1;
    }
    let elapsed = started.elapsed();
    drop(db);
    fs::remove_dir_all(&dir)?;
    Ok(Measured {
        system: "sled 0.34 insert + flush",
        batch: batch_size,
        entries,
        syncs,
        elapsed,
        append_share: Some(append_time.as_secs_f64() / elapsed.as_secs_f64()),
    })
}

struct RaftEntries;

impl raft_engine::MessageExt for RaftEntries {
    type Entry = Entry;
    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

fn raft_engine_sync(
    root: &Path,
    batch_size: usize,
    duration: Duration,
) -> Result<Measured, BoxError> {
    let dir = fresh_dir(root, "raft-engine")?;
    let config = raft_engine::Config {
        dir: dir.to_str().ok_or("non-UTF-8 bench path")?.to_string(),
        // Compression off: the comparison is about the write path.
        batch_compression_threshold: raft_engine::ReadableSize(0),
        ..raft_engine::Config::default()
    };
    let engine = raft_engine::Engine::open(config)?;
    let mut batch = template(batch_size);
    let mut log_batch = raft_engine::LogBatch::default();
    let mut next = 1u64;
    let mut entries = 0u64;
    let mut syncs = 0u64;
    let mut append_time = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < duration {
        renumber(&mut batch, next);
        next += batch_size as u64;
        let append_started = Instant::now();
        log_batch.add_entries::<RaftEntries>(1, &batch)?;
        append_time += append_started.elapsed();
        engine.write(&mut log_batch, true)?;
        entries += batch_size as u64;
        syncs += 1;
        // Keep memory bounded like a raft node that applies and compacts.
        if next % 65_536 < batch_size as u64 {
            engine.compact_to(1, next.saturating_sub(10_000));
        }
    }
    let elapsed = started.elapsed();
    drop(engine);
    fs::remove_dir_all(&dir)?;
    Ok(Measured {
        system: "raft-engine 0.4 write(sync)",
        batch: batch_size,
        entries,
        syncs,
        elapsed,
        append_share: Some(append_time.as_secs_f64() / elapsed.as_secs_f64()),
    })
}

/// The median of each case over the rounds, by entries per second (syncs per
/// second for the raw cases).
fn median(mut runs: Vec<Measured>) -> Option<Measured> {
    runs.sort_by(|a, b| {
        let key = |m: &Measured| (m.entries.max(m.syncs) as f64) / m.elapsed.as_secs_f64();
        key(a).total_cmp(&key(b))
    });
    let middle = runs.len() / 2;
    runs.into_iter().nth(middle)
}

fn main() -> Result<(), BoxError> {
    let mut root = PathBuf::from("target/wal-compare");
    let mut seconds = 2.0f64;
    let mut rounds = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => root = PathBuf::from(args.next().ok_or("--dir needs a path")?),
            "--seconds" => seconds = args.next().ok_or("--seconds needs a value")?.parse()?,
            "--rounds" => rounds = args.next().ok_or("--rounds needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    fs::create_dir_all(&root)?;
    let duration = Duration::from_secs_f64(seconds);
    // cases[i] collects every round's result of case i, in print order.
    let mut cases: Vec<Vec<Measured>> = Vec::new();
    for round in 0..rounds.max(1) {
        let mut results = vec![
            raw_fdatasync(&root, duration, false)?,
            raw_fdatasync(&root, duration, true)?,
        ];
        // Interleaved per batch size so that drift in a shared disk's speed
        // does not favour whichever system runs first.
        for batch in BATCH_SIZES {
            results.push(tern_wal(&root, batch, duration)?);
            results.push(raft_engine_sync(&root, batch, duration)?);
            results.push(sled_flush(&root, batch, duration)?);
        }
        eprintln!("round {round}:");
        for result in &results {
            eprintln!("{}", result.row());
        }
        for (i, result) in results.into_iter().enumerate() {
            match cases.get_mut(i) {
                Some(runs) => runs.push(result),
                None => cases.push(vec![result]),
            }
        }
    }
    println!(
        "dir {}: median of {} rounds, {} s per case, {PAYLOAD_BYTES}-byte entries\n",
        root.display(),
        rounds.max(1),
        seconds
    );
    println!("| system | batch | entries/s | syncs/s | µs per sync | append share |");
    println!("|---|---|---|---|---|---|");
    for runs in cases {
        if let Some(m) = median(runs) {
            println!("{}", m.row());
        }
    }
    Ok(())
}
