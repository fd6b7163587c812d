//! SMPP 3.4 optional parameters (TLVs, section 5.3).
//!
//! Owns: the TLV area of a PDU kept verbatim in wire order (a zero-copy slice
//! of the frame), its validation, typed access to the parameters tern uses,
//! the names of every 3.4 tag, and the JSON form of TLVs.
//! Must not touch: the mandatory fields of PDUs (see `pdu`) or framing.
//!
//! Unknown tags are carried untouched: the specification says a receiver must
//! ignore optional parameters it does not support, and a gateway must forward
//! what it does not understand.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::status::CommandStatus;
use super::wire::{DecodeError, MessageId};

/// Tags tern reads or writes by type.
pub mod tag {
    pub const DEST_ADDR_SUBUNIT: u16 = 0x0005;
    pub const DEST_NETWORK_TYPE: u16 = 0x0006;
    pub const DEST_BEARER_TYPE: u16 = 0x0007;
    pub const DEST_TELEMATICS_ID: u16 = 0x0008;
    pub const SOURCE_ADDR_SUBUNIT: u16 = 0x000D;
    pub const SOURCE_NETWORK_TYPE: u16 = 0x000E;
    pub const SOURCE_BEARER_TYPE: u16 = 0x000F;
    pub const SOURCE_TELEMATICS_ID: u16 = 0x0010;
    pub const QOS_TIME_TO_LIVE: u16 = 0x0017;
    pub const PAYLOAD_TYPE: u16 = 0x0019;
    pub const ADDITIONAL_STATUS_INFO_TEXT: u16 = 0x001D;
    pub const RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    pub const MS_MSG_WAIT_FACILITIES: u16 = 0x0030;
    pub const PRIVACY_INDICATOR: u16 = 0x0201;
    pub const SOURCE_SUBADDRESS: u16 = 0x0202;
    pub const DEST_SUBADDRESS: u16 = 0x0203;
    pub const USER_MESSAGE_REFERENCE: u16 = 0x0204;
    pub const USER_RESPONSE_CODE: u16 = 0x0205;
    pub const SOURCE_PORT: u16 = 0x020A;
    pub const DESTINATION_PORT: u16 = 0x020B;
    pub const SAR_MSG_REF_NUM: u16 = 0x020C;
    pub const LANGUAGE_INDICATOR: u16 = 0x020D;
    pub const SAR_TOTAL_SEGMENTS: u16 = 0x020E;
    pub const SAR_SEGMENT_SEQNUM: u16 = 0x020F;
    pub const SC_INTERFACE_VERSION: u16 = 0x0210;
    pub const CALLBACK_NUM_PRES_IND: u16 = 0x0302;
    pub const CALLBACK_NUM_ATAG: u16 = 0x0303;
    pub const NUMBER_OF_MESSAGES: u16 = 0x0304;
    pub const CALLBACK_NUM: u16 = 0x0381;
    pub const DPF_RESULT: u16 = 0x0420;
    pub const SET_DPF: u16 = 0x0421;
    pub const MS_AVAILABILITY_STATUS: u16 = 0x0422;
    pub const NETWORK_ERROR_CODE: u16 = 0x0423;
    pub const MESSAGE_PAYLOAD: u16 = 0x0424;
    pub const DELIVERY_FAILURE_REASON: u16 = 0x0425;
    pub const MORE_MESSAGES_TO_SEND: u16 = 0x0426;
    pub const MESSAGE_STATE: u16 = 0x0427;
    pub const USSD_SERVICE_OP: u16 = 0x0501;
    pub const DISPLAY_TIME: u16 = 0x1201;
    pub const SMS_SIGNAL: u16 = 0x1203;
    pub const MS_VALIDITY: u16 = 0x1204;
    pub const ALERT_ON_MESSAGE_DELIVERY: u16 = 0x130C;
    pub const ITS_REPLY_TYPE: u16 = 0x1380;
    pub const ITS_SESSION_INFO: u16 = 0x1383;
}

/// How a known tag's value is laid out; drives validation and display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    U8,
    U16,
    U32,
    /// Exactly this many octets with no integer meaning.
    Fixed(usize),
    /// A C-octet string of at most this many octets, NUL included.
    CString(usize),
    /// Octets of a length between min and max.
    Octets {
        min: usize,
        max: usize,
    },
    /// network_error_code: network type (u8) then error code (u16).
    NetworkErrorCode,
}

/// (tag, name, kind) for every SMPP 3.4 optional parameter.
const KNOWN: &[(u16, &str, ValueKind)] = &[
    (tag::DEST_ADDR_SUBUNIT, "dest_addr_subunit", ValueKind::U8),
    (tag::DEST_NETWORK_TYPE, "dest_network_type", ValueKind::U8),
    (tag::DEST_BEARER_TYPE, "dest_bearer_type", ValueKind::U8),
    (
        tag::DEST_TELEMATICS_ID,
        "dest_telematics_id",
        ValueKind::U16,
    ),
    (
        tag::SOURCE_ADDR_SUBUNIT,
        "source_addr_subunit",
        ValueKind::U8,
    ),
    (
        tag::SOURCE_NETWORK_TYPE,
        "source_network_type",
        ValueKind::U8,
    ),
    (tag::SOURCE_BEARER_TYPE, "source_bearer_type", ValueKind::U8),
    (
        tag::SOURCE_TELEMATICS_ID,
        "source_telematics_id",
        ValueKind::U8,
    ),
    (tag::QOS_TIME_TO_LIVE, "qos_time_to_live", ValueKind::U32),
    (tag::PAYLOAD_TYPE, "payload_type", ValueKind::U8),
    (
        tag::ADDITIONAL_STATUS_INFO_TEXT,
        "additional_status_info_text",
        ValueKind::CString(256),
    ),
    (
        tag::RECEIPTED_MESSAGE_ID,
        "receipted_message_id",
        ValueKind::CString(65),
    ),
    (
        tag::MS_MSG_WAIT_FACILITIES,
        "ms_msg_wait_facilities",
        ValueKind::U8,
    ),
    (tag::PRIVACY_INDICATOR, "privacy_indicator", ValueKind::U8),
    (
        tag::SOURCE_SUBADDRESS,
        "source_subaddress",
        ValueKind::Octets { min: 2, max: 23 },
    ),
    (
        tag::DEST_SUBADDRESS,
        "dest_subaddress",
        ValueKind::Octets { min: 2, max: 23 },
    ),
    (
        tag::USER_MESSAGE_REFERENCE,
        "user_message_reference",
        ValueKind::U16,
    ),
    (tag::USER_RESPONSE_CODE, "user_response_code", ValueKind::U8),
    (tag::SOURCE_PORT, "source_port", ValueKind::U16),
    (tag::DESTINATION_PORT, "destination_port", ValueKind::U16),
    (tag::SAR_MSG_REF_NUM, "sar_msg_ref_num", ValueKind::U16),
    (tag::LANGUAGE_INDICATOR, "language_indicator", ValueKind::U8),
    (tag::SAR_TOTAL_SEGMENTS, "sar_total_segments", ValueKind::U8),
    (tag::SAR_SEGMENT_SEQNUM, "sar_segment_seqnum", ValueKind::U8),
    (
        tag::SC_INTERFACE_VERSION,
        "sc_interface_version",
        ValueKind::U8,
    ),
    (
        tag::CALLBACK_NUM_PRES_IND,
        "callback_num_pres_ind",
        ValueKind::U8,
    ),
    (
        tag::CALLBACK_NUM_ATAG,
        "callback_num_atag",
        ValueKind::Octets { min: 0, max: 65 },
    ),
    (tag::NUMBER_OF_MESSAGES, "number_of_messages", ValueKind::U8),
    (
        tag::CALLBACK_NUM,
        "callback_num",
        ValueKind::Octets { min: 4, max: 19 },
    ),
    (tag::DPF_RESULT, "dpf_result", ValueKind::U8),
    (tag::SET_DPF, "set_dpf", ValueKind::U8),
    (
        tag::MS_AVAILABILITY_STATUS,
        "ms_availability_status",
        ValueKind::U8,
    ),
    (
        tag::NETWORK_ERROR_CODE,
        "network_error_code",
        ValueKind::NetworkErrorCode,
    ),
    (
        tag::MESSAGE_PAYLOAD,
        "message_payload",
        ValueKind::Octets {
            min: 0,
            max: u16::MAX as usize,
        },
    ),
    (
        tag::DELIVERY_FAILURE_REASON,
        "delivery_failure_reason",
        ValueKind::U8,
    ),
    (
        tag::MORE_MESSAGES_TO_SEND,
        "more_messages_to_send",
        ValueKind::U8,
    ),
    (tag::MESSAGE_STATE, "message_state", ValueKind::U8),
    (tag::USSD_SERVICE_OP, "ussd_service_op", ValueKind::U8),
    (tag::DISPLAY_TIME, "display_time", ValueKind::U8),
    (tag::SMS_SIGNAL, "sms_signal", ValueKind::U16),
    (tag::MS_VALIDITY, "ms_validity", ValueKind::U8),
    (
        tag::ALERT_ON_MESSAGE_DELIVERY,
        "alert_on_message_delivery",
        ValueKind::Fixed(0),
    ),
    (tag::ITS_REPLY_TYPE, "its_reply_type", ValueKind::U8),
    (
        tag::ITS_SESSION_INFO,
        "its_session_info",
        ValueKind::Fixed(2),
    ),
];

/// The specification's name for a tag, e.g. `message_payload`.
pub fn tag_name(tag: u16) -> Option<&'static str> {
    known(tag).map(|k| k.1)
}

/// KNOWN is sorted by tag (a test checks), so lookups on the decode path are
/// a binary search.
fn known(tag: u16) -> Option<&'static (u16, &'static str, ValueKind)> {
    KNOWN
        .binary_search_by_key(&tag, |k| k.0)
        .ok()
        .and_then(|i| KNOWN.get(i))
}

pub fn tag_from_name(name: &str) -> Option<u16> {
    KNOWN.iter().find(|k| k.1 == name).map(|k| k.0)
}

pub fn value_kind(tag: u16) -> Option<ValueKind> {
    known(tag).map(|k| k.2)
}

/// Every known tag, for tables and exhaustive tests.
pub fn known_tags() -> impl Iterator<Item = u16> {
    KNOWN.iter().map(|k| k.0)
}

/// network_error_code (0x0423): which network reported the error, and its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkErrorCode {
    /// 1 ANSI-136, 2 IS-95, 3 GSM, 4 ANSI-41 (SMPP 3.4 5.3.2.31).
    pub network_type: u8,
    pub error_code: u16,
}

/// Why a value does not fit a known tag (the status is ESME_RINVPARLEN).
fn check_value(tag: u16, value: &[u8]) -> Result<(), String> {
    let Some(kind) = value_kind(tag) else {
        return Ok(());
    };
    let len = value.len();
    let fixed = |n: usize| {
        if len == n {
            Ok(())
        } else {
            Err(format!("length {len}, the specification fixes {n}"))
        }
    };
    match kind {
        ValueKind::U8 => fixed(1),
        ValueKind::U16 => fixed(2),
        ValueKind::U32 => fixed(4),
        ValueKind::NetworkErrorCode => fixed(3),
        ValueKind::Fixed(n) => fixed(n),
        ValueKind::Octets { min, max } if len < min || len > max => {
            Err(format!("length {len}, allowed {min}..={max}"))
        }
        ValueKind::Octets { .. } => Ok(()),
        // Tolerance: some SMSCs omit the NUL of receipted_message_id; the value
        // is still unambiguous, so accept it (the typed getter strips the NUL).
        ValueKind::CString(max) if len > max => Err(format!("length {len}, maximum {max}")),
        ValueKind::CString(_) => match value.iter().position(|&b| b == 0) {
            Some(nul) if nul + 1 != len => Err("NUL inside the string".to_string()),
            _ => Ok(()),
        },
    }
}

/// One optional parameter, borrowed from a `Tlvs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u16,
    pub value: &'a [u8],
}

/// A display-ready reading of a TLV value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypedValue<'a> {
    U8(u8),
    U16(u16),
    U32(u32),
    /// A C-octet string, NUL stripped.
    Text(&'a [u8]),
    NetworkErrorCode(NetworkErrorCode),
    Octets(&'a [u8]),
}

impl<'a> Tlv<'a> {
    pub fn name(&self) -> Option<&'static str> {
        tag_name(self.tag)
    }

    /// The value read by the tag's kind; unknown tags read as octets.
    pub fn typed(&self) -> TypedValue<'a> {
        let v = self.value;
        match (value_kind(self.tag), v) {
            (Some(ValueKind::U8), [a]) => TypedValue::U8(*a),
            (Some(ValueKind::U16), [a, b]) => TypedValue::U16(u16::from_be_bytes([*a, *b])),
            (Some(ValueKind::U32), [a, b, c, d]) => {
                TypedValue::U32(u32::from_be_bytes([*a, *b, *c, *d]))
            }
            (Some(ValueKind::NetworkErrorCode), [t, a, b]) => {
                TypedValue::NetworkErrorCode(NetworkErrorCode {
                    network_type: *t,
                    error_code: u16::from_be_bytes([*a, *b]),
                })
            }
            (Some(ValueKind::CString(_)), _) => TypedValue::Text(v.strip_suffix(&[0]).unwrap_or(v)),
            _ => TypedValue::Octets(v),
        }
    }
}

/// The TLV area of a PDU, verbatim and in wire order.
///
/// Invariant: `raw` is a well-formed sequence of (tag u16, length u16, value)
/// and every known tag has a length its kind allows. Built only by `parse` or
/// the setters, so the getters never meet a malformed area.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tlvs {
    raw: Bytes,
}

impl Tlvs {
    pub fn new() -> Tlvs {
        Tlvs::default()
    }

    /// Validates a TLV area. `base_offset` is where the area starts in the PDU,
    /// so that errors point at the right octet. Zero-copy: keeps a slice.
    pub fn parse(raw: Bytes, base_offset: usize) -> Result<Tlvs, DecodeError> {
        let mut pos = 0usize;
        while pos < raw.len() {
            let header = raw.get(pos..pos + 4).ok_or_else(|| {
                DecodeError::new(
                    CommandStatus::ESME_RINVOPTPARSTREAM,
                    base_offset + pos,
                    "tlv",
                    format!(
                        "truncated TLV header: {} octet(s) left, 4 needed",
                        raw.len() - pos
                    ),
                )
            })?;
            let tag = u16::from_be_bytes([header[0], header[1]]);
            let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let field = || tag_name(tag).unwrap_or("tlv");
            let value = raw.get(pos + 4..pos + 4 + len).ok_or_else(|| {
                DecodeError::new(
                    CommandStatus::ESME_RINVOPTPARSTREAM,
                    base_offset + pos,
                    field(),
                    format!(
                        "TLV 0x{tag:04X} declares {len} octet(s) but only {} remain",
                        raw.len() - pos - 4
                    ),
                )
            })?;
            if let Err(reason) = check_value(tag, value) {
                return Err(DecodeError::new(
                    CommandStatus::ESME_RINVPARLEN,
                    base_offset + pos,
                    field(),
                    format!("TLV 0x{tag:04X} {reason}"),
                ));
            }
            pos += 4 + len;
        }
        Ok(Tlvs { raw })
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The area as it goes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    pub fn iter(&self) -> TlvIter<'_> {
        TlvIter { rest: &self.raw }
    }

    /// The first TLV with this tag (duplicates are kept but not preferred).
    pub fn get(&self, tag: u16) -> Option<&[u8]> {
        self.iter().find(|t| t.tag == tag).map(|t| t.value)
    }

    fn get_u8(&self, tag: u16) -> Option<u8> {
        match self.get(tag)? {
            [a] => Some(*a),
            _ => None,
        }
    }

    fn get_u16(&self, tag: u16) -> Option<u16> {
        match self.get(tag)? {
            [a, b] => Some(u16::from_be_bytes([*a, *b])),
            _ => None,
        }
    }

    /// Sets `tag` to `value`: replaces the first occurrence in place (keeping
    /// wire order) or appends. Rebuilds the area, so it allocates; the decode
    /// path never calls it.
    pub fn set(&mut self, tag: u16, value: &[u8]) -> Result<(), TlvError> {
        check_value(tag, value).map_err(|reason| TlvError { tag, reason })?;
        if value.len() > usize::from(u16::MAX) {
            return Err(TlvError {
                tag,
                reason: format!("length {} does not fit 16 bits", value.len()),
            });
        }
        let mut out = BytesMut::with_capacity(self.raw.len() + 4 + value.len());
        let mut replaced = false;
        for t in self.iter() {
            if t.tag == tag && !replaced {
                put_tlv(&mut out, tag, value);
                replaced = true;
            } else {
                put_tlv(&mut out, t.tag, t.value);
            }
        }
        if !replaced {
            put_tlv(&mut out, tag, value);
        }
        self.raw = out.freeze();
        Ok(())
    }

    /// Removes every occurrence of `tag`; true when one was there.
    pub fn remove(&mut self, tag: u16) -> bool {
        if self.get(tag).is_none() {
            return false;
        }
        let mut out = BytesMut::with_capacity(self.raw.len());
        for t in self.iter().filter(|t| t.tag != tag) {
            put_tlv(&mut out, t.tag, t.value);
        }
        self.raw = out.freeze();
        true
    }

    pub fn receipted_message_id(&self) -> Option<MessageId> {
        let v = self.get(tag::RECEIPTED_MESSAGE_ID)?;
        MessageId::new(v.strip_suffix(&[0]).unwrap_or(v))
    }

    pub fn set_receipted_message_id(&mut self, id: &MessageId) -> Result<(), TlvError> {
        let mut v = [0u8; 65];
        let n = id.len();
        v[..n].copy_from_slice(id.as_bytes());
        self.set(tag::RECEIPTED_MESSAGE_ID, &v[..=n])
    }

    /// 1 ENROUTE .. 8 REJECTED (SMPP 3.4 5.2.28).
    pub fn message_state(&self) -> Option<u8> {
        self.get_u8(tag::MESSAGE_STATE)
    }

    pub fn set_message_state(&mut self, state: u8) -> Result<(), TlvError> {
        self.set(tag::MESSAGE_STATE, &[state])
    }

    pub fn network_error_code(&self) -> Option<NetworkErrorCode> {
        match self.get(tag::NETWORK_ERROR_CODE)? {
            [t, a, b] => Some(NetworkErrorCode {
                network_type: *t,
                error_code: u16::from_be_bytes([*a, *b]),
            }),
            _ => None,
        }
    }

    pub fn set_network_error_code(&mut self, code: NetworkErrorCode) -> Result<(), TlvError> {
        let [a, b] = code.error_code.to_be_bytes();
        self.set(tag::NETWORK_ERROR_CODE, &[code.network_type, a, b])
    }

    /// message_payload as a zero-copy slice of the frame.
    pub fn message_payload(&self) -> Option<Bytes> {
        let mut pos = 0usize;
        for t in self.iter() {
            let value_start = pos + 4;
            pos = value_start + t.value.len();
            if t.tag == tag::MESSAGE_PAYLOAD {
                return Some(self.raw.slice(value_start..pos));
            }
        }
        None
    }

    pub fn set_message_payload(&mut self, payload: &[u8]) -> Result<(), TlvError> {
        self.set(tag::MESSAGE_PAYLOAD, payload)
    }

    pub fn sar_msg_ref_num(&self) -> Option<u16> {
        self.get_u16(tag::SAR_MSG_REF_NUM)
    }

    pub fn set_sar_msg_ref_num(&mut self, reference: u16) -> Result<(), TlvError> {
        self.set(tag::SAR_MSG_REF_NUM, &reference.to_be_bytes())
    }

    pub fn sar_total_segments(&self) -> Option<u8> {
        self.get_u8(tag::SAR_TOTAL_SEGMENTS)
    }

    pub fn set_sar_total_segments(&mut self, total: u8) -> Result<(), TlvError> {
        self.set(tag::SAR_TOTAL_SEGMENTS, &[total])
    }

    pub fn sar_segment_seqnum(&self) -> Option<u8> {
        self.get_u8(tag::SAR_SEGMENT_SEQNUM)
    }

    pub fn set_sar_segment_seqnum(&mut self, seqnum: u8) -> Result<(), TlvError> {
        self.set(tag::SAR_SEGMENT_SEQNUM, &[seqnum])
    }

    pub fn user_message_reference(&self) -> Option<u16> {
        self.get_u16(tag::USER_MESSAGE_REFERENCE)
    }

    pub fn set_user_message_reference(&mut self, reference: u16) -> Result<(), TlvError> {
        self.set(tag::USER_MESSAGE_REFERENCE, &reference.to_be_bytes())
    }

    pub fn source_port(&self) -> Option<u16> {
        self.get_u16(tag::SOURCE_PORT)
    }

    pub fn set_source_port(&mut self, port: u16) -> Result<(), TlvError> {
        self.set(tag::SOURCE_PORT, &port.to_be_bytes())
    }

    pub fn destination_port(&self) -> Option<u16> {
        self.get_u16(tag::DESTINATION_PORT)
    }

    pub fn set_destination_port(&mut self, port: u16) -> Result<(), TlvError> {
        self.set(tag::DESTINATION_PORT, &port.to_be_bytes())
    }

    pub fn more_messages_to_send(&self) -> Option<u8> {
        self.get_u8(tag::MORE_MESSAGES_TO_SEND)
    }

    pub fn set_more_messages_to_send(&mut self, more: u8) -> Result<(), TlvError> {
        self.set(tag::MORE_MESSAGES_TO_SEND, &[more])
    }
}

fn put_tlv(out: &mut BytesMut, tag: u16, value: &[u8]) {
    debug_assert!(value.len() <= usize::from(u16::MAX), "checked by set");
    out.put_u16(tag);
    out.put_u16(value.len() as u16);
    out.put_slice(value);
}

/// A value that does not fit its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlvError {
    pub tag: u16,
    pub reason: String,
}

impl fmt::Display for TlvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLV {} (0x{:04X}): {}",
            tag_name(self.tag).unwrap_or("unknown"),
            self.tag,
            self.reason
        )
    }
}

impl std::error::Error for TlvError {}

pub struct TlvIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Tlv<'a>;

    fn next(&mut self) -> Option<Tlv<'a>> {
        let (header, tail) = self.rest.split_first_chunk::<4>()?;
        let tag = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let value = tail.get(..len);
        debug_assert!(value.is_some(), "Tlvs holds a validated area");
        let value = value?;
        self.rest = tail.get(len..).unwrap_or_default();
        Some(Tlv { tag, value })
    }
}

impl fmt::Debug for Tlvs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|t| {
                format!(
                    "{}(0x{:04X})={}",
                    t.name().unwrap_or("?"),
                    t.tag,
                    hex::encode(t.value)
                )
            }))
            .finish()
    }
}

/// JSON form of one TLV: tag as `0x001E`, its name, its length, and the value
/// typed when the tag is known (`value`) or as hex (`hex`). On input, `tag`
/// may be the name or the hex number, either `value` or `hex` gives the
/// value, and `name` and `length` are ignored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlvJson {
    tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Informational on output; ignored on input (the value sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    length: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
}

impl Serialize for Tlvs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(None)?;
        for t in self.iter() {
            let value = match t.typed() {
                TypedValue::U8(v) => Some(serde_json::Value::from(v)),
                TypedValue::U16(v) => Some(serde_json::Value::from(v)),
                TypedValue::U32(v) => Some(serde_json::Value::from(v)),
                TypedValue::NetworkErrorCode(c) => serde_json::to_value(c).ok(),
                // Text only when it survives the round trip (UTF-8, NUL present).
                TypedValue::Text(text) if t.value.last() == Some(&0) => std::str::from_utf8(text)
                    .ok()
                    .map(|s| serde_json::Value::from(s.to_string())),
                TypedValue::Text(_) | TypedValue::Octets(_) => None,
            };
            let hex = value.is_none().then(|| hex::encode(t.value));
            seq.serialize_element(&TlvJson {
                tag: format!("0x{:04X}", t.tag),
                name: t.name().map(str::to_string),
                length: Some(t.value.len()),
                value,
                hex,
            })?;
        }
        seq.end()
    }
}

fn tlv_from_json(j: TlvJson) -> Result<(u16, Vec<u8>), String> {
    let tag_text = j.tag.trim();
    let tag = match tag_from_name(tag_text) {
        Some(t) => t,
        None => {
            let digits = tag_text
                .strip_prefix("0x")
                .or_else(|| tag_text.strip_prefix("0X"))
                .ok_or_else(|| format!("unknown TLV tag {tag_text:?}: give a name or 0xNNNN"))?;
            u16::from_str_radix(digits, 16).map_err(|e| format!("TLV tag {tag_text:?}: {e}"))?
        }
    };
    if let Some(h) = j.hex {
        return hex::decode(h.trim())
            .map(|v| (tag, v))
            .map_err(|e| format!("TLV 0x{tag:04X} hex: {e}"));
    }
    let value = j
        .value
        .ok_or_else(|| format!("TLV 0x{tag:04X} needs \"value\" or \"hex\""))?;
    let as_int = |max: u64| {
        value
            .as_u64()
            .filter(|v| *v <= max)
            .ok_or_else(|| format!("TLV 0x{tag:04X} wants an integer 0..={max}"))
    };
    let bytes = match value_kind(tag) {
        Some(ValueKind::U8) => vec![as_int(0xFF)? as u8],
        Some(ValueKind::U16) => (as_int(0xFFFF)? as u16).to_be_bytes().to_vec(),
        Some(ValueKind::U32) => (as_int(0xFFFF_FFFF)? as u32).to_be_bytes().to_vec(),
        Some(ValueKind::NetworkErrorCode) => {
            let c: NetworkErrorCode =
                serde_json::from_value(value).map_err(|e| format!("network_error_code: {e}"))?;
            let [a, b] = c.error_code.to_be_bytes();
            vec![c.network_type, a, b]
        }
        Some(ValueKind::CString(_)) => {
            let text = value
                .as_str()
                .ok_or_else(|| format!("TLV 0x{tag:04X} wants a string"))?;
            let mut v = text.as_bytes().to_vec();
            v.push(0);
            v
        }
        _ => return Err(format!("TLV 0x{tag:04X} has no typed form: give \"hex\"")),
    };
    Ok((tag, bytes))
}

impl<'de> Deserialize<'de> for Tlvs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<TlvJson>::deserialize(deserializer)?;
        let mut out = BytesMut::new();
        for item in items {
            let (tag, value) = tlv_from_json(item).map_err(serde::de::Error::custom)?;
            check_value(tag, &value)
                .map_err(|reason| serde::de::Error::custom(TlvError { tag, reason }.to_string()))?;
            if value.len() > usize::from(u16::MAX) {
                return Err(serde::de::Error::custom("TLV value longer than 65535"));
            }
            put_tlv(&mut out, tag, &value);
        }
        Ok(Tlvs { raw: out.freeze() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(bytes: &[u8]) -> Result<Tlvs, DecodeError> {
        Tlvs::parse(Bytes::copy_from_slice(bytes), 100)
    }

    #[test]
    fn typed_getters_read_a_receipt_area() {
        let t = area(&[
            0x00, 0x1E, 0x00, 0x04, b'a', b'b', b'c', 0, // receipted_message_id
            0x04, 0x27, 0x00, 0x01, 0x02, // message_state DELIVERED
            0x04, 0x23, 0x00, 0x03, 0x03, 0x00, 0x22, // network_error_code GSM 34
            0x14, 0x00, 0x00, 0x02, 0xAB, 0xCD, // vendor tag, carried
        ])
        .unwrap();
        assert_eq!(t.receipted_message_id().unwrap().as_bytes(), b"abc");
        assert_eq!(t.message_state(), Some(2));
        assert_eq!(
            t.network_error_code(),
            Some(NetworkErrorCode {
                network_type: 3,
                error_code: 0x22
            })
        );
        let tags: Vec<u16> = t.iter().map(|t| t.tag).collect();
        assert_eq!(tags, vec![0x001E, 0x0427, 0x0423, 0x1400]);
        assert_eq!(t.get(0x1400), Some(&[0xAB, 0xCD][..]));
    }

    #[test]
    fn receipted_message_id_without_nul_is_tolerated() {
        let t = area(&[0x00, 0x1E, 0x00, 0x02, b'4', b'2']).unwrap();
        assert_eq!(t.receipted_message_id().unwrap().as_bytes(), b"42");
    }

    #[test]
    fn truncated_header_and_value_are_rinvoptparstream() {
        let e = area(&[0x04, 0x27, 0x00]).unwrap_err();
        assert_eq!(e.status, CommandStatus::ESME_RINVOPTPARSTREAM);
        assert_eq!(e.offset, 100);
        let e = area(&[0x04, 0x27, 0x00, 0x01, 0x02, 0x04, 0x24, 0x00, 0x05, 1, 2]).unwrap_err();
        assert_eq!(e.status, CommandStatus::ESME_RINVOPTPARSTREAM);
        assert_eq!(e.offset, 105);
        assert_eq!(e.field, "message_payload");
    }

    #[test]
    fn wrong_fixed_length_is_rinvparlen() {
        let e = area(&[0x04, 0x27, 0x00, 0x02, 0x00, 0x02]).unwrap_err();
        assert_eq!(e.status, CommandStatus::ESME_RINVPARLEN);
        assert_eq!(e.field, "message_state");
        let e = area(&[0x04, 0x23, 0x00, 0x02, 0x03, 0x00]).unwrap_err();
        assert_eq!(e.status, CommandStatus::ESME_RINVPARLEN);
        let e = area(&[0x02, 0x0C, 0x00, 0x01, 0x03]).unwrap_err();
        assert_eq!(e.field, "sar_msg_ref_num");
        assert_eq!(e.status, CommandStatus::ESME_RINVPARLEN);
    }

    #[test]
    fn setters_replace_in_place_and_append() {
        let mut t = Tlvs::new();
        t.set_sar_msg_ref_num(0x1234).unwrap();
        t.set_sar_total_segments(3).unwrap();
        t.set_sar_segment_seqnum(1).unwrap();
        t.set_sar_msg_ref_num(0x4321).unwrap();
        assert_eq!(
            t.as_bytes(),
            &[0x02, 0x0C, 0, 2, 0x43, 0x21, 0x02, 0x0E, 0, 1, 3, 0x02, 0x0F, 0, 1, 1]
        );
        t.set_source_port(1).unwrap();
        t.set_destination_port(2).unwrap();
        t.set_user_message_reference(7).unwrap();
        t.set_more_messages_to_send(1).unwrap();
        t.set_message_payload(b"hello").unwrap();
        t.set_receipted_message_id(&MessageId::from_text("x1").unwrap())
            .unwrap();
        assert_eq!(t.source_port(), Some(1));
        assert_eq!(t.destination_port(), Some(2));
        assert_eq!(t.user_message_reference(), Some(7));
        assert_eq!(t.more_messages_to_send(), Some(1));
        assert_eq!(t.message_payload().unwrap().as_ref(), b"hello");
        assert_eq!(t.receipted_message_id().unwrap().as_bytes(), b"x1");
        assert!(t.remove(tag::MESSAGE_PAYLOAD));
        assert!(!t.remove(tag::MESSAGE_PAYLOAD));
        assert_eq!(t.message_payload(), None);
        assert!(t.set(tag::MESSAGE_STATE, &[1, 2]).is_err());
        // What the setters build parses back as valid.
        assert_eq!(
            Tlvs::parse(Bytes::copy_from_slice(t.as_bytes()), 0).unwrap(),
            t
        );
    }

    #[test]
    fn known_tags_are_sorted_for_binary_search() {
        assert!(KNOWN.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn every_tag_has_a_unique_name() {
        let mut seen = std::collections::HashSet::new();
        for tag in known_tags() {
            let name = tag_name(tag).unwrap();
            assert!(seen.insert(name));
            assert_eq!(tag_from_name(name), Some(tag));
        }
        assert_eq!(tag_name(0x1400), None);
    }

    #[test]
    fn json_round_trips_typed_and_hex_values() {
        let t = area(&[
            0x00, 0x1E, 0x00, 0x03, b'i', b'd', 0, 0x04, 0x27, 0x00, 0x01, 0x05, 0x04, 0x23, 0x00,
            0x03, 0x03, 0x01, 0x00, 0x14, 0x00, 0x00, 0x01, 0xEE, 0x00, 0x1E, 0x00, 0x01, b'z',
        ])
        .unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert!(
            json.contains("\"name\":\"receipted_message_id\",\"length\":3,\"value\":\"id\""),
            "{json}"
        );
        assert!(
            json.contains("\"tag\":\"0x0427\",\"name\":\"message_state\",\"length\":1,\"value\":5")
        );
        assert!(json.contains("\"network_type\":3"), "{json}");
        assert!(json.contains("\"error_code\":256"), "{json}");
        assert!(json.contains("\"tag\":\"0x1400\",\"length\":1,\"hex\":\"ee\""));
        let back: Tlvs = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        let by_name: Tlvs =
            serde_json::from_str(r#"[{"tag":"sar_total_segments","value":2}]"#).unwrap();
        assert_eq!(by_name.sar_total_segments(), Some(2));
        assert!(serde_json::from_str::<Tlvs>(r#"[{"tag":"message_state","value":300}]"#).is_err());
    }
}
