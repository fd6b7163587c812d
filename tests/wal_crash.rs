//! Crash recovery of the raft log with a real process and real files: a child
//! process appends and syncs batches, printing each synced index; the parent
//! SIGKILLs it mid-run, reopens the log and checks that every index the child
//! reported as synced is there and that nothing half-written comes back.
//!
//! The child is this same test binary, re-executed with an environment
//! variable naming the log directory.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Entry, HardState};
use tern::store::wal::{FsDisk, LogOptions, RaftLog, Recovered};

const CHILD_DIR_ENV: &str = "TERN_WAL_CRASH_CHILD_DIR";
const TEST_NAME: &str = "sigkill_mid_batches_keeps_every_reported_sync";
const PAYLOAD_BYTES: usize = 200;
/// The child stops on its own after this long, so a parent that died cannot
/// leave it running.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);

fn options() -> LogOptions {
    LogOptions {
        segment_size_bytes: 1024 * 1024,
    }
}

/// The payload of the entry at (index, term): recognisable, so that any byte
/// of a half-written or mixed-up entry shows.
fn payload(index: u64, term: u64) -> Vec<u8> {
    let seed = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ term;
    (0..PAYLOAD_BYTES)
        .map(|i| (seed.rotate_left((i % 64) as u32) as u8) ^ (i as u8))
        .collect()
}

fn make_entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: payload(index, term).into(),
        ..Entry::default()
    }
}

fn open(dir: &str) -> (RaftLog<FsDisk>, Recovered) {
    let disk = FsDisk::open(dir).unwrap_or_else(|e| panic!("open {dir}: {e}"));
    RaftLog::open(disk, options()).unwrap_or_else(|e| panic!("recover {dir}: {e}"))
}

/// The child: appends batches of varied size forever (until killed or its
/// lifetime ends), now and then replacing a short unsynced-or-synced suffix,
/// recording a snapshot and compacting, and prints each synced index.
fn run_child(dir: &str) {
    let (mut log, recovered) = open(dir);
    let mut term = recovered.entries.last().map_or(1, |e| e.term);
    let mut next = log.last_index() + 1;
    let started = Instant::now();
    let stdout = std::io::stdout();
    let batch_sizes = [1u64, 16, 256, 3, 4096, 64, 1, 700];
    let mut batch_number = 0usize;
    while started.elapsed() < CHILD_LIFETIME {
        batch_number += 1;
        let size = batch_sizes[batch_number % batch_sizes.len()];
        if batch_number % 7 == 0 && next > log.snapshot_index() + 3 {
            // Raft's suffix replacement: a new term rewrites the last entries.
            // Announced before it is written: once issued, the replaced
            // entries may legitimately be gone after a crash, even if this
            // batch itself never finished writing.
            term += 1;
            next -= 2;
            let mut out = stdout.lock();
            writeln!(out, "replacing {next}").expect("stdout");
            out.flush().expect("stdout");
        }
        let batch: Vec<Entry> = (next..next + size).map(|i| make_entry(i, term)).collect();
        log.append(&batch).expect("append");
        next += size;
        log.set_hard_state(&HardState {
            term,
            vote: 1,
            commit: next - 1,
            ..HardState::default()
        })
        .expect("hard state");
        if batch_number % 11 == 0 && next > 2000 {
            let snapshot_index = next - 1000;
            let snapshot_term = log.term_at(snapshot_index).expect("term of a live entry");
            let mut conf_state = ConfState::default();
            conf_state.set_voters(vec![1]);
            log.set_snapshot(snapshot_index, snapshot_term, &conf_state)
                .expect("snapshot");
        }
        log.sync().expect("sync");
        log.compact(u64::MAX).expect("compact");
        let mut out = stdout.lock();
        writeln!(out, "synced {}", next - 1).expect("stdout");
        out.flush().expect("stdout");
    }
}

/// `reported`: the last index the child said was synced; `replaced_from`: the
/// first index of a suffix replacement the child announced after that report.
fn check(recovered: &Recovered, reported: u64, replaced_from: Option<u64>, round: usize) {
    let required = replaced_from.map_or(reported, |from| reported.min(from - 1));
    let first = recovered.snapshot_index + 1;
    let last = recovered
        .entries
        .last()
        .map_or(recovered.snapshot_index, |e| e.index);
    assert!(
        last >= required,
        "round {round}: synced {reported} reported (replacement from {replaced_from:?}), only {last} recovered"
    );
    let mut previous_term = recovered.snapshot_term;
    for (offset, entry) in recovered.entries.iter().enumerate() {
        assert_eq!(
            entry.index,
            first + offset as u64,
            "round {round}: contiguous"
        );
        assert!(
            entry.term >= previous_term,
            "round {round}: terms never fall"
        );
        previous_term = entry.term;
        assert_eq!(
            entry.get_data(),
            &payload(entry.index, entry.term)[..],
            "round {round}: entry {} is intact",
            entry.index
        );
    }
}

#[test]
fn sigkill_mid_batches_keeps_every_reported_sync() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        run_child(&dir);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_str = dir.path().to_str().expect("utf-8 temp path").to_string();
    let exe = std::env::current_exe().expect("own test binary");
    let mut previous_reported = 0u64;
    for round in 0..4usize {
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD_DIR_ENV, &dir_str)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        // Kill after a varying delay so the signal lands at different points
        // of a batch: encoding, write, fdatasync, roll, compaction. The first
        // report marks the child's log as open.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let kill_after = Duration::from_millis(150 + 113 * round as u64);
        let killer = std::thread::spawn(move || {
            let _ = ready_rx.recv_timeout(CHILD_LIFETIME);
            std::thread::sleep(kill_after);
            // Child::kill sends SIGKILL: no destructor or flush runs.
            let killed = child.kill().is_ok();
            (killed, child.wait())
        });
        let mut reported = 0u64;
        let mut replaced_from = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(index) = line.strip_prefix("synced ") {
                reported = index.trim().parse().expect("index");
                replaced_from = None;
                let _ = ready_tx.send(());
            } else if let Some(index) = line.strip_prefix("replacing ") {
                replaced_from = Some(index.trim().parse::<u64>().expect("index"));
            }
        }
        let (killed, status) = killer.join().expect("killer thread");
        let status = status.expect("reap child");
        assert!(
            killed,
            "round {round}: the child exited before the kill: {status}"
        );
        assert!(
            reported > previous_reported,
            "round {round}: the child made progress ({reported} after {previous_reported})"
        );
        previous_reported = reported;

        let (log, recovered) = open(&dir_str);
        check(&recovered, reported, replaced_from, round);
        let recovered_last = recovered
            .entries
            .last()
            .map_or(recovered.snapshot_index, |e| e.index);
        assert_eq!(log.last_index(), recovered_last);
        eprintln!(
            "round {round}: reported {reported}, recovered up to {}, snapshot {}, dropped {} bytes",
            log.last_index(),
            recovered.snapshot_index,
            recovered.dropped_bytes
        );
    }
}
