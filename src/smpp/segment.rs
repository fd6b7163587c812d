//! Long messages: splitting an encoded message into SMS-sized parts, the
//! concatenation User Data Header, and reassembling parts that arrive.
//!
//! Owns: per-part limits, where a message may be cut (never inside a GSM
//! escape pair or a UTF-16 surrogate pair), UDH building and parsing, the SAR
//! values, and the bounded reassembly buffer.
//! Must not touch: PDU fields or TLV encoding (callers put `Segment::bytes` in
//! short_message or message_payload, set esm_class UDHI from `udhi` and write
//! the SAR TLVs from `sar`), clocks (callers pass `now_ms`) or randomness
//! (callers pass the reference number).
//!
//! Sizes are in octets as SMPP carries them: for GSM 03.38 that is one octet
//! per septet, so a full GSM part with an 8-bit UDH is 6 + 153 octets in
//! short_message even though it packs into 140 on the air.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::smpp::text::{self, gsm, ucs2, Encoding, EncodingChoice, TextError};

/// A concatenated message has at most this many parts (the count is one octet).
pub const MAX_SEGMENTS: usize = 255;
/// message_payload's length field is 16 bits.
pub const MAX_PAYLOAD_BYTES: usize = 65_535;

/// Information element identifiers (TS 23.040 9.2.3.24).
pub const IEI_CONCAT_8BIT_REF: u8 = 0x00;
pub const IEI_PORTS_8BIT: u8 = 0x04;
pub const IEI_PORTS_16BIT: u8 = 0x05;
pub const IEI_CONCAT_16BIT_REF: u8 = 0x08;

/// Whole UDH sizes, UDHL octet included.
pub const UDH_CONCAT_8BIT_BYTES: usize = 6;
pub const UDH_CONCAT_16BIT_BYTES: usize = 7;

/// The reference shared by all parts of one message, and thereby which
/// concatenation IE carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcatReference {
    Eight(u8),
    Sixteen(u16),
}

impl ConcatReference {
    pub fn value(self) -> u16 {
        match self {
            ConcatReference::Eight(r) => u16::from(r),
            ConcatReference::Sixteen(r) => r,
        }
    }

    fn udh_bytes(self) -> usize {
        match self {
            ConcatReference::Eight(_) => UDH_CONCAT_8BIT_BYTES,
            ConcatReference::Sixteen(_) => UDH_CONCAT_16BIT_BYTES,
        }
    }
}

/// How the parts of a long message travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carriage {
    /// A concatenation UDH at the start of each short_message; the caller sets
    /// esm_class UDHI (0x40) on parts whose `udhi` is true.
    Udh(ConcatReference),
    /// The sar_msg_ref_num / sar_total_segments / sar_segment_seqnum TLVs, no
    /// UDH. Parts are cut to the size of a 16-bit-reference UDH part (152
    /// septets, 133 octets, 66 UCS-2 units): the SMSC turns SAR into a UDH
    /// on the air, and a 16-bit sar_msg_ref_num may need the 7-octet IE, so
    /// this size fits whichever IE it picks and handsets see the same parts.
    Sar { reference: u16 },
    /// One part in message_payload, whatever its length (up to 64 KiB).
    Payload,
}

/// One part's place in its message: the values of the SAR TLVs, or of a
/// concatenation IE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartInfo {
    pub reference: u16,
    pub total: u8,
    /// 1-based.
    pub seqnum: u8,
}

/// One part, ready for a PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// UDH (if any) then the body, as SMPP carries them (unpacked septets for
    /// GSM).
    pub bytes: Vec<u8>,
    /// `bytes` starts with a UDH: set esm_class 0x40.
    pub udhi: bool,
    /// Put these in the SAR TLVs.
    pub sar: Option<PartInfo>,
}

impl Segment {
    /// Octets of TP-UD this part takes on the air: GSM septets packed after
    /// the UDH's fill bits; for a SAR part, counting the 7-octet UDH the SMSC
    /// may add (the worst case).
    pub fn air_octets(&self, encoding: Encoding) -> usize {
        let own_udh = if self.udhi {
            self.bytes
                .first()
                .map_or(0, |&udhl| (usize::from(udhl) + 1).min(self.bytes.len()))
        } else {
            0
        };
        let added_udh = if self.sar.is_some() {
            UDH_CONCAT_16BIT_BYTES
        } else {
            0
        };
        let udh = own_udh + added_udh;
        let body = self.bytes.len() - own_udh;
        let body_octets = match encoding {
            Encoding::Gsm7 => gsm::packed_len(body, gsm::fill_bits_after_udh(udh)),
            _ => body,
        };
        udh + body_octets
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("message needs {needed} parts, more than {MAX_SEGMENTS}")]
    TooManySegments { needed: usize },
    #[error("message of {len_bytes} octets exceeds the {MAX_PAYLOAD_BYTES}-octet message_payload")]
    PayloadTooLong { len_bytes: usize },
    #[error(transparent)]
    Text(#[from] TextError),
}

/// Part sizes in octets as SMPP carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most a message may have and still go as one part without a UDH.
    pub single_bytes: usize,
    /// The most body one part of a multipart message may hold.
    pub multipart_bytes: usize,
}

/// The part sizes for `encoding` under `carriage`: 160/153/152 septets,
/// 140/134/133 octets, 70/67/66 UCS-2 units (single / 8-bit UDH / 16-bit UDH
/// or SAR). IA5 is counted as octets: we cannot know whether the SMSC
/// converts it to the 7-bit alphabet.
pub fn limits(encoding: Encoding, carriage: Carriage) -> Limits {
    let (single, udh8, udh16) = match encoding {
        Encoding::Gsm7 => (160, 153, 152),
        Encoding::Ucs2 => (140, 134, 132),
        Encoding::Latin1 | Encoding::Ascii | Encoding::Binary => (140, 134, 133),
    };
    match carriage {
        Carriage::Udh(ConcatReference::Eight(_)) => Limits {
            single_bytes: single,
            multipart_bytes: udh8,
        },
        Carriage::Udh(ConcatReference::Sixteen(_)) | Carriage::Sar { .. } => Limits {
            single_bytes: single,
            multipart_bytes: udh16,
        },
        Carriage::Payload => Limits {
            single_bytes: MAX_PAYLOAD_BYTES,
            multipart_bytes: MAX_PAYLOAD_BYTES,
        },
    }
}

/// Octets from `at` that must stay in one part: a GSM escape and the code
/// after it, a UTF-16 surrogate pair, otherwise one unit.
fn atom_bytes(encoding: Encoding, payload: &[u8], at: usize) -> usize {
    let rest = payload.get(at..).unwrap_or_default();
    match encoding {
        Encoding::Gsm7 => match rest {
            [gsm::ESCAPE, _, ..] => 2,
            [] => 0,
            _ => 1,
        },
        Encoding::Ucs2 => match rest {
            [h0, h1, l0, l1, ..]
                if ucs2::is_high_surrogate(u16::from_be_bytes([*h0, *h1]))
                    && ucs2::is_low_surrogate(u16::from_be_bytes([*l0, *l1])) =>
            {
                4
            }
            _ => rest.len().min(2),
        },
        Encoding::Latin1 | Encoding::Ascii | Encoding::Binary => rest.len().min(1),
    }
}

/// The body ranges of successive parts of at most `max_bytes` each.
struct Splitter<'a> {
    encoding: Encoding,
    payload: &'a [u8],
    max_bytes: usize,
    position: usize,
}

impl Iterator for Splitter<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.position >= self.payload.len() {
            return None;
        }
        let start = self.position;
        if matches!(
            self.encoding,
            Encoding::Latin1 | Encoding::Ascii | Encoding::Binary
        ) {
            self.position = (start + self.max_bytes).min(self.payload.len());
            return Some(start..self.position);
        }
        loop {
            let atom = atom_bytes(self.encoding, self.payload, self.position);
            if atom == 0 || self.position + atom - start > self.max_bytes {
                break;
            }
            self.position += atom;
        }
        assert!(
            self.position > start,
            "a part of {} octets cannot hold one character",
            self.max_bytes
        );
        Some(start..self.position)
    }
}

fn splitter(encoding: Encoding, payload: &[u8], max_bytes: usize) -> Splitter<'_> {
    Splitter {
        encoding,
        payload,
        max_bytes,
        position: 0,
    }
}

/// How many parts `payload` needs, without building them (for quoting).
pub fn segment_count(
    encoding: Encoding,
    payload: &[u8],
    carriage: Carriage,
) -> Result<usize, SegmentError> {
    let limits = limits(encoding, carriage);
    if carriage == Carriage::Payload {
        return if payload.len() <= MAX_PAYLOAD_BYTES {
            Ok(1)
        } else {
            Err(SegmentError::PayloadTooLong {
                len_bytes: payload.len(),
            })
        };
    }
    if payload.len() <= limits.single_bytes {
        return Ok(1);
    }
    // Counting stops one past the maximum so a huge input costs no more.
    let needed = splitter(encoding, payload, limits.multipart_bytes)
        .take(MAX_SEGMENTS + 1)
        .count();
    if needed > MAX_SEGMENTS {
        let at_least = payload.len().div_ceil(limits.multipart_bytes);
        return Err(SegmentError::TooManySegments {
            needed: at_least.max(needed),
        });
    }
    Ok(needed)
}

/// Appends a concatenation UDH (UDHL included) to `out`.
pub fn write_concat_udh(reference: ConcatReference, total: u8, seqnum: u8, out: &mut Vec<u8>) {
    match reference {
        ConcatReference::Eight(r) => {
            out.extend_from_slice(&[0x05, IEI_CONCAT_8BIT_REF, 0x03, r, total, seqnum]);
        }
        ConcatReference::Sixteen(r) => {
            let [hi, lo] = r.to_be_bytes();
            out.extend_from_slice(&[0x06, IEI_CONCAT_16BIT_REF, 0x04, hi, lo, total, seqnum]);
        }
    }
}

/// Splits an encoded message (`payload` in `encoding`, as `text::encode`
/// makes it) into parts for `carriage`. A message that fits one part goes
/// as one part with neither UDH nor SAR.
pub fn segment(
    encoding: Encoding,
    payload: &[u8],
    carriage: Carriage,
) -> Result<Vec<Segment>, SegmentError> {
    let total = segment_count(encoding, payload, carriage)?;
    if total == 1 {
        return Ok(vec![Segment {
            bytes: payload.to_vec(),
            udhi: false,
            sar: None,
        }]);
    }
    let total_u8 =
        u8::try_from(total).map_err(|_| SegmentError::TooManySegments { needed: total })?;
    let limits = limits(encoding, carriage);
    let mut segments = Vec::with_capacity(total);
    for (index, body) in splitter(encoding, payload, limits.multipart_bytes).enumerate() {
        let seqnum = u8::try_from(index + 1)
            .map_err(|_| SegmentError::TooManySegments { needed: index + 1 })?;
        let body = payload.get(body).unwrap_or_default();
        let segment = match carriage {
            Carriage::Udh(reference) => {
                let mut bytes = Vec::with_capacity(reference.udh_bytes() + body.len());
                write_concat_udh(reference, total_u8, seqnum, &mut bytes);
                bytes.extend_from_slice(body);
                Segment {
                    bytes,
                    udhi: true,
                    sar: None,
                }
            }
            Carriage::Sar { reference } => Segment {
                bytes: body.to_vec(),
                udhi: false,
                sar: Some(PartInfo {
                    reference,
                    total: total_u8,
                    seqnum,
                }),
            },
            Carriage::Payload => unreachable!("message_payload is always one part"),
        };
        segments.push(segment);
    }
    assert_eq!(segments.len(), total, "counting and splitting disagree");
    Ok(segments)
}

/// Encodes `text` in its smallest encoding (see `text::smallest_encoding`)
/// and splits it: the HTTP API's path from a string to parts.
pub fn segment_text(
    text: &str,
    allow_latin1: bool,
    carriage: Carriage,
) -> Result<(EncodingChoice, Vec<Segment>), SegmentError> {
    let choice = text::smallest_encoding(text, allow_latin1);
    let mut payload = Vec::new();
    text::encode_into(choice.encoding, text, &mut payload)?;
    Ok((choice, segment(choice.encoding, &payload, carriage)?))
}

/// Application port addressing IEs (0x04, 0x05): reported for the caller,
/// which decides whether to route on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortAddressing {
    Eight { destination: u8, source: u8 },
    Sixteen { destination: u16, source: u16 },
}

/// What a User Data Header said that we care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserDataHeader {
    /// Octets of the header, UDHL included; the body starts here.
    pub len_bytes: usize,
    pub concat: Option<PartInfo>,
    pub ports: Option<PortAddressing>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UdhError {
    #[error("UDHI set but short_message is empty")]
    Empty,
    #[error("UDH declares {declared_bytes} octets but {available_bytes} follow")]
    Truncated {
        declared_bytes: usize,
        available_bytes: usize,
    },
    #[error("information element {iei:#04x} runs past the end of the UDH")]
    ElementOverrun { iei: u8 },
}

/// Parses the UDH at the start of `short_message` (sent with esm_class
/// UDHI) and returns it with the body that follows.
///
/// As TS 23.040 tells receivers: unknown elements are skipped; a
/// concatenation IE of the wrong length, with a total of 0, or with a
/// sequence number of 0 or above the total is ignored; when an element
/// repeats, the last one counts.
pub fn parse_udh(short_message: &[u8]) -> Result<(UserDataHeader, &[u8]), UdhError> {
    let (&udhl, rest) = short_message.split_first().ok_or(UdhError::Empty)?;
    let declared_bytes = usize::from(udhl);
    let (mut elements, body) = match (rest.get(..declared_bytes), rest.get(declared_bytes..)) {
        (Some(elements), Some(body)) => (elements, body),
        _ => {
            return Err(UdhError::Truncated {
                declared_bytes,
                available_bytes: rest.len(),
            })
        }
    };
    let mut header = UserDataHeader {
        len_bytes: declared_bytes + 1,
        concat: None,
        ports: None,
    };
    // Each element consumes at least two octets, so this ends.
    while let [iei, len, tail @ ..] = elements {
        let len = usize::from(*len);
        let (data, next) = match (tail.get(..len), tail.get(len..)) {
            (Some(data), Some(next)) => (data, next),
            _ => return Err(UdhError::ElementOverrun { iei: *iei }),
        };
        match (*iei, data) {
            (IEI_CONCAT_8BIT_REF, &[reference, total, seqnum]) => {
                header.concat = valid_concat(u16::from(reference), total, seqnum).or(header.concat);
            }
            (IEI_CONCAT_16BIT_REF, &[hi, lo, total, seqnum]) => {
                header.concat =
                    valid_concat(u16::from_be_bytes([hi, lo]), total, seqnum).or(header.concat);
            }
            (IEI_PORTS_8BIT, &[destination, source]) => {
                header.ports = Some(PortAddressing::Eight {
                    destination,
                    source,
                });
            }
            (IEI_PORTS_16BIT, &[d0, d1, s0, s1]) => {
                header.ports = Some(PortAddressing::Sixteen {
                    destination: u16::from_be_bytes([d0, d1]),
                    source: u16::from_be_bytes([s0, s1]),
                });
            }
            _ => {}
        }
        elements = next;
    }
    // A single leftover octet cannot be an element; TS 23.040 has receivers
    // ignore what they cannot parse, so it is dropped.
    Ok((header, body))
}

fn valid_concat(reference: u16, total: u8, seqnum: u8) -> Option<PartInfo> {
    (total > 0 && seqnum > 0 && seqnum <= total).then_some(PartInfo {
        reference,
        total,
        seqnum,
    })
}

/// Bounds on what the reassembler holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Incomplete messages held at once.
    pub max_pending_messages: usize,
    /// Memory held at once: part bodies plus estimated overheads (see
    /// `Reassembler`).
    pub max_pending_bytes: usize,
    /// An incomplete message is dropped this long after its first part.
    pub expiry_ms: u64,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        ReassemblyLimits {
            max_pending_messages: 10_000,
            max_pending_bytes: 16 * 1024 * 1024,
            expiry_ms: 5 * 60 * 1000,
        }
    }
}

/// One arriving part: its addresses, its place (from the UDH or the SAR
/// TLVs) and its body (after the UDH).
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    pub source: &'a [u8],
    pub destination: &'a [u8],
    pub info: PartInfo,
    pub body: &'a [u8],
}

/// What became of an offered part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// The message is whole: the bodies in order, to decode with
    /// `text::decode` under the message's data_coding.
    Complete(Vec<u8>),
    /// Held; more parts are missing.
    Incomplete { received: u8, total: u8 },
    /// This part was already held; ignored.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    #[error("part {seqnum} of {total} is not a valid position")]
    InvalidPart { total: u8, seqnum: u8 },
    #[error("part says {offered} parts but the pending message has {pending}")]
    InconsistentTotal { pending: u8, offered: u8 },
    #[error("too many incomplete messages held")]
    TooManyPending,
    #[error("holding this part would exceed the reassembly byte cap")]
    TooManyBytes,
}

/// Memory charged per held part beyond its body: the (seqnum, box) entry and
/// the allocator's share. An estimate, so that empty parts are not free.
pub const PART_OVERHEAD_BYTES: usize = 32;
/// Memory charged per pending message beyond its key (held twice): map
/// nodes, the deadline entry, the bookkeeping.
pub const MESSAGE_OVERHEAD_BYTES: usize = 128;

struct Pending {
    total: u8,
    /// (seqnum, body) in arrival order: only what arrived is held, so a part
    /// claiming 255 siblings costs no more than any other.
    parts: Vec<(u8, Box<[u8]>)>,
    /// Memory charged for this message, overheads included.
    charged_bytes: usize,
    deadline_ms: u64,
    id: u64,
}

/// Holds the parts of concatenated messages until each is whole.
///
/// A message is identified by (source, destination, reference), as handsets
/// do; its total must agree across parts. A part whose total disagrees with
/// the pending message's is rejected rather than opening a second message
/// under the same reference. When a cap is reached, new parts are refused
/// (the caller answers with a temporary error such as ESME_RMSGQFUL, so the
/// peer retries) instead of evicting messages whose parts were already
/// acknowledged. The byte cap counts bodies plus `PART_OVERHEAD_BYTES` per
/// part and `MESSAGE_OVERHEAD_BYTES` plus twice the key per message.
pub struct Reassembler {
    limits: ReassemblyLimits,
    pending: BTreeMap<Box<[u8]>, Pending>,
    /// Deadline order for expiry: (deadline_ms, id) → key.
    by_deadline: BTreeMap<(u64, u64), Box<[u8]>>,
    charged_bytes: usize,
    next_id: u64,
    /// Reused to look keys up without allocating.
    key_scratch: Vec<u8>,
}

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Reassembler {
        Reassembler {
            limits,
            pending: BTreeMap::new(),
            by_deadline: BTreeMap::new(),
            charged_bytes: 0,
            next_id: 0,
            key_scratch: Vec::new(),
        }
    }

    pub fn pending_messages(&self) -> usize {
        self.pending.len()
    }

    /// Memory charged against `max_pending_bytes` (see the type's comment).
    pub fn pending_bytes(&self) -> usize {
        self.charged_bytes
    }

    /// Drops incomplete messages whose deadline is at or before `now_ms`;
    /// returns how many. `offer` calls it too.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut expired = 0;
        while let Some(entry) = self.by_deadline.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let key = entry.remove();
            if let Some(pending) = self.pending.remove(&key) {
                self.charged_bytes -= pending.charged_bytes;
                expired += 1;
            }
        }
        expired
    }

    /// Takes one part. Returns the whole message when this part completes it.
    pub fn offer(&mut self, part: Part<'_>, now_ms: u64) -> Result<Offered, ReassemblyError> {
        self.expire(now_ms);
        let PartInfo { total, seqnum, .. } = part.info;
        if total == 0 || seqnum == 0 || seqnum > total {
            return Err(ReassemblyError::InvalidPart { total, seqnum });
        }
        if total == 1 {
            return Ok(Offered::Complete(part.body.to_vec()));
        }
        let part_charge = part.body.len() + PART_OVERHEAD_BYTES;
        let room = self
            .limits
            .max_pending_bytes
            .saturating_sub(self.charged_bytes);
        fill_key(&mut self.key_scratch, &part);
        if let Some(pending) = self.pending.get_mut(self.key_scratch.as_slice()) {
            if pending.total != total {
                return Err(ReassemblyError::InconsistentTotal {
                    pending: pending.total,
                    offered: total,
                });
            }
            if pending.parts.iter().any(|(held, _)| *held == seqnum) {
                return Ok(Offered::Duplicate);
            }
            if part_charge > room {
                return Err(ReassemblyError::TooManyBytes);
            }
            pending.parts.push((seqnum, part.body.into()));
            pending.charged_bytes += part_charge;
            self.charged_bytes += part_charge;
            // At most `total` distinct seqnums can be held, so this fits a u8.
            let received = pending.parts.len() as u8;
            if received < total {
                return Ok(Offered::Incomplete { received, total });
            }
            let Some(done) = self.pending.remove(self.key_scratch.as_slice()) else {
                unreachable!("the entry was just found");
            };
            self.by_deadline.remove(&(done.deadline_ms, done.id));
            self.charged_bytes -= done.charged_bytes;
            return Ok(Offered::Complete(assemble(done)));
        }
        if self.pending.len() >= self.limits.max_pending_messages {
            return Err(ReassemblyError::TooManyPending);
        }
        let message_charge = MESSAGE_OVERHEAD_BYTES + 2 * self.key_scratch.len() + part_charge;
        if message_charge > room {
            return Err(ReassemblyError::TooManyBytes);
        }
        let id = self.next_id;
        self.next_id += 1;
        let deadline_ms = now_ms.saturating_add(self.limits.expiry_ms);
        let key: Box<[u8]> = self.key_scratch.as_slice().into();
        self.by_deadline.insert((deadline_ms, id), key.clone());
        self.pending.insert(
            key,
            Pending {
                total,
                parts: vec![(seqnum, part.body.into())],
                charged_bytes: message_charge,
                deadline_ms,
                id,
            },
        );
        self.charged_bytes += message_charge;
        Ok(Offered::Incomplete { received: 1, total })
    }
}

/// Key layout: source length (8 octets LE), source, destination, reference.
/// The length prefix keeps ("ab","c") and ("a","bc") apart.
fn fill_key(key: &mut Vec<u8>, part: &Part<'_>) {
    key.clear();
    key.extend_from_slice(&(part.source.len() as u64).to_le_bytes());
    key.extend_from_slice(part.source);
    key.extend_from_slice(part.destination);
    key.extend_from_slice(&part.info.reference.to_be_bytes());
}

fn assemble(mut done: Pending) -> Vec<u8> {
    done.parts.sort_unstable_by_key(|(seqnum, _)| *seqnum);
    debug_assert!(
        done.parts
            .iter()
            .enumerate()
            .all(|(i, (seqnum, _))| usize::from(*seqnum) == i + 1),
        "a complete message must hold parts 1..=total exactly once"
    );
    let body_bytes = done.parts.iter().map(|(_, body)| body.len()).sum();
    let mut message = Vec::with_capacity(body_bytes);
    for (_, body) in &done.parts {
        message.extend_from_slice(body);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::text::DataCoding;

    const REF8: Carriage = Carriage::Udh(ConcatReference::Eight(0x42));

    fn gsm(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        text::encode_into(Encoding::Gsm7, text, &mut out).expect("test text is GSM");
        out
    }

    fn ucs2(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        text::encode_into(Encoding::Ucs2, text, &mut out).expect("UCS-2 takes anything");
        out
    }

    /// The bodies of UDH parts, checking each header on the way.
    fn bodies(segments: &[Segment]) -> Vec<&[u8]> {
        let total = segments.len();
        segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                assert!(s.udhi);
                let (udh, body) = parse_udh(&s.bytes).expect("we write valid UDHs");
                let info = udh.concat.expect("every part has a concat IE");
                assert_eq!(
                    (usize::from(info.total), usize::from(info.seqnum)),
                    (total, i + 1)
                );
                body
            })
            .collect()
    }

    #[test]
    fn exactly_160_septets_is_one_part_161_is_two() {
        let one = segment(Encoding::Gsm7, &gsm(&"a".repeat(160)), REF8).expect("fits");
        assert_eq!(one.len(), 1);
        assert_eq!(
            (one[0].bytes.len(), one[0].udhi, one[0].sar),
            (160, false, None)
        );

        let two = segment(Encoding::Gsm7, &gsm(&"a".repeat(161)), REF8).expect("fits");
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].bytes[..6], [0x05, 0x00, 0x03, 0x42, 2, 1]);
        assert_eq!(two[1].bytes[..6], [0x05, 0x00, 0x03, 0x42, 2, 2]);
        assert_eq!(
            bodies(&two).iter().map(|b| b.len()).collect::<Vec<_>>(),
            [153, 8]
        );
    }

    #[test]
    fn an_escape_never_ends_a_part() {
        // The euro's escape would be septet 153: the whole pair moves on.
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(10));
        let parts = segment(Encoding::Gsm7, &gsm(&text), REF8).expect("fits");
        let got = bodies(&parts);
        assert_eq!(got[0].len(), 152);
        assert_eq!(got[1][..2], [gsm::ESCAPE, 0x65]);

        // Escape at 152 and code at 153: the pair fits and stays.
        let text = format!("{}€{}", "a".repeat(151), "b".repeat(10));
        let parts = segment(Encoding::Gsm7, &gsm(&text), REF8).expect("fits");
        let got = bodies(&parts);
        assert_eq!(got[0].len(), 153);
        assert_eq!(got[0][151..], [gsm::ESCAPE, 0x65]);

        // A run of extension characters across the boundary.
        let text = "[".repeat(100);
        let parts = segment(Encoding::Gsm7, &gsm(&text), REF8).expect("fits");
        for body in bodies(&parts) {
            assert_eq!(body.len() % 2, 0);
            assert!(body.chunks(2).all(|pair| pair == [gsm::ESCAPE, 0x3C]));
        }
    }

    #[test]
    fn a_surrogate_pair_never_straddles_a_part() {
        // The emoji's high surrogate would be unit 67.
        let text = format!("{}😀{}", "a".repeat(66), "b".repeat(10));
        let parts = segment(Encoding::Ucs2, &ucs2(&text), REF8).expect("fits");
        let got = bodies(&parts);
        assert_eq!(got[0].len(), 132);
        assert_eq!(got[1][..4], [0xD8, 0x3D, 0xDE, 0x00]);

        let text = format!("{}😀{}", "a".repeat(65), "b".repeat(10));
        let parts = segment(Encoding::Ucs2, &ucs2(&text), REF8).expect("fits");
        assert_eq!(bodies_len(&parts), [134, 20]);
    }

    fn bodies_len(parts: &[Segment]) -> Vec<usize> {
        bodies(parts).iter().map(|b| b.len()).collect()
    }

    #[test]
    fn ucs2_limits_are_70_67_66_units() {
        assert_eq!(
            segment_count(Encoding::Ucs2, &ucs2(&"ж".repeat(70)), REF8),
            Ok(1)
        );
        assert_eq!(
            segment_count(Encoding::Ucs2, &ucs2(&"ж".repeat(71)), REF8),
            Ok(2)
        );
        let sixteen = Carriage::Udh(ConcatReference::Sixteen(0x1234));
        let parts = segment(Encoding::Ucs2, &ucs2(&"ж".repeat(133)), sixteen).expect("fits");
        assert_eq!(bodies_len(&parts), [132, 132, 2]);
        assert_eq!(parts[0].bytes[..7], [0x06, 0x08, 0x04, 0x12, 0x34, 3, 1]);
    }

    #[test]
    fn octet_encodings_split_at_134_or_133() {
        let payload = vec![0xA5u8; 300];
        let parts = segment(Encoding::Binary, &payload, REF8).expect("fits");
        assert_eq!(bodies_len(&parts), [134, 134, 32]);
        let sixteen = Carriage::Udh(ConcatReference::Sixteen(7));
        let parts = segment(Encoding::Latin1, &payload, sixteen).expect("fits");
        assert_eq!(bodies_len(&parts), [133, 133, 34]);
    }

    #[test]
    fn sar_parts_carry_tlv_values_and_no_udh() {
        let text = "x".repeat(310);
        let parts = segment(
            Encoding::Gsm7,
            &gsm(&text),
            Carriage::Sar { reference: 0xBEEF },
        )
        .expect("fits");
        assert_eq!(parts.len(), 3);
        for (i, part) in parts.iter().enumerate() {
            assert!(!part.udhi);
            assert_eq!(
                part.sar,
                Some(PartInfo {
                    reference: 0xBEEF,
                    total: 3,
                    seqnum: i as u8 + 1
                })
            );
        }
        assert_eq!(
            parts.iter().map(|p| p.bytes.len()).collect::<Vec<_>>(),
            [152, 152, 6]
        );
        assert!(parts.iter().all(|p| p.air_octets(Encoding::Gsm7) <= 140));
    }

    #[test]
    fn payload_mode_is_one_part_up_to_64k() {
        let payload = vec![b'a'; MAX_PAYLOAD_BYTES];
        let parts = segment(Encoding::Latin1, &payload, Carriage::Payload).expect("fits");
        assert_eq!(parts.len(), 1);
        assert_eq!(
            (parts[0].bytes.len(), parts[0].udhi, parts[0].sar),
            (MAX_PAYLOAD_BYTES, false, None)
        );
        let too_long = vec![b'a'; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            segment(Encoding::Latin1, &too_long, Carriage::Payload),
            Err(SegmentError::PayloadTooLong {
                len_bytes: MAX_PAYLOAD_BYTES + 1
            })
        );
    }

    #[test]
    fn at_most_255_parts() {
        let most = vec![b'a'; 255 * 153];
        assert_eq!(segment_count(Encoding::Gsm7, &most, REF8), Ok(255));
        let parts = segment(Encoding::Gsm7, &most, REF8).expect("255 parts is allowed");
        assert_eq!(parts.last().map(|p| p.bytes[5]), Some(255));
        let too_many = vec![b'a'; 255 * 153 + 1];
        assert_eq!(
            segment(Encoding::Gsm7, &too_many, REF8),
            Err(SegmentError::TooManySegments { needed: 256 })
        );
    }

    #[test]
    fn empty_message_is_one_empty_part() {
        let parts = segment(Encoding::Gsm7, &[], REF8).expect("fits");
        assert_eq!(
            parts,
            vec![Segment {
                bytes: Vec::new(),
                udhi: false,
                sar: None
            }]
        );
    }

    #[test]
    fn segment_text_picks_the_encoding() {
        let (choice, parts) = segment_text(&"é".repeat(200), false, REF8).expect("fits");
        assert_eq!(choice.encoding, Encoding::Gsm7);
        assert_eq!(parts.len(), 2);
        let (choice, parts) = segment_text(&"ï".repeat(100), false, REF8).expect("fits");
        assert_eq!(
            (choice.encoding, choice.units, parts.len()),
            (Encoding::Ucs2, 100, 2)
        );
    }

    #[test]
    fn parses_concat_and_port_elements() {
        let sm = [
            0x0B, 0x05, 0x04, 0x0B, 0x84, 0x23, 0xF0, 0x00, 0x03, 0x09, 0x02, 0x01, 0xAA,
        ];
        let (udh, body) = parse_udh(&sm).expect("valid UDH");
        assert_eq!(udh.len_bytes, 12);
        assert_eq!(
            udh.concat,
            Some(PartInfo {
                reference: 9,
                total: 2,
                seqnum: 1
            })
        );
        assert_eq!(
            udh.ports,
            Some(PortAddressing::Sixteen {
                destination: 0x0B84,
                source: 0x23F0
            })
        );
        assert_eq!(body, [0xAA]);

        let sm = [
            0x0A, 0x08, 0x04, 0x01, 0x02, 0x03, 0x01, 0x04, 0x02, 0x10, 0x20,
        ];
        let (udh, body) = parse_udh(&sm).expect("valid UDH");
        assert_eq!(
            udh.concat,
            Some(PartInfo {
                reference: 0x0102,
                total: 3,
                seqnum: 1
            })
        );
        assert_eq!(
            udh.ports,
            Some(PortAddressing::Eight {
                destination: 0x10,
                source: 0x20
            })
        );
        assert!(body.is_empty());
    }

    #[test]
    fn skips_unknown_and_ignores_invalid_concat() {
        // Unknown IE 0x24 (national language), then a concat with seqnum > total.
        let sm = [0x08, 0x24, 0x01, 0x01, 0x00, 0x03, 0x01, 0x02, 0x03, b'h'];
        let (udh, body) = parse_udh(&sm).expect("valid structure");
        assert_eq!((udh.concat, udh.ports, body), (None, None, &b"h"[..]));
        // Concat IE with total 0, and one with a wrong length.
        let (udh, _) = parse_udh(&[0x05, 0x00, 0x03, 0x01, 0x00, 0x00]).expect("valid");
        assert_eq!(udh.concat, None);
        let (udh, _) = parse_udh(&[0x04, 0x00, 0x02, 0x01, 0x01]).expect("valid");
        assert_eq!(udh.concat, None);
        // A zero-length UDH.
        let (udh, body) = parse_udh(&[0x00, b'x']).expect("valid");
        assert_eq!((udh.len_bytes, body), (1, &b"x"[..]));
    }

    #[test]
    fn rejects_broken_udh_structure() {
        assert_eq!(parse_udh(&[]), Err(UdhError::Empty));
        assert_eq!(
            parse_udh(&[0x05, 0x00, 0x03]),
            Err(UdhError::Truncated {
                declared_bytes: 5,
                available_bytes: 2
            })
        );
        assert_eq!(
            parse_udh(&[0x03, 0x00, 0x03, 0x01]),
            Err(UdhError::ElementOverrun { iei: 0x00 })
        );
    }

    fn part<'a>(reference: u16, total: u8, seqnum: u8, body: &'a [u8]) -> Part<'a> {
        Part {
            source: b"447700900123",
            destination: b"12345",
            info: PartInfo {
                reference,
                total,
                seqnum,
            },
            body,
        }
    }

    fn small_limits() -> ReassemblyLimits {
        ReassemblyLimits {
            max_pending_messages: 2,
            max_pending_bytes: 10_000,
            expiry_ms: 1_000,
        }
    }

    /// What the first part of a message from `part()` costs beyond its body:
    /// its key is 8 + 12 + 5 + 2 octets.
    const FIRST_PART_CHARGE: usize = MESSAGE_OVERHEAD_BYTES + 2 * 27 + PART_OVERHEAD_BYTES;

    #[test]
    fn reassembles_out_of_order_and_decodes() {
        let text = format!(
            "{}€ and more {{braces}} {}",
            "a".repeat(152),
            "z".repeat(200)
        );
        let parts = segment(Encoding::Gsm7, &gsm(&text), REF8).expect("fits");
        assert_eq!(parts.len(), 3);
        let mut reassembler = Reassembler::new(ReassemblyLimits::default());
        let mut result = None;
        for (i, index) in [2usize, 0, 1].into_iter().enumerate() {
            let (udh, body) = parse_udh(&parts[index].bytes).expect("valid UDH");
            let info = udh.concat.expect("concat IE");
            let offered = reassembler
                .offer(
                    Part {
                        source: b"a",
                        destination: b"b",
                        info,
                        body,
                    },
                    10,
                )
                .expect("accepted");
            if i < 2 {
                assert_eq!(
                    offered,
                    Offered::Incomplete {
                        received: i as u8 + 1,
                        total: 3
                    }
                );
            } else {
                result = Some(offered);
            }
        }
        let Some(Offered::Complete(bytes)) = result else {
            panic!("not complete: {result:?}")
        };
        assert_eq!(
            text::decode(DataCoding::plain(Encoding::Gsm7), &bytes),
            Ok(text)
        );
        assert_eq!(
            (reassembler.pending_messages(), reassembler.pending_bytes()),
            (0, 0)
        );
    }

    #[test]
    fn duplicates_are_ignored() {
        let mut reassembler = Reassembler::new(small_limits());
        assert_eq!(
            reassembler.offer(part(1, 2, 1, b"he"), 0),
            Ok(Offered::Incomplete {
                received: 1,
                total: 2
            })
        );
        assert_eq!(
            reassembler.offer(part(1, 2, 1, b"XX"), 0),
            Ok(Offered::Duplicate)
        );
        assert_eq!(reassembler.pending_bytes(), FIRST_PART_CHARGE + 2);
        assert_eq!(
            reassembler.offer(part(1, 2, 2, b"llo"), 0),
            Ok(Offered::Complete(b"hello".to_vec()))
        );
        // After completion the same reference starts a new message.
        assert_eq!(
            reassembler.offer(part(1, 2, 2, b"llo"), 0),
            Ok(Offered::Incomplete {
                received: 1,
                total: 2
            })
        );
    }

    #[test]
    fn inconsistent_and_invalid_parts_are_rejected() {
        let mut reassembler = Reassembler::new(small_limits());
        reassembler.offer(part(1, 3, 1, b"a"), 0).expect("accepted");
        assert_eq!(
            reassembler.offer(part(1, 2, 2, b"b"), 0),
            Err(ReassemblyError::InconsistentTotal {
                pending: 3,
                offered: 2
            })
        );
        assert_eq!(
            reassembler.offer(part(2, 2, 3, b"b"), 0),
            Err(ReassemblyError::InvalidPart {
                total: 2,
                seqnum: 3
            })
        );
        assert_eq!(
            reassembler.offer(part(2, 2, 0, b"b"), 0),
            Err(ReassemblyError::InvalidPart {
                total: 2,
                seqnum: 0
            })
        );
        assert_eq!(
            reassembler.offer(part(2, 0, 0, b"b"), 0),
            Err(ReassemblyError::InvalidPart {
                total: 0,
                seqnum: 0
            })
        );
        // A single-part "concatenated" message is complete at once.
        assert_eq!(
            reassembler.offer(part(3, 1, 1, b"solo"), 0),
            Ok(Offered::Complete(b"solo".to_vec()))
        );
        assert_eq!(reassembler.pending_messages(), 1);
    }

    #[test]
    fn addresses_and_reference_identify_a_message() {
        let mut reassembler = Reassembler::new(small_limits());
        reassembler.offer(part(1, 2, 1, b"a"), 0).expect("accepted");
        let other_source = Part {
            source: b"447700900124",
            ..part(1, 2, 2, b"b")
        };
        assert_eq!(
            reassembler.offer(other_source, 0),
            Ok(Offered::Incomplete {
                received: 1,
                total: 2
            })
        );
        assert_eq!(reassembler.pending_messages(), 2);
    }

    #[test]
    fn incomplete_messages_expire() {
        let mut reassembler = Reassembler::new(small_limits());
        reassembler
            .offer(part(1, 2, 1, b"old"), 1_000)
            .expect("accepted");
        reassembler
            .offer(part(2, 2, 1, b"new"), 1_500)
            .expect("accepted");
        assert_eq!(reassembler.expire(1_999), 0);
        assert_eq!(reassembler.expire(2_000), 1);
        assert_eq!(
            (reassembler.pending_messages(), reassembler.pending_bytes()),
            (1, FIRST_PART_CHARGE + 3)
        );
        // The expired message's second part now starts over.
        assert_eq!(
            reassembler.offer(part(1, 2, 2, b"late"), 2_100),
            Ok(Offered::Incomplete {
                received: 1,
                total: 2
            })
        );
        // offer() expires on its own too: message 2 is gone at 2_500.
        assert_eq!(
            reassembler.offer(part(2, 2, 2, b"w"), 2_500),
            Ok(Offered::Incomplete {
                received: 1,
                total: 2
            })
        );
        assert_eq!(reassembler.pending_messages(), 2);
    }

    #[test]
    fn caps_refuse_new_work_and_keep_old() {
        let mut reassembler = Reassembler::new(small_limits());
        reassembler.offer(part(1, 2, 1, b"a"), 0).expect("accepted");
        reassembler.offer(part(2, 2, 1, b"b"), 0).expect("accepted");
        assert_eq!(
            reassembler.offer(part(3, 2, 1, b"c"), 0),
            Err(ReassemblyError::TooManyPending)
        );
        // Completing a held message still works at the cap, and frees a slot.
        assert_eq!(
            reassembler.offer(part(1, 2, 2, b"A"), 0),
            Ok(Offered::Complete(b"aA".to_vec()))
        );
        assert!(reassembler.offer(part(3, 2, 1, b"c"), 0).is_ok());

        // Room for a first part and a second part of 100 body octets together.
        let limits = ReassemblyLimits {
            max_pending_bytes: FIRST_PART_CHARGE + PART_OVERHEAD_BYTES + 100,
            ..small_limits()
        };
        let mut reassembler = Reassembler::new(limits);
        reassembler
            .offer(part(1, 3, 1, &[0; 60]), 0)
            .expect("accepted");
        assert_eq!(
            reassembler.offer(part(1, 3, 2, &[0; 41]), 0),
            Err(ReassemblyError::TooManyBytes)
        );
        assert_eq!(
            reassembler.offer(part(2, 2, 1, &[0; 41]), 0),
            Err(ReassemblyError::TooManyBytes)
        );
        assert_eq!(
            reassembler.offer(part(1, 3, 1, &[0; 41]), 0),
            Ok(Offered::Duplicate)
        );
        assert!(reassembler.offer(part(1, 3, 2, &[0; 40]), 0).is_ok());
        assert_eq!(reassembler.pending_bytes(), limits.max_pending_bytes);
        // Empty parts are not free: a part claiming 255 siblings is charged
        // like any other, and a flood of empty parts meets the cap.
        let mut reassembler = Reassembler::new(limits);
        let mut accepted = 0;
        while reassembler
            .offer(part(9, 255, accepted + 1, &[]), 0)
            .is_ok()
        {
            accepted += 1;
        }
        assert_eq!(usize::from(accepted), 1 + 100 / PART_OVERHEAD_BYTES + 1);
    }
}
