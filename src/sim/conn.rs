//! One simulator connection: the SMSC side of an SMPP session.
//!
//! Owns: the bind state of one connection, its answers to each PDU (with the
//! configured faults), its delayed responses, its enquire_link keep-alive
//! (when configured), and, on a receiver bind, the
//! window of deliver_sm it has outstanding and their retries. Must not touch:
//! other connections (receipts reach them only through `Core`).

use std::collections::VecDeque;
use std::io::Write as _;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::net::TcpStream;

use super::core::{Core, MoJob, Outbound, ReceiptJob, ReceiverQueue};
use super::{Counter, SimIdFormat};
use crate::peer::{Event, PduConnection, PeerConfig, PeerError};
use crate::smpp::frame::Frame;
use crate::smpp::pdu::{
    validate_submit, Bind, BindResp, Body, DeliverSm, MessageId, Pdu, SubmitSm, SubmitSmResp,
    SystemId,
};
use crate::smpp::receipt::{MessageState, Receipt};
use crate::smpp::session::{BindSession, ResponseMatch, Role, SequenceNumbers, Window};
use crate::smpp::status::CommandStatus;
use crate::smpp::time::DateTime;
use crate::smpp::CommandId;

/// Longest a connection sleeps without looking at the stop flag.
const IDLE_TICK_MS: u64 = 200;
/// Responses waiting for `--resp-delay-ms`; beyond it ESME_RMSGQFUL is answered.
const MAX_DELAYED_RESPONSES: usize = 65_536;

struct Connection {
    core: Rc<Core>,
    conn: PduConnection,
    session: BindSession,
    system_id: SystemId,
    sequence: SequenceNumbers,
    receiver: Option<Rc<ReceiverQueue>>,
    window: Window<Outbound>,
    delayed: VecDeque<(u64, Pdu)>,
    submits: u64,
    closing: bool,
    /// When the next enquire_link goes out (bound connections only).
    enquire_due_ms: u64,
    /// The enquire_link awaiting its response: (sequence_number, sent at).
    enquire_outstanding: Option<(u32, u64)>,
}

/// Serves one accepted connection until it closes or the simulator stops.
pub(super) async fn serve(core: Rc<Core>, stream: TcpStream) {
    core.live_connections.set(core.live_connections.get() + 1);
    let window_capacity =
        NonZeroUsize::new(core.config.deliver_window).unwrap_or(NonZeroUsize::MIN);
    let mut c = Connection {
        conn: PduConnection::new(stream, PeerConfig::default()),
        session: BindSession::new(Role::Smsc),
        system_id: SystemId::empty(),
        sequence: SequenceNumbers::new(),
        receiver: None,
        window: Window::new(window_capacity, core.config.deliver_timeout_ms),
        delayed: VecDeque::new(),
        submits: 0,
        closing: false,
        enquire_due_ms: u64::MAX,
        enquire_outstanding: None,
        core,
    };
    let outcome = c.run().await;
    if let Err(e) = outcome {
        if !matches!(e, PeerError::Io(_)) {
            c.core.count(Counter::ConnectionsDropped);
        }
    }
    if let Some(receiver) = c.receiver.take() {
        let undelivered: Vec<Outbound> = c.window.drain().map(|o| o.tag).collect();
        c.core.unregister_receiver(&receiver, undelivered);
    }
    let core = c.core.clone();
    c.conn.close().await;
    core.live_connections
        .set(core.live_connections.get().saturating_sub(1));
}

impl Connection {
    async fn run(&mut self) -> Result<(), PeerError> {
        while !self.closing {
            if self.core.stopping() {
                self.conn.flush().await?;
                return Ok(());
            }
            let now = self.core.now_ms();
            self.send_due_responses(now)?;
            self.retry_expired(now);
            self.send_outbound(now)?;
            self.keep_alive(now)?;
            if self.closing {
                break;
            }
            let wait_ms = self.next_wake_ms(now);
            let event = match &self.receiver {
                Some(receiver) => {
                    let notify = receiver.clone();
                    self.conn
                        .next_event(futures_lite::future::or(
                            async move { notify.notify.notified().await },
                            glommio::timer::sleep(Duration::from_millis(wait_ms)),
                        ))
                        .await
                }
                None => {
                    self.conn
                        .next_event(glommio::timer::sleep(Duration::from_millis(wait_ms)))
                        .await
                }
            };
            match event {
                Ok(Event::Frame(frame)) => {
                    self.on_frame(frame)?;
                    // Everything already read is answered before the next wait.
                    while !self.closing {
                        match self.conn.buffered_frame() {
                            Ok(Some(frame)) => self.on_frame(frame)?,
                            Ok(None) => break,
                            Err(e) => return self.unframeable(e).await,
                        }
                    }
                }
                Ok(Event::Closed) => return Ok(()),
                Ok(Event::Woken(())) => {}
                Err(e) => return self.unframeable(e).await,
            }
        }
        self.conn.flush().await
    }

    /// Answers an unframeable stream with its generic_nack, then gives up.
    async fn unframeable(&mut self, error: PeerError) -> Result<(), PeerError> {
        if let PeerError::Framing(framing) = &error {
            self.core.count(Counter::GenericNacks);
            self.conn.send(&framing.nack())?;
            self.conn.flush().await?;
        }
        Err(error)
    }

    fn next_wake_ms(&self, now: u64) -> u64 {
        let mut wake = now.saturating_add(IDLE_TICK_MS);
        if let Some((due, _)) = self.delayed.front() {
            wake = wake.min(*due);
        }
        if let Some(deadline) = self.window.next_deadline_ms() {
            wake = wake.min(deadline);
        }
        wake = wake.min(self.enquire_due_ms);
        if let Some((_, sent_ms)) = self.enquire_outstanding {
            wake = wake.min(sent_ms.saturating_add(self.core.config.enquire_link_ms));
        }
        wake.saturating_sub(now).max(1)
    }

    /// The SMSC's side of the link check: an enquire_link every period on a
    /// bound connection, one at a time; a peer that leaves one unanswered
    /// for a whole period is taken for dead and the connection is closed.
    fn keep_alive(&mut self, now: u64) -> Result<(), PeerError> {
        let period_ms = self.core.config.enquire_link_ms;
        if period_ms == 0 || !self.session.state().is_bound() {
            return Ok(());
        }
        if let Some((_, sent_ms)) = self.enquire_outstanding {
            if now >= sent_ms.saturating_add(period_ms) {
                self.core.count(Counter::EnquireLinksUnanswered);
                self.core.count(Counter::ConnectionsDropped);
                self.closing = true;
            }
            return Ok(());
        }
        if now < self.enquire_due_ms {
            return Ok(());
        }
        let seq = self.sequence.allocate();
        self.conn.send(&Pdu::new(seq, Body::EnquireLink))?;
        self.core.count(Counter::EnquireLinksSent);
        self.enquire_outstanding = Some((seq, now));
        self.enquire_due_ms = now.saturating_add(period_ms);
        Ok(())
    }

    fn on_enquire_link_resp(&mut self, seq: u32) {
        if self
            .enquire_outstanding
            .is_some_and(|(outstanding, _)| outstanding == seq)
        {
            self.core.count(Counter::EnquireLinkResps);
            self.enquire_outstanding = None;
        }
    }

    fn send_due_responses(&mut self, now: u64) -> Result<(), PeerError> {
        while self.delayed.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, pdu)) = self.delayed.pop_front() {
                self.conn.send(&pdu)?;
                self.after_submit_answered();
            }
        }
        Ok(())
    }

    fn after_submit_answered(&mut self) {
        let drop_after = self.core.config.drop_after;
        if drop_after > 0 && self.submits >= drop_after && self.delayed.is_empty() {
            self.core.count(Counter::ConnectionsDropped);
            self.closing = true;
        }
    }

    /// deliver_sm that got no answer in time go out again, or are dropped
    /// after the last attempt.
    fn retry_expired(&mut self, now: u64) {
        let expired: Vec<Outbound> = self.window.expire(now).map(|o| o.tag).collect();
        for item in expired {
            self.requeue(item);
        }
    }

    /// Puts an unanswered (or refused) deliver_sm back at the head of the
    /// queue, or gives up on it after the last attempt.
    fn requeue(&mut self, item: Outbound) {
        let (attempts, retried, dropped) = match &item {
            Outbound::Receipt(job) => (
                job.attempts,
                Counter::ReceiptsRetried,
                Counter::ReceiptsDropped,
            ),
            Outbound::Mo(job) => (job.attempts, Counter::MoRetried, Counter::MoDropped),
        };
        let Some(receiver) = &self.receiver else {
            debug_assert!(false, "only a receiver bind has deliver_sm outstanding");
            return;
        };
        if attempts >= self.core.config.deliver_max_attempts {
            self.core.count(dropped);
            return;
        }
        self.core.count(retried);
        receiver.queue.borrow_mut().push_front(item);
    }

    /// Fills the deliver_sm window from this bind's queue.
    fn send_outbound(&mut self, now: u64) -> Result<(), PeerError> {
        let Some(receiver) = self.receiver.clone() else {
            return Ok(());
        };
        while !self.window.is_full() && !self.conn.is_write_congested() {
            let Some(mut item) = receiver.queue.borrow_mut().pop_front() else {
                break;
            };
            let (pdu_body, counter) = match &mut item {
                Outbound::Receipt(job) => {
                    job.attempts += 1;
                    (self.receipt_pdu(job), Counter::ReceiptsSent)
                }
                Outbound::Mo(job) => {
                    job.attempts += 1;
                    (mo_pdu(job), Counter::MoSent)
                }
            };
            let first = match &item {
                Outbound::Receipt(job) => job.attempts == 1,
                Outbound::Mo(job) => job.attempts == 1,
            };
            let sequence_number = self.sequence.allocate();
            let pdu = Pdu::new(sequence_number, Body::DeliverSm(pdu_body));
            if let Err(e) =
                self.window
                    .try_reserve(sequence_number, CommandId::DeliverSm, now, item)
            {
                receiver.queue.borrow_mut().push_front(e.into_tag());
                break;
            }
            if first {
                self.core.count(counter);
            }
            self.conn.send(&pdu)?;
        }
        Ok(())
    }

    fn receipt_pdu(&self, job: &ReceiptJob) -> DeliverSm {
        let receipt_hex = self.core.config.id_format != SimIdFormat::Dec;
        let id = format_id(job.message_id, receipt_hex);
        let state = MessageState::from_message_state(job.state).unwrap_or(MessageState::Unknown);
        let delivered = state == MessageState::Delivered;
        let now = Core::unix_ms();
        let submit = receipt_date(job.submit_unix_ms);
        let done = receipt_date(now);
        let text = job
            .text
            .get(..usize::from(job.text_len))
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or("");
        let receipt = Receipt::for_customer(
            id.as_str().unwrap_or(""),
            submit,
            done,
            state,
            if delivered { 0 } else { 1 },
            text,
        );
        let mut sm = SubmitSm {
            source_addr_ton: job.from_ton,
            source_addr_npi: job.from_npi,
            source_addr: job.from,
            dest_addr_ton: job.to_ton,
            dest_addr_npi: job.to_npi,
            destination_addr: job.to,
            esm_class: crate::smpp::pdu::ESM_TYPE_DELIVERY_RECEIPT,
            short_message: Bytes::from(receipt.format().into_bytes()),
            ..SubmitSm::default()
        };
        // Both TLVs fit their limits (an id of at most 20 digits, a state < 10).
        let _ = sm.tlvs.set_receipted_message_id(&id);
        let _ = sm.tlvs.set_message_state(job.state);
        sm
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), PeerError> {
        match frame {
            Frame::Pdu(pdu) => self.on_pdu(pdu),
            Frame::Rejected { reply, .. } => {
                if let Some(reply) = reply {
                    if reply.body == Body::GenericNack {
                        self.core.count(Counter::GenericNacks);
                    }
                    self.conn.send(&reply)?;
                }
                Ok(())
            }
        }
    }

    fn on_pdu(&mut self, pdu: Pdu) -> Result<(), PeerError> {
        let command = pdu.command_id();
        let seq = pdu.sequence_number;
        if let Err(status) = self.session.check_receive(command) {
            if let Some(reply) = Pdu::error_response(command, seq, status) {
                self.conn.send(&reply)?;
            }
            return Ok(());
        }
        match pdu.body {
            Body::BindTransmitter(bind)
            | Body::BindReceiver(bind)
            | Body::BindTransceiver(bind) => self.on_bind(seq, bind, command),
            Body::SubmitSm(sm) => self.on_submit(seq, &sm),
            Body::EnquireLink => {
                self.core.count(Counter::EnquireLinks);
                self.conn.send(&Pdu::new(seq, Body::EnquireLinkResp))
            }
            Body::Unbind => {
                self.session
                    .apply(CommandId::UnbindResp, CommandStatus::ESME_ROK);
                self.closing = true;
                self.conn.send(&Pdu::new(seq, Body::UnbindResp))
            }
            Body::DeliverSmResp(_) | Body::GenericNack => {
                self.on_deliver_resp(seq, command, pdu.command_status);
                Ok(())
            }
            Body::UnbindResp => {
                self.closing = true;
                Ok(())
            }
            Body::EnquireLinkResp => {
                self.on_enquire_link_resp(seq);
                Ok(())
            }
            _ if command.is_response() => Ok(()),
            _ => {
                // query_sm, data_sm, submit_multi and the like: not simulated.
                match Pdu::error_response(command, seq, CommandStatus::ESME_RINVCMDID) {
                    Some(reply) => self.conn.send(&reply),
                    None => Ok(()),
                }
            }
        }
    }

    fn on_bind(&mut self, seq: u32, bind: Bind, request: CommandId) -> Result<(), PeerError> {
        let Some(response) = request.response() else {
            unreachable!("bind requests have responses")
        };
        let config = &self.core.config;
        let status = if config
            .system_id
            .as_deref()
            .is_some_and(|want| bind.system_id.as_bytes() != want.as_bytes())
        {
            CommandStatus::ESME_RINVSYSID
        } else if config
            .password
            .as_deref()
            .is_some_and(|want| bind.password.as_bytes() != want.as_bytes())
        {
            CommandStatus::ESME_RINVPASWD
        } else {
            CommandStatus::ESME_ROK
        };
        if !status.is_ok() {
            self.core.count(Counter::BindsRefused);
            let reply = Pdu::error_response(request, seq, status);
            return match reply {
                Some(reply) => self.conn.send(&reply),
                None => Ok(()),
            };
        }
        self.core.count(Counter::Binds);
        let state = self.session.apply(response, status);
        self.system_id = bind.system_id;
        let body = BindResp {
            system_id: SystemId::from_text("ternsim").unwrap_or_default(),
            ..BindResp::default()
        };
        let body = match response {
            CommandId::BindTransmitterResp => Body::BindTransmitterResp(body),
            CommandId::BindReceiverResp => Body::BindReceiverResp(body),
            _ => Body::BindTransceiverResp(body),
        };
        self.conn.send(&Pdu::new(seq, body))?;
        if self.core.config.enquire_link_ms > 0 {
            self.enquire_due_ms = self
                .core
                .now_ms()
                .saturating_add(self.core.config.enquire_link_ms);
        }
        if state.can_receive() {
            let queue = Rc::new(ReceiverQueue {
                system_id: self.system_id,
                queue: Default::default(),
                notify: Default::default(),
            });
            self.receiver = Some(queue.clone());
            self.core.register_receiver(queue);
        }
        Ok(())
    }

    fn on_submit(&mut self, seq: u32, sm: &SubmitSm) -> Result<(), PeerError> {
        let core = self.core.clone();
        core.count(Counter::Submits);
        self.submits += 1;
        let config = &core.config;
        let mut answer = SubmitSmResp::default();
        let status = if let Err(rejection) = validate_submit(sm) {
            core.count(Counter::Rejected);
            rejection.status
        } else if core.should_throttle() {
            core.count(Counter::Throttled);
            CommandStatus::ESME_RTHROTTLED
        } else if config.fail_rate > 0.0 && core.rng.borrow_mut().next_f64() < config.fail_rate {
            core.count(Counter::Failed);
            config.fail_status
        } else {
            core.count(Counter::SubmitsOk);
            let id = core.allocate_id();
            let resp_hex = config.id_format == SimIdFormat::Hex;
            answer.message_id = format_id(id, resp_hex);
            core.count_destination(&sm.destination_addr);
            self.maybe_schedule_receipt(id, sm);
            CommandStatus::ESME_ROK
        };
        let mut pdu = Pdu::new(seq, Body::SubmitSmResp(answer));
        pdu.command_status = status;
        if config.resp_delay_ms > 0 {
            if self.delayed.len() >= MAX_DELAYED_RESPONSES {
                pdu.command_status = CommandStatus::ESME_RMSGQFUL;
                pdu.body = Body::SubmitSmResp(SubmitSmResp::default());
                self.conn.send(&pdu)?;
            } else {
                let due = core.now_ms().saturating_add(config.resp_delay_ms);
                self.delayed.push_back((due, pdu));
            }
            return Ok(());
        }
        self.conn.send(&pdu)?;
        self.after_submit_answered();
        Ok(())
    }

    /// registered_delivery bits 1..0: 1 asks for every outcome, 2 for failures only.
    fn maybe_schedule_receipt(&self, id: u64, sm: &SubmitSm) {
        let core = &self.core;
        let wanted = sm.registered_delivery & 0x03;
        if wanted == 0 || wanted == 3 {
            return;
        }
        let draw = core.rng.borrow_mut().next_u64();
        let state = core.config.outcomes.pick(draw);
        let delivered = state == 2;
        if wanted == 2 && delivered {
            return;
        }
        let (text, text_len) = receipt_text(sm);
        let jitter = core
            .rng
            .borrow_mut()
            .below(core.config.receipt_jitter_ms + 1);
        let job = ReceiptJob {
            system_id: self.system_id,
            message_id: id,
            from: sm.destination_addr,
            from_ton: sm.dest_addr_ton,
            from_npi: sm.dest_addr_npi,
            to: sm.source_addr,
            to_ton: sm.source_addr_ton,
            to_npi: sm.source_addr_npi,
            submit_unix_ms: Core::unix_ms(),
            state,
            text,
            text_len,
            attempts: 0,
            hops: 0,
        };
        core.schedule_receipt(job, core.config.receipt_delay_ms.saturating_add(jitter));
    }

    fn on_deliver_resp(&mut self, seq: u32, command: CommandId, status: CommandStatus) {
        match self.window.complete(seq, command) {
            ResponseMatch::Matched(done) if status.is_ok() => match done.tag {
                Outbound::Receipt(_) => self.core.count(Counter::ReceiptsAcked),
                Outbound::Mo(_) => self.core.count(Counter::MoAcked),
            },
            ResponseMatch::Matched(done) | ResponseMatch::Nacked(done) => self.requeue(done.tag),
            ResponseMatch::Mismatched { .. } | ResponseMatch::Unknown { .. } => {}
        }
    }
}

/// The first 20 characters of a plain-text message, for the receipt's
/// `text:` field; empty for binary, UCS-2 or UDH messages.
fn receipt_text(sm: &SubmitSm) -> ([u8; 20], u8) {
    let mut text = [0u8; 20];
    if sm.has_udh() || !matches!(sm.data_coding, 0 | 1) {
        return (text, 0);
    }
    let printable = sm
        .short_message
        .iter()
        .take(20)
        .take_while(|b| b.is_ascii_graphic() || **b == b' ')
        .count();
    if let (Some(dst), Some(src)) = (text.get_mut(..printable), sm.short_message.get(..printable)) {
        dst.copy_from_slice(src);
    }
    (text, printable as u8)
}

fn mo_pdu(job: &MoJob) -> DeliverSm {
    let mut text = [0u8; 40];
    let len = {
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let _ = write!(cursor, "MO test message {}", job.number);
        cursor.position() as usize
    };
    SubmitSm {
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: job.from,
        dest_addr_ton: 0,
        dest_addr_npi: 1,
        destination_addr: job.to,
        short_message: Bytes::copy_from_slice(text.get(..len).unwrap_or(&[])),
        ..SubmitSm::default()
    }
}

/// A clock outside the years 0..=9999 reads as the epoch.
fn receipt_date(unix_ms: i64) -> DateTime {
    DateTime::from_unix_ms(unix_ms)
        .or_else(|_| DateTime::from_unix_ms(0))
        .unwrap_or_else(|e| unreachable!("1970 is a valid receipt date: {e}"))
}

/// A message id as the simulator writes it, without allocating.
fn format_id(id: u64, hex: bool) -> MessageId {
    let mut digits = [0u8; 24];
    let len = {
        let mut cursor = std::io::Cursor::new(&mut digits[..]);
        let _ = if hex {
            write!(cursor, "{id:x}")
        } else {
            write!(cursor, "{id}")
        };
        cursor.position() as usize
    };
    MessageId::new(digits.get(..len).unwrap_or(&[])).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::pdu::Address;

    #[test]
    fn ids_in_both_formats() {
        assert_eq!(format_id(255, true).as_str(), Some("ff"));
        assert_eq!(format_id(255, false).as_str(), Some("255"));
        assert_eq!(
            format_id(u64::MAX, false).as_str(),
            Some("18446744073709551615")
        );
    }

    #[test]
    fn receipt_text_keeps_plain_text_only() {
        let mut sm = SubmitSm {
            short_message: Bytes::from_static(b"Hello there, this is longer than twenty"),
            ..SubmitSm::default()
        };
        let (text, len) = receipt_text(&sm);
        assert_eq!(&text[..usize::from(len)], b"Hello there, this is");
        sm.data_coding = 8;
        assert_eq!(receipt_text(&sm).1, 0);
        sm.data_coding = 0;
        sm.short_message = Bytes::from_static(b"ab\xffcd");
        assert_eq!(receipt_text(&sm).1, 2);
    }

    #[test]
    fn mo_messages_carry_their_number() {
        let job = MoJob {
            from: Address::from_text("447900000001").expect("address"),
            to: Address::from_text("12345").expect("address"),
            number: 17,
            attempts: 0,
        };
        let sm = mo_pdu(&job);
        assert_eq!(&sm.short_message[..], b"MO test message 17");
        assert_eq!(sm.esm_class, 0);
    }
}
