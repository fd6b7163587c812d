//! The durable raft log: a checksummed, segmented, append-only log of raft
//! entries, hard state, conf state and snapshot markers.
//!
//! Owns: the log's segment files (through a `LogDisk`), their format, group
//! commit (appends are buffered in memory; `sync` writes and fdatasyncs once),
//! recovery after a crash, and whole-segment compaction. Must not touch: raft
//! logic (the caller decides what to append and when to sync), the state
//! machine, or any file outside its disk.
//!
//! Invariants:
//! - `sync` is the only durability point; after it returns, `open` on the same
//!   disk returns everything appended before it (unless compacted below the
//!   recorded snapshot).
//! - Recovery returns a prefix of the record stream: it truncates at the first
//!   torn or corrupt record (physically, so that later appends never follow
//!   garbage) and removes every later segment.
//! - Every segment after the first starts with a checkpoint (snapshot marker,
//!   conf state, hard state as of its creation), so removing older segments
//!   never loses metadata.
//! - Entries in the log are contiguous and start right after the snapshot
//!   index; an entry at an index already in the log replaces it and everything
//!   after it (raft's suffix replacement); replay resolves to the last write.
//!
//! Use from a raft Ready loop (raft-rs order):
//!
//! ```
//! use raft::eraftpb::{ConfState, Entry, HardState};
//! use tern::store::wal::{LogOptions, RaftLog, SimDisk};
//!
//! # fn main() -> Result<(), tern::store::StoreError> {
//! let disk = SimDisk::new();
//! let (mut log, recovered) = RaftLog::open(disk.clone(), LogOptions::default())?;
//! assert!(recovered.entries.is_empty());
//! // For each Ready: a snapshot first (only once its data is durable
//! // elsewhere), then entries and hard state, then one sync for all of them.
//! let entries: Vec<Entry> = (1..=3)
//!     .map(|index| Entry { index, term: 1, data: b"cmd".to_vec().into(), ..Entry::default() })
//!     .collect();
//! log.append(&entries)?;
//! log.set_hard_state(&HardState { term: 1, vote: 1, commit: 0, ..HardState::default() })?;
//! log.sync()?; // now send persisted_messages()
//! // After applying and taking a state snapshot at 2 that is durable:
//! log.set_snapshot(2, 1, &ConfState::default())?;
//! log.sync()?;
//! log.compact(2)?;
//! drop(log);
//! disk.power_cut(7);
//! let (_, recovered) = RaftLog::open(disk, LogOptions::default())?;
//! assert_eq!(recovered.snapshot_index, 2);
//! assert_eq!(recovered.entries.len(), 1);
//! # Ok(())
//! # }
//! ```

mod disk;
mod format;
mod sim_disk;

pub use disk::{FsDisk, LogDisk};
pub use sim_disk::{PowerCutEffect, SimDisk};

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, HardState};

use super::StoreError;
use format::{HeaderError, Next, Record};

/// Tunables of a raft log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is closed and a new one started once it reaches this size.
    /// Values below `MIN_SEGMENT_SIZE_BYTES` are raised to it.
    pub segment_size_bytes: u64,
}

/// Write buffer capacity kept between syncs; batches up to this size reuse it
/// without allocating.
const RETAINED_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Smallest segment size honoured: a new segment's header and checkpoint must
/// fit well inside one, or every record would roll.
pub const MIN_SEGMENT_SIZE_BYTES: u64 = 4096;

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What `open` found on disk: everything that was synced, plus any later
/// records that reached the disk whole before the crash (never part of one).
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The latest conf state recorded, by `set_conf_state` or `set_snapshot`.
    pub conf_state: ConfState,
    /// Index and term of the latest snapshot marker (0 and 0 if none).
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    /// The conf state the latest snapshot marker carried.
    pub snapshot_conf_state: ConfState,
    /// Contiguous entries from `snapshot_index + 1`.
    pub entries: Vec<Entry>,
    /// Bytes cut off torn or corrupt segment tails and removed later segments.
    pub dropped_bytes: u64,
}

/// Counters of the log since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// `sync` calls that had something to make durable.
    pub syncs: u64,
    /// fdatasync and directory fsync calls issued to the disk.
    pub fsyncs: u64,
    /// Entries made durable.
    pub entries: u64,
    /// Bytes written to segment files.
    pub bytes: u64,
    /// Most entries made durable by a single `sync`.
    pub max_entries_per_sync: u64,
    /// Entries made durable by the latest `sync`.
    pub last_sync_entries: u64,
    pub segments_created: u64,
    pub segments_removed: u64,
    /// Segments currently on disk or pending creation.
    pub live_segments: u64,
}

impl LogStats {
    /// Mean entries per sync (0 before the first sync).
    pub fn entries_per_sync(&self) -> f64 {
        if self.syncs == 0 {
            0.0
        } else {
            self.entries as f64 / self.syncs as f64
        }
    }
}

/// One segment as the writer tracks it.
#[derive(Debug)]
struct Segment {
    seq: u64,
    name: String,
    /// Bytes on disk plus bytes buffered for it.
    size_bytes: u64,
    /// Highest entry index ever written to it (0 if none): it may be removed
    /// once that index is covered by a synced snapshot.
    max_entry_index: u64,
    /// The file exists on disk (possibly not yet synced).
    created: bool,
    /// Its header and checkpoint are synced: older segments may be removed.
    durable: bool,
}

/// Bytes written into a segment that is no longer the active one but has not
/// reached the disk yet (a roll happened between two syncs).
#[derive(Debug)]
struct SealedChunk {
    seq: u64,
    bytes: Vec<u8>,
}

/// Which terms the log's entries carry, as runs of (first index, term): terms
/// change rarely, so this stays tiny while still answering "term at index"
/// exactly, which deciding a snapshot's effect on the suffix needs.
#[derive(Debug, Default, Clone)]
struct TermRuns {
    runs: Vec<(u64, u64)>,
}

impl TermRuns {
    fn truncate_from(&mut self, index: u64) {
        while matches!(self.runs.last(), Some(&(start, _)) if start >= index) {
            self.runs.pop();
        }
    }
    fn push(&mut self, index: u64, term: u64) {
        if self.runs.last().map(|&(_, t)| t) != Some(term) {
            self.runs.push((index, term));
        }
    }
    fn term_at(&self, index: u64) -> Option<u64> {
        self.runs
            .iter()
            .rev()
            .find(|&&(start, _)| start <= index)
            .map(|&(_, term)| term)
    }
    /// Forgets runs wholly below `index` (keeping the run that covers it).
    fn drop_before(&mut self, index: u64) {
        let keep_from = self
            .runs
            .iter()
            .rposition(|&(start, _)| start <= index)
            .unwrap_or(0);
        self.runs.drain(..keep_from);
    }
}

/// The durable raft log over a disk.
pub struct RaftLog<D: LogDisk> {
    disk: D,
    segment_size_bytes: u64,
    /// Oldest first; the last one is the active segment (there is always one).
    segments: VecDeque<Segment>,
    /// Unsynced bytes for the active segment.
    buffer: Vec<u8>,
    /// Unsynced bytes for segments rolled over since the last sync.
    sealed: Vec<SealedChunk>,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_index: u64,
    snapshot_term: u64,
    snapshot_conf_state: ConfState,
    /// The snapshot index as of the last completed sync: compaction bound.
    synced_snapshot_index: u64,
    /// Index of the last entry, or the snapshot index if no entry follows it.
    last_index: u64,
    terms: TermRuns,
    pending_entries: u64,
    stats: LogStats,
    /// Set after a failed write or sync: the file state is then unknown (a
    /// failed fdatasync may have dropped dirty pages), so no later call may
    /// pretend durability. Reopen to recover.
    failed: bool,
}

impl<D: LogDisk> std::fmt::Debug for RaftLog<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog")
            .field("last_index", &self.last_index)
            .field("snapshot_index", &self.snapshot_index)
            .field("segments", &self.segments.len())
            .field("pending_bytes", &self.pending_bytes())
            .field("failed", &self.failed)
            .finish()
    }
}

fn misuse(message: String) -> StoreError {
    StoreError::Raft(message)
}

/// A change recovery makes to the files once the log has replayed.
enum Repair {
    /// Cut a torn or corrupt tail off (the length is durable when it returns).
    Truncate(String, u64),
    /// Remove a segment past the cut, or one with a torn header.
    Remove(String),
}

/// The replay of a record stream into the state `open` returns.
struct Replay {
    recovered: Recovered,
    entries: VecDeque<Entry>,
}

impl Replay {
    fn apply(&mut self, record: Record<'_>) -> Result<(), StoreError> {
        let r = &mut self.recovered;
        match record {
            Record::Entry {
                index,
                term,
                entry_type,
                data,
                context,
            } => {
                if index <= r.snapshot_index {
                    // Written before compaction removed the rest of its run;
                    // the snapshot covers it.
                    return Ok(());
                }
                if let Some(last) = self.entries.back().map(|e| e.index) {
                    if index > last.saturating_add(1) {
                        return Err(StoreError::Corrupt(format!(
                            "raft log jumps from index {last} to {index}"
                        )));
                    }
                    let first = self.entries.front().map_or(index, |e| e.index);
                    if index < first {
                        self.entries.clear();
                    } else {
                        // Cannot overflow usize: bounded by the deque's length.
                        self.entries.truncate((index - first) as usize);
                    }
                }
                // An empty deque may start past snapshot_index + 1 only in the
                // first segment after compaction; `finish` checks that a later
                // snapshot marker closed the gap.
                self.entries
                    .push_back(format::to_entry(index, term, entry_type, data, context));
            }
            Record::HardState(hard_state) => r.hard_state = hard_state,
            Record::ConfState(conf_state) => r.conf_state = conf_state,
            Record::Snapshot {
                index,
                term,
                keeps_following,
                conf_state,
            } => {
                if index < r.snapshot_index {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot marker at {index} after one at {}",
                        r.snapshot_index
                    )));
                }
                if keeps_following {
                    while self.entries.front().is_some_and(|e| e.index <= index) {
                        self.entries.pop_front();
                    }
                } else {
                    self.entries.clear();
                }
                r.snapshot_index = index;
                r.snapshot_term = term;
                r.conf_state = conf_state.clone();
                r.snapshot_conf_state = conf_state;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Recovered, StoreError> {
        if let Some(first) = self.entries.front().map(|e| e.index) {
            if Some(first) != self.recovered.snapshot_index.checked_add(1) {
                return Err(StoreError::Corrupt(format!(
                    "raft log starts at index {first} but its snapshot is at {}",
                    self.recovered.snapshot_index
                )));
            }
        }
        self.recovered.entries = self.entries.into();
        Ok(self.recovered)
    }
}

impl<D: LogDisk> RaftLog<D> {
    /// Opens the log on `disk`, recovering what was synced: checksums are
    /// verified, the first torn or corrupt record and everything after it is
    /// cut off (and later segments removed), and suffix replacements resolve
    /// to the last write.
    pub fn open(mut disk: D, options: LogOptions) -> Result<(RaftLog<D>, Recovered), StoreError> {
        let segment_size_bytes = options.segment_size_bytes.max(MIN_SEGMENT_SIZE_BYTES);
        let mut names: Vec<(u64, u64, String)> = disk
            .list()?
            .into_iter()
            .filter_map(|name| format::parse_segment_name(&name).map(|(s, f)| (s, f, name)))
            .collect();
        names.sort_unstable();
        for pair in names.windows(2) {
            if let [(a, _, name_a), (b, _, name_b)] = pair {
                if b.checked_sub(*a) != Some(1) {
                    return Err(StoreError::Corrupt(format!(
                        "raft log segments {name_a} and {name_b} are not consecutive"
                    )));
                }
            }
        }

        let mut replay = Replay {
            recovered: Recovered::default(),
            entries: VecDeque::new(),
        };
        let mut segments = VecDeque::new();
        let mut dropped_bytes = 0u64;
        let mut damaged = false;
        // Repairs wait until the whole log has replayed: a log that turns out
        // unreadable (newer version, gap) is left exactly as found.
        let mut repairs: Vec<Repair> = Vec::new();
        let count = names.len();
        let next_seq = names.last().map_or(1, |(seq, _, _)| seq.saturating_add(1));
        for (position, (seq, first_index, name)) in names.into_iter().enumerate() {
            let bytes = disk.read(&name)?;
            let header = format::decode_header(&bytes);
            if let Err(HeaderError::NewerVersion(version)) = header {
                return Err(StoreError::Corrupt(format!(
                    "raft log segment {name} has format version {version}; this binary \
                     reads up to {}",
                    format::FORMAT_VERSION
                )));
            }
            if damaged {
                // Everything after a cut is unreachable: a hole in the record
                // stream would let a later record reorder history.
                dropped_bytes += bytes.len() as u64;
                repairs.push(Repair::Remove(name));
                continue;
            }
            let header = match header {
                Ok(header) => header,
                Err(HeaderError::Invalid) if position + 1 == count => {
                    // The newest segment's header is written with its first
                    // records in one sync; a torn header means nothing in it was
                    // ever synced.
                    tracing::warn!(segment = %name, "removing raft log segment with a torn header");
                    dropped_bytes += bytes.len() as u64;
                    repairs.push(Repair::Remove(name));
                    damaged = true;
                    continue;
                }
                // Newer versions were refused above.
                Err(HeaderError::Invalid | HeaderError::NewerVersion(_)) => {
                    return Err(StoreError::Corrupt(format!(
                        "raft log segment {name} has an invalid header"
                    )));
                }
            };
            if header.seq != seq || header.first_index != first_index {
                return Err(StoreError::Corrupt(format!(
                    "raft log segment {name} header says seq {} first index {}",
                    header.seq, header.first_index
                )));
            }
            let mut offset = format::HEADER_LEN;
            let mut max_entry_index = 0;
            loop {
                match format::next_record(&bytes, offset, header.version) {
                    Next::Record(record, end) => {
                        if let Record::Entry { index, .. } = &record {
                            max_entry_index = max_entry_index.max(*index);
                        }
                        replay.apply(record)?;
                        offset = end;
                    }
                    Next::End => break,
                    Next::Invalid(reason) => {
                        tracing::warn!(
                            segment = %name,
                            offset,
                            reason,
                            dropped_bytes = bytes.len() - offset,
                            "truncating raft log at a torn or corrupt record"
                        );
                        dropped_bytes += (bytes.len() - offset) as u64;
                        repairs.push(Repair::Truncate(name.clone(), offset as u64));
                        damaged = true;
                        break;
                    }
                }
            }
            segments.push_back(Segment {
                seq,
                name,
                size_bytes: offset as u64,
                max_entry_index,
                created: true,
                durable: true,
            });
        }
        let mut recovered = replay.finish()?;
        recovered.dropped_bytes = dropped_bytes;
        let mut removed_any = false;
        for repair in repairs {
            match repair {
                Repair::Truncate(name, len_bytes) => disk.truncate(&name, len_bytes)?,
                Repair::Remove(name) => {
                    disk.remove(&name)?;
                    removed_any = true;
                }
            }
        }
        if removed_any {
            disk.sync_dir()?;
        }

        let mut terms = TermRuns::default();
        for entry in &recovered.entries {
            terms.push(entry.index, entry.term);
        }
        let last_index = recovered
            .entries
            .last()
            .map_or(recovered.snapshot_index, |e| e.index);
        let live_segments = segments.len() as u64;
        let mut log = RaftLog {
            disk,
            segment_size_bytes,
            segments,
            buffer: Vec::new(),
            sealed: Vec::new(),
            hard_state: recovered.hard_state.clone(),
            conf_state: recovered.conf_state.clone(),
            snapshot_index: recovered.snapshot_index,
            snapshot_term: recovered.snapshot_term,
            snapshot_conf_state: recovered.snapshot_conf_state.clone(),
            synced_snapshot_index: recovered.snapshot_index,
            last_index,
            terms,
            pending_entries: 0,
            stats: LogStats {
                live_segments,
                ..LogStats::default()
            },
            failed: false,
        };
        if log.segments.is_empty() {
            log.start_segment(next_seq);
        }
        Ok((log, recovered))
    }

    /// Starts a new active segment (created on disk at the next sync) with its
    /// header and a checkpoint of the metadata.
    fn start_segment(&mut self, seq: u64) {
        let first_index = self.last_index.saturating_add(1);
        let name = format::segment_name(seq, first_index);
        debug_assert!(
            self.buffer.is_empty(),
            "the previous segment's bytes were sealed"
        );
        format::encode_header(&mut self.buffer, seq, first_index);
        if seq > 1 || self.snapshot_index > 0 {
            format::encode_snapshot(
                &mut self.buffer,
                self.snapshot_index,
                self.snapshot_term,
                true,
                &self.snapshot_conf_state,
            );
        }
        format::encode_conf_state(&mut self.buffer, &self.conf_state);
        format::encode_hard_state(&mut self.buffer, &self.hard_state);
        self.segments.push_back(Segment {
            seq,
            name,
            size_bytes: self.buffer.len() as u64,
            max_entry_index: 0,
            created: false,
            durable: false,
        });
        self.stats.live_segments = self.segments.len() as u64;
    }

    fn active(&mut self) -> &mut Segment {
        // `open` creates a segment when none exists and only compaction removes
        // segments, never the active one.
        self.segments
            .back_mut()
            .expect("a raft log always has an active segment")
    }

    /// Rolls to a new segment if the active one is full. Called before each
    /// record so that a record never straddles two segments.
    fn roll_if_full(&mut self) {
        let limit_bytes = self.segment_size_bytes;
        let active = self.active();
        if active.size_bytes < limit_bytes {
            return;
        }
        let seq = active.seq;
        let bytes = std::mem::take(&mut self.buffer);
        if !bytes.is_empty() || !self.active().created {
            self.sealed.push(SealedChunk { seq, bytes });
        }
        self.start_segment(seq.saturating_add(1));
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        if self.failed {
            Err(StoreError::Io(std::io::Error::other(
                "raft log failed a write or sync earlier; reopen it to recover",
            )))
        } else {
            Ok(())
        }
    }

    /// Appends entries (buffered until `sync`). Entries must be contiguous; the
    /// first may be at any index from just after the snapshot to one past the
    /// last entry, and replaces every entry from its index on.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.check_usable()?;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        if first.index <= self.snapshot_index {
            return Err(misuse(format!(
                "append at index {} is covered by the snapshot at {}",
                first.index, self.snapshot_index
            )));
        }
        if first.index > self.last_index.saturating_add(1) {
            return Err(misuse(format!(
                "append at index {} leaves a gap after {}",
                first.index, self.last_index
            )));
        }
        let mut reserve_bytes = 0usize;
        for (i, entry) in entries.iter().enumerate() {
            if Some(entry.index) != first.index.checked_add(i as u64) {
                return Err(misuse(format!(
                    "appended entries are not contiguous at index {}",
                    entry.index
                )));
            }
            let payload_bytes = entry.get_data().len() + entry.get_context().len();
            if payload_bytes > format::MAX_ENTRY_PAYLOAD_BYTES {
                return Err(misuse(format!(
                    "entry {} carries {payload_bytes} bytes",
                    entry.index
                )));
            }
            reserve_bytes =
                reserve_bytes.saturating_add(payload_bytes + format::ENTRY_OVERHEAD_BYTES);
        }
        self.buffer.reserve(reserve_bytes);
        for entry in entries {
            self.roll_if_full();
            let before = self.buffer.len();
            format::encode_entry(&mut self.buffer, entry);
            let written = (self.buffer.len() - before) as u64;
            let active = self.active();
            active.size_bytes += written;
            active.max_entry_index = active.max_entry_index.max(entry.index);
        }
        self.terms.truncate_from(first.index);
        for entry in entries {
            self.terms.push(entry.index, entry.term);
        }
        self.last_index = last.index;
        self.pending_entries += entries.len() as u64;
        Ok(())
    }

    fn write_record(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        self.roll_if_full();
        let before = self.buffer.len();
        encode(&mut self.buffer);
        let written = (self.buffer.len() - before) as u64;
        self.active().size_bytes += written;
    }

    /// Records raft's hard state (buffered until `sync`).
    pub fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StoreError> {
        self.check_usable()?;
        if *hard_state == self.hard_state {
            return Ok(());
        }
        self.hard_state = hard_state.clone();
        self.write_record(|out| format::encode_hard_state(out, hard_state));
        Ok(())
    }

    /// Records the current membership (buffered until `sync`).
    pub fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StoreError> {
        self.check_usable()?;
        if *conf_state == self.conf_state {
            return Ok(());
        }
        self.conf_state = conf_state.clone();
        self.write_record(|out| format::encode_conf_state(out, conf_state));
        Ok(())
    }

    /// Records that a snapshot at (`index`, `term`) with `conf_state` exists
    /// (buffered until `sync`). If the log holds `index` with the same term
    /// (a local snapshot), the entries after it stay; otherwise (a snapshot
    /// from the leader that the log disagrees with) the log restarts at
    /// `index + 1`. The snapshot's conf state becomes the current one.
    pub fn set_snapshot(
        &mut self,
        index: u64,
        term: u64,
        conf_state: &ConfState,
    ) -> Result<(), StoreError> {
        self.check_usable()?;
        if index < self.snapshot_index {
            return Err(misuse(format!(
                "snapshot at {index} is older than the recorded one at {}",
                self.snapshot_index
            )));
        }
        let keeps_following = self.term_at(index) == Some(term);
        self.write_record(|out| {
            format::encode_snapshot(out, index, term, keeps_following, conf_state)
        });
        if keeps_following {
            self.terms.drop_before(index);
        } else {
            self.terms = TermRuns::default();
            self.last_index = index;
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.snapshot_conf_state = conf_state.clone();
        self.conf_state = conf_state.clone();
        Ok(())
    }

    /// The term of the entry at `index`, if the log knows it (the snapshot
    /// index counts).
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            Some(self.snapshot_term)
        } else if index > self.snapshot_index && index <= self.last_index {
            self.terms.term_at(index)
        } else {
            None
        }
    }

    /// Writes everything appended since the last sync and fdatasyncs it: the
    /// log's only durability point. Does nothing if nothing is pending.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.check_usable()?;
        let active_pending =
            !self.buffer.is_empty() || !self.segments.back().is_some_and(|s| s.created);
        if self.sealed.is_empty() && !active_pending {
            return Ok(());
        }
        match self.write_and_sync() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.failed = true;
                Err(StoreError::Io(e))
            }
        }
    }

    /// Writes the sealed chunks, then the active buffer, each followed by an
    /// fdatasync. A segment created here has its directory entry fsynced before
    /// the next segment is created, so that after a power cut at most the
    /// newest segment's name can be missing, never one in the middle.
    fn write_and_sync(&mut self) -> std::io::Result<()> {
        let mut fsyncs = 0u64;
        let mut bytes_written = 0u64;
        let sealed = std::mem::take(&mut self.sealed);
        for chunk in &sealed {
            let Some(position) = self.segments.iter().position(|s| s.seq == chunk.seq) else {
                debug_assert!(false, "a sealed chunk's segment is tracked until synced");
                continue;
            };
            fsyncs += self.write_segment(position, &chunk.bytes)?;
            bytes_written += chunk.bytes.len() as u64;
        }
        let active = self
            .segments
            .len()
            .checked_sub(1)
            .ok_or_else(|| std::io::Error::other("raft log has no active segment"))?;
        let buffer = std::mem::take(&mut self.buffer);
        let result = self.write_segment(active, &buffer);
        // Keep the buffer's capacity for the next batch either way.
        self.buffer = buffer;
        fsyncs += result?;
        bytes_written += self.buffer.len() as u64;
        self.buffer.clear();
        if self.buffer.capacity() > RETAINED_BUFFER_BYTES {
            // One huge batch (a catching-up follower) must not pin its
            // buffer for the life of the log.
            self.buffer.shrink_to(RETAINED_BUFFER_BYTES);
        }
        for segment in self.segments.iter_mut() {
            segment.durable = segment.created;
        }
        self.synced_snapshot_index = self.snapshot_index;
        let entries = std::mem::take(&mut self.pending_entries);
        let stats = &mut self.stats;
        stats.syncs += 1;
        stats.fsyncs += fsyncs;
        stats.entries += entries;
        stats.bytes += bytes_written;
        stats.last_sync_entries = entries;
        stats.max_entries_per_sync = stats.max_entries_per_sync.max(entries);
        Ok(())
    }

    /// Creates the segment at `position` if needed, appends `bytes` and makes
    /// both durable. Returns the number of fsync calls made.
    fn write_segment(&mut self, position: usize, bytes: &[u8]) -> std::io::Result<u64> {
        let Some(segment) = self.segments.get_mut(position) else {
            return Err(std::io::Error::other("raft log segment vanished"));
        };
        let mut fsyncs = 0;
        let created_now = !segment.created;
        if created_now {
            self.disk.create(&segment.name)?;
            segment.created = true;
            self.stats.segments_created += 1;
        }
        if !bytes.is_empty() {
            self.disk.append(&segment.name, bytes)?;
            self.disk.sync(&segment.name)?;
            fsyncs += 1;
        }
        if created_now {
            self.disk.sync_dir()?;
            fsyncs += 1;
        }
        Ok(fsyncs)
    }

    /// Removes whole segments whose entries are all at or below
    /// min(`upto_index`, the synced snapshot index). Never removes the active
    /// segment, nor one whose successor (holding the checkpoint that replaces
    /// its metadata) is not yet durable. Returns how many segments went.
    pub fn compact(&mut self, upto_index: u64) -> Result<usize, StoreError> {
        self.check_usable()?;
        let bound = upto_index.min(self.synced_snapshot_index);
        let mut removed = 0usize;
        let mut result = Ok(());
        while self.segments.len() >= 2 {
            let (Some(oldest), Some(next)) = (self.segments.front(), self.segments.get(1)) else {
                break;
            };
            if !oldest.durable || !next.durable || oldest.max_entry_index > bound {
                break;
            }
            if let Err(e) = self.disk.remove(&oldest.name) {
                result = Err(StoreError::Io(e));
                break;
            }
            self.segments.pop_front();
            removed += 1;
        }
        if removed > 0 {
            // Even after a failed removal, the ones that went must not come
            // back after a power cut while the log believes them gone.
            self.disk.sync_dir()?;
            self.stats.fsyncs += 1;
            self.stats.segments_removed += removed as u64;
            self.stats.live_segments = self.segments.len() as u64;
        }
        result.map(|()| removed)
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// Index of the last entry (the snapshot index if none follows it).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Index of the latest recorded snapshot marker (synced or not).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// Bytes appended but not yet synced.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len() + self.sealed.iter().map(|c| c.bytes.len()).sum::<usize>()
    }

    /// The disk, e.g. to inspect a `SimDisk` in tests.
    pub fn disk(&self) -> &D {
        &self.disk
    }
}

#[cfg(test)]
mod tests;
