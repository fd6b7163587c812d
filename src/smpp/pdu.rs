//! SMPP 3.4 PDUs: the typed form of every PDU, its decoding from one frame and
//! its encoding, the JSON form used by the CLI, and the semantic checks the
//! server applies to submit_sm and submit_multi.
//!
//! Owns: PDU layouts (SMPP 3.4 chapter 4), the command_status each malformed
//! field earns, and `validate_submit` / `validate_submit_multi`. Must not touch: framing across reads
//! (see `frame`), TLV internals (see `tlv`), sockets, sessions or the store.
//!
//! Allocation: decoding submit_sm, submit_sm_resp and deliver_sm allocates
//! nothing. C-octet strings are inline (`COctetString`), and short_message and
//! the TLV area are `Bytes` slices of the frame. Encoding writes straight into
//! the caller's `BytesMut`. Only submit_multi and submit_multi_resp own a `Vec`.
//!
//! Tolerances (peers are sloppy; each is a deliberate choice):
//! - A response may come with no body, whatever its command_status: the body
//!   reads as empty (SMPP 5.0 makes "no body on error" explicit; some 3.4 SMSCs
//!   also drop the body of a successful bind_resp or deliver_sm_resp).
//! - A response with a non-zero command_status may still carry a body; we read
//!   it when we can and ignore it (reading it as empty) when it is malformed or
//!   has trailing octets: the status is the message.
//! - TLVs are accepted on every PDU that 3.4 allows them on whatever the bind's
//!   interface_version; unknown tags are carried, not rejected.
//! - receipted_message_id without its NUL is accepted (see `tlv`).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::command::CommandId;
use super::status::CommandStatus;
use super::tlv::Tlvs;
use super::wire::{hex_bytes, put_c_string, Reader};
pub use super::wire::{
    Address, AddressRange, COctetString, DecodeError, DistributionListName, EncodeError,
    LongAddress, MessageId, Password, ServiceType, SmppTime, SystemId, SystemType,
};

type S = CommandStatus;

/// Octets in the PDU header: command_length, command_id, command_status and
/// sequence_number, 4 each.
pub const HEADER_LEN: usize = 16;

/// The most octets short_message may hold (SMPP 3.4 5.2.22).
pub const MAX_SHORT_MESSAGE_LEN: usize = 254;

/// The most destinations a submit_multi may address (SMPP 3.4 4.5.1).
pub const MAX_DESTINATIONS: usize = 254;

/// The fixed header, readable before the body is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub command_length: u32,
    /// Raw, because unknown ids must still be answered.
    pub command_id: u32,
    pub command_status: CommandStatus,
    pub sequence_number: u32,
}

impl Header {
    /// None when fewer than 16 octets are given.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let h = bytes.first_chunk::<HEADER_LEN>()?;
        let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        Some(Header {
            command_length: word(0),
            command_id: word(4),
            command_status: CommandStatus(word(8)),
            sequence_number: word(12),
        })
    }
}

/// One PDU. `command_id` follows from the body variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pdu {
    /// JSON: `"command": "submit_sm", "body": {...}`.
    #[serde(flatten)]
    pub body: Body,
    #[serde(default, with = "status_json")]
    pub command_status: CommandStatus,
    pub sequence_number: u32,
}

/// The body of every SMPP 3.4 PDU. Unit variants have no body on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", content = "body", rename_all = "snake_case")]
pub enum Body {
    GenericNack,
    BindReceiver(Bind),
    BindReceiverResp(BindResp),
    BindTransmitter(Bind),
    BindTransmitterResp(BindResp),
    QuerySm(QuerySm),
    QuerySmResp(QuerySmResp),
    SubmitSm(SubmitSm),
    SubmitSmResp(SubmitSmResp),
    DeliverSm(DeliverSm),
    DeliverSmResp(DeliverSmResp),
    Unbind,
    UnbindResp,
    ReplaceSm(ReplaceSm),
    ReplaceSmResp,
    CancelSm(CancelSm),
    CancelSmResp,
    BindTransceiver(Bind),
    BindTransceiverResp(BindResp),
    Outbind(Outbind),
    EnquireLink,
    EnquireLinkResp,
    SubmitMulti(SubmitMulti),
    SubmitMultiResp(SubmitMultiResp),
    AlertNotification(AlertNotification),
    DataSm(DataSm),
    DataSmResp(DataSmResp),
}

/// bind_transmitter, bind_receiver and bind_transceiver (4.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bind {
    pub system_id: SystemId,
    pub password: Password,
    pub system_type: SystemType,
    pub interface_version: u8,
    pub addr_ton: u8,
    pub addr_npi: u8,
    pub address_range: AddressRange,
}

/// bind_*_resp (4.1.2): system_id and optionally sc_interface_version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BindResp {
    pub system_id: SystemId,
    pub tlvs: Tlvs,
}

/// outbind (4.1.7).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Outbind {
    pub system_id: SystemId,
    pub password: Password,
}

/// submit_sm (4.4.1); deliver_sm (4.6.1) shares the layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubmitSm {
    pub service_type: ServiceType,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Address,
    pub dest_addr_ton: u8,
    pub dest_addr_npi: u8,
    pub destination_addr: Address,
    pub esm_class: u8,
    pub protocol_id: u8,
    pub priority_flag: u8,
    pub schedule_delivery_time: SmppTime,
    pub validity_period: SmppTime,
    pub registered_delivery: u8,
    pub replace_if_present_flag: u8,
    pub data_coding: u8,
    pub sm_default_msg_id: u8,
    /// At most 254 octets; sm_length on the wire is its length.
    #[serde(with = "hex_bytes")]
    pub short_message: Bytes,
    pub tlvs: Tlvs,
}

/// deliver_sm has exactly submit_sm's layout (SMPP 3.4 4.6.1).
pub type DeliverSm = SubmitSm;

impl SubmitSm {
    /// The message octets: short_message, or message_payload when
    /// short_message is empty. Zero-copy.
    pub fn message(&self) -> Bytes {
        if self.short_message.is_empty() {
            if let Some(payload) = self.tlvs.message_payload() {
                return payload;
            }
        }
        self.short_message.clone()
    }

    /// esm_class bit 6: short_message starts with a user data header.
    pub fn has_udh(&self) -> bool {
        self.esm_class & ESM_UDHI != 0
    }

    /// esm_class message type 0x04: this deliver_sm is a delivery receipt.
    pub fn is_delivery_receipt(&self) -> bool {
        self.esm_class & ESM_MESSAGE_TYPE_MASK == ESM_TYPE_DELIVERY_RECEIPT
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubmitSmResp {
    pub message_id: MessageId,
}

/// deliver_sm_resp: message_id is unused and NULL in 3.4, but carried.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverSmResp {
    pub message_id: MessageId,
}

/// data_sm (4.7.1): addresses up to 65 octets, everything else in TLVs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSm {
    pub service_type: ServiceType,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: LongAddress,
    pub dest_addr_ton: u8,
    pub dest_addr_npi: u8,
    pub destination_addr: LongAddress,
    pub esm_class: u8,
    pub registered_delivery: u8,
    pub data_coding: u8,
    pub tlvs: Tlvs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSmResp {
    pub message_id: MessageId,
    pub tlvs: Tlvs,
}

/// query_sm (4.8.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySm {
    pub message_id: MessageId,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Address,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySmResp {
    pub message_id: MessageId,
    pub final_date: SmppTime,
    pub message_state: u8,
    pub error_code: u8,
}

/// cancel_sm (4.9.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CancelSm {
    pub service_type: ServiceType,
    pub message_id: MessageId,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Address,
    pub dest_addr_ton: u8,
    pub dest_addr_npi: u8,
    pub destination_addr: Address,
}

/// replace_sm (4.10.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplaceSm {
    pub message_id: MessageId,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Address,
    pub schedule_delivery_time: SmppTime,
    pub validity_period: SmppTime,
    pub registered_delivery: u8,
    pub sm_default_msg_id: u8,
    #[serde(with = "hex_bytes")]
    pub short_message: Bytes,
}

/// One destination of a submit_multi (4.5.1.1): dest_flag 1 or 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "dest_flag", rename_all = "snake_case", deny_unknown_fields)]
pub enum DestAddress {
    /// dest_flag 1.
    SmeAddress {
        dest_addr_ton: u8,
        dest_addr_npi: u8,
        destination_addr: Address,
    },
    /// dest_flag 2.
    DistributionList { dl_name: DistributionListName },
}

/// submit_multi (4.5.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubmitMulti {
    pub service_type: ServiceType,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Address,
    /// number_of_dests on the wire is its length (at most 254).
    pub dest_addresses: Vec<DestAddress>,
    pub esm_class: u8,
    pub protocol_id: u8,
    pub priority_flag: u8,
    pub schedule_delivery_time: SmppTime,
    pub validity_period: SmppTime,
    pub registered_delivery: u8,
    pub replace_if_present_flag: u8,
    pub data_coding: u8,
    pub sm_default_msg_id: u8,
    #[serde(with = "hex_bytes")]
    pub short_message: Bytes,
    pub tlvs: Tlvs,
}

/// One destination a submit_multi could not reach (4.5.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnsuccessSme {
    pub dest_addr_ton: u8,
    pub dest_addr_npi: u8,
    pub destination_addr: Address,
    #[serde(with = "status_json")]
    pub error_status_code: CommandStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubmitMultiResp {
    pub message_id: MessageId,
    /// no_unsuccess on the wire is its length (at most 255).
    pub unsuccess_smes: Vec<UnsuccessSme>,
}

/// alert_notification (4.12.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertNotification {
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: LongAddress,
    pub esme_addr_ton: u8,
    pub esme_addr_npi: u8,
    pub esme_addr: LongAddress,
    pub tlvs: Tlvs,
}

/// esm_class bits (SMPP 3.4 5.2.12).
pub const ESM_UDHI: u8 = 0x40;
pub const ESM_MESSAGE_TYPE_MASK: u8 = 0x3C;
pub const ESM_TYPE_DELIVERY_RECEIPT: u8 = 0x04;

impl Body {
    pub fn command_id(&self) -> CommandId {
        match self {
            Body::GenericNack => CommandId::GenericNack,
            Body::BindReceiver(_) => CommandId::BindReceiver,
            Body::BindReceiverResp(_) => CommandId::BindReceiverResp,
            Body::BindTransmitter(_) => CommandId::BindTransmitter,
            Body::BindTransmitterResp(_) => CommandId::BindTransmitterResp,
            Body::QuerySm(_) => CommandId::QuerySm,
            Body::QuerySmResp(_) => CommandId::QuerySmResp,
            Body::SubmitSm(_) => CommandId::SubmitSm,
            Body::SubmitSmResp(_) => CommandId::SubmitSmResp,
            Body::DeliverSm(_) => CommandId::DeliverSm,
            Body::DeliverSmResp(_) => CommandId::DeliverSmResp,
            Body::Unbind => CommandId::Unbind,
            Body::UnbindResp => CommandId::UnbindResp,
            Body::ReplaceSm(_) => CommandId::ReplaceSm,
            Body::ReplaceSmResp => CommandId::ReplaceSmResp,
            Body::CancelSm(_) => CommandId::CancelSm,
            Body::CancelSmResp => CommandId::CancelSmResp,
            Body::BindTransceiver(_) => CommandId::BindTransceiver,
            Body::BindTransceiverResp(_) => CommandId::BindTransceiverResp,
            Body::Outbind(_) => CommandId::Outbind,
            Body::EnquireLink => CommandId::EnquireLink,
            Body::EnquireLinkResp => CommandId::EnquireLinkResp,
            Body::SubmitMulti(_) => CommandId::SubmitMulti,
            Body::SubmitMultiResp(_) => CommandId::SubmitMultiResp,
            Body::AlertNotification(_) => CommandId::AlertNotification,
            Body::DataSm(_) => CommandId::DataSm,
            Body::DataSmResp(_) => CommandId::DataSmResp,
        }
    }

    /// The body of `id` with every field empty: what a response without a
    /// body decodes to, and what an error response carries.
    pub fn empty(id: CommandId) -> Body {
        match id {
            CommandId::GenericNack => Body::GenericNack,
            CommandId::BindReceiver => Body::BindReceiver(Bind::default()),
            CommandId::BindReceiverResp => Body::BindReceiverResp(BindResp::default()),
            CommandId::BindTransmitter => Body::BindTransmitter(Bind::default()),
            CommandId::BindTransmitterResp => Body::BindTransmitterResp(BindResp::default()),
            CommandId::QuerySm => Body::QuerySm(QuerySm::default()),
            CommandId::QuerySmResp => Body::QuerySmResp(QuerySmResp::default()),
            CommandId::SubmitSm => Body::SubmitSm(SubmitSm::default()),
            CommandId::SubmitSmResp => Body::SubmitSmResp(SubmitSmResp::default()),
            CommandId::DeliverSm => Body::DeliverSm(DeliverSm::default()),
            CommandId::DeliverSmResp => Body::DeliverSmResp(DeliverSmResp::default()),
            CommandId::Unbind => Body::Unbind,
            CommandId::UnbindResp => Body::UnbindResp,
            CommandId::ReplaceSm => Body::ReplaceSm(ReplaceSm::default()),
            CommandId::ReplaceSmResp => Body::ReplaceSmResp,
            CommandId::CancelSm => Body::CancelSm(CancelSm::default()),
            CommandId::CancelSmResp => Body::CancelSmResp,
            CommandId::BindTransceiver => Body::BindTransceiver(Bind::default()),
            CommandId::BindTransceiverResp => Body::BindTransceiverResp(BindResp::default()),
            CommandId::Outbind => Body::Outbind(Outbind::default()),
            CommandId::EnquireLink => Body::EnquireLink,
            CommandId::EnquireLinkResp => Body::EnquireLinkResp,
            CommandId::SubmitMulti => Body::SubmitMulti(SubmitMulti::default()),
            CommandId::SubmitMultiResp => Body::SubmitMultiResp(SubmitMultiResp::default()),
            CommandId::AlertNotification => Body::AlertNotification(AlertNotification::default()),
            CommandId::DataSm => Body::DataSm(DataSm::default()),
            CommandId::DataSmResp => Body::DataSmResp(DataSmResp::default()),
        }
    }

    /// Whether an error response of this kind still carries its body when we
    /// encode it. Only data_sm_resp does, and only with TLVs: 3.4 lets it
    /// report delivery_failure_reason and network_error_code on failure.
    fn keeps_body_on_error(&self) -> bool {
        matches!(self, Body::DataSmResp(r) if !r.tlvs.is_empty())
    }
}

impl Pdu {
    pub fn new(sequence_number: u32, body: Body) -> Pdu {
        Pdu {
            body,
            command_status: CommandStatus::ESME_ROK,
            sequence_number,
        }
    }

    pub fn command_id(&self) -> CommandId {
        self.body.command_id()
    }

    /// generic_nack with `status`, e.g. ESME_RINVCMDID or ESME_RINVCMDLEN.
    pub fn generic_nack(sequence_number: u32, status: CommandStatus) -> Pdu {
        Pdu {
            body: Body::GenericNack,
            command_status: status,
            sequence_number,
        }
    }

    /// The bodiless error response to a request, or None when `request` has
    /// no response (a response, outbind, alert_notification).
    pub fn error_response(
        request: CommandId,
        sequence_number: u32,
        status: CommandStatus,
    ) -> Option<Pdu> {
        let response = request.response()?;
        Some(Pdu {
            body: Body::empty(response),
            command_status: status,
            sequence_number,
        })
    }

    /// Decodes exactly one PDU. `frame` must be the whole PDU: its
    /// command_length must equal `frame.len()`. Zero-copy: octet fields are
    /// slices of `frame`.
    pub fn decode(frame: Bytes) -> Result<Pdu, DecodeError> {
        let header = Header::parse(&frame).ok_or_else(|| {
            DecodeError::new(
                S::ESME_RINVCMDLEN,
                0,
                "command_length",
                format!("{} octet(s): shorter than the 16-octet header", frame.len()),
            )
        })?;
        if usize::try_from(header.command_length).ok() != Some(frame.len()) {
            return Err(DecodeError::new(
                S::ESME_RINVCMDLEN,
                0,
                "command_length",
                format!(
                    "command_length says {} octets but the PDU has {}",
                    header.command_length,
                    frame.len()
                ),
            ));
        }
        let id = CommandId::from_u32(header.command_id).ok_or_else(|| {
            DecodeError::new(
                S::ESME_RINVCMDID,
                4,
                "command_id",
                format!("unknown command_id 0x{:08X}", header.command_id),
            )
        })?;
        let mut r = Reader::new(&frame, HEADER_LEN, frame.len());
        let error_response = id.is_response() && !header.command_status.is_ok();
        let body = if id.is_response() && r.is_empty() {
            Body::empty(id)
        } else {
            match decode_body(id, &mut r) {
                Ok(body) => body,
                // The status is what an error response says; a body we cannot
                // read adds nothing worth refusing it for.
                Err(_) if error_response => {
                    r.rest();
                    Body::empty(id)
                }
                Err(e) => return Err(e),
            }
        };
        if error_response && !r.is_empty() {
            r.rest();
        }
        if !r.is_empty() {
            return Err(DecodeError::new(
                S::ESME_RINVCMDLEN,
                r.offset(),
                "command_length",
                format!(
                    "{} octet(s) after the last field of {}",
                    r.remaining(),
                    id.name()
                ),
            ));
        }
        Ok(Pdu {
            body,
            command_status: header.command_status,
            sequence_number: header.sequence_number,
        })
    }

    /// Decodes from a plain slice (copies once; for tools and tests).
    pub fn decode_slice(frame: &[u8]) -> Result<Pdu, DecodeError> {
        Pdu::decode(Bytes::copy_from_slice(frame))
    }

    /// Appends the PDU to `out`. An error response goes without body (see
    /// `Body::keeps_body_on_error`). On error `out` is left as it was.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let start = out.len();
        out.reserve(self.size_hint());
        out.put_u32(0); // patched below, once the length is known
        out.put_u32(self.command_id().as_u32());
        out.put_u32(self.command_status.0);
        out.put_u32(self.sequence_number);
        let bodiless_error = !self.command_status.is_ok()
            && self.command_id().is_response()
            && !self.body.keeps_body_on_error();
        if !bodiless_error {
            if let Err(e) = encode_body(&self.body, out) {
                out.truncate(start);
                return Err(e);
            }
        }
        let len = out.len() - start;
        let Ok(len32) = u32::try_from(len) else {
            out.truncate(start);
            return Err(EncodeError {
                field: "command_length",
                reason: format!("{len} octets do not fit 32 bits"),
            });
        };
        if let Some(slot) = out.get_mut(start..start + 4) {
            slot.copy_from_slice(&len32.to_be_bytes());
        }
        Ok(())
    }

    /// Encodes into a fresh buffer (for tools and tests).
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::new();
        self.encode(&mut out)?;
        Ok(out.freeze())
    }

    /// A capacity that fits the encoded PDU in most cases, so that encoding
    /// into a fresh buffer reallocates at most once.
    fn size_hint(&self) -> usize {
        HEADER_LEN
            + match &self.body {
                Body::SubmitSm(m) | Body::DeliverSm(m) => {
                    96 + m.short_message.len() + m.tlvs.as_bytes().len()
                }
                Body::SubmitMulti(m) => {
                    96 + 24 * m.dest_addresses.len()
                        + m.short_message.len()
                        + m.tlvs.as_bytes().len()
                }
                Body::DataSm(m) => 160 + m.tlvs.as_bytes().len(),
                _ => 160,
            }
    }
}

impl fmt::Display for Pdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seq={} status={}",
            self.command_id(),
            self.sequence_number,
            self.command_status
        )
    }
}

fn decode_body(id: CommandId, r: &mut Reader<'_>) -> Result<Body, DecodeError> {
    Ok(match id {
        CommandId::GenericNack => Body::GenericNack,
        CommandId::BindReceiver => Body::BindReceiver(read_bind(r)?),
        CommandId::BindTransmitter => Body::BindTransmitter(read_bind(r)?),
        CommandId::BindTransceiver => Body::BindTransceiver(read_bind(r)?),
        CommandId::BindReceiverResp => Body::BindReceiverResp(read_bind_resp(r)?),
        CommandId::BindTransmitterResp => Body::BindTransmitterResp(read_bind_resp(r)?),
        CommandId::BindTransceiverResp => Body::BindTransceiverResp(read_bind_resp(r)?),
        CommandId::Outbind => Body::Outbind(Outbind {
            system_id: r.c_string("system_id", S::ESME_RINVSYSID)?,
            password: r.c_string("password", S::ESME_RINVPASWD)?,
        }),
        CommandId::Unbind => Body::Unbind,
        CommandId::UnbindResp => Body::UnbindResp,
        CommandId::EnquireLink => Body::EnquireLink,
        CommandId::EnquireLinkResp => Body::EnquireLinkResp,
        CommandId::SubmitSm => Body::SubmitSm(read_submit(r)?),
        CommandId::DeliverSm => Body::DeliverSm(read_submit(r)?),
        CommandId::SubmitSmResp => Body::SubmitSmResp(SubmitSmResp {
            message_id: r.c_string("message_id", S::ESME_RINVMSGID)?,
        }),
        CommandId::DeliverSmResp => Body::DeliverSmResp(DeliverSmResp {
            message_id: r.c_string("message_id", S::ESME_RINVMSGID)?,
        }),
        CommandId::DataSm => Body::DataSm(DataSm {
            service_type: r.c_string("service_type", S::ESME_RINVSERTYP)?,
            source_addr_ton: r.u8("source_addr_ton")?,
            source_addr_npi: r.u8("source_addr_npi")?,
            source_addr: r.c_string("source_addr", S::ESME_RINVSRCADR)?,
            dest_addr_ton: r.u8("dest_addr_ton")?,
            dest_addr_npi: r.u8("dest_addr_npi")?,
            destination_addr: r.c_string("destination_addr", S::ESME_RINVDSTADR)?,
            esm_class: r.u8("esm_class")?,
            registered_delivery: r.u8("registered_delivery")?,
            data_coding: r.u8("data_coding")?,
            tlvs: read_tlvs(r)?,
        }),
        CommandId::DataSmResp => Body::DataSmResp(DataSmResp {
            message_id: r.c_string("message_id", S::ESME_RINVMSGID)?,
            tlvs: read_tlvs(r)?,
        }),
        CommandId::QuerySm => Body::QuerySm(QuerySm {
            message_id: r.c_string("message_id", S::ESME_RINVMSGID)?,
            source_addr_ton: r.u8("source_addr_ton")?,
            source_addr_npi: r.u8("source_addr_npi")?,
            source_addr: r.c_string("source_addr", S::ESME_RINVSRCADR)?,
        }),
        CommandId::QuerySmResp => Body::QuerySmResp(QuerySmResp {
            message_id: r.c_string("message_id", S::ESME_RINVMSGID)?,
            // No status of its own in the specification: system error.
            final_date: r.c_string("final_date", S::ESME_RSYSERR)?,
            message_state: r.u8("message_state")?,
            error_code: r.u8("error_code")?,
        }),
        CommandId::CancelSm => Body::CancelSm(CancelSm {
            service_type: r.c_string("service_type", S::ESME_RINVSERTYP)?,
            message_id: r.c_string("message_id", S::ESME_RINVMSGID)?,
            source_addr_ton: r.u8("source_addr_ton")?,
            source_addr_npi: r.u8("source_addr_npi")?,
            source_addr: r.c_string("source_addr", S::ESME_RINVSRCADR)?,
            dest_addr_ton: r.u8("dest_addr_ton")?,
            dest_addr_npi: r.u8("dest_addr_npi")?,
            destination_addr: r.c_string("destination_addr", S::ESME_RINVDSTADR)?,
        }),
        CommandId::CancelSmResp => Body::CancelSmResp,
        CommandId::ReplaceSm => {
            let message_id = r.c_string("message_id", S::ESME_RINVMSGID)?;
            let source_addr_ton = r.u8("source_addr_ton")?;
            let source_addr_npi = r.u8("source_addr_npi")?;
            let source_addr = r.c_string("source_addr", S::ESME_RINVSRCADR)?;
            let schedule_delivery_time = r.c_string("schedule_delivery_time", S::ESME_RINVSCHED)?;
            let validity_period = r.c_string("validity_period", S::ESME_RINVEXPIRY)?;
            let registered_delivery = r.u8("registered_delivery")?;
            let sm_default_msg_id = r.u8("sm_default_msg_id")?;
            let short_message = read_short_message(r)?;
            Body::ReplaceSm(ReplaceSm {
                message_id,
                source_addr_ton,
                source_addr_npi,
                source_addr,
                schedule_delivery_time,
                validity_period,
                registered_delivery,
                sm_default_msg_id,
                short_message,
            })
        }
        CommandId::ReplaceSmResp => Body::ReplaceSmResp,
        CommandId::SubmitMulti => Body::SubmitMulti(read_submit_multi(r)?),
        CommandId::SubmitMultiResp => {
            let message_id = r.c_string("message_id", S::ESME_RINVMSGID)?;
            let no_unsuccess = r.u8("no_unsuccess")?;
            let mut unsuccess_smes = Vec::with_capacity(usize::from(no_unsuccess));
            for _ in 0..no_unsuccess {
                unsuccess_smes.push(UnsuccessSme {
                    dest_addr_ton: r.u8("dest_addr_ton")?,
                    dest_addr_npi: r.u8("dest_addr_npi")?,
                    destination_addr: r.c_string("destination_addr", S::ESME_RINVDSTADR)?,
                    error_status_code: CommandStatus(r.u32("error_status_code")?),
                });
            }
            Body::SubmitMultiResp(SubmitMultiResp {
                message_id,
                unsuccess_smes,
            })
        }
        CommandId::AlertNotification => Body::AlertNotification(AlertNotification {
            source_addr_ton: r.u8("source_addr_ton")?,
            source_addr_npi: r.u8("source_addr_npi")?,
            source_addr: r.c_string("source_addr", S::ESME_RINVSRCADR)?,
            esme_addr_ton: r.u8("esme_addr_ton")?,
            esme_addr_npi: r.u8("esme_addr_npi")?,
            // alert_notification has no response, so the status is only reported.
            esme_addr: r.c_string("esme_addr", S::ESME_RINVDSTADR)?,
            tlvs: read_tlvs(r)?,
        }),
    })
}

fn read_bind(r: &mut Reader<'_>) -> Result<Bind, DecodeError> {
    Ok(Bind {
        system_id: r.c_string("system_id", S::ESME_RINVSYSID)?,
        password: r.c_string("password", S::ESME_RINVPASWD)?,
        system_type: r.c_string("system_type", S::ESME_RINVSYSTYP)?,
        interface_version: r.u8("interface_version")?,
        addr_ton: r.u8("addr_ton")?,
        addr_npi: r.u8("addr_npi")?,
        // No status of its own; a bind that cannot be read failed.
        address_range: r.c_string("address_range", S::ESME_RBINDFAIL)?,
    })
}

fn read_bind_resp(r: &mut Reader<'_>) -> Result<BindResp, DecodeError> {
    Ok(BindResp {
        system_id: r.c_string("system_id", S::ESME_RINVSYSID)?,
        tlvs: read_tlvs(r)?,
    })
}

fn read_short_message(r: &mut Reader<'_>) -> Result<Bytes, DecodeError> {
    let at = r.offset();
    let sm_length = usize::from(r.u8("sm_length")?);
    if sm_length > MAX_SHORT_MESSAGE_LEN {
        return Err(DecodeError::new(
            S::ESME_RINVMSGLEN,
            at,
            "sm_length",
            format!("sm_length {sm_length} exceeds the maximum of {MAX_SHORT_MESSAGE_LEN}"),
        ));
    }
    r.octets(sm_length, "short_message", S::ESME_RINVMSGLEN)
}

fn read_tlvs(r: &mut Reader<'_>) -> Result<Tlvs, DecodeError> {
    let at = r.offset();
    Tlvs::parse(r.rest(), at)
}

fn read_submit(r: &mut Reader<'_>) -> Result<SubmitSm, DecodeError> {
    Ok(SubmitSm {
        service_type: r.c_string("service_type", S::ESME_RINVSERTYP)?,
        source_addr_ton: r.u8("source_addr_ton")?,
        source_addr_npi: r.u8("source_addr_npi")?,
        source_addr: r.c_string("source_addr", S::ESME_RINVSRCADR)?,
        dest_addr_ton: r.u8("dest_addr_ton")?,
        dest_addr_npi: r.u8("dest_addr_npi")?,
        destination_addr: r.c_string("destination_addr", S::ESME_RINVDSTADR)?,
        esm_class: r.u8("esm_class")?,
        protocol_id: r.u8("protocol_id")?,
        priority_flag: r.u8("priority_flag")?,
        schedule_delivery_time: r.c_string("schedule_delivery_time", S::ESME_RINVSCHED)?,
        validity_period: r.c_string("validity_period", S::ESME_RINVEXPIRY)?,
        registered_delivery: r.u8("registered_delivery")?,
        replace_if_present_flag: r.u8("replace_if_present_flag")?,
        data_coding: r.u8("data_coding")?,
        sm_default_msg_id: r.u8("sm_default_msg_id")?,
        short_message: read_short_message(r)?,
        tlvs: read_tlvs(r)?,
    })
}

fn read_submit_multi(r: &mut Reader<'_>) -> Result<SubmitMulti, DecodeError> {
    let service_type = r.c_string("service_type", S::ESME_RINVSERTYP)?;
    let source_addr_ton = r.u8("source_addr_ton")?;
    let source_addr_npi = r.u8("source_addr_npi")?;
    let source_addr = r.c_string("source_addr", S::ESME_RINVSRCADR)?;
    let at = r.offset();
    let number_of_dests = usize::from(r.u8("number_of_dests")?);
    if number_of_dests > MAX_DESTINATIONS {
        return Err(DecodeError::new(
            S::ESME_RINVNUMDESTS,
            at,
            "number_of_dests",
            format!("{number_of_dests} destinations, at most {MAX_DESTINATIONS} allowed"),
        ));
    }
    let mut dest_addresses = Vec::with_capacity(number_of_dests);
    for _ in 0..number_of_dests {
        let at = r.offset();
        let dest = match r.u8("dest_flag")? {
            1 => DestAddress::SmeAddress {
                dest_addr_ton: r.u8("dest_addr_ton")?,
                dest_addr_npi: r.u8("dest_addr_npi")?,
                destination_addr: r.c_string("destination_addr", S::ESME_RINVDSTADR)?,
            },
            2 => DestAddress::DistributionList {
                dl_name: r.c_string("dl_name", S::ESME_RINVDLNAME)?,
            },
            flag => {
                return Err(DecodeError::new(
                    S::ESME_RINVDESTFLAG,
                    at,
                    "dest_flag",
                    format!("dest_flag {flag}: 1 (SME address) or 2 (distribution list)"),
                ))
            }
        };
        dest_addresses.push(dest);
    }
    Ok(SubmitMulti {
        service_type,
        source_addr_ton,
        source_addr_npi,
        source_addr,
        dest_addresses,
        esm_class: r.u8("esm_class")?,
        protocol_id: r.u8("protocol_id")?,
        priority_flag: r.u8("priority_flag")?,
        schedule_delivery_time: r.c_string("schedule_delivery_time", S::ESME_RINVSCHED)?,
        validity_period: r.c_string("validity_period", S::ESME_RINVEXPIRY)?,
        registered_delivery: r.u8("registered_delivery")?,
        replace_if_present_flag: r.u8("replace_if_present_flag")?,
        data_coding: r.u8("data_coding")?,
        sm_default_msg_id: r.u8("sm_default_msg_id")?,
        short_message: read_short_message(r)?,
        tlvs: read_tlvs(r)?,
    })
}

fn put_short_message(out: &mut BytesMut, sm: &Bytes) -> Result<(), EncodeError> {
    if sm.len() > MAX_SHORT_MESSAGE_LEN {
        return Err(EncodeError {
            field: "short_message",
            reason: format!(
                "{} octets; at most {MAX_SHORT_MESSAGE_LEN} (use message_payload for more)",
                sm.len()
            ),
        });
    }
    out.put_u8(sm.len() as u8);
    out.put_slice(sm);
    Ok(())
}

fn put_submit(out: &mut BytesMut, m: &SubmitSm) -> Result<(), EncodeError> {
    put_c_string(out, &m.service_type);
    out.put_u8(m.source_addr_ton);
    out.put_u8(m.source_addr_npi);
    put_c_string(out, &m.source_addr);
    out.put_u8(m.dest_addr_ton);
    out.put_u8(m.dest_addr_npi);
    put_c_string(out, &m.destination_addr);
    out.put_u8(m.esm_class);
    out.put_u8(m.protocol_id);
    out.put_u8(m.priority_flag);
    put_c_string(out, &m.schedule_delivery_time);
    put_c_string(out, &m.validity_period);
    out.put_u8(m.registered_delivery);
    out.put_u8(m.replace_if_present_flag);
    out.put_u8(m.data_coding);
    out.put_u8(m.sm_default_msg_id);
    put_short_message(out, &m.short_message)?;
    out.put_slice(m.tlvs.as_bytes());
    Ok(())
}

fn put_bind(out: &mut BytesMut, b: &Bind) {
    put_c_string(out, &b.system_id);
    put_c_string(out, &b.password);
    put_c_string(out, &b.system_type);
    out.put_u8(b.interface_version);
    out.put_u8(b.addr_ton);
    out.put_u8(b.addr_npi);
    put_c_string(out, &b.address_range);
}

fn put_bind_resp(out: &mut BytesMut, b: &BindResp) {
    put_c_string(out, &b.system_id);
    out.put_slice(b.tlvs.as_bytes());
}

fn encode_body(body: &Body, out: &mut BytesMut) -> Result<(), EncodeError> {
    match body {
        Body::GenericNack
        | Body::Unbind
        | Body::UnbindResp
        | Body::EnquireLink
        | Body::EnquireLinkResp
        | Body::CancelSmResp
        | Body::ReplaceSmResp => {}
        Body::BindReceiver(b) | Body::BindTransmitter(b) | Body::BindTransceiver(b) => {
            put_bind(out, b)
        }
        Body::BindReceiverResp(b) | Body::BindTransmitterResp(b) | Body::BindTransceiverResp(b) => {
            put_bind_resp(out, b)
        }
        Body::Outbind(o) => {
            put_c_string(out, &o.system_id);
            put_c_string(out, &o.password);
        }
        Body::SubmitSm(m) | Body::DeliverSm(m) => put_submit(out, m)?,
        Body::SubmitSmResp(r) => put_c_string(out, &r.message_id),
        Body::DeliverSmResp(r) => put_c_string(out, &r.message_id),
        Body::DataSm(m) => {
            put_c_string(out, &m.service_type);
            out.put_u8(m.source_addr_ton);
            out.put_u8(m.source_addr_npi);
            put_c_string(out, &m.source_addr);
            out.put_u8(m.dest_addr_ton);
            out.put_u8(m.dest_addr_npi);
            put_c_string(out, &m.destination_addr);
            out.put_u8(m.esm_class);
            out.put_u8(m.registered_delivery);
            out.put_u8(m.data_coding);
            out.put_slice(m.tlvs.as_bytes());
        }
        Body::DataSmResp(r) => {
            put_c_string(out, &r.message_id);
            out.put_slice(r.tlvs.as_bytes());
        }
        Body::QuerySm(q) => {
            put_c_string(out, &q.message_id);
            out.put_u8(q.source_addr_ton);
            out.put_u8(q.source_addr_npi);
            put_c_string(out, &q.source_addr);
        }
        Body::QuerySmResp(q) => {
            put_c_string(out, &q.message_id);
            put_c_string(out, &q.final_date);
            out.put_u8(q.message_state);
            out.put_u8(q.error_code);
        }
        Body::CancelSm(c) => {
            put_c_string(out, &c.service_type);
            put_c_string(out, &c.message_id);
            out.put_u8(c.source_addr_ton);
            out.put_u8(c.source_addr_npi);
            put_c_string(out, &c.source_addr);
            out.put_u8(c.dest_addr_ton);
            out.put_u8(c.dest_addr_npi);
            put_c_string(out, &c.destination_addr);
        }
        Body::ReplaceSm(m) => {
            put_c_string(out, &m.message_id);
            out.put_u8(m.source_addr_ton);
            out.put_u8(m.source_addr_npi);
            put_c_string(out, &m.source_addr);
            put_c_string(out, &m.schedule_delivery_time);
            put_c_string(out, &m.validity_period);
            out.put_u8(m.registered_delivery);
            out.put_u8(m.sm_default_msg_id);
            put_short_message(out, &m.short_message)?;
        }
        Body::SubmitMulti(m) => {
            if m.dest_addresses.len() > MAX_DESTINATIONS {
                return Err(EncodeError {
                    field: "number_of_dests",
                    reason: format!(
                        "{} destinations, at most {MAX_DESTINATIONS}",
                        m.dest_addresses.len()
                    ),
                });
            }
            put_c_string(out, &m.service_type);
            out.put_u8(m.source_addr_ton);
            out.put_u8(m.source_addr_npi);
            put_c_string(out, &m.source_addr);
            out.put_u8(m.dest_addresses.len() as u8);
            for d in &m.dest_addresses {
                match d {
                    DestAddress::SmeAddress {
                        dest_addr_ton,
                        dest_addr_npi,
                        destination_addr,
                    } => {
                        out.put_u8(1);
                        out.put_u8(*dest_addr_ton);
                        out.put_u8(*dest_addr_npi);
                        put_c_string(out, destination_addr);
                    }
                    DestAddress::DistributionList { dl_name } => {
                        out.put_u8(2);
                        put_c_string(out, dl_name);
                    }
                }
            }
            out.put_u8(m.esm_class);
            out.put_u8(m.protocol_id);
            out.put_u8(m.priority_flag);
            put_c_string(out, &m.schedule_delivery_time);
            put_c_string(out, &m.validity_period);
            out.put_u8(m.registered_delivery);
            out.put_u8(m.replace_if_present_flag);
            out.put_u8(m.data_coding);
            out.put_u8(m.sm_default_msg_id);
            put_short_message(out, &m.short_message)?;
            out.put_slice(m.tlvs.as_bytes());
        }
        Body::SubmitMultiResp(r) => {
            let Ok(count) = u8::try_from(r.unsuccess_smes.len()) else {
                return Err(EncodeError {
                    field: "no_unsuccess",
                    reason: format!("{} entries, at most 255", r.unsuccess_smes.len()),
                });
            };
            put_c_string(out, &r.message_id);
            out.put_u8(count);
            for u in &r.unsuccess_smes {
                out.put_u8(u.dest_addr_ton);
                out.put_u8(u.dest_addr_npi);
                put_c_string(out, &u.destination_addr);
                out.put_u32(u.error_status_code.0);
            }
        }
        Body::AlertNotification(a) => {
            out.put_u8(a.source_addr_ton);
            out.put_u8(a.source_addr_npi);
            put_c_string(out, &a.source_addr);
            out.put_u8(a.esme_addr_ton);
            out.put_u8(a.esme_addr_npi);
            put_c_string(out, &a.esme_addr);
            out.put_slice(a.tlvs.as_bytes());
        }
    }
    Ok(())
}

/// command_status in JSON: its name (`ESME_RTHROTTLED`), or `0x00000401` for
/// values without one; input also accepts a plain number.
pub mod status_json {
    use super::*;

    pub fn serialize<Ser: Serializer>(s: &CommandStatus, ser: Ser) -> Result<Ser::Ok, Ser::Error> {
        match s.name() {
            Some(name) => ser.serialize_str(name),
            None => ser.serialize_str(&format!("0x{:08X}", s.0)),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrNumber {
        Number(u32),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<CommandStatus, D::Error> {
        match NameOrNumber::deserialize(de)? {
            NameOrNumber::Number(n) => Ok(CommandStatus(n)),
            NameOrNumber::Text(t) => parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown command_status {t:?}: give a name like ESME_ROK or a number"
                ))
            }),
        }
    }

    /// A status from its name, `0x` hex or decimal text.
    pub fn parse(text: &str) -> Option<CommandStatus> {
        let t = text.trim();
        if let Some(s) = CommandStatus::from_name(t) {
            return Some(s);
        }
        if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            return u32::from_str_radix(hex, 16).ok().map(CommandStatus);
        }
        t.parse().ok().map(CommandStatus)
    }
}

/// Why the server refuses a PDU that decoded fine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The command_status of the response.
    pub status: CommandStatus,
    pub field: &'static str,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.field,
            self.reason,
            self.status.name().unwrap_or("unnamed status")
        )
    }
}

impl std::error::Error for Rejection {}

fn reject(status: CommandStatus, field: &'static str, reason: String) -> Result<(), Rejection> {
    Err(Rejection {
        status,
        field,
        reason,
    })
}

/// Type of number values 0..=6 (SMPP 3.4 5.2.5).
pub fn valid_ton(ton: u8) -> bool {
    ton <= 6
}

/// Numbering plan values named by SMPP 3.4 5.2.6.
pub fn valid_npi(npi: u8) -> bool {
    matches!(npi, 0 | 1 | 3 | 4 | 6 | 8 | 9 | 10 | 14 | 18)
}

/// data_coding values tern can carry: 0 SMSC default, 1 IA5/ASCII, 2 and 4
/// binary, 3 Latin-1, 8 UCS-2, and 0xF0..=0xFF (GSM message class, 7-bit or
/// 8-bit). Everything else (JIS, Cyrillic, Hebrew, Kanji, KS C 5601, the
/// message-waiting groups) earns ESME_RINVDCS.
pub fn supported_data_coding(dcs: u8) -> bool {
    matches!(dcs, 0..=4 | 8 | 0xF0..=0xFF)
}

const TON_INTERNATIONAL: u8 = 1;
const TON_ALPHANUMERIC: u8 = 5;
/// GSM 03.40: an alphanumeric originator is at most 11 characters.
const MAX_ALPHANUMERIC_SOURCE_LEN: usize = 11;

fn digits_with_optional_plus(addr: &[u8]) -> bool {
    let digits = addr.strip_prefix(b"+").unwrap_or(addr);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// Semantic checks on a decoded submit_sm, in the order a peer is most helped
/// by: addresses, then flags, then content. Allocates only when rejecting.
///
/// Choices and tolerances:
/// - An international destination or numeric source may start with `+`
///   (many ESMEs send E.164 with the plus); the digits are what count.
/// - An empty source_addr is accepted: the SMSC assigns the account default.
/// - registered_delivery 3 in bits 0-1 (SMPP 5.0 "success only") is accepted.
/// - short_message together with message_payload earns ESME_RINVMSGLEN: the
///   specification wants sm_length 0 when message_payload is used, so the
///   fault is the message length, not a TLV length.
/// - A scheduled or validity time must be empty or 16 characters; its
///   content is the time module's business.
pub fn validate_submit(sm: &SubmitSm) -> Result<(), Rejection> {
    check_source(sm.source_addr_ton, sm.source_addr_npi, &sm.source_addr)?;
    check_destination(sm.dest_addr_ton, sm.dest_addr_npi, &sm.destination_addr)?;
    check_submit_flags(&SubmitFlags {
        esm_class: sm.esm_class,
        priority_flag: sm.priority_flag,
        registered_delivery: sm.registered_delivery,
        replace_if_present_flag: sm.replace_if_present_flag,
        schedule_delivery_time: &sm.schedule_delivery_time,
        validity_period: &sm.validity_period,
        data_coding: sm.data_coding,
    })?;
    check_message(&sm.short_message, &sm.tlvs, sm.esm_class)
}

/// `validate_submit` for submit_multi: the same rules for the source, the
/// flags and the message, each SME destination checked like a submit_sm
/// destination, and 1..=254 destinations (ESME_RINVNUMDESTS). Distribution
/// lists pass: whether tern serves them is the server's decision.
pub fn validate_submit_multi(sm: &SubmitMulti) -> Result<(), Rejection> {
    check_source(sm.source_addr_ton, sm.source_addr_npi, &sm.source_addr)?;
    if sm.dest_addresses.is_empty() || sm.dest_addresses.len() > MAX_DESTINATIONS {
        return reject(
            S::ESME_RINVNUMDESTS,
            "number_of_dests",
            format!(
                "{} destinations; 1..={MAX_DESTINATIONS} allowed",
                sm.dest_addresses.len()
            ),
        );
    }
    for dest in &sm.dest_addresses {
        if let DestAddress::SmeAddress {
            dest_addr_ton,
            dest_addr_npi,
            destination_addr,
        } = dest
        {
            check_destination(*dest_addr_ton, *dest_addr_npi, destination_addr)?;
        }
    }
    check_submit_flags(&SubmitFlags {
        esm_class: sm.esm_class,
        priority_flag: sm.priority_flag,
        registered_delivery: sm.registered_delivery,
        replace_if_present_flag: sm.replace_if_present_flag,
        schedule_delivery_time: &sm.schedule_delivery_time,
        validity_period: &sm.validity_period,
        data_coding: sm.data_coding,
    })?;
    check_message(&sm.short_message, &sm.tlvs, sm.esm_class)
}

fn check_source(ton: u8, npi: u8, addr: &Address) -> Result<(), Rejection> {
    if !valid_ton(ton) {
        return reject(
            S::ESME_RINVSRCTON,
            "source_addr_ton",
            format!("TON {ton} is not 0..=6"),
        );
    }
    if !valid_npi(npi) {
        return reject(
            S::ESME_RINVSRCNPI,
            "source_addr_npi",
            format!("NPI {npi} is not a defined numbering plan"),
        );
    }
    let source = addr.as_bytes();
    if ton == TON_ALPHANUMERIC {
        if source.len() > MAX_ALPHANUMERIC_SOURCE_LEN
            || source.iter().any(|b| !(b.is_ascii_graphic() || *b == b' '))
        {
            return reject(
                S::ESME_RINVSRCADR,
                "source_addr",
                format!("alphanumeric source {addr:?} must be 1..=11 printable characters"),
            );
        }
    } else if !source.is_empty() && ton == TON_INTERNATIONAL && !digits_with_optional_plus(source) {
        return reject(
            S::ESME_RINVSRCADR,
            "source_addr",
            format!("international source {addr:?} must be digits"),
        );
    }
    Ok(())
}

fn check_destination(ton: u8, npi: u8, addr: &Address) -> Result<(), Rejection> {
    if !valid_ton(ton) {
        return reject(
            S::ESME_RINVDSTTON,
            "dest_addr_ton",
            format!("TON {ton} is not 0..=6"),
        );
    }
    if !valid_npi(npi) {
        return reject(
            S::ESME_RINVDSTNPI,
            "dest_addr_npi",
            format!("NPI {npi} is not a defined numbering plan"),
        );
    }
    let dest = addr.as_bytes();
    if dest.is_empty() {
        return reject(
            S::ESME_RINVDSTADR,
            "destination_addr",
            "empty destination".to_string(),
        );
    }
    if ton == TON_INTERNATIONAL && !digits_with_optional_plus(dest) {
        return reject(
            S::ESME_RINVDSTADR,
            "destination_addr",
            format!("international destination {addr:?} must be digits"),
        );
    }
    if dest.iter().any(|b| !b.is_ascii_graphic()) {
        return reject(
            S::ESME_RINVDSTADR,
            "destination_addr",
            "destination holds non-printable characters".to_string(),
        );
    }
    Ok(())
}

/// The flag fields submit_sm and submit_multi share.
struct SubmitFlags<'a> {
    esm_class: u8,
    priority_flag: u8,
    registered_delivery: u8,
    replace_if_present_flag: u8,
    schedule_delivery_time: &'a SmppTime,
    validity_period: &'a SmppTime,
    data_coding: u8,
}

fn check_submit_flags(f: &SubmitFlags<'_>) -> Result<(), Rejection> {
    let message_type = f.esm_class & ESM_MESSAGE_TYPE_MASK;
    if !matches!(message_type, 0x00 | 0x08 | 0x10) {
        return reject(
            S::ESME_RINVESMCLASS,
            "esm_class",
            format!(
                "esm_class 0x{:02X}: message type must be default, delivery ack or manual ack",
                f.esm_class
            ),
        );
    }
    if f.priority_flag > 3 {
        return reject(
            S::ESME_RINVPRTFLG,
            "priority_flag",
            format!("priority {} is not 0..=3", f.priority_flag),
        );
    }
    if f.registered_delivery & 0xE0 != 0 {
        return reject(
            S::ESME_RINVREGDLVFLG,
            "registered_delivery",
            format!(
                "registered_delivery 0x{:02X} sets reserved bits 5-7",
                f.registered_delivery
            ),
        );
    }
    if f.replace_if_present_flag > 1 {
        return reject(
            S::ESME_RINVREPFLAG,
            "replace_if_present_flag",
            format!(
                "replace_if_present_flag {} is not 0 or 1",
                f.replace_if_present_flag
            ),
        );
    }
    for (field, time, status) in [
        (
            "schedule_delivery_time",
            f.schedule_delivery_time,
            S::ESME_RINVSCHED,
        ),
        ("validity_period", f.validity_period, S::ESME_RINVEXPIRY),
    ] {
        if !time.is_empty() && time.len() != 16 {
            return reject(
                status,
                field,
                format!("{time:?} is {} characters; an SMPP time has 16", time.len()),
            );
        }
    }
    if !supported_data_coding(f.data_coding) {
        return reject(
            S::ESME_RINVDCS,
            "data_coding",
            format!("data_coding 0x{:02X} is not supported", f.data_coding),
        );
    }
    Ok(())
}

fn check_message(short_message: &Bytes, tlvs: &Tlvs, esm_class: u8) -> Result<(), Rejection> {
    let payload = tlvs.message_payload();
    if !short_message.is_empty() && payload.is_some() {
        return reject(
            S::ESME_RINVMSGLEN,
            "short_message",
            "both short_message and message_payload are set; sm_length must be 0".to_string(),
        );
    }
    if esm_class & ESM_UDHI != 0 {
        let message = payload.as_ref().unwrap_or(short_message);
        let udh_len = message.first().map(|l| usize::from(*l) + 1);
        if !matches!(udh_len, Some(n) if n <= message.len()) {
            return reject(
                S::ESME_RINVESMCLASS,
                "esm_class",
                "UDHI is set but the message does not start with a whole user data header"
                    .to_string(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Octets from spaced hex; a leading `LLLLLLLL` stands for the
    /// command_length, filled in from the vector's own size.
    fn frame(hex_text: &str) -> Bytes {
        let clean: String = hex_text.split_whitespace().collect();
        let mut octets =
            hex::decode(clean.replacen("LLLLLLLL", "00000000", 1)).expect("test vector is hex");
        if clean.starts_with("LLLLLLLL") {
            let len = (octets.len() as u32).to_be_bytes();
            octets[..4].copy_from_slice(&len);
        }
        Bytes::from(octets)
    }

    fn round_trip(hex_text: &str) -> Pdu {
        let bytes = frame(hex_text);
        let pdu = Pdu::decode(bytes.clone()).expect("test vector decodes");
        assert_eq!(
            pdu.to_bytes().unwrap(),
            bytes,
            "re-encoding gives the same octets"
        );
        pdu
    }

    fn decode_err(hex_text: &str) -> DecodeError {
        Pdu::decode(frame(hex_text)).expect_err("test vector must fail")
    }

    // submit_sm laid out field by field from SMPP 3.4 4.4.1.
    const SUBMIT_SM: &str = "
        00000045 00000004 00000000 00000007
        434D5400
        01 01 34343132333400
        01 01 34343938373600
        00 00 01
        00
        00
        01 00 00 00
        05 68656C6C6F
        020C 0002 1234
        020E 0001 02
        020F 0001 01";

    #[test]
    fn submit_sm_decodes_every_field() {
        let pdu = round_trip(SUBMIT_SM);
        assert_eq!(pdu.command_id(), CommandId::SubmitSm);
        assert_eq!(pdu.sequence_number, 7);
        let Body::SubmitSm(m) = &pdu.body else {
            panic!("not a submit_sm: {pdu:?}")
        };
        assert_eq!(m.service_type.as_bytes(), b"CMT");
        assert_eq!((m.source_addr_ton, m.source_addr_npi), (1, 1));
        assert_eq!(m.source_addr.as_bytes(), b"441234");
        assert_eq!(m.destination_addr.as_bytes(), b"449876");
        assert_eq!(m.priority_flag, 1);
        assert!(m.schedule_delivery_time.is_empty());
        assert_eq!(m.registered_delivery, 1);
        assert_eq!(m.short_message.as_ref(), b"hello");
        assert_eq!(m.tlvs.sar_msg_ref_num(), Some(0x1234));
        assert_eq!(m.tlvs.sar_total_segments(), Some(2));
        assert_eq!(m.tlvs.sar_segment_seqnum(), Some(1));
        assert_eq!(validate_submit(m), Ok(()));
    }

    #[test]
    fn deliver_sm_receipt_decodes() {
        let pdu = round_trip(
            "00000046 00000005 00000000 00000002
             00 01 01 34343938373600 01 01 34343132333400
             04 00 00 00 00 00 00 00 00 05 69643A3132
             001E 0004 31323300
             0427 0001 02
             0423 0003 030000",
        );
        let Body::DeliverSm(m) = &pdu.body else {
            panic!("not a deliver_sm")
        };
        assert!(m.is_delivery_receipt());
        assert_eq!(m.tlvs.receipted_message_id().unwrap().as_bytes(), b"123");
        assert_eq!(m.tlvs.message_state(), Some(2));
        assert_eq!(m.message().as_ref(), b"id:12");
    }

    #[test]
    fn responses_and_bodiless_pdus_round_trip() {
        let resp = round_trip("LLLLLLLL 80000004 00000000 00000007 6162636400");
        assert_eq!(
            resp.body,
            Body::SubmitSmResp(SubmitSmResp {
                message_id: MessageId::from_text("abcd").unwrap()
            })
        );
        for (hex_text, id) in [
            ("00000010 00000006 00000000 00000001", CommandId::Unbind),
            ("00000010 80000006 00000000 00000001", CommandId::UnbindResp),
            (
                "00000010 00000015 00000000 00000001",
                CommandId::EnquireLink,
            ),
            (
                "00000010 80000015 00000000 00000001",
                CommandId::EnquireLinkResp,
            ),
            (
                "00000010 80000000 00000003 00000001",
                CommandId::GenericNack,
            ),
            (
                "00000010 80000008 00000000 00000001",
                CommandId::CancelSmResp,
            ),
            (
                "00000010 80000007 00000000 00000001",
                CommandId::ReplaceSmResp,
            ),
        ] {
            assert_eq!(round_trip(hex_text).command_id(), id);
        }
        let r = round_trip("LLLLLLLL 80000005 00000000 00000009 4100");
        assert_eq!(r.command_id(), CommandId::DeliverSmResp);
    }

    #[test]
    fn bind_family_round_trips() {
        // system_id "smppclient1", password "pwd", system_type "", version 0x34,
        // ton 1, npi 1, address_range "".
        for id in ["00000001", "00000002", "00000009"] {
            let pdu = round_trip(&format!(
                "LLLLLLLL {id} 00000000 00000001
                 736D7070636C69656E743100 70776400 00 34 01 01 00"
            ));
            let (Body::BindReceiver(b) | Body::BindTransmitter(b) | Body::BindTransceiver(b)) =
                &pdu.body
            else {
                panic!("not a bind: {pdu:?}")
            };
            assert_eq!(b.system_id.as_bytes(), b"smppclient1");
            assert_eq!(b.password.as_bytes(), b"pwd");
            assert_eq!(b.interface_version, 0x34);
        }
        for id in ["80000001", "80000002", "80000009"] {
            let pdu = round_trip(&format!(
                "LLLLLLLL {id} 00000000 00000001 534D534300 0210 0001 34"
            ));
            let (Body::BindReceiverResp(b)
            | Body::BindTransmitterResp(b)
            | Body::BindTransceiverResp(b)) = &pdu.body
            else {
                panic!("not a bind_resp: {pdu:?}")
            };
            assert_eq!(b.system_id.as_bytes(), b"SMSC");
            assert_eq!(b.tlvs.get(0x0210), Some(&[0x34][..]));
        }
        let o = round_trip("LLLLLLLL 0000000B 00000000 00000001 534D534300 7365637200");
        assert_eq!(
            o.body,
            Body::Outbind(Outbind {
                system_id: SystemId::from_text("SMSC").unwrap(),
                password: Password::from_text("secr").unwrap(),
            })
        );
    }

    #[test]
    fn data_query_cancel_replace_alert_round_trip() {
        let d = round_trip(
            "LLLLLLLL 00000103 00000000 00000003
             00 01 01 313200 01 01 333400 00 01 08
             0424 0004 00480069",
        );
        let Body::DataSm(m) = &d.body else {
            panic!("not data_sm")
        };
        assert_eq!(
            m.tlvs.message_payload().unwrap().as_ref(),
            &[0, 0x48, 0, 0x69]
        );
        let r = round_trip("LLLLLLLL 80000103 00000000 00000003 783100 0425 0001 01");
        assert_eq!(r.command_id(), CommandId::DataSmResp);

        let q = round_trip("LLLLLLLL 00000003 00000000 00000004 78797A00 01 01 313200");
        assert_eq!(
            q.body,
            Body::QuerySm(QuerySm {
                message_id: MessageId::from_text("xyz").unwrap(),
                source_addr_ton: 1,
                source_addr_npi: 1,
                source_addr: Address::from_text("12").unwrap(),
            })
        );
        let qr = round_trip(
            "LLLLLLLL 80000003 00000000 00000004 78797A00
             3235313132353132303030303030302B00 02 00",
        );
        let Body::QuerySmResp(qr) = &qr.body else {
            panic!("not query_sm_resp")
        };
        assert_eq!(qr.final_date.as_bytes(), b"251125120000000+");
        assert_eq!(qr.message_state, 2);

        let c =
            round_trip("LLLLLLLL 00000008 00000000 00000005 00 78797A00 01 01 313200 01 01 333400");
        assert_eq!(c.command_id(), CommandId::CancelSm);
        let rp = round_trip(
            "LLLLLLLL 00000007 00000000 00000006 78797A00 01 01 313200 00 00 01 00 03 616263",
        );
        let Body::ReplaceSm(rp) = &rp.body else {
            panic!("not replace_sm")
        };
        assert_eq!(rp.short_message.as_ref(), b"abc");
        let a = round_trip(
            "LLLLLLLL 00000102 00000000 00000007 01 01 313200 01 01 333400 0422 0001 00",
        );
        assert_eq!(a.command_id(), CommandId::AlertNotification);
    }

    #[test]
    fn submit_multi_and_resp_round_trip() {
        let m = round_trip(
            "LLLLLLLL 00000021 00000000 00000008
             00 01 01 313200
             02 01 01 01 333400 02 66616D696C7900
             00 00 00 00 00 01 00 00 00 02 6869",
        );
        let Body::SubmitMulti(m) = &m.body else {
            panic!("not submit_multi")
        };
        assert_eq!(
            m.dest_addresses,
            vec![
                DestAddress::SmeAddress {
                    dest_addr_ton: 1,
                    dest_addr_npi: 1,
                    destination_addr: Address::from_text("34").unwrap()
                },
                DestAddress::DistributionList {
                    dl_name: DistributionListName::from_text("family").unwrap()
                }
            ]
        );
        let r = round_trip("LLLLLLLL 80000021 00000000 00000008 696400 01 01 01 333400 0000000B");
        let Body::SubmitMultiResp(r) = &r.body else {
            panic!("not submit_multi_resp")
        };
        assert_eq!(r.unsuccess_smes.len(), 1);
        assert_eq!(r.unsuccess_smes[0].error_status_code, S::ESME_RINVDSTADR);
    }

    #[test]
    fn submit_multi_rejects_bad_dest_flag_and_count() {
        let e =
            decode_err("0000001D 00000021 00000000 00000008 00 01 01 313200 01 03 01 01 333400");
        assert_eq!(
            (e.status, e.offset, e.field),
            (S::ESME_RINVDESTFLAG, 23, "dest_flag")
        );
        let e = decode_err("00000017 00000021 00000000 00000008 00 01 01 313200 FF");
        assert_eq!((e.status, e.offset), (S::ESME_RINVNUMDESTS, 22));
    }

    #[test]
    fn error_response_without_body_is_accepted_and_encoded_without_body() {
        let pdu = round_trip("00000010 80000004 00000058 00000007");
        assert_eq!(pdu.command_status, S::ESME_RTHROTTLED);
        assert_eq!(pdu.body, Body::SubmitSmResp(SubmitSmResp::default()));
        // With a body, accepted too; encoding drops it.
        let with_body = Pdu::decode(frame("00000013 80000004 00000058 00000007 783100")).unwrap();
        assert_eq!(
            with_body.to_bytes().unwrap(),
            frame("00000010 80000004 00000058 00000007")
        );
        let nack = Pdu::error_response(CommandId::SubmitSm, 9, S::ESME_RINVSRCADR).unwrap();
        assert_eq!(
            nack.to_bytes().unwrap(),
            frame("00000010 80000004 0000000A 00000009")
        );
        assert_eq!(
            Pdu::error_response(CommandId::Outbind, 9, S::ESME_RSYSERR),
            None
        );
        // A malformed body on an error response is ignored, not refused.
        let sloppy = Pdu::decode(frame("00000013 80000004 00000058 00000007 783178")).unwrap();
        assert_eq!(sloppy.body, Body::SubmitSmResp(SubmitSmResp::default()));
        let trailing = Pdu::decode(frame("00000014 80000004 00000058 00000007 78310078")).unwrap();
        assert_eq!(trailing.command_status, S::ESME_RTHROTTLED);
        // But not on a successful one.
        let e = decode_err("00000013 80000004 00000000 00000007 783178");
        assert_eq!((e.status, e.field), (S::ESME_RINVMSGID, "message_id"));
        // data_sm_resp keeps its TLVs on error (delivery_failure_reason).
        round_trip("LLLLLLLL 80000103 000000FE 00000003 00 0425 0001 01");
    }

    #[test]
    fn length_and_id_errors() {
        let e = decode_err("0000000C 00000015 00000000");
        assert_eq!((e.status, e.offset), (S::ESME_RINVCMDLEN, 0));
        let e = decode_err("00000011 00000015 00000000 00000001");
        assert_eq!((e.status, e.field), (S::ESME_RINVCMDLEN, "command_length"));
        let e = decode_err("00000011 00000015 00000000 00000001 00");
        assert_eq!((e.status, e.offset), (S::ESME_RINVCMDLEN, 16));
        let e = decode_err("00000010 00000010 00000000 00000001");
        assert_eq!((e.status, e.offset), (S::ESME_RINVCMDID, 4));
        // Body shorter than the mandatory fields.
        // A string the body cuts short has no NUL: the field's own status.
        let e = decode_err("00000014 00000004 00000000 00000001 00 01 01 31");
        assert_eq!(
            (e.status, e.field, e.offset),
            (S::ESME_RINVSRCADR, "source_addr", 19)
        );
        let e = decode_err("00000013 00000004 00000000 00000001 00 01 01");
        assert_eq!(
            (e.status, e.field, e.offset),
            (S::ESME_RINVCMDLEN, "source_addr", 19)
        );
        let e = decode_err("00000014 00000004 00000000 00000001 00 01 01 00");
        assert_eq!(
            (e.status, e.field, e.offset),
            (S::ESME_RINVCMDLEN, "dest_addr_ton", 20)
        );
    }

    /// submit_sm with the given service_type, addresses and times as raw hex.
    fn submit_with(service: &str, source: &str, dest: &str, sched: &str, validity: &str) -> Bytes {
        let body = format!(
            "{service} 01 01 {source} 01 01 {dest} 00 00 00 {sched} {validity} 00 00 00 00 02 6869"
        );
        let body = frame(&body);
        let mut out = BytesMut::new();
        out.put_u32((HEADER_LEN + body.len()) as u32);
        out.put_u32(4);
        out.put_u32(0);
        out.put_u32(1);
        out.put_slice(&body);
        out.freeze()
    }

    #[test]
    fn each_c_string_field_earns_its_status() {
        let ok = |s: &str| s.to_string();
        let long21 = hex::encode([b'1'; 21]) + "00";
        let long6 = hex::encode(b"ABCDEF") + "00";
        let long17 = hex::encode([b'0'; 17]) + "00";
        let cases = [
            (
                submit_with(&long6, "3100", "3200", "00", "00"),
                S::ESME_RINVSERTYP,
                "service_type",
                16,
            ),
            (
                submit_with("00", &long21, "3200", "00", "00"),
                S::ESME_RINVSRCADR,
                "source_addr",
                19,
            ),
            (
                submit_with("00", "3100", &long21, "00", "00"),
                S::ESME_RINVDSTADR,
                "destination_addr",
                23,
            ),
            (
                submit_with("00", "3100", "3200", &long17, "00"),
                S::ESME_RINVSCHED,
                "schedule_delivery_time",
                28,
            ),
            (
                submit_with("00", "3100", "3200", "00", &long17),
                S::ESME_RINVEXPIRY,
                "validity_period",
                29,
            ),
        ];
        for (bytes, status, field, offset) in cases {
            let e = Pdu::decode(bytes).unwrap_err();
            assert_eq!(
                (e.status, e.field, e.offset),
                (status, field, offset),
                "{e}"
            );
        }
        let fine = Pdu::decode(submit_with("00", &ok("3100"), "3200", "00", "00")).unwrap();
        assert_eq!(fine.command_id(), CommandId::SubmitSm);

        let e =
            decode_err("00000021 00000002 00000000 00000001 61616161616161616161616161616161 00");
        assert_eq!((e.status, e.field), (S::ESME_RINVSYSID, "system_id"));
        let e = decode_err("0000001D 00000002 00000000 00000001 6100 61616161616161616161 00");
        assert_eq!(
            (e.status, e.field, e.offset),
            (S::ESME_RINVPASWD, "password", 18)
        );
        let e = decode_err("00000015 80000004 00000000 00000001 6162636465");
        assert_eq!((e.status, e.field), (S::ESME_RINVMSGID, "message_id"));
        assert!(e.reason.contains("missing NUL"), "{}", e.reason);
    }

    #[test]
    fn sm_length_beyond_the_body_is_rinvmsglen() {
        let mut bytes = BytesMut::from(&submit_with("00", "3100", "3200", "00", "00")[..]);
        let sm_length_at = bytes.len() - 3;
        bytes[sm_length_at] = 9;
        let e = Pdu::decode(bytes.freeze()).unwrap_err();
        assert_eq!(
            (e.status, e.field, e.offset),
            (S::ESME_RINVMSGLEN, "short_message", 35)
        );
    }

    #[test]
    fn malformed_tlv_area_earns_tlv_statuses() {
        let e = decode_err("00000013 80000004 00000000 00000001 00 0427"); // no TLVs on submit_sm_resp
        assert_eq!(e.status, S::ESME_RINVCMDLEN);
        let e = decode_err("LLLLLLLL 80000103 00000000 00000003 00 0427 0002 01");
        assert_eq!((e.status, e.offset), (S::ESME_RINVOPTPARSTREAM, 17));
        let e = decode_err("00000017 80000103 00000000 00000003 00 0427 0002 0101");
        assert_eq!(
            (e.status, e.offset, e.field),
            (S::ESME_RINVPARLEN, 17, "message_state")
        );
    }

    fn good_submit() -> SubmitSm {
        SubmitSm {
            source_addr_ton: 5,
            source_addr_npi: 0,
            source_addr: Address::from_text("Tern").unwrap(),
            dest_addr_ton: 1,
            dest_addr_npi: 1,
            destination_addr: Address::from_text("447700900123").unwrap(),
            registered_delivery: 1,
            short_message: Bytes::from_static(b"hi"),
            ..SubmitSm::default()
        }
    }

    #[test]
    fn validate_submit_picks_the_right_status() {
        assert_eq!(validate_submit(&good_submit()), Ok(()));
        let mut payload = Tlvs::new();
        payload.set_message_payload(b"long").unwrap();
        let cases: Vec<(SubmitSm, CommandStatus)> = vec![
            (
                SubmitSm {
                    source_addr_ton: 7,
                    ..good_submit()
                },
                S::ESME_RINVSRCTON,
            ),
            (
                SubmitSm {
                    source_addr_npi: 2,
                    ..good_submit()
                },
                S::ESME_RINVSRCNPI,
            ),
            (
                SubmitSm {
                    dest_addr_ton: 9,
                    ..good_submit()
                },
                S::ESME_RINVDSTTON,
            ),
            (
                SubmitSm {
                    dest_addr_npi: 5,
                    ..good_submit()
                },
                S::ESME_RINVDSTNPI,
            ),
            (
                SubmitSm {
                    destination_addr: Address::default(),
                    ..good_submit()
                },
                S::ESME_RINVDSTADR,
            ),
            (
                SubmitSm {
                    destination_addr: Address::from_text("44abc").unwrap(),
                    ..good_submit()
                },
                S::ESME_RINVDSTADR,
            ),
            (
                SubmitSm {
                    source_addr: Address::from_text("TwelveLetter").unwrap(),
                    ..good_submit()
                },
                S::ESME_RINVSRCADR,
            ),
            (
                SubmitSm {
                    source_addr_ton: 1,
                    source_addr: Address::from_text("12ab").unwrap(),
                    ..good_submit()
                },
                S::ESME_RINVSRCADR,
            ),
            (
                SubmitSm {
                    data_coding: 5,
                    ..good_submit()
                },
                S::ESME_RINVDCS,
            ),
            (
                SubmitSm {
                    tlvs: payload.clone(),
                    ..good_submit()
                },
                S::ESME_RINVMSGLEN,
            ),
            (
                SubmitSm {
                    registered_delivery: 0x21,
                    ..good_submit()
                },
                S::ESME_RINVREGDLVFLG,
            ),
            (
                SubmitSm {
                    esm_class: 0x04,
                    ..good_submit()
                },
                S::ESME_RINVESMCLASS,
            ),
            (
                SubmitSm {
                    esm_class: 0x40,
                    short_message: Bytes::from_static(&[5, 0, 3]),
                    ..good_submit()
                },
                S::ESME_RINVESMCLASS,
            ),
            (
                SubmitSm {
                    priority_flag: 4,
                    ..good_submit()
                },
                S::ESME_RINVPRTFLG,
            ),
            (
                SubmitSm {
                    replace_if_present_flag: 2,
                    ..good_submit()
                },
                S::ESME_RINVREPFLAG,
            ),
            (
                SubmitSm {
                    validity_period: SmppTime::from_text("000007").unwrap(),
                    ..good_submit()
                },
                S::ESME_RINVEXPIRY,
            ),
            (
                SubmitSm {
                    schedule_delivery_time: SmppTime::from_text("1").unwrap(),
                    ..good_submit()
                },
                S::ESME_RINVSCHED,
            ),
        ];
        for (sm, status) in cases {
            let r = validate_submit(&sm).expect_err("must be rejected");
            assert_eq!(r.status, status, "{r}");
        }
        // Tolerances.
        let tolerated = [
            SubmitSm {
                destination_addr: Address::from_text("+447700900123").unwrap(),
                ..good_submit()
            },
            SubmitSm {
                source_addr: Address::default(),
                source_addr_ton: 0,
                ..good_submit()
            },
            SubmitSm {
                registered_delivery: 0x13,
                ..good_submit()
            },
            SubmitSm {
                short_message: Bytes::new(),
                tlvs: payload,
                ..good_submit()
            },
            SubmitSm {
                esm_class: 0x40,
                short_message: Bytes::from_static(&[5, 0, 3, 1, 2, 1, 0x41]),
                ..good_submit()
            },
            SubmitSm {
                data_coding: 0xF1,
                ..good_submit()
            },
        ];
        for sm in tolerated {
            assert_eq!(validate_submit(&sm), Ok(()), "{sm:?}");
        }
    }

    #[test]
    fn validate_submit_multi_checks_each_destination() {
        let good = SubmitMulti {
            source_addr_ton: 5,
            source_addr: Address::from_text("Tern").unwrap(),
            dest_addresses: vec![
                DestAddress::SmeAddress {
                    dest_addr_ton: 1,
                    dest_addr_npi: 1,
                    destination_addr: Address::from_text("447700900123").unwrap(),
                },
                DestAddress::DistributionList {
                    dl_name: DistributionListName::from_text("staff").unwrap(),
                },
            ],
            short_message: Bytes::from_static(b"hi"),
            ..SubmitMulti::default()
        };
        assert_eq!(validate_submit_multi(&good), Ok(()));
        let none = SubmitMulti {
            dest_addresses: vec![],
            ..good.clone()
        };
        assert_eq!(
            validate_submit_multi(&none).unwrap_err().status,
            S::ESME_RINVNUMDESTS
        );
        let mut bad_dest = good.clone();
        bad_dest.dest_addresses.push(DestAddress::SmeAddress {
            dest_addr_ton: 1,
            dest_addr_npi: 1,
            destination_addr: Address::from_text("44x").unwrap(),
        });
        assert_eq!(
            validate_submit_multi(&bad_dest).unwrap_err().status,
            S::ESME_RINVDSTADR
        );
        let bad_dcs = SubmitMulti {
            data_coding: 6,
            ..good
        };
        assert_eq!(
            validate_submit_multi(&bad_dcs).unwrap_err().status,
            S::ESME_RINVDCS
        );
    }

    #[test]
    fn encode_refuses_what_the_wire_cannot_carry() {
        let pdu = Pdu::new(
            1,
            Body::SubmitSm(SubmitSm {
                short_message: Bytes::from(vec![0x41; 255]),
                ..good_submit()
            }),
        );
        let mut out = BytesMut::from(&b"keep"[..]);
        let e = pdu.encode(&mut out).unwrap_err();
        assert_eq!(e.field, "short_message");
        assert_eq!(
            &out[..],
            b"keep",
            "a failed encode leaves the buffer as it was"
        );
    }

    #[test]
    fn json_names_commands_and_statuses() {
        let pdu = Pdu::decode(frame(SUBMIT_SM)).unwrap();
        let json = serde_json::to_value(&pdu).unwrap();
        assert_eq!(json["command"], "submit_sm");
        assert_eq!(json["command_status"], "ESME_ROK");
        assert_eq!(json["body"]["source_addr"], "441234");
        assert_eq!(json["body"]["short_message"], "68656c6c6f");
        assert_eq!(json["body"]["tlvs"][0]["name"], "sar_msg_ref_num");
        let back: Pdu = serde_json::from_value(json).unwrap();
        assert_eq!(back, pdu);

        let nack: Pdu = serde_json::from_str(
            r#"{"command":"generic_nack","command_status":"0x00000401","sequence_number":3}"#,
        )
        .unwrap();
        assert_eq!(nack, Pdu::generic_nack(3, CommandStatus(0x401)));
        assert_eq!(
            serde_json::to_string(&nack).unwrap(),
            r#"{"command":"generic_nack","command_status":"0x00000401","sequence_number":3}"#
        );
        let minimal: Pdu = serde_json::from_str(
            r#"{"command":"submit_sm","sequence_number":1,"body":{"destination_addr":"123","short_message":"6869"}}"#,
        )
        .unwrap();
        assert_eq!(minimal.command_status, S::ESME_ROK);
        assert!(serde_json::from_str::<Pdu>(r#"{"command":"nope","sequence_number":1}"#).is_err());
        // A misspelt field is an error, not a silently empty field.
        let typo = serde_json::from_str::<Pdu>(
            r#"{"command":"submit_sm","sequence_number":1,"body":{"dest_addr":"123"}}"#,
        );
        assert!(typo.unwrap_err().to_string().contains("dest_addr"));
    }

    #[test]
    fn json_command_names_are_the_specification_names() {
        for id in CommandId::ALL {
            let pdu = Pdu::new(1, Body::empty(id));
            assert_eq!(pdu.command_id(), id);
            let json = serde_json::to_value(&pdu).unwrap();
            assert_eq!(json["command"], id.name());
            let back: Pdu = serde_json::from_value(json).unwrap();
            assert_eq!(back, pdu);
        }
    }
}
