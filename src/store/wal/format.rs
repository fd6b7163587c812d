//! On-disk format of the raft log: segment headers, record framing and the
//! payload encodings of each record type.
//!
//! Owns: every byte layout of a segment file, and nothing else. Must not touch:
//! files or disks (it encodes into and decodes from byte slices only) or the
//! log's replay rules (see `mod.rs`).
//!
//! Layout, little-endian throughout:
//! - segment header (32 bytes): magic `TERNWAL\0` | version u32 | crc32c u32 of
//!   the other 28 header bytes | segment sequence u64 | first index u64
//! - record: body length u32 | crc32c u32 of (length bytes ++ body) | body,
//!   where body = record type u8 | payload
//!
//! Version 1 payloads:
//! - entry (1): index u64 | term u64 | entry type u8 | data length u32 | data | context
//! - hard state (2): term u64 | vote u64 | commit u64
//! - conf state (3): four id lists (voters, learners, voters outgoing, learners
//!   next), each a count u32 then u64 ids, then auto_leave u8
//! - snapshot marker (4): index u64 | term u64 | flags u8 (bit 0: entries after
//!   the index survive) | conf state as in (3)
//!
//! A reader accepts every version up to `FORMAT_VERSION`; a segment written by a
//! newer version is refused rather than truncated, so a downgrade never destroys
//! data it cannot read.

use protobuf::ProtobufEnum;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};

pub(crate) const MAGIC: [u8; 8] = *b"TERNWAL\0";
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 32;
pub(crate) const RECORD_HEADER_LEN: usize = 8;

const TYPE_ENTRY: u8 = 1;
const TYPE_HARD_STATE: u8 = 2;
const TYPE_CONF_STATE: u8 = 3;
const TYPE_SNAPSHOT: u8 = 4;

const SNAPSHOT_KEEPS_FOLLOWING: u8 = 1;

/// Fixed bytes of an entry record besides its data and context.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = RECORD_HEADER_LEN + 1 + 8 + 8 + 1 + 4;

/// The file name of a segment: sequence number and first index, both fixed-width
/// hex so that names sort like the numbers they carry.
pub(crate) fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// Parses a segment file name into (sequence, first index); other names are not
/// segments.
pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    let seq = u64::from_str_radix(seq, 16).ok()?;
    let first = u64::from_str_radix(first, 16).ok()?;
    Some((seq, first))
}

fn header_crc(header: &[u8; HEADER_LEN]) -> u32 {
    let crc = crc32c::crc32c(&header[0..12]);
    crc32c::crc32c_append(crc, &header[16..32])
}

pub(crate) fn encode_header(out: &mut Vec<u8>, seq: u64, first_index: u64) {
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&seq.to_le_bytes());
    header[24..32].copy_from_slice(&first_index.to_le_bytes());
    let crc = header_crc(&header);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
}

/// What a segment header says, once its checksum holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub version: u32,
    pub seq: u64,
    pub first_index: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Too short, wrong magic or bad checksum: a torn creation or damage.
    Invalid,
    /// A valid header from a newer format this binary cannot read.
    NewerVersion(u32),
}

pub(crate) fn decode_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let header: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(HeaderError::Invalid)?;
    if header[0..8] != MAGIC || read_u32(header, 12) != Some(header_crc(header)) {
        return Err(HeaderError::Invalid);
    }
    let version = read_u32(header, 8).ok_or(HeaderError::Invalid)?;
    if version == 0 {
        return Err(HeaderError::Invalid);
    }
    if version > FORMAT_VERSION {
        return Err(HeaderError::NewerVersion(version));
    }
    Ok(SegmentHeader {
        version,
        seq: read_u64(header, 16).ok_or(HeaderError::Invalid)?,
        first_index: read_u64(header, 24).ok_or(HeaderError::Invalid)?,
    })
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// Starts a record: reserves its header and writes the type. Returns the offset
/// `finish_record` needs.
fn begin_record(out: &mut Vec<u8>, record_type: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    out.push(record_type);
    start
}

/// Fills in the length and checksum of the record begun at `start`.
fn finish_record(out: &mut [u8], start: usize) {
    let body_start = start + RECORD_HEADER_LEN;
    let body_len = out.len() - body_start;
    let body_len = u32::try_from(body_len).expect("record bodies are bounded by append() checks");
    let len_bytes = body_len.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &out[body_start..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Largest data + context an entry may carry: the record length is a u32.
pub(crate) const MAX_ENTRY_PAYLOAD_BYTES: usize = (u32::MAX as usize) - ENTRY_OVERHEAD_BYTES;

pub(crate) fn encode_entry(out: &mut Vec<u8>, entry: &Entry) {
    let start = begin_record(out, TYPE_ENTRY);
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&entry.term.to_le_bytes());
    out.push(entry_type_code(entry.get_entry_type()));
    let data = entry.get_data();
    let data_len = u32::try_from(data.len()).expect("entry size checked by append()");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(entry.get_context());
    finish_record(out, start);
}

fn entry_type_code(entry_type: EntryType) -> u8 {
    match entry_type {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

pub(crate) fn encode_hard_state(out: &mut Vec<u8>, hard_state: &HardState) {
    let start = begin_record(out, TYPE_HARD_STATE);
    out.extend_from_slice(&hard_state.term.to_le_bytes());
    out.extend_from_slice(&hard_state.vote.to_le_bytes());
    out.extend_from_slice(&hard_state.commit.to_le_bytes());
    finish_record(out, start);
}

pub(crate) fn encode_conf_state(out: &mut Vec<u8>, conf_state: &ConfState) {
    let start = begin_record(out, TYPE_CONF_STATE);
    put_conf_state(out, conf_state);
    finish_record(out, start);
}

pub(crate) fn encode_snapshot(
    out: &mut Vec<u8>,
    index: u64,
    term: u64,
    keeps_following: bool,
    conf_state: &ConfState,
) {
    let start = begin_record(out, TYPE_SNAPSHOT);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.push(if keeps_following {
        SNAPSHOT_KEEPS_FOLLOWING
    } else {
        0
    });
    put_conf_state(out, conf_state);
    finish_record(out, start);
}

fn put_conf_state(out: &mut Vec<u8>, conf_state: &ConfState) {
    for ids in [
        conf_state.get_voters(),
        conf_state.get_learners(),
        conf_state.get_voters_outgoing(),
        conf_state.get_learners_next(),
    ] {
        let count = u32::try_from(ids.len()).expect("membership lists are tiny");
        out.extend_from_slice(&count.to_le_bytes());
        for id in ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out.push(u8::from(conf_state.get_auto_leave()));
}

/// One decoded record; entry bytes borrow from the segment.
#[derive(Debug, PartialEq)]
pub(crate) enum Record<'a> {
    Entry {
        index: u64,
        term: u64,
        entry_type: EntryType,
        data: &'a [u8],
        context: &'a [u8],
    },
    HardState(HardState),
    ConfState(ConfState),
    Snapshot {
        index: u64,
        term: u64,
        keeps_following: bool,
        conf_state: ConfState,
    },
}

/// The outcome of reading at one offset of a segment.
#[derive(Debug, PartialEq)]
pub(crate) enum Next<'a> {
    /// A whole, checksummed record and the offset just past it.
    Record(Record<'a>, usize),
    /// The segment ends exactly here.
    End,
    /// A torn or corrupt record starts here; nothing from here on is trusted.
    Invalid(&'static str),
}

/// Reads the record at `offset` of a segment of format `version`.
pub(crate) fn next_record(segment: &[u8], offset: usize, version: u32) -> Next<'_> {
    debug_assert!(
        version >= 1 && version <= FORMAT_VERSION,
        "caller checked the version"
    );
    let rest = match segment.get(offset..) {
        Some(rest) if !rest.is_empty() => rest,
        _ => return Next::End,
    };
    let (Some(body_len), Some(crc)) = (read_u32(rest, 0), read_u32(rest, 4)) else {
        return Next::Invalid("torn record header");
    };
    let body_len = body_len as usize;
    if body_len == 0 {
        return Next::Invalid("zero-length record");
    }
    let Some(body) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN.saturating_add(body_len)) else {
        return Next::Invalid("record runs past the end of the segment");
    };
    let expected = crc32c::crc32c_append(crc32c::crc32c(&(body_len as u32).to_le_bytes()), body);
    if expected != crc {
        return Next::Invalid("record checksum mismatch");
    }
    let end = offset + RECORD_HEADER_LEN + body_len;
    match decode_body(body) {
        Some(record) => Next::Record(record, end),
        None => Next::Invalid("record body does not decode"),
    }
}

/// A cursor over a checksummed body; every read is bounds-checked because a
/// checksum only proves the bytes are what some writer wrote, not that the
/// writer was this version.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let v = read_u32(self.bytes, self.pos)?;
        self.pos += 4;
        Some(v)
    }
    fn u64(&mut self) -> Option<u64> {
        let v = read_u64(self.bytes, self.pos)?;
        self.pos += 8;
        Some(v)
    }
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        Some(s)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = self.bytes.get(self.pos..).unwrap_or(&[]);
        self.pos = self.bytes.len();
        s
    }
    fn is_done(&self) -> bool {
        self.pos == self.bytes.len()
    }
    fn ids(&mut self) -> Option<Vec<u64>> {
        let count = self.u32()? as usize;
        // A count the remaining bytes cannot hold is corrupt; checking first keeps
        // the allocation bounded by the record size.
        if count > self.bytes.len().saturating_sub(self.pos) / 8 {
            return None;
        }
        (0..count).map(|_| self.u64()).collect()
    }
    fn conf_state(&mut self) -> Option<ConfState> {
        let mut conf_state = ConfState::default();
        conf_state.set_voters(self.ids()?);
        conf_state.set_learners(self.ids()?);
        conf_state.set_voters_outgoing(self.ids()?);
        conf_state.set_learners_next(self.ids()?);
        conf_state.set_auto_leave(match self.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        });
        Some(conf_state)
    }
}

fn decode_body(body: &[u8]) -> Option<Record<'_>> {
    let mut c = Cursor {
        bytes: body,
        pos: 0,
    };
    let record = match c.u8()? {
        TYPE_ENTRY => {
            let index = c.u64()?;
            let term = c.u64()?;
            let entry_type = EntryType::from_i32(i32::from(c.u8()?))?;
            let data_len = c.u32()? as usize;
            let data = c.take(data_len)?;
            let context = c.rest();
            Record::Entry {
                index,
                term,
                entry_type,
                data,
                context,
            }
        }
        TYPE_HARD_STATE => Record::HardState(HardState {
            term: c.u64()?,
            vote: c.u64()?,
            commit: c.u64()?,
            ..HardState::default()
        }),
        TYPE_CONF_STATE => Record::ConfState(c.conf_state()?),
        TYPE_SNAPSHOT => {
            let index = c.u64()?;
            let term = c.u64()?;
            let flags = c.u8()?;
            if flags & !SNAPSHOT_KEEPS_FOLLOWING != 0 {
                return None;
            }
            Record::Snapshot {
                index,
                term,
                keeps_following: flags & SNAPSHOT_KEEPS_FOLLOWING != 0,
                conf_state: c.conf_state()?,
            }
        }
        _ => return None,
    };
    c.is_done().then_some(record)
}

/// Builds an owned raft entry from a decoded record's fields.
pub(crate) fn to_entry(
    index: u64,
    term: u64,
    entry_type: EntryType,
    data: &[u8],
    context: &[u8],
) -> Entry {
    Entry {
        entry_type,
        term,
        index,
        data: data.to_vec().into(),
        context: context.to_vec().into(),
        ..Entry::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry_type(code: u8) -> EntryType {
        match code % 3 {
            0 => EntryType::EntryNormal,
            1 => EntryType::EntryConfChange,
            _ => EntryType::EntryConfChangeV2,
        }
    }

    fn conf_state(lists: [Vec<u64>; 4], auto_leave: bool) -> ConfState {
        let [voters, learners, voters_outgoing, learners_next] = lists;
        ConfState {
            voters,
            learners,
            voters_outgoing,
            learners_next,
            auto_leave,
            ..ConfState::default()
        }
    }

    fn ids() -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::vec(any::<u64>(), 0..6)
    }

    proptest! {
        #[test]
        fn every_record_decodes_to_what_was_encoded(
            index in any::<u64>(),
            term in any::<u64>(),
            code in any::<u8>(),
            data in proptest::collection::vec(any::<u8>(), 0..300),
            context in proptest::collection::vec(any::<u8>(), 0..40),
            hard in any::<(u64, u64, u64)>(),
            lists in [ids(), ids(), ids(), ids()],
            flags in any::<(bool, bool)>(),
        ) {
            let entry = to_entry(index, term, entry_type(code), &data, &context);
            let hard_state = HardState { term: hard.0, vote: hard.1, commit: hard.2, ..HardState::default() };
            let conf = conf_state(lists, flags.0);
            let mut segment = Vec::new();
            encode_header(&mut segment, 3, index);
            encode_entry(&mut segment, &entry);
            encode_hard_state(&mut segment, &hard_state);
            encode_conf_state(&mut segment, &conf);
            encode_snapshot(&mut segment, index, term, flags.1, &conf);

            let header = decode_header(&segment).unwrap();
            prop_assert_eq!(header, SegmentHeader { version: FORMAT_VERSION, seq: 3, first_index: index });
            let mut offset = HEADER_LEN;
            let mut records = Vec::new();
            while let Next::Record(record, end) = next_record(&segment, offset, FORMAT_VERSION) {
                records.push(record);
                offset = end;
            }
            prop_assert_eq!(offset, segment.len());
            prop_assert_eq!(records, vec![
                Record::Entry { index, term, entry_type: entry_type(code), data: &data, context: &context },
                Record::HardState(hard_state),
                Record::ConfState(conf.clone()),
                Record::Snapshot { index, term, keeps_following: flags.1, conf_state: conf },
            ]);
        }

        #[test]
        fn any_single_flipped_bit_is_caught(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            bit in any::<usize>(),
        ) {
            let mut segment = Vec::new();
            encode_entry(&mut segment, &to_entry(5, 2, EntryType::EntryNormal, &data, b""));
            let bit = bit % (segment.len() * 8);
            segment[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(matches!(next_record(&segment, 0, FORMAT_VERSION), Next::Invalid(_)));
        }
    }

    #[test]
    fn segment_names_sort_like_their_numbers_and_parse_back() {
        let names: Vec<String> = [(1, 1), (2, 900), (10, 70_000), (u64::MAX, u64::MAX)]
            .iter()
            .map(|&(seq, first)| segment_name(seq, first))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(parse_segment_name(&names[2]), Some((10, 70_000)));
        for bad in [
            "LOCK",
            "1-1.wal",
            "0000000000000001-000000000000000g.wal",
            "x.wal",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn headers_reject_damage_and_future_versions() {
        let mut header = Vec::new();
        encode_header(&mut header, 7, 42);
        assert_eq!(
            decode_header(&header[..HEADER_LEN - 1]),
            Err(HeaderError::Invalid)
        );
        let mut damaged = header.clone();
        damaged[20] ^= 4;
        assert_eq!(decode_header(&damaged), Err(HeaderError::Invalid));
        let mut future = header.clone();
        future[8] = 2;
        let crc = header_crc(future.as_slice().try_into().unwrap());
        future[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&future), Err(HeaderError::NewerVersion(2)));
    }
}
