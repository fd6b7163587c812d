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

/// A version-1 segment written by the first release of this format, kept as
/// bytes so that any change to the encoding that breaks old logs fails here.
const V1_SEGMENT_NAME: &str = "0000000000000001-0000000000000001.wal";
const V1_SEGMENT_HEX: &[&str] = &[
    // header: magic, version 1, crc, seq 1, first index 1
    "5445524e57414c00",
    "01000000",
    "8d44bff2",
    "0100000000000000",
    "0100000000000000",
    // checkpoint: empty conf state, default hard state
    "12000000",
    "45ebe348",
    "03",
    "00000000",
    "00000000",
    "00000000",
    "00000000",
    "00",
    "19000000",
    "d7d24d0c",
    "02",
    "0000000000000000",
    "0000000000000000",
    "0000000000000000",
    // conf state voters [1]
    "1a000000",
    "a76a3565",
    "03",
    "01000000",
    "0100000000000000",
    "00000000",
    "00000000",
    "00000000",
    "00",
    // hard state term 1 vote 1 commit 0
    "19000000",
    "a71d0e44",
    "02",
    "0100000000000000",
    "0100000000000000",
    "0000000000000000",
    // entry 1, term 1, normal, data "hello"
    "1b000000",
    "26c7cd46",
    "01",
    "0100000000000000",
    "0100000000000000",
    "00",
    "05000000",
    "68656c6c6f",
    // entry 2, term 1, conf change v2, data 0a, context "c"
    "18000000",
    "60a44c31",
    "01",
    "0200000000000000",
    "0100000000000000",
    "02",
    "01000000",
    "0a",
    "63",
    // hard state term 1 vote 1 commit 2
    "19000000",
    "e9e776d6",
    "02",
    "0100000000000000",
    "0100000000000000",
    "0200000000000000",
    // snapshot marker at 1 term 1, entries after it survive, voters [1]
    "2b000000",
    "6c4162e0",
    "04",
    "0100000000000000",
    "0100000000000000",
    "01",
    "01000000",
    "0100000000000000",
    "00000000",
    "00000000",
    "00000000",
    "00",
];

fn v1_segment() -> Vec<u8> {
    hex::decode(V1_SEGMENT_HEX.concat()).expect("fixture is valid hex")
}

#[test]
fn reads_a_version_1_segment_fixture() {
    let disk = SimDisk::new();
    disk.put_durable(V1_SEGMENT_NAME, &v1_segment());
    let (mut log, recovered) = reopen(&disk, LogOptions::default());
    assert_eq!(recovered.dropped_bytes, 0);
    assert_eq!((recovered.snapshot_index, recovered.snapshot_term), (1, 1));
    assert_eq!(recovered.conf_state.get_voters(), &[1]);
    assert_eq!(recovered.snapshot_conf_state.get_voters(), &[1]);
    assert_eq!(
        (
            recovered.hard_state.term,
            recovered.hard_state.vote,
            recovered.hard_state.commit
        ),
        (1, 1, 2)
    );
    assert_eq!(indexes(&recovered), vec![2]);
    let e2 = &recovered.entries[0];
    assert_eq!(e2.get_entry_type(), EntryType::EntryConfChangeV2);
    assert_eq!(
        (e2.term, e2.get_data(), e2.get_context()),
        (1, &[0x0a][..], &b"c"[..])
    );

    // The current writer appends to the old segment and the result reads back.
    log.append(&entries(3..=4, 2)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, recovered) = reopen(&disk, LogOptions::default());
    assert_eq!(indexes(&recovered), vec![2, 3, 4]);
}

#[test]
fn refuses_a_segment_from_a_newer_version_without_touching_it() {
    let mut bytes = v1_segment();
    bytes[8] = 2;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[0..12]), &bytes[16..32]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    let disk = SimDisk::new();
    disk.put_durable(V1_SEGMENT_NAME, &bytes);
    match RaftLog::open(disk.clone(), LogOptions::default()) {
        Err(StoreError::Corrupt(message)) => assert!(message.contains("version 2"), "{message}"),
        other => panic!(
            "expected a version error, got {:?}",
            other.map(|(log, _)| log)
        ),
    }
    assert_eq!(disk.durable_bytes(V1_SEGMENT_NAME), Some(bytes));
}

#[test]
fn suffix_replacement_resolves_to_the_last_write() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, LogOptions::default());
    log.append(&entries(1..=10, 1)).unwrap();
    log.sync().unwrap();
    // Replace a synced suffix, then part of that replacement before syncing.
    log.append(&entries(6..=8, 2)).unwrap();
    log.append(&entries(8..=9, 3)).unwrap();
    assert_eq!(log.last_index(), 9);
    assert_eq!(log.term_at(5), Some(1));
    assert_eq!(log.term_at(7), Some(2));
    assert_eq!(log.term_at(9), Some(3));
    assert_eq!(log.term_at(10), None);
    log.sync().unwrap();
    drop(log);

    let (log, recovered) = reopen(&disk, LogOptions::default());
    let mut expected = entries(1..=5, 1);
    expected.extend(entries(6..=7, 2));
    expected.extend(entries(8..=9, 3));
    assert_eq!(recovered.entries, expected);
    assert_eq!(log.last_index(), 9);
    assert_eq!(log.term_at(8), Some(3));
}

#[test]
fn suffix_replacement_across_segments() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, small());
    let payload = [7u8; 200];
    let batch: Vec<Entry> = (1..=100).map(|i| entry(i, 1, &payload)).collect();
    log.append(&batch).unwrap();
    log.sync().unwrap();
    assert!(
        disk.files().len() >= 4,
        "200-byte entries roll 4 KiB segments"
    );
    log.append(&entries(3..=4, 2)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, recovered) = reopen(&disk, small());
    assert_eq!(indexes(&recovered), vec![1, 2, 3, 4]);
    assert_eq!(recovered.entries[2].term, 2);
}

#[test]
fn append_rejects_gaps_overlapping_snapshots_and_disorder() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, LogOptions::default());
    log.append(&entries(1..=3, 1)).unwrap();
    assert!(log.append(&entries(5..=6, 1)).is_err(), "gap after 3");
    let mut shuffled = entries(4..=5, 1);
    shuffled.swap(0, 1);
    assert!(log.append(&shuffled).is_err(), "not contiguous");
    log.set_snapshot(2, 1, &ConfState::default()).unwrap();
    assert!(
        log.append(&entries(2..=3, 2)).is_err(),
        "covered by the snapshot"
    );
    assert!(
        log.set_snapshot(1, 1, &ConfState::default()).is_err(),
        "older snapshot"
    );
    log.append(&[]).unwrap();
    log.append(&entries(3..=4, 2)).unwrap();
    assert_eq!(log.last_index(), 4);
}

#[test]
fn segments_roll_at_the_configured_size_and_names_carry_the_first_index() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, small());
    let payload = [1u8; 200];
    for batch_start in (1..=300).step_by(30) {
        let batch: Vec<Entry> = (batch_start..batch_start + 30)
            .map(|i| entry(i, 1, &payload))
            .collect();
        log.append(&batch).unwrap();
        log.sync().unwrap();
    }
    let files = disk.files();
    assert!(files.len() > 10, "{files:?}");
    let mut expected_first = 1;
    for (position, (name, len)) in files.iter().enumerate() {
        let (seq, first_index) = format::parse_segment_name(name).unwrap();
        assert_eq!(seq, position as u64 + 1);
        assert!(first_index >= expected_first, "{name}");
        expected_first = first_index;
        // Rolling happens before the record that would start past the limit.
        let record_bytes = format::ENTRY_OVERHEAD_BYTES + 200;
        assert!(
            *len < (MIN_SEGMENT_SIZE_BYTES as usize) + record_bytes,
            "{name}: {len}"
        );
    }
    assert_eq!(log.stats().segments_created, files.len() as u64);
    drop(log);
    let (_, recovered) = reopen(&disk, small());
    assert_eq!(indexes(&recovered), (1..=300).collect::<Vec<_>>());
}

#[test]
fn roll_between_syncs_writes_every_segment_in_one_sync() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, small());
    let payload = [2u8; 500];
    let batch: Vec<Entry> = (1..=40).map(|i| entry(i, 1, &payload)).collect();
    log.append(&batch).unwrap();
    assert!(disk.files().is_empty(), "append does no I/O");
    log.sync().unwrap();
    let stats = log.stats();
    assert_eq!(stats.syncs, 1);
    assert_eq!(stats.entries, 40);
    assert!(stats.segments_created >= 4);
    // Per new segment: one fdatasync, then one directory fsync before the
    // next segment is created.
    assert_eq!(stats.fsyncs, 2 * stats.segments_created);
    assert_eq!(
        disk.counters().1,
        stats.segments_created,
        "directory fsyncs"
    );
    drop(log);
    let (_, recovered) = reopen(&disk, small());
    assert_eq!(recovered.entries, batch);
}

/// Byte offsets of a file before and after one more synced write.
fn file_len(disk: &SimDisk, name: &str) -> usize {
    disk.durable_bytes(name).map_or(0, |b| b.len())
}

#[test]
fn recovery_truncates_at_every_byte_offset_of_the_last_record() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, LogOptions::default());
    log.append(&entries(1..=5, 1)).unwrap();
    log.sync().unwrap();
    let name = disk.files()[0].0.clone();
    let good_len = file_len(&disk, &name);
    let mut last = entry(6, 1, &[9u8; 40]);
    last.context = b"context".to_vec().into();
    log.append(std::slice::from_ref(&last)).unwrap();
    log.sync().unwrap();
    let full = disk.durable_bytes(&name).unwrap();
    drop(log);
    assert!(full.len() > good_len);

    for cut in good_len..=full.len() {
        let torn = SimDisk::new();
        torn.put_durable(&name, &full[..cut]);
        let (mut log, recovered) = reopen(&torn, LogOptions::default());
        if cut == full.len() {
            assert_eq!(indexes(&recovered), (1..=6).collect::<Vec<_>>());
            assert_eq!(recovered.dropped_bytes, 0);
            continue;
        }
        assert_eq!(
            indexes(&recovered),
            (1..=5).collect::<Vec<_>>(),
            "cut at {cut}"
        );
        assert_eq!(
            recovered.dropped_bytes,
            (cut - good_len) as u64,
            "cut at {cut}"
        );
        assert_eq!(
            file_len(&torn, &name),
            good_len,
            "physically truncated at {cut}"
        );
        // Appending after recovery leaves no garbage in the middle.
        let replacement = entry(6, 2, b"after recovery");
        log.append(std::slice::from_ref(&replacement)).unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, recovered) = reopen(&torn, LogOptions::default());
        assert_eq!(recovered.entries.last(), Some(&replacement), "cut at {cut}");
        assert_eq!(recovered.dropped_bytes, 0, "cut at {cut}");
    }
}

#[test]
fn corrupt_record_in_the_middle_truncates_there() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, LogOptions::default());
    let mut record_starts = Vec::new();
    for i in 1..=10 {
        log.sync().unwrap();
        record_starts.push(disk.files().first().map_or(0, |(_, len)| *len));
        log.append(&[entry(i, 1, &[i as u8; 30])]).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let name = disk.files()[0].0.clone();
    // Flip one payload byte of entry 5 (its record starts at record_starts[4]).
    let start = record_starts[4];
    assert!(disk.corrupt_byte(&name, start + format::RECORD_HEADER_LEN + 20, 0x40));

    let (mut log, recovered) = reopen(&disk, LogOptions::default());
    assert_eq!(indexes(&recovered), vec![1, 2, 3, 4]);
    assert_eq!(file_len(&disk, &name), start);
    assert!(recovered.dropped_bytes > 0);
    log.append(&entries(5..=6, 2)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, recovered) = reopen(&disk, LogOptions::default());
    assert_eq!(indexes(&recovered), (1..=6).collect::<Vec<_>>());
}

#[test]
fn corruption_in_an_older_segment_drops_every_later_segment() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, small());
    let payload = [3u8; 200];
    for i in 1..=100 {
        log.append(&[entry(i, 1, &payload)]).unwrap();
        log.sync().unwrap();
    }
    drop(log);
    let files = disk.files();
    assert!(files.len() >= 4);
    let (second, second_len) = files[1].clone();
    assert!(disk.corrupt_byte(&second, second_len - 10, 1));
    let (log, recovered) = reopen(&disk, small());
    let remaining = disk.files();
    assert_eq!(remaining.len(), 2, "{remaining:?}");
    let last = recovered.entries.last().map_or(0, |e| e.index);
    assert_eq!(indexes(&recovered), (1..=last).collect::<Vec<_>>());
    assert!(last < 100);
    assert_eq!(log.last_index(), last);
}

#[test]
fn torn_header_of_the_newest_segment_removes_it() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, LogOptions::default());
    log.append(&entries(1..=3, 1)).unwrap();
    log.sync().unwrap();
    drop(log);
    let next = format::segment_name(2, 4);
    disk.put_durable(&next, &[0x54, 0x45, 0x52]);
    let (mut log, recovered) = reopen(&disk, LogOptions::default());
    assert_eq!(indexes(&recovered), vec![1, 2, 3]);
    assert_eq!(recovered.dropped_bytes, 3);
    assert_eq!(disk.files().len(), 1);
    log.append(&entries(4..=4, 1)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, recovered) = reopen(&disk, LogOptions::default());
    assert_eq!(indexes(&recovered), vec![1, 2, 3, 4]);
}

#[test]
fn missing_middle_segment_is_an_error() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, small());
    for i in 1..=60 {
        log.append(&[entry(i, 1, &[0u8; 200])]).unwrap();
        log.sync().unwrap();
    }
    drop(log);
    let files = disk.files();
    assert!(files.len() >= 3);
    let mut handle = disk.clone();
    handle.remove(&files[1].0).unwrap();
    assert!(matches!(
        RaftLog::open(disk.clone(), small()),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn compaction_never_passes_the_synced_snapshot() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, small());
    let payload = [4u8; 200];
    for start in (1..=200).step_by(20) {
        let batch: Vec<Entry> = (start..start + 20).map(|i| entry(i, 1, &payload)).collect();
        log.append(&batch).unwrap();
        log.sync().unwrap();
    }
    let before = disk.files().len();
    assert!(before > 8);
    assert_eq!(log.compact(200).unwrap(), 0, "no snapshot yet");

    let conf_state = ConfState::default();
    log.set_snapshot(120, 1, &conf_state).unwrap();
    assert_eq!(log.compact(200).unwrap(), 0, "snapshot not synced yet");
    log.sync().unwrap();

    // Bounded by upto_index below the snapshot.
    let removed_low = log.compact(50).unwrap();
    assert!(removed_low >= 1);
    for (name, _) in disk.files().iter().take(1) {
        let (_, first_index) = format::parse_segment_name(name).unwrap();
        assert!(first_index <= 51, "entry 51 must survive: {name}");
    }
    let removed_high = log.compact(u64::MAX).unwrap();
    assert!(removed_high >= 1);
    assert_eq!(
        log.stats().segments_removed,
        (removed_low + removed_high) as u64
    );
    // The first remaining segment still holds entry 121's neighbourhood.
    let first_name = disk.files()[0].0.clone();
    let (_, first_index) = format::parse_segment_name(&first_name).unwrap();
    assert!(first_index <= 121, "{first_name}");
    drop(log);

    let (mut log, recovered) = reopen(&disk, small());
    assert_eq!(
        (recovered.snapshot_index, recovered.snapshot_term),
        (120, 1)
    );
    assert_eq!(indexes(&recovered), (121..=200).collect::<Vec<_>>());
    log.append(&entries(201..=201, 2)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, recovered) = reopen(&disk, small());
    assert_eq!(indexes(&recovered), (121..=201).collect::<Vec<_>>());
}

#[test]
fn compaction_keeps_metadata_from_removed_segments() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, small());
    let mut conf_state = ConfState::default();
    conf_state.set_voters(vec![1, 2, 3]);
    log.set_conf_state(&conf_state).unwrap();
    let hard_state = HardState {
        term: 1,
        vote: 3,
        commit: 1,
        ..HardState::default()
    };
    log.set_hard_state(&hard_state).unwrap();
    for i in 1..=100 {
        log.append(&[entry(i, 1, &[5u8; 200])]).unwrap();
    }
    log.sync().unwrap();
    log.set_snapshot(100, 1, &conf_state).unwrap();
    log.append(&entries(101..=101, 1)).unwrap();
    log.sync().unwrap();
    assert!(log.compact(100).unwrap() >= 3);
    drop(log);
    let (_, recovered) = reopen(&disk, small());
    assert_eq!(recovered.hard_state, hard_state);
    assert_eq!(recovered.conf_state, conf_state);
    assert_eq!(recovered.snapshot_index, 100);
    assert_eq!(indexes(&recovered), vec![101]);
}

#[test]
fn snapshot_keeps_a_matching_suffix_and_drops_a_conflicting_log() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, LogOptions::default());
    log.append(&entries(1..=10, 2)).unwrap();
    let conf_state = ConfState::default();
    log.set_snapshot(5, 2, &conf_state).unwrap();
    assert_eq!(log.last_index(), 10);
    log.sync().unwrap();
    drop(log);
    let (mut log, recovered) = reopen(&disk, LogOptions::default());
    assert_eq!(indexes(&recovered), (6..=10).collect::<Vec<_>>());

    // A leader's snapshot at 8 with another term: the local log is wrong there.
    log.set_snapshot(8, 3, &conf_state).unwrap();
    assert_eq!(log.last_index(), 8);
    log.append(&entries(9..=9, 3)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (mut log, recovered) = reopen(&disk, LogOptions::default());
    assert_eq!((recovered.snapshot_index, recovered.snapshot_term), (8, 3));
    assert_eq!(indexes(&recovered), vec![9]);
    assert_eq!(recovered.entries[0].term, 3);

    // A snapshot beyond the log moves the log to its index.
    log.set_snapshot(50, 4, &conf_state).unwrap();
    assert_eq!(log.last_index(), 50);
    log.sync().unwrap();
    drop(log);
    let (log, recovered) = reopen(&disk, LogOptions::default());
    assert!(recovered.entries.is_empty());
    assert_eq!(log.last_index(), 50);
    assert_eq!(log.term_at(50), Some(4));
}

#[test]
fn unsynced_writes_vanish_and_torn_writes_recover_to_a_prefix() {
    let payload = [6u8; 150];
    let mut torn_cases = 0;
    for seed in 0..300u64 {
        let disk = SimDisk::new();
        let (mut log, _) = reopen(&disk, small());
        let synced_upto = 5 + seed % 40;
        let batch: Vec<Entry> = (1..=synced_upto).map(|i| entry(i, 1, &payload)).collect();
        log.append(&batch).unwrap();
        log.sync().unwrap();
        let appended_upto = synced_upto + 1 + seed % 30;
        let more: Vec<Entry> = (synced_upto + 1..=appended_upto)
            .map(|i| entry(i, 1, &payload))
            .collect();
        log.append(&more).unwrap();
        // Every third seed the cut lands after the bytes were written but
        // before their fdatasync returned: write them without syncing.
        if seed % 3 == 0 {
            let (segments, buffer) = (&log.segments, &log.buffer);
            let name = segments.back().unwrap().name.clone();
            let mut handle = disk.clone();
            if !segments.back().unwrap().created {
                handle.create(&name).unwrap();
            }
            if log.sealed.is_empty() {
                handle.append(&name, buffer).unwrap();
            }
        }
        drop(log);
        if let PowerCutEffect::Torn { .. } = disk.power_cut(seed) {
            torn_cases += 1;
        }
        let (mut log, recovered) = reopen(&disk, small());
        let got = indexes(&recovered);
        let last = got.last().copied().unwrap_or(0);
        assert!(
            last >= synced_upto && last <= appended_upto,
            "seed {seed}: {last}"
        );
        assert_eq!(got, (1..=last).collect::<Vec<_>>(), "seed {seed}");
        assert!(
            recovered.entries.iter().all(|e| e.get_data() == payload),
            "seed {seed}"
        );
        log.append(&[entry(last + 1, 2, b"next")]).unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, recovered) = reopen(&disk, small());
        assert_eq!(recovered.entries.len() as u64, last + 1, "seed {seed}");
    }
    assert!(torn_cases > 20, "torn prefixes exercised: {torn_cases}");
}

#[test]
fn a_failed_sync_poisons_the_log_until_reopened() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, LogOptions::default());
    log.append(&entries(1..=2, 1)).unwrap();
    log.sync().unwrap();
    log.append(&entries(3..=3, 1)).unwrap();
    disk.set_fail_io(true);
    assert!(log.sync().is_err());
    disk.set_fail_io(false);
    assert!(log.sync().is_err(), "no retry may pretend durability");
    assert!(log.append(&entries(4..=4, 1)).is_err());
    drop(log);
    disk.power_cut(1);
    let (_, recovered) = reopen(&disk, LogOptions::default());
    assert_eq!(indexes(&recovered)[..2], [1, 2]);
}

#[test]
fn stats_count_group_commits() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, LogOptions::default());
    log.sync().unwrap();
    let after_create = log.stats();
    assert_eq!(
        after_create.syncs, 1,
        "creating the first segment is a sync"
    );
    for batch in 0..4u64 {
        log.append(&entries(batch * 100 + 1..=batch * 100 + 100, 1))
            .unwrap();
        log.sync().unwrap();
    }
    log.sync().unwrap();
    let stats = log.stats();
    assert_eq!(stats.syncs, 5, "an empty sync is free");
    assert_eq!(stats.entries, 400);
    assert_eq!(stats.max_entries_per_sync, 100);
    assert_eq!(stats.last_sync_entries, 100);
    assert_eq!(stats.entries_per_sync(), 80.0);
    assert_eq!(stats.bytes, file_len(&disk, &disk.files()[0].0) as u64);
}

#[test]
fn fs_disk_round_trip_and_exclusive_lock() {
    let dir = tempfile::tempdir().unwrap();
    let disk = FsDisk::open(dir.path()).unwrap();
    assert!(
        FsDisk::open(dir.path()).is_err(),
        "second open of a locked directory"
    );
    let (mut log, _) = RaftLog::open(disk, small()).unwrap();
    for start in (1..=100).step_by(10) {
        log.append(&entries(start..=start + 9, 1)).unwrap();
        log.sync().unwrap();
    }
    log.set_snapshot(40, 1, &ConfState::default()).unwrap();
    log.sync().unwrap();
    log.compact(40).unwrap();
    drop(log);
    let disk = FsDisk::open(dir.path()).unwrap();
    let (_, recovered) = RaftLog::open(disk, small()).unwrap();
    assert_eq!(indexes(&recovered), (41..=100).collect::<Vec<_>>());
}

/// What the log must hold, maintained by the obvious rules.
#[derive(Clone, Debug, Default)]
struct Model {
    entries: Vec<Entry>,
    snapshot_index: u64,
    snapshot_term: u64,
    hard_state: HardState,
    conf_state: ConfState,
}

impl Model {
    fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_index, |e| e.index)
    }
    fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entries
            .iter()
            .find(|e| e.index == index)
            .map(|e| e.term)
    }
    fn append(&mut self, batch: &[Entry]) {
        let first = batch[0].index;
        self.entries.retain(|e| e.index < first);
        self.entries.extend_from_slice(batch);
    }
    fn snapshot(&mut self, index: u64, term: u64, conf_state: &ConfState) {
        if self.term_at(index) == Some(term) {
            self.entries.retain(|e| e.index > index);
        } else {
            self.entries.clear();
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.conf_state = conf_state.clone();
    }
    fn check(&self, recovered: &Recovered, context: &str) {
        assert_eq!(
            indexes(recovered),
            self.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
            "{context}"
        );
        assert_eq!(recovered.entries, self.entries, "{context}");
        assert_eq!(
            (recovered.snapshot_index, recovered.snapshot_term),
            (self.snapshot_index, self.snapshot_term),
            "{context}"
        );
        assert_eq!(recovered.hard_state, self.hard_state, "{context}");
        assert_eq!(recovered.conf_state, self.conf_state, "{context}");
        assert_eq!(recovered.dropped_bytes, 0, "{context}");
    }
}

/// Seeded random operations against the model: appends with suffix
/// replacement, metadata, local and leader snapshots, compaction, syncs,
/// crashes that lose the unsynced buffer, and clean reopens.
#[test]
fn random_operations_match_the_model() {
    let mut segments_removed = 0;
    for seed in 0..60u64 {
        let mut rng = sim_disk::SplitMix::new(seed);
        let disk = SimDisk::new();
        let (mut log, _) = reopen(&disk, small());
        let mut model = Model::default();
        let mut synced = Model::default();
        let mut term = 1u64;
        for step in 0..400 {
            let context = format!("seed {seed} step {step}");
            match rng.below(100) {
                0..=44 => {
                    let last = model.last_index();
                    let start = if rng.below(4) == 0 {
                        term += 1;
                        model.snapshot_index + 1 + rng.below(last - model.snapshot_index + 1)
                    } else {
                        last + 1
                    };
                    let count = 1 + rng.below(20);
                    let batch: Vec<Entry> = (start..start + count)
                        .map(|i| {
                            let len = rng.below(300) as usize;
                            entry(i, term, &vec![(i % 251) as u8; len])
                        })
                        .collect();
                    log.append(&batch).unwrap();
                    model.append(&batch);
                }
                45..=54 => {
                    let hard_state = HardState {
                        term,
                        vote: rng.below(4),
                        commit: rng.below(model.last_index() + 1),
                        ..HardState::default()
                    };
                    log.set_hard_state(&hard_state).unwrap();
                    model.hard_state = hard_state;
                }
                55..=59 => {
                    let mut conf_state = ConfState::default();
                    conf_state.set_voters((1..=1 + rng.below(5)).collect());
                    log.set_conf_state(&conf_state).unwrap();
                    model.conf_state = conf_state;
                }
                60..=67 => {
                    let mut conf_state = ConfState::default();
                    conf_state.set_voters(vec![1, 2, 3]);
                    conf_state.set_learners(vec![rng.below(10)]);
                    let last = model.last_index();
                    let (index, snap_term) = if rng.below(5) > 0 {
                        let index =
                            model.snapshot_index + rng.below(last - model.snapshot_index + 1);
                        (index, model.term_at(index).unwrap_or(term))
                    } else {
                        term += 1;
                        (
                            model.snapshot_index + rng.below(last - model.snapshot_index + 20),
                            term,
                        )
                    };
                    log.set_snapshot(index, snap_term, &conf_state).unwrap();
                    model.snapshot(index, snap_term, &conf_state);
                }
                68..=87 => {
                    log.sync().unwrap();
                    synced = model.clone();
                }
                88..=92 => {
                    let upto = rng.below(model.last_index() + 2);
                    segments_removed += log.compact(upto).unwrap();
                }
                93..=96 => {
                    drop(log);
                    let (reopened, recovered) = reopen(&disk, small());
                    synced.check(&recovered, &context);
                    log = reopened;
                    model = synced.clone();
                }
                _ => {
                    log.sync().unwrap();
                    synced = model.clone();
                    drop(log);
                    let (reopened, recovered) = reopen(&disk, small());
                    model.check(&recovered, &context);
                    log = reopened;
                }
            }
            assert_eq!(log.last_index(), model.last_index(), "{context}");
            let probe = model.last_index().saturating_sub(rng.below(5));
            assert_eq!(
                log.term_at(probe),
                model.term_at(probe),
                "{context} probe {probe}"
            );
        }
        log.sync().unwrap();
        drop(log);
        let (_, recovered) = reopen(&disk, small());
        model.check(&recovered, &format!("seed {seed} end"));
    }
    assert!(
        segments_removed > 50,
        "compaction exercised: {segments_removed}"
    );
}

/// Power fails at every point of a sync that rolls over several segments (each
/// create, write, fdatasync and directory fsync in turn), with every torn-write
/// variant a seed picks: recovery returns everything synced before, a
/// contiguous prefix of what was being synced, and never an error.
#[test]
fn power_cut_at_every_step_of_a_rolling_sync() {
    let payload = [8u8; 300];
    let mut completed_syncs = 0;
    for seed in 0..6u64 {
        for ops_before_cut in 0..40u64 {
            let disk = SimDisk::new();
            let (mut log, _) = reopen(&disk, small());
            let synced: Vec<Entry> = (1..=20).map(|i| entry(i, 1, &payload)).collect();
            log.append(&synced).unwrap();
            log.sync().unwrap();
            let hard_state = HardState {
                term: 2,
                vote: 1,
                commit: 20,
                ..HardState::default()
            };
            log.set_hard_state(&hard_state).unwrap();
            let more: Vec<Entry> = (21..=80).map(|i| entry(i, 2, &payload)).collect();
            log.append(&more).unwrap();
            disk.fail_after_ops(Some(ops_before_cut));
            let completed = log.sync().is_ok();
            completed_syncs += usize::from(completed);
            drop(log);
            disk.power_cut(seed * 1000 + ops_before_cut);
            let context = format!("seed {seed}, cut after {ops_before_cut} ops");
            let (mut log, recovered) = match RaftLog::open(disk.clone(), small()) {
                Ok(opened) => opened,
                Err(e) => panic!("{context}: {e}"),
            };
            let last = recovered.entries.last().map_or(0, |e| e.index);
            assert!(last >= 20, "{context}: synced entries lost ({last})");
            if completed {
                assert_eq!(last, 80, "{context}: a completed sync is durable");
                assert_eq!(recovered.hard_state, hard_state, "{context}");
            }
            assert_eq!(
                indexes(&recovered),
                (1..=last).collect::<Vec<_>>(),
                "{context}"
            );
            assert!(
                recovered.entries.iter().all(|e| e.get_data() == payload),
                "{context}"
            );
            // The recovered log keeps working and stays consistent.
            log.append(&entries(last + 1..=last + 1, 3)).unwrap();
            log.sync().unwrap();
            drop(log);
            let (_, recovered) = reopen(&disk, small());
            assert_eq!(recovered.entries.len() as u64, last + 1, "{context}");
        }
    }
    // Both sides of the durability point are covered: cuts inside the sync
    // and after it completed.
    assert!(
        completed_syncs > 0 && completed_syncs < 6 * 40,
        "{completed_syncs}"
    );
}

/// Records whose checksum is right but whose body is arbitrary (a writer bug,
/// or a future format mislabelled as this one) are rejected without panics.
#[test]
fn checksummed_garbage_never_panics() {
    let mut rng = sim_disk::SplitMix::new(7);
    for case in 0..2000 {
        let mut segment = Vec::new();
        format::encode_header(&mut segment, 1, 1);
        format::encode_entry(&mut segment, &entry(1, 1, b"valid"));
        for _ in 0..1 + rng.below(3) {
            let body_len = 1 + rng.below(80) as usize;
            let mut body: Vec<u8> = (0..body_len).map(|_| rng.next() as u8).collect();
            body[0] = rng.below(6) as u8;
            // Plausible small counts and lengths now and then, so decoding gets
            // past the first field.
            if body_len > 21 && rng.below(2) == 0 {
                body[17..21].copy_from_slice(&(rng.below(8) as u32).to_le_bytes());
            }
            let len_bytes = (body_len as u32).to_le_bytes();
            let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &body);
            segment.extend_from_slice(&len_bytes);
            segment.extend_from_slice(&crc.to_le_bytes());
            segment.extend_from_slice(&body);
        }
        let disk = SimDisk::new();
        disk.put_durable(&format::segment_name(1, 1), &segment);
        match RaftLog::open(disk, LogOptions::default()) {
            Ok((_, recovered)) => {
                let got = indexes(&recovered);
                assert!(
                    got.first()
                        .is_none_or(|&first| first == recovered.snapshot_index + 1),
                    "case {case}: {got:?}"
                );
            }
            Err(StoreError::Corrupt(_)) => {}
            Err(e) => panic!("case {case}: unexpected error {e}"),
        }
    }
}

#[test]
fn extreme_indexes_do_not_overflow() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, small());
    log.set_snapshot(u64::MAX - 1, 1, &ConfState::default())
        .unwrap();
    log.append(&entries(u64::MAX..=u64::MAX, 1)).unwrap();
    log.sync().unwrap();
    assert!(log.append(&entries(u64::MAX..=u64::MAX, 2)).is_ok());
    for _ in 0..40 {
        log.set_hard_state(&HardState {
            term: 2,
            vote: 0,
            commit: 0,
            ..HardState::default()
        })
        .unwrap();
        log.set_hard_state(&HardState::default()).unwrap();
        log.append(&[entry(u64::MAX, 2, &[0u8; 200])]).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let (_, recovered) = reopen(&disk, small());
    assert_eq!(indexes(&recovered), vec![u64::MAX]);
    assert_eq!(recovered.entries[0].term, 2);
}

#[test]
fn logs_can_move_to_the_store_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<RaftLog<FsDisk>>();
    assert_send::<RaftLog<SimDisk>>();
    assert_send::<Recovered>();
}

#[test]
fn fs_disk_truncates_a_garbage_tail_physically() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = RaftLog::open(FsDisk::open(dir.path()).unwrap(), small()).unwrap();
    log.append(&entries(1..=5, 1)).unwrap();
    log.sync().unwrap();
    drop(log);
    let segment = dir.path().join(format::segment_name(1, 1));
    let good_len = std::fs::metadata(&segment).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    file.write_all(&[0x17, 0, 0, 0, 1, 2, 3, 4, 1, 9, 9])
        .unwrap();
    drop(file);

    let (mut log, recovered) = RaftLog::open(FsDisk::open(dir.path()).unwrap(), small()).unwrap();
    assert_eq!(indexes(&recovered), (1..=5).collect::<Vec<_>>());
    assert_eq!(recovered.dropped_bytes, 11);
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), good_len);
    log.append(&entries(6..=6, 1)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, recovered) = RaftLog::open(FsDisk::open(dir.path()).unwrap(), small()).unwrap();
    assert_eq!(indexes(&recovered), (1..=6).collect::<Vec<_>>());
}

#[test]
fn fs_disk_creates_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("raft-log");
    let (mut log, _) = RaftLog::open(FsDisk::open(&nested).unwrap(), small()).unwrap();
    log.append(&entries(1..=2, 1)).unwrap();
    log.sync().unwrap();
    assert_eq!(log.disk().dir(), nested.as_path());
}

#[test]
fn an_unreadable_log_is_left_exactly_as_found() {
    let disk = SimDisk::new();
    let (mut log, _) = reopen(&disk, small());
    for i in 1..=60 {
        log.append(&[entry(i, 1, &[0u8; 200])]).unwrap();
        log.sync().unwrap();
    }
    drop(log);
    let files = disk.files();
    assert!(files.len() >= 3);
    // A torn tail in the first segment, and a later segment from a newer
    // format: opening must fail without truncating or removing anything.
    let first = files[0].0.clone();
    assert!(disk.corrupt_byte(&first, files[0].1 - 3, 0xff));
    let newest = files[files.len() - 1].0.clone();
    let mut bytes = disk.durable_bytes(&newest).unwrap();
    bytes[8] = 9;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[0..12]), &bytes[16..32]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    disk.put_durable(&newest, &bytes);
    let before: Vec<(String, Option<Vec<u8>>)> = files
        .iter()
        .map(|(name, _)| (name.clone(), disk.durable_bytes(name)))
        .collect();
    assert!(matches!(
        RaftLog::open(disk.clone(), small()),
        Err(StoreError::Corrupt(_))
    ));
    let after: Vec<(String, Option<Vec<u8>>)> = files
        .iter()
        .map(|(name, _)| (name.clone(), disk.durable_bytes(name)))
        .collect();
    assert_eq!(before, after);
}
