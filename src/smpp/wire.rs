//! Low-level SMPP wire primitives: the bounded reader over one frame, the
//! writer helpers, the inline C-octet string type and the decode error.
//!
//! Owns: how integers, C-octet strings and octet strings are read and written,
//! and which error (status, offset, field, reason) a short or malformed field
//! earns. Must not touch: PDU layouts (see `pdu`), TLV meaning (see `tlv`) or
//! framing (see `frame`).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::status::CommandStatus;

/// Why a PDU could not be decoded, and what to answer.
///
/// `offset` counts bytes from the first byte of the PDU (the header included),
/// so it can be matched against a hex dump of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The command_status the response (or generic_nack) must carry.
    pub status: CommandStatus,
    /// Byte offset from the start of the PDU where decoding failed.
    pub offset: usize,
    /// The specification's field name, e.g. `source_addr`.
    pub field: &'static str,
    /// What was wrong, for people.
    pub reason: String,
}

impl DecodeError {
    pub fn new(
        status: CommandStatus,
        offset: usize,
        field: &'static str,
        reason: impl Into<String>,
    ) -> DecodeError {
        DecodeError {
            status,
            offset,
            field,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {} ({}): {}",
            self.field,
            self.offset,
            self.status.name().unwrap_or("unnamed status"),
            self.reason
        )
    }
}

impl std::error::Error for DecodeError {}

/// Why a PDU could not be encoded (a value the wire format cannot carry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    pub field: &'static str,
    pub reason: String,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot encode {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for EncodeError {}

/// A C-octet string of at most `N` octets on the wire, the terminating NUL
/// included (the specification's "Var. max N"), stored inline so that decoding
/// a PDU allocates nothing for its addresses, ids and times.
///
/// Invariant: `len < N` and the content holds no NUL octet.
#[derive(Clone, Copy)]
pub struct COctetString<const N: usize> {
    len: u8,
    buf: [u8; N],
}

/// Source or destination address of submit_sm, deliver_sm and friends.
pub type Address = COctetString<21>;
/// data_sm and alert_notification addresses are longer (65 with the NUL).
pub type LongAddress = COctetString<65>;
pub type ServiceType = COctetString<6>;
/// An SMPP absolute or relative time, `YYMMDDhhmmsstnnp` (16 chars) or empty.
pub type SmppTime = COctetString<17>;
pub type MessageId = COctetString<65>;
pub type SystemId = COctetString<16>;
pub type Password = COctetString<9>;
pub type SystemType = COctetString<13>;
pub type AddressRange = COctetString<41>;
pub type DistributionListName = COctetString<21>;

impl<const N: usize> COctetString<N> {
    /// The most content octets this field can carry (the NUL excluded).
    pub const MAX_LEN: usize = N - 1;

    pub const fn empty() -> Self {
        assert!(
            N >= 1 && N <= 256,
            "C-octet string capacity must be 1..=256"
        );
        COctetString {
            len: 0,
            buf: [0; N],
        }
    }

    /// None when the content is too long or holds a NUL.
    pub fn new(content: &[u8]) -> Option<Self> {
        if content.len() > Self::MAX_LEN || content.contains(&0) {
            return None;
        }
        let mut s = Self::empty();
        s.buf[..content.len()].copy_from_slice(content);
        // Fits: MAX_LEN < N <= 256.
        s.len = content.len() as u8;
        Some(s)
    }

    /// For content the caller has already checked: shorter than N, no NUL.
    fn from_checked(content: &[u8]) -> Self {
        debug_assert!(
            content.len() < N && !content.contains(&0),
            "caller checked length and NUL"
        );
        let len = content.len().min(N - 1);
        let mut s = Self::empty();
        if let (Some(dst), Some(src)) = (s.buf.get_mut(..len), content.get(..len)) {
            dst.copy_from_slice(src);
        }
        // Fits: len < N <= 256.
        s.len = len as u8;
        s
    }

    /// Like `new` for text; None when too long or holding a NUL.
    pub fn from_text(text: &str) -> Option<Self> {
        Self::new(text.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The content as text when it is valid UTF-8 (peers send ASCII).
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Octets this string takes on the wire, NUL included.
    pub fn wire_len(&self) -> usize {
        self.len() + 1
    }
}

impl<const N: usize> Default for COctetString<N> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<const N: usize> PartialEq for COctetString<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl<const N: usize> Eq for COctetString<N> {}

impl<const N: usize> std::hash::Hash for COctetString<N> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl<const N: usize> fmt::Debug for COctetString<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl<const N: usize> fmt::Display for COctetString<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// JSON form: the text when it is UTF-8, else `{"hex": "..."}` so that any
/// octets a peer sent survive a decode/encode round trip.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TextOrHex {
    Text(String),
    Hex { hex: String },
}

impl<const N: usize> Serialize for COctetString<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.as_str() {
            Some(text) => serializer.serialize_str(text),
            None => TextOrHex::Hex {
                hex: hex::encode(self.as_bytes()),
            }
            .serialize(serializer),
        }
    }
}

impl<'de, const N: usize> Deserialize<'de> for COctetString<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let octets = match TextOrHex::deserialize(deserializer)? {
            TextOrHex::Text(text) => text.into_bytes(),
            TextOrHex::Hex { hex } => hex::decode(hex).map_err(serde::de::Error::custom)?,
        };
        COctetString::new(&octets).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "C-octet string must be at most {} octets with no NUL",
                N - 1
            ))
        })
    }
}

/// serde helper: octet strings (short_message, TLV values) as lowercase hex.
pub mod hex_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(text.trim())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// A cursor over one frame. Every read is bounded by `end` (the frame's
/// command_length), so nothing past the frame is ever looked at.
pub struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// Reads `frame[start..end]`; offsets in errors stay relative to the frame.
    pub fn new(frame: &'a Bytes, start: usize, end: usize) -> Reader<'a> {
        assert!(
            start <= end && end <= frame.len(),
            "reader bounds must lie inside the frame"
        );
        Reader {
            frame,
            pos: start,
            end,
        }
    }

    pub fn offset(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.end - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    fn short(&self, field: &'static str, wanted: usize) -> DecodeError {
        DecodeError::new(
            CommandStatus::ESME_RINVCMDLEN,
            self.pos,
            field,
            format!(
                "body ends before {field}: {wanted} octet(s) needed, {} left within command_length",
                self.remaining()
            ),
        )
    }

    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < len {
            return Err(self.short(field, len));
        }
        let start = self.pos;
        self.pos += len;
        self.frame
            .get(start..self.pos)
            .ok_or_else(|| self.short(field, len))
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let b = self.take(1, field)?;
        Ok(b.first().copied().unwrap_or_default())
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        let mut raw = [0u8; 2];
        raw.copy_from_slice(b);
        Ok(u16::from_be_bytes(raw))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        let mut raw = [0u8; 4];
        raw.copy_from_slice(b);
        Ok(u32::from_be_bytes(raw))
    }

    /// A C-octet string of at most N octets (NUL included). A missing NUL or an
    /// over-long string earns `status`, the one the specification ties to the
    /// field; the offset is where the string starts.
    pub fn c_string<const N: usize>(
        &mut self,
        field: &'static str,
        status: CommandStatus,
    ) -> Result<COctetString<N>, DecodeError> {
        let start = self.pos;
        if self.is_empty() {
            return Err(self.short(field, 1));
        }
        let window_len = self.remaining().min(N);
        let window = self
            .frame
            .get(start..start + window_len)
            .ok_or_else(|| self.short(field, 1))?;
        match window.iter().position(|&b| b == 0) {
            Some(nul) => {
                self.pos = start + nul + 1;
                // Everything before the first NUL: shorter than N, NUL-free.
                Ok(COctetString::from_checked(
                    window.get(..nul).unwrap_or_default(),
                ))
            }
            None if window_len == N => Err(DecodeError::new(
                status,
                start,
                field,
                format!(
                    "no NUL within {N} octets: longer than the maximum of {} characters",
                    N - 1
                ),
            )),
            None => Err(DecodeError::new(
                status,
                start,
                field,
                format!("missing NUL terminator: the body ends after {window_len} octet(s)"),
            )),
        }
    }

    /// `len` octets as a zero-copy slice of the frame.
    pub fn octets(
        &mut self,
        len: usize,
        field: &'static str,
        status: CommandStatus,
    ) -> Result<Bytes, DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::new(
                status,
                self.pos,
                field,
                format!(
                    "{field} declares {len} octet(s) but only {} remain in the body",
                    self.remaining()
                ),
            ));
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.frame.slice(start..self.pos))
    }

    /// Everything left in the frame, zero-copy.
    pub fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.end;
        self.frame.slice(start..self.end)
    }
}

/// Writes a C-octet string with its NUL.
pub fn put_c_string<const N: usize>(out: &mut BytesMut, s: &COctetString<N>) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_octet_string_rejects_too_long_and_interior_nul() {
        assert!(ServiceType::new(b"CMT").is_some());
        assert!(ServiceType::new(b"12345").is_some());
        assert!(ServiceType::new(b"123456").is_none());
        assert!(ServiceType::new(b"a\0b").is_none());
        assert_eq!(ServiceType::MAX_LEN, 5);
    }

    #[test]
    fn reader_c_string_distinguishes_missing_nul_from_too_long() {
        let frame = Bytes::from_static(b"abc\0abcdefgh");
        let mut r = Reader::new(&frame, 0, frame.len());
        let s: ServiceType = r
            .c_string("service_type", CommandStatus::ESME_RINVSERTYP)
            .unwrap();
        assert_eq!(s.as_bytes(), b"abc");
        assert_eq!(r.offset(), 4);
        let e = r
            .c_string::<6>("service_type", CommandStatus::ESME_RINVSERTYP)
            .unwrap_err();
        assert_eq!(e.status, CommandStatus::ESME_RINVSERTYP);
        assert_eq!(e.offset, 4);
        assert!(e.reason.contains("maximum"), "{}", e.reason);

        let frame = Bytes::from_static(b"ab");
        let mut r = Reader::new(&frame, 0, 2);
        let e = r
            .c_string::<21>("source_addr", CommandStatus::ESME_RINVSRCADR)
            .unwrap_err();
        assert!(e.reason.contains("missing NUL"), "{}", e.reason);
    }

    #[test]
    fn reader_never_reads_past_its_end() {
        let frame = Bytes::from_static(&[0, 0, 0, 1, 0xFF, 0xFF]);
        let mut r = Reader::new(&frame, 0, 4);
        assert_eq!(r.u32("x").unwrap(), 1);
        let e = r.u8("y").unwrap_err();
        assert_eq!(e.status, CommandStatus::ESME_RINVCMDLEN);
        assert_eq!(e.offset, 4);
        let mut r = Reader::new(&frame, 0, 4);
        assert_eq!(r.u16("a").unwrap(), 0);
        let e = r
            .octets(3, "short_message", CommandStatus::ESME_RINVMSGLEN)
            .unwrap_err();
        assert_eq!(e.status, CommandStatus::ESME_RINVMSGLEN);
        assert_eq!(e.offset, 2);
    }

    #[test]
    fn c_octet_string_json_is_text_or_hex() {
        let s = MessageId::from_text("abc").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"abc\"");
        let odd = MessageId::new(&[0xFF, 0x41]).unwrap();
        let json = serde_json::to_string(&odd).unwrap();
        assert_eq!(json, "{\"hex\":\"ff41\"}");
        let back: MessageId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, odd);
        assert!(serde_json::from_str::<ServiceType>("\"toolong\"").is_err());
    }
}
