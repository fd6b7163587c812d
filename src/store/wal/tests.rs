//! Unit tests of the raft log over `SimDisk` (and one over `FsDisk`).

use super::*;
use raft::eraftpb::EntryType;

fn entry(index: u64, term: u64, payload: &[u8]) -> Entry {
    Entry {
        index,
        term,
        entry_type: EntryType::EntryNormal,
        data: payload.to_vec().into(),
        context: Vec::new().into(),
        ..Entry::default()
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range
        .map(|i| entry(i, term, format!("entry {i} term {term}").as_bytes()))
        .collect()
}

fn small() -> LogOptions {
    LogOptions {
        segment_size_bytes: MIN_SEGMENT_SIZE_BYTES,
    }
}

fn reopen(disk: &SimDisk, options: LogOptions) -> (RaftLog<SimDisk>, Recovered) {
    match RaftLog::open(disk.clone(), options) {
        Ok(opened) => opened,
        Err(e) => panic!("reopen failed: {e}"),
    }
}

fn indexes(recovered: &Recovered) -> Vec<u64> {
    recovered.entries.iter().map(|e| e.index).collect()
}

#[test]
fn round_trip_entries_and_metadata() {
    let disk = SimDisk::new();
    let (mut log, recovered) = reopen(&disk, LogOptions::default());
    assert!(recovered.entries.is_empty());
    let mut batch = entries(1..=3, 1);
    batch[1].set_entry_type(EntryType::EntryConfChangeV2);
    batch[2].context = b"ctx".to_vec().into();
    log.append(&batch).unwrap();
    let hard_state = HardState {
        term: 1,
        vote: 2,
        commit: 3,
        ..HardState::default()
    };
    log.set_hard_state(&hard_state).unwrap();
    let mut conf_state = ConfState::default();
    conf_state.set_voters(vec![1, 2, 3]);
    conf_state.set_learners(vec![4]);
    conf_state.set_auto_leave(true);
    log.set_conf_state(&conf_state).unwrap();
    log.sync().unwrap();
    drop(log);

    let (_, recovered) = reopen(&disk, LogOptions::default());
    assert_eq!(recovered.entries, batch);
    assert_eq!(recovered.hard_state, hard_state);
    assert_eq!(recovered.conf_state, conf_state);
    assert_eq!(recovered.dropped_bytes, 0);
}
