//! SMPP framing: cutting whole PDUs out of a stream of reads.
//!
//! Owns: the streaming decoder over a `BytesMut` read buffer, the
//! command_length bounds, and the choice of what to answer when a frame is
//! unusable (generic_nack or the command's error response). Must not touch:
//! sockets, timers or session state; the caller reads, writes and closes.
//!
//! Two kinds of trouble:
//! - A frame with a sane command_length but a bad body or an unknown
//!   command_id is consumed whole; the caller answers `Frame::Rejected::reply`
//!   and carries on, since the next frame starts right after it.
//! - A command_length below 16 or above the configured maximum means the
//!   stream can no longer be framed: `FramingError::nack` is the generic_nack
//!   (ESME_RINVCMDLEN) to send before closing. Nothing is consumed.

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::command::CommandId;
use super::pdu::{DecodeError, Header, Pdu, HEADER_LEN};
use super::status::CommandStatus;

/// Largest PDU accepted by default. A submit_sm with a full message_payload
/// fits; anything bigger from a peer is a bug or an attack.
pub const DEFAULT_MAX_COMMAND_LENGTH: u32 = 64 * 1024;

/// One step of the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A well-formed PDU.
    Pdu(Pdu),
    /// The frame was consumed but could not be decoded. Send `reply` when
    /// there is one (there is none for responses, outbind and
    /// alert_notification, which are never answered) and continue.
    Rejected {
        header: Header,
        error: DecodeError,
        reply: Option<Pdu>,
    },
}

/// The stream cannot be framed: send `nack()`, then close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError {
    pub error: DecodeError,
    /// The sequence number the generic_nack echoes (0 when unreadable).
    pub sequence_number: u32,
}

impl FramingError {
    /// The generic_nack(ESME_RINVCMDLEN) to send before closing.
    pub fn nack(&self) -> Pdu {
        Pdu::generic_nack(self.sequence_number, self.error.status)
    }
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unframeable stream: {}", self.error)
    }
}

impl std::error::Error for FramingError {}

/// Cuts PDUs out of a read buffer. Stateless between calls apart from its
/// limit, so one decoder per connection costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_command_length: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_COMMAND_LENGTH)
    }
}

impl FrameDecoder {
    /// `max_command_length` below the 16-octet header is raised to it.
    pub fn new(max_command_length: u32) -> FrameDecoder {
        FrameDecoder {
            max_command_length: max_command_length.max(HEADER_LEN as u32),
        }
    }

    pub fn max_command_length(&self) -> u32 {
        self.max_command_length
    }

    /// Splits the first complete frame off `buf`, zero-copy. `Ok(None)` means
    /// more bytes are needed; `buf` is untouched then. Never consumes past
    /// the frame's command_length.
    pub fn next_frame(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        let Some(length_octets) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let command_length = u32::from_be_bytes(*length_octets);
        if command_length < HEADER_LEN as u32 {
            // The sequence number is not part of a frame this short: 0.
            return Err(FramingError {
                error: DecodeError::new(
                    CommandStatus::ESME_RINVCMDLEN,
                    0,
                    "command_length",
                    format!("command_length {command_length} is below the 16-octet header"),
                ),
                sequence_number: 0,
            });
        }
        if command_length > self.max_command_length {
            // Wait for the header so the nack can echo the sequence number;
            // the outcome then does not depend on how the reads were split.
            let Some(header) = Header::parse(buf) else {
                return Ok(None);
            };
            return Err(FramingError {
                error: DecodeError::new(
                    CommandStatus::ESME_RINVCMDLEN,
                    0,
                    "command_length",
                    format!(
                        "command_length {command_length} exceeds the maximum of {}",
                        self.max_command_length
                    ),
                ),
                sequence_number: header.sequence_number,
            });
        }
        let Ok(len) = usize::try_from(command_length) else {
            return Ok(None);
        };
        if buf.len() < len {
            return Ok(None);
        }
        Ok(Some(buf.split_to(len).freeze()))
    }

    /// The next PDU in `buf`, or what to answer when its frame is unusable.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        let Some(frame) = self.next_frame(buf)? else {
            return Ok(None);
        };
        let header = Header::parse(&frame);
        debug_assert!(header.is_some(), "next_frame yields at least a header");
        let Some(header) = header else {
            return Ok(None);
        };
        Ok(Some(match Pdu::decode(frame) {
            Ok(pdu) => Frame::Pdu(pdu),
            Err(error) => Frame::Rejected {
                reply: reply_to_rejected(&header, &error),
                header,
                error,
            },
        }))
    }

    /// Octets to read at least before the next call can make progress (a
    /// hint for sizing reads; 0 when a frame or an error is ready). Before the
    /// length is known it counts up to the header only.
    pub fn bytes_needed(&self, buf: &[u8]) -> usize {
        match buf.first_chunk::<4>() {
            None => HEADER_LEN - buf.len(),
            Some(len) => {
                let len = u32::from_be_bytes(*len);
                if len < HEADER_LEN as u32 {
                    0
                } else if len > self.max_command_length {
                    HEADER_LEN.saturating_sub(buf.len())
                } else {
                    usize::try_from(len)
                        .unwrap_or(usize::MAX)
                        .saturating_sub(buf.len())
                }
            }
        }
    }
}

/// What to answer a frame that did not decode:
/// - unknown command_id: generic_nack(ESME_RINVCMDID);
/// - a response (generic_nack included): nothing, responses are never answered;
/// - a wrong length inside a request: generic_nack(ESME_RINVCMDLEN);
/// - any other fault in a request: its own response with the error status;
/// - outbind and alert_notification: nothing, they have no response.
pub fn reply_to_rejected(header: &Header, error: &DecodeError) -> Option<Pdu> {
    let seq = header.sequence_number;
    let Some(id) = CommandId::from_u32(header.command_id) else {
        return Some(Pdu::generic_nack(seq, CommandStatus::ESME_RINVCMDID));
    };
    if id.is_response() {
        return None;
    }
    if error.status == CommandStatus::ESME_RINVCMDLEN {
        return id
            .response()
            .map(|_| Pdu::generic_nack(seq, CommandStatus::ESME_RINVCMDLEN));
    }
    Pdu::error_response(id, seq, error.status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::pdu::{Body, SubmitSmResp};
    use bytes::BufMut;

    fn enquire_link(seq: u32) -> Bytes {
        Pdu::new(seq, Body::EnquireLink).to_bytes().unwrap()
    }

    fn submit_sm_resp(seq: u32, id: &str) -> Bytes {
        Pdu::new(
            seq,
            Body::SubmitSmResp(SubmitSmResp {
                message_id: crate::smpp::pdu::MessageId::from_text(id).unwrap(),
            }),
        )
        .to_bytes()
        .unwrap()
    }

    fn expect_pdu(step: Result<Option<Frame>, FramingError>) -> Pdu {
        match step {
            Ok(Some(Frame::Pdu(p))) => p,
            other => panic!("expected a PDU, got {other:?}"),
        }
    }

    #[test]
    fn partial_reads_wait_then_yield_one_frame() {
        let d = FrameDecoder::default();
        let wire = submit_sm_resp(5, "abc");
        let mut buf = BytesMut::new();
        for (i, byte) in wire.iter().enumerate() {
            assert_eq!(
                d.decode(&mut buf).unwrap(),
                None,
                "incomplete after {i} octets"
            );
            let needed = if i < 4 {
                HEADER_LEN - i
            } else {
                wire.len() - i
            };
            assert_eq!(d.bytes_needed(&buf), needed);
            buf.put_u8(*byte);
        }
        let pdu = expect_pdu(d.decode(&mut buf));
        assert_eq!(pdu.sequence_number, 5);
        assert!(buf.is_empty());
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn several_pdus_per_read_and_a_tail() {
        let d = FrameDecoder::default();
        let mut buf = BytesMut::new();
        buf.put_slice(&enquire_link(1));
        buf.put_slice(&submit_sm_resp(2, "x"));
        buf.put_slice(&enquire_link(3));
        let tail = enquire_link(4);
        buf.put_slice(&tail[..7]);
        for seq in 1..=3 {
            assert_eq!(expect_pdu(d.decode(&mut buf)).sequence_number, seq);
        }
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(
            &buf[..],
            &tail[..7],
            "the partial frame stays in the buffer"
        );
        buf.put_slice(&tail[7..]);
        assert_eq!(expect_pdu(d.decode(&mut buf)).sequence_number, 4);
    }

    #[test]
    fn oversize_length_asks_for_nack_with_sequence_and_close() {
        let d = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(1025);
        buf.put_u32(4);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            None,
            "waits for the sequence number"
        );
        buf.put_u32(0);
        buf.put_u32(77);
        let e = d.decode(&mut buf).unwrap_err();
        assert_eq!(e.error.status, CommandStatus::ESME_RINVCMDLEN);
        assert_eq!(
            e.nack(),
            Pdu::generic_nack(77, CommandStatus::ESME_RINVCMDLEN)
        );
        assert_eq!(buf.len(), 16, "nothing consumed");
        // The default limit is 64 KiB.
        let mut buf = BytesMut::new();
        buf.put_u32(64 * 1024 + 1);
        buf.put_slice(&[0; 12]);
        assert!(FrameDecoder::default().decode(&mut buf).is_err());
    }

    #[test]
    fn undersize_length_asks_for_nack_without_sequence() {
        let d = FrameDecoder::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 15][..]);
        let e = d.decode(&mut buf).unwrap_err();
        assert_eq!(
            e.nack(),
            Pdu::generic_nack(0, CommandStatus::ESME_RINVCMDLEN)
        );
        assert_eq!(e.error.field, "command_length");
    }

    #[test]
    fn unknown_command_id_is_consumed_and_nacked() {
        let d = FrameDecoder::default();
        let mut buf = BytesMut::new();
        buf.put_u32(20);
        buf.put_u32(0x0000_0099);
        buf.put_u32(0);
        buf.put_u32(42);
        buf.put_u32(0xDEAD_BEEF);
        buf.put_slice(&enquire_link(43));
        match d.decode(&mut buf).unwrap() {
            Some(Frame::Rejected { error, reply, .. }) => {
                assert_eq!(error.status, CommandStatus::ESME_RINVCMDID);
                assert_eq!(
                    reply,
                    Some(Pdu::generic_nack(42, CommandStatus::ESME_RINVCMDID))
                );
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(expect_pdu(d.decode(&mut buf)).sequence_number, 43);
    }

    #[test]
    fn bad_request_body_gets_its_own_error_response() {
        let d = FrameDecoder::default();
        let mut buf = BytesMut::new();
        // submit_sm whose source_addr has no NUL within 21 octets.
        let body = [&[0u8, 1, 1][..], &[b'1'; 22]].concat();
        buf.put_u32((16 + body.len()) as u32);
        buf.put_u32(4);
        buf.put_u32(0);
        buf.put_u32(9);
        buf.put_slice(&body);
        match d.decode(&mut buf).unwrap() {
            Some(Frame::Rejected { reply, error, .. }) => {
                assert_eq!(error.offset, 19);
                let reply = reply.unwrap();
                assert_eq!(reply.command_status, CommandStatus::ESME_RINVSRCADR);
                assert_eq!(reply.sequence_number, 9);
                assert_eq!(
                    reply.to_bytes().unwrap().len(),
                    16,
                    "error response has no body"
                );
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn wrong_lengths_and_responses_pick_their_reply() {
        let header = |id: u32| Header {
            command_length: 17,
            command_id: id,
            command_status: CommandStatus::ESME_ROK,
            sequence_number: 3,
        };
        let len_err = DecodeError::new(CommandStatus::ESME_RINVCMDLEN, 16, "x", "y");
        assert_eq!(
            reply_to_rejected(&header(0x15), &len_err),
            Some(Pdu::generic_nack(3, CommandStatus::ESME_RINVCMDLEN))
        );
        assert_eq!(reply_to_rejected(&header(0x8000_0004), &len_err), None);
        assert_eq!(reply_to_rejected(&header(0x8000_0000), &len_err), None);
        assert_eq!(reply_to_rejected(&header(0x0B), &len_err), None);
        let sys_err = DecodeError::new(CommandStatus::ESME_RINVSYSID, 16, "x", "y");
        let reply = reply_to_rejected(&header(0x09), &sys_err).unwrap();
        assert_eq!(reply.command_id(), CommandId::BindTransceiverResp);
        assert_eq!(reply.command_status, CommandStatus::ESME_RINVSYSID);
    }
}
