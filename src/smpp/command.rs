//! SMPP 3.4 command identifiers (section 5.1.2.1).
//!
//! Owns: the numeric command_id space and its names. Must not touch: PDU bodies,
//! I/O or session state (see `pdu` and `session`).

use std::fmt;

/// Set on every response command_id.
pub const RESPONSE_BIT: u32 = 0x8000_0000;

/// Every command_id a gateway meets in SMPP 3.4. Unknown ids are not an enum
/// variant: the framing layer answers them with generic_nack + ESME_RINVCMDID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum CommandId {
    GenericNack = 0x8000_0000,
    BindReceiver = 0x0000_0001,
    BindReceiverResp = 0x8000_0001,
    BindTransmitter = 0x0000_0002,
    BindTransmitterResp = 0x8000_0002,
    QuerySm = 0x0000_0003,
    QuerySmResp = 0x8000_0003,
    SubmitSm = 0x0000_0004,
    SubmitSmResp = 0x8000_0004,
    DeliverSm = 0x0000_0005,
    DeliverSmResp = 0x8000_0005,
    Unbind = 0x0000_0006,
    UnbindResp = 0x8000_0006,
    ReplaceSm = 0x0000_0007,
    ReplaceSmResp = 0x8000_0007,
    CancelSm = 0x0000_0008,
    CancelSmResp = 0x8000_0008,
    BindTransceiver = 0x0000_0009,
    BindTransceiverResp = 0x8000_0009,
    Outbind = 0x0000_000B,
    EnquireLink = 0x0000_0015,
    EnquireLinkResp = 0x8000_0015,
    SubmitMulti = 0x0000_0021,
    SubmitMultiResp = 0x8000_0021,
    AlertNotification = 0x0000_0102,
    DataSm = 0x0000_0103,
    DataSmResp = 0x8000_0103,
}

impl CommandId {
    /// All known ids, for exhaustive tests and tables.
    pub const ALL: [CommandId; 27] = [
        CommandId::GenericNack,
        CommandId::BindReceiver,
        CommandId::BindReceiverResp,
        CommandId::BindTransmitter,
        CommandId::BindTransmitterResp,
        CommandId::QuerySm,
        CommandId::QuerySmResp,
        CommandId::SubmitSm,
        CommandId::SubmitSmResp,
        CommandId::DeliverSm,
        CommandId::DeliverSmResp,
        CommandId::Unbind,
        CommandId::UnbindResp,
        CommandId::ReplaceSm,
        CommandId::ReplaceSmResp,
        CommandId::CancelSm,
        CommandId::CancelSmResp,
        CommandId::BindTransceiver,
        CommandId::BindTransceiverResp,
        CommandId::Outbind,
        CommandId::EnquireLink,
        CommandId::EnquireLinkResp,
        CommandId::SubmitMulti,
        CommandId::SubmitMultiResp,
        CommandId::AlertNotification,
        CommandId::DataSm,
        CommandId::DataSmResp,
    ];

    pub fn from_u32(raw: u32) -> Option<CommandId> {
        CommandId::ALL.iter().copied().find(|c| *c as u32 == raw)
    }

    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// generic_nack counts as a response: it is never answered.
    pub fn is_response(self) -> bool {
        self as u32 & RESPONSE_BIT != 0
    }

    /// The response that answers this request (None for responses,
    /// outbind and alert_notification, which have no response).
    pub fn response(self) -> Option<CommandId> {
        match self {
            CommandId::Outbind | CommandId::AlertNotification => None,
            c if c.is_response() => None,
            c => CommandId::from_u32(c as u32 | RESPONSE_BIT),
        }
    }

    /// The request a response answers (None for requests and generic_nack).
    pub fn request(self) -> Option<CommandId> {
        match self {
            CommandId::GenericNack => None,
            c if c.is_response() => CommandId::from_u32(c as u32 & !RESPONSE_BIT),
            _ => None,
        }
    }

    /// The specification's name, as it appears in logs and captures.
    pub fn name(self) -> &'static str {
        match self {
            CommandId::GenericNack => "generic_nack",
            CommandId::BindReceiver => "bind_receiver",
            CommandId::BindReceiverResp => "bind_receiver_resp",
            CommandId::BindTransmitter => "bind_transmitter",
            CommandId::BindTransmitterResp => "bind_transmitter_resp",
            CommandId::QuerySm => "query_sm",
            CommandId::QuerySmResp => "query_sm_resp",
            CommandId::SubmitSm => "submit_sm",
            CommandId::SubmitSmResp => "submit_sm_resp",
            CommandId::DeliverSm => "deliver_sm",
            CommandId::DeliverSmResp => "deliver_sm_resp",
            CommandId::Unbind => "unbind",
            CommandId::UnbindResp => "unbind_resp",
            CommandId::ReplaceSm => "replace_sm",
            CommandId::ReplaceSmResp => "replace_sm_resp",
            CommandId::CancelSm => "cancel_sm",
            CommandId::CancelSmResp => "cancel_sm_resp",
            CommandId::BindTransceiver => "bind_transceiver",
            CommandId::BindTransceiverResp => "bind_transceiver_resp",
            CommandId::Outbind => "outbind",
            CommandId::EnquireLink => "enquire_link",
            CommandId::EnquireLinkResp => "enquire_link_resp",
            CommandId::SubmitMulti => "submit_multi",
            CommandId::SubmitMultiResp => "submit_multi_resp",
            CommandId::AlertNotification => "alert_notification",
            CommandId::DataSm => "data_sm",
            CommandId::DataSmResp => "data_sm_resp",
        }
    }

    pub fn from_name(name: &str) -> Option<CommandId> {
        CommandId::ALL.iter().copied().find(|c| c.name() == name)
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_round_trips_through_number_and_name() {
        for c in CommandId::ALL {
            assert_eq!(CommandId::from_u32(c.as_u32()), Some(c));
            assert_eq!(CommandId::from_name(c.name()), Some(c));
        }
        assert_eq!(CommandId::from_u32(0x0000_0010), None);
    }

    #[test]
    fn requests_and_responses_pair_up() {
        assert_eq!(
            CommandId::SubmitSm.response(),
            Some(CommandId::SubmitSmResp)
        );
        assert_eq!(CommandId::SubmitSmResp.request(), Some(CommandId::SubmitSm));
        assert_eq!(CommandId::Outbind.response(), None);
        assert_eq!(CommandId::AlertNotification.response(), None);
        assert_eq!(CommandId::GenericNack.request(), None);
        assert!(CommandId::GenericNack.is_response());
        for c in CommandId::ALL {
            if let Some(r) = c.response() {
                assert_eq!(r.request(), Some(c));
            }
        }
    }
}
