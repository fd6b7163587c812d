//! Session rules of an SMPP link, as pure logic for both ends.
//!
//! Owns: the bind states and which command each side may send or receive in
//! each (with the command_status a violation earns), the state transitions,
//! sequence-number allocation, the window of outstanding requests (matching
//! responses and timing requests out), and enquire_link bookkeeping. Must not
//! touch: sockets, clocks (every call takes `now_ms`, a monotonic millisecond
//! count chosen by the caller), PDU bodies, or the store. Our SMPP server uses
//! it with [`Role::Smsc`], our operator connectors with [`Role::Esme`].

use std::collections::HashMap;
use std::num::NonZeroUsize;

use crate::smpp::command::CommandId;
use crate::smpp::status::CommandStatus;

/// Which end of the link we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client: binds, submits, receives deliver_sm.
    Esme,
    /// The server: accepts binds, delivers, may outbind.
    Smsc,
}

impl Role {
    pub fn peer(self) -> Role {
        match self {
            Role::Esme => Role::Smsc,
            Role::Smsc => Role::Esme,
        }
    }
}

/// Bind states (SMPP 3.4 section 2.2, with SMPP 5.0's OUTBOUND and UNBOUND).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindState {
    /// Connected, not bound.
    Open,
    /// The SMSC sent outbind; the ESME is expected to bind as receiver or
    /// transceiver.
    Outbound,
    BoundTx,
    BoundRx,
    BoundTrx,
    /// An unbind was sent or received: the link is closing. Only unbind_resp,
    /// responses to requests still in flight and generic_nack may pass (and a
    /// crossing unbind, so both ends close cleanly).
    Unbound,
}

impl BindState {
    pub const ALL: [BindState; 6] = [
        BindState::Open,
        BindState::Outbound,
        BindState::BoundTx,
        BindState::BoundRx,
        BindState::BoundTrx,
        BindState::Unbound,
    ];

    pub fn is_bound(self) -> bool {
        matches!(
            self,
            BindState::BoundTx | BindState::BoundRx | BindState::BoundTrx
        )
    }

    /// The ESME may submit (transmitter side of the link).
    pub fn can_transmit(self) -> bool {
        matches!(self, BindState::BoundTx | BindState::BoundTrx)
    }

    /// The SMSC may deliver (receiver side of the link).
    pub fn can_receive(self) -> bool {
        matches!(self, BindState::BoundRx | BindState::BoundTrx)
    }

    /// The state after `command` with `status` passed the link (sent or
    /// received; apply it once the PDU is accepted). A failed bind_resp leaves
    /// the state alone so the ESME may try again or close.
    pub fn after(self, command: CommandId, status: CommandStatus) -> BindState {
        let binding = matches!(self, BindState::Open | BindState::Outbound);
        match command {
            CommandId::BindTransmitterResp if status.is_ok() && self == BindState::Open => {
                BindState::BoundTx
            }
            CommandId::BindReceiverResp if status.is_ok() && binding => BindState::BoundRx,
            CommandId::BindTransceiverResp if status.is_ok() && binding => BindState::BoundTrx,
            CommandId::Outbind if self == BindState::Open => BindState::Outbound,
            CommandId::Unbind | CommandId::UnbindResp if self.is_bound() => BindState::Unbound,
            _ => self,
        }
    }
}

/// Whether `sender` may send `command` in `state`. Responses carrying an
/// error status are outside this table: they answer a request the table
/// refused and may always be sent.
pub fn may_send(sender: Role, state: BindState, command: CommandId) -> bool {
    use BindState as S;
    use CommandId as C;
    let tx = state.can_transmit();
    let rx = state.can_receive();
    let closing = state == S::Unbound;
    match (sender, command) {
        (_, C::GenericNack) => true,
        (_, C::EnquireLink) => !closing,
        (_, C::EnquireLinkResp) => true,
        (_, C::Unbind) => state.is_bound() || closing,
        (_, C::UnbindResp) => closing,

        (Role::Esme, C::BindTransmitter) => state == S::Open,
        (Role::Esme, C::BindReceiver | C::BindTransceiver) => {
            matches!(state, S::Open | S::Outbound)
        }
        (Role::Smsc, C::BindTransmitterResp) => state == S::Open,
        (Role::Smsc, C::BindReceiverResp | C::BindTransceiverResp) => {
            matches!(state, S::Open | S::Outbound)
        }
        (Role::Smsc, C::Outbind) => state == S::Open,

        (Role::Esme, C::SubmitSm | C::SubmitMulti | C::QuerySm | C::CancelSm | C::ReplaceSm) => tx,
        (
            Role::Smsc,
            C::SubmitSmResp
            | C::SubmitMultiResp
            | C::QuerySmResp
            | C::CancelSmResp
            | C::ReplaceSmResp,
        ) => tx || closing,
        (Role::Smsc, C::DeliverSm | C::AlertNotification) => rx,
        (Role::Esme, C::DeliverSmResp) => rx || closing,
        (Role::Esme, C::DataSm) => tx,
        (Role::Smsc, C::DataSm) => rx,
        (Role::Smsc, C::DataSmResp) => tx || closing,
        (Role::Esme, C::DataSmResp) => rx || closing,

        // Everything else belongs to the other side only.
        (Role::Esme, _) | (Role::Smsc, _) => false,
    }
}

fn is_bind_request(command: CommandId) -> bool {
    matches!(
        command,
        CommandId::BindTransmitter | CommandId::BindReceiver | CommandId::BindTransceiver
    )
}

/// The status a command sent by `sender` in `state` earns: Ok, or
/// ESME_RALYBND for a bind while bound, or ESME_RINVBNDSTS.
pub fn check(sender: Role, state: BindState, command: CommandId) -> Result<(), CommandStatus> {
    if may_send(sender, state, command) {
        Ok(())
    } else if sender == Role::Esme && is_bind_request(command) && state.is_bound() {
        Err(CommandStatus::ESME_RALYBND)
    } else {
        Err(CommandStatus::ESME_RINVBNDSTS)
    }
}

/// One end's view of a link's bind state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindSession {
    role: Role,
    state: BindState,
}

impl BindSession {
    pub fn new(role: Role) -> BindSession {
        BindSession {
            role,
            state: BindState::Open,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> BindState {
        self.state
    }

    /// May we send `command` now (requests and OK responses)?
    pub fn check_send(&self, command: CommandId) -> Result<(), CommandStatus> {
        check(self.role, self.state, command)
    }

    /// May the peer send us `command` now? The error is the status to answer
    /// the request with (a response or generic_nack arriving out of turn is
    /// reported the same way, but is never answered).
    pub fn check_receive(&self, command: CommandId) -> Result<(), CommandStatus> {
        check(self.role.peer(), self.state, command)
    }

    /// Records a PDU that passed the link in either direction.
    pub fn apply(&mut self, command: CommandId, status: CommandStatus) -> BindState {
        self.state = self.state.after(command, status);
        self.state
    }
}

/// The largest sequence_number SMPP allows.
pub const MAX_SEQUENCE_NUMBER: u32 = 0x7FFF_FFFF;

pub fn is_valid_sequence_number(sequence_number: u32) -> bool {
    (1..=MAX_SEQUENCE_NUMBER).contains(&sequence_number)
}

/// Hands out sequence numbers 1..=0x7FFFFFFF, wrapping back to 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceNumbers {
    next: u32,
}

impl Default for SequenceNumbers {
    fn default() -> Self {
        SequenceNumbers::new()
    }
}

impl SequenceNumbers {
    pub fn new() -> SequenceNumbers {
        SequenceNumbers { next: 1 }
    }

    /// Starts at `first` (e.g. restored after a restart); an invalid value
    /// starts at 1.
    pub fn starting_at(first: u32) -> SequenceNumbers {
        SequenceNumbers {
            next: if is_valid_sequence_number(first) {
                first
            } else {
                1
            },
        }
    }

    pub fn allocate(&mut self) -> u32 {
        let current = self.next;
        debug_assert!(
            is_valid_sequence_number(current),
            "sequence numbers stay in 1..=0x7FFFFFFF"
        );
        self.next = if current >= MAX_SEQUENCE_NUMBER {
            1
        } else {
            current + 1
        };
        current
    }

    /// The number the next `allocate` returns.
    pub fn peek(&self) -> u32 {
        self.next
    }
}

/// A request waiting for its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outstanding<T> {
    pub sequence_number: u32,
    pub command_id: CommandId,
    pub sent_at_ms: u64,
    pub deadline_ms: u64,
    pub tag: T,
}

/// A request that did not enter the window; the caller's tag comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveError<T> {
    /// The window holds its capacity of requests: wait for a response.
    WindowFull(T),
    /// A request with this sequence number is still outstanding.
    DuplicateSequence(T),
}

impl<T> ReserveError<T> {
    pub fn into_tag(self) -> T {
        match self {
            ReserveError::WindowFull(tag) | ReserveError::DuplicateSequence(tag) => tag,
        }
    }
}

/// What a response did to the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseMatch<T> {
    /// The response answers this request; it left the window.
    Matched(Outstanding<T>),
    /// generic_nack with this request's sequence number; it left the window.
    Nacked(Outstanding<T>),
    /// A request with this sequence number is outstanding, but the response
    /// is not its response. The request stays (it will time out).
    Mismatched {
        sequence_number: u32,
        expected: Option<CommandId>,
        received: CommandId,
    },
    /// No request with this sequence number is outstanding.
    Unknown {
        sequence_number: u32,
        received: CommandId,
    },
}

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Slot<T> {
    entry: Option<Outstanding<T>>,
    /// Neighbours in deadline order (oldest first); NIL at the ends.
    earlier: usize,
    later: usize,
}

/// The requests outstanding on one bind, at most `capacity` of them.
///
/// Slots are allocated once: a slab of `capacity` entries linked in deadline
/// order, a free list, and a sequence_number index sized for the capacity. So
/// reserve, match and expire are O(1) (a reserve whose `now_ms` went
/// backwards walks back from the newest entry to keep the order) and nothing
/// allocates per request.
#[derive(Debug)]
pub struct Window<T> {
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
    by_sequence: HashMap<u32, usize>,
    oldest: usize,
    newest: usize,
    timeout_ms: u64,
}

impl<T> Window<T> {
    /// A window of `capacity` requests, each timing out `timeout_ms` after it
    /// was reserved.
    pub fn new(capacity: NonZeroUsize, timeout_ms: u64) -> Window<T> {
        let capacity = capacity.get();
        let mut slots = Vec::with_capacity(capacity);
        slots.resize_with(capacity, || Slot {
            entry: None,
            earlier: NIL,
            later: NIL,
        });
        Window {
            slots,
            free: (0..capacity).rev().collect(),
            // Twice the capacity leaves room for deleted markers, so steady
            // churn never makes the map grow.
            by_sequence: HashMap::with_capacity(capacity.saturating_mul(2)),
            oldest: NIL,
            newest: NIL,
            timeout_ms,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn len(&self) -> usize {
        self.by_sequence.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sequence.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    pub fn contains(&self, sequence_number: u32) -> bool {
        self.by_sequence.contains_key(&sequence_number)
    }

    /// When the next request times out, for the caller's timer.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.slots
            .get(self.oldest)
            .and_then(|slot| slot.entry.as_ref())
            .map(|entry| entry.deadline_ms)
    }

    /// Records a request about to be sent.
    pub fn try_reserve(
        &mut self,
        sequence_number: u32,
        command_id: CommandId,
        now_ms: u64,
        tag: T,
    ) -> Result<(), ReserveError<T>> {
        if self.by_sequence.contains_key(&sequence_number) {
            return Err(ReserveError::DuplicateSequence(tag));
        }
        let Some(slot_index) = self.free.pop() else {
            return Err(ReserveError::WindowFull(tag));
        };
        let deadline_ms = now_ms.saturating_add(self.timeout_ms);

        // Find the newest entry due no later than this one; usually the tail.
        let mut earlier = self.newest;
        while earlier != NIL && self.deadline_of(earlier) > deadline_ms {
            earlier = self.slots[earlier].earlier;
        }
        let later = if earlier == NIL {
            self.oldest
        } else {
            self.slots[earlier].later
        };

        let slot = &mut self.slots[slot_index];
        debug_assert!(slot.entry.is_none(), "free slots hold no entry");
        slot.entry = Some(Outstanding {
            sequence_number,
            command_id,
            sent_at_ms: now_ms,
            deadline_ms,
            tag,
        });
        slot.earlier = earlier;
        slot.later = later;
        if earlier == NIL {
            self.oldest = slot_index;
        } else {
            self.slots[earlier].later = slot_index;
        }
        if later == NIL {
            self.newest = slot_index;
        } else {
            self.slots[later].earlier = slot_index;
        }
        self.by_sequence.insert(sequence_number, slot_index);
        Ok(())
    }

    /// Matches a response (or generic_nack) by sequence_number.
    pub fn complete(&mut self, sequence_number: u32, received: CommandId) -> ResponseMatch<T> {
        let Some(&slot_index) = self.by_sequence.get(&sequence_number) else {
            return ResponseMatch::Unknown {
                sequence_number,
                received,
            };
        };
        let expected = self.slots[slot_index]
            .entry
            .as_ref()
            .and_then(|entry| entry.command_id.response());
        if received == CommandId::GenericNack {
            return ResponseMatch::Nacked(self.remove(slot_index));
        }
        if expected == Some(received) {
            return ResponseMatch::Matched(self.remove(slot_index));
        }
        ResponseMatch::Mismatched {
            sequence_number,
            expected,
            received,
        }
    }

    /// Removes and yields, oldest first, every request due at or before
    /// `now_ms`. Entries not yet taken when the iterator is dropped stay.
    pub fn expire(&mut self, now_ms: u64) -> Expired<'_, T> {
        Expired {
            window: self,
            now_ms,
        }
    }

    /// Removes and yields every request, oldest first: the link is gone and
    /// the caller must requeue or fail them.
    pub fn drain(&mut self) -> Expired<'_, T> {
        self.expire(u64::MAX)
    }

    fn deadline_of(&self, slot_index: usize) -> u64 {
        self.slots[slot_index]
            .entry
            .as_ref()
            .map_or(0, |entry| entry.deadline_ms)
    }

    fn remove(&mut self, slot_index: usize) -> Outstanding<T> {
        let slot = &mut self.slots[slot_index];
        let entry = slot.entry.take();
        let (earlier, later) = (slot.earlier, slot.later);
        slot.earlier = NIL;
        slot.later = NIL;
        if earlier == NIL {
            self.oldest = later;
        } else {
            self.slots[earlier].later = later;
        }
        if later == NIL {
            self.newest = earlier;
        } else {
            self.slots[later].earlier = earlier;
        }
        self.free.push(slot_index);
        let entry =
            entry.unwrap_or_else(|| unreachable!("window slot {slot_index} was linked but empty"));
        let indexed = self.by_sequence.remove(&entry.sequence_number);
        assert_eq!(
            indexed,
            Some(slot_index),
            "window index and slab disagree on sequence {}",
            entry.sequence_number
        );
        entry
    }
}

/// Timed-out (or drained) requests, oldest first.
pub struct Expired<'a, T> {
    window: &'a mut Window<T>,
    now_ms: u64,
}

impl<T> Iterator for Expired<'_, T> {
    type Item = Outstanding<T>;

    fn next(&mut self) -> Option<Outstanding<T>> {
        let oldest = self.window.oldest;
        if oldest == NIL || self.window.deadline_of(oldest) > self.now_ms {
            return None;
        }
        Some(self.window.remove(oldest))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.window.len()))
    }
}

/// enquire_link timing for one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAliveConfig {
    /// Send enquire_link after this long without hearing from the peer, and
    /// again every this long while it stays silent.
    pub enquire_after_idle_ms: u64,
    /// The peer is dead after this long without any PDU from it.
    pub dead_after_silence_ms: u64,
}

impl Default for KeepAliveConfig {
    /// 30 s idle before an enquire_link, dead after 90 s of silence (three
    /// unanswered enquire_links).
    fn default() -> Self {
        KeepAliveConfig {
            enquire_after_idle_ms: 30_000,
            dead_after_silence_ms: 90_000,
        }
    }
}

/// Tracks when the peer was last heard from and when to probe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    config: KeepAliveConfig,
    last_received_ms: u64,
    last_enquire_sent_ms: Option<u64>,
}

impl KeepAlive {
    /// Starts counting from `now_ms` (the connection or bind).
    pub fn new(config: KeepAliveConfig, now_ms: u64) -> KeepAlive {
        KeepAlive {
            config,
            last_received_ms: now_ms,
            last_enquire_sent_ms: None,
        }
    }

    pub fn config(&self) -> KeepAliveConfig {
        self.config
    }

    /// Any PDU from the peer proves it alive, not only enquire_link_resp.
    pub fn on_received(&mut self, now_ms: u64) {
        self.last_received_ms = self.last_received_ms.max(now_ms);
    }

    pub fn on_enquire_sent(&mut self, now_ms: u64) {
        self.last_enquire_sent_ms =
            Some(self.last_enquire_sent_ms.map_or(now_ms, |t| t.max(now_ms)));
    }

    pub fn last_received_ms(&self) -> u64 {
        self.last_received_ms
    }

    /// When to send the next enquire_link: an idle period after the later of
    /// the last PDU received and the last enquire_link sent.
    pub fn next_enquire_at_ms(&self) -> u64 {
        let since = self
            .last_enquire_sent_ms
            .map_or(self.last_received_ms, |sent| {
                sent.max(self.last_received_ms)
            });
        since.saturating_add(self.config.enquire_after_idle_ms)
    }

    pub fn should_send_enquire(&self, now_ms: u64) -> bool {
        now_ms >= self.next_enquire_at_ms()
    }

    pub fn dead_at_ms(&self) -> u64 {
        self.last_received_ms
            .saturating_add(self.config.dead_after_silence_ms)
    }

    pub fn is_peer_dead(&self, now_ms: u64) -> bool {
        now_ms >= self.dead_at_ms()
    }

    /// The earliest time anything here needs attention, for the caller's timer.
    pub fn next_wakeup_ms(&self) -> u64 {
        self.next_enquire_at_ms().min(self.dead_at_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BindState as S;
    use CommandId as C;

    /// The table, written out per sender and state independently of the
    /// match in `may_send`.
    fn allowed(sender: Role, state: BindState) -> Vec<CommandId> {
        let always = [C::GenericNack, C::EnquireLinkResp];
        let live = [C::GenericNack, C::EnquireLinkResp, C::EnquireLink];
        let esme_tx = [
            C::SubmitSm,
            C::SubmitMulti,
            C::QuerySm,
            C::CancelSm,
            C::ReplaceSm,
            C::DataSm,
        ];
        let esme_rx = [C::DeliverSmResp, C::DataSmResp];
        let smsc_tx = [
            C::SubmitSmResp,
            C::SubmitMultiResp,
            C::QuerySmResp,
            C::CancelSmResp,
            C::ReplaceSmResp,
            C::DataSmResp,
        ];
        let smsc_rx = [C::DeliverSm, C::DataSm, C::AlertNotification];
        let mut list: Vec<CommandId> = Vec::new();
        match (sender, state) {
            (Role::Esme, S::Open) => {
                list.extend(live);
                list.extend([C::BindTransmitter, C::BindReceiver, C::BindTransceiver]);
            }
            (Role::Esme, S::Outbound) => {
                list.extend(live);
                list.extend([C::BindReceiver, C::BindTransceiver]);
            }
            (Role::Esme, S::BoundTx) => {
                list.extend(live);
                list.extend(esme_tx);
                list.push(C::Unbind);
            }
            (Role::Esme, S::BoundRx) => {
                list.extend(live);
                list.extend(esme_rx);
                list.push(C::Unbind);
            }
            (Role::Esme, S::BoundTrx) => {
                list.extend(live);
                list.extend(esme_tx);
                list.extend(esme_rx);
                list.push(C::Unbind);
            }
            (Role::Esme, S::Unbound) => {
                list.extend(always);
                list.extend(esme_rx);
                list.extend([C::Unbind, C::UnbindResp]);
            }
            (Role::Smsc, S::Open) => {
                list.extend(live);
                list.extend([
                    C::BindTransmitterResp,
                    C::BindReceiverResp,
                    C::BindTransceiverResp,
                    C::Outbind,
                ]);
            }
            (Role::Smsc, S::Outbound) => {
                list.extend(live);
                list.extend([C::BindReceiverResp, C::BindTransceiverResp]);
            }
            (Role::Smsc, S::BoundTx) => {
                list.extend(live);
                list.extend(smsc_tx);
                list.push(C::Unbind);
            }
            (Role::Smsc, S::BoundRx) => {
                list.extend(live);
                list.extend(smsc_rx);
                list.push(C::Unbind);
            }
            (Role::Smsc, S::BoundTrx) => {
                list.extend(live);
                list.extend(smsc_tx);
                list.extend(smsc_rx);
                list.push(C::Unbind);
            }
            (Role::Smsc, S::Unbound) => {
                list.extend(always);
                list.extend(smsc_tx);
                list.extend([C::Unbind, C::UnbindResp]);
            }
        }
        list
    }

    #[test]
    fn every_state_and_command_follows_the_table() {
        let mut checked = 0;
        for role in [Role::Esme, Role::Smsc] {
            for state in BindState::ALL {
                let session = BindSession { role, state };
                let we_send = allowed(role, state);
                let peer_sends = allowed(role.peer(), state);
                for command in CommandId::ALL {
                    let want_send = we_send.contains(&command);
                    let want_receive = peer_sends.contains(&command);
                    let status_for = |allowed: bool, sender: Role| {
                        if allowed {
                            Ok(())
                        } else if sender == Role::Esme
                            && state.is_bound()
                            && matches!(
                                command,
                                C::BindTransmitter | C::BindReceiver | C::BindTransceiver
                            )
                        {
                            Err(CommandStatus::ESME_RALYBND)
                        } else {
                            Err(CommandStatus::ESME_RINVBNDSTS)
                        }
                    };
                    assert_eq!(
                        session.check_send(command),
                        status_for(want_send, role),
                        "{role:?} sending {command} in {state:?}"
                    );
                    assert_eq!(
                        session.check_receive(command),
                        status_for(want_receive, role.peer()),
                        "{role:?} receiving {command} in {state:?}"
                    );
                    checked += 2;
                }
            }
        }
        assert_eq!(checked, 2 * 6 * 27 * 2);
    }

    #[test]
    fn bind_while_bound_is_already_bound() {
        let smsc = BindSession {
            role: Role::Smsc,
            state: S::BoundTrx,
        };
        assert_eq!(
            smsc.check_receive(C::BindTransmitter),
            Err(CommandStatus::ESME_RALYBND)
        );
        assert_eq!(
            smsc.check_receive(C::SubmitSm),
            Ok(()),
            "a transceiver may submit"
        );
        let rx = BindSession {
            role: Role::Smsc,
            state: S::BoundRx,
        };
        assert_eq!(
            rx.check_receive(C::SubmitSm),
            Err(CommandStatus::ESME_RINVBNDSTS)
        );
        let open = BindSession::new(Role::Smsc);
        assert_eq!(
            open.check_receive(C::SubmitSm),
            Err(CommandStatus::ESME_RINVBNDSTS)
        );
    }

    #[test]
    fn transitions_on_bind_resp_outbind_and_unbind() {
        for (resp, bound) in [
            (C::BindTransmitterResp, S::BoundTx),
            (C::BindReceiverResp, S::BoundRx),
            (C::BindTransceiverResp, S::BoundTrx),
        ] {
            let mut esme = BindSession::new(Role::Esme);
            assert_eq!(esme.apply(resp, CommandStatus::ESME_RBINDFAIL), S::Open);
            assert_eq!(esme.apply(resp, CommandStatus::ESME_ROK), bound);
            assert_eq!(esme.apply(C::SubmitSmResp, CommandStatus::ESME_ROK), bound);
            assert_eq!(
                esme.apply(resp, CommandStatus::ESME_ROK),
                bound,
                "a stray bind_resp does not rebind"
            );
            assert_eq!(esme.apply(C::Unbind, CommandStatus::ESME_ROK), S::Unbound);
            assert_eq!(
                esme.apply(C::UnbindResp, CommandStatus::ESME_ROK),
                S::Unbound
            );
            assert_eq!(esme.apply(resp, CommandStatus::ESME_ROK), S::Unbound);
        }
        let mut esme = BindSession::new(Role::Esme);
        assert_eq!(esme.apply(C::Outbind, CommandStatus::ESME_ROK), S::Outbound);
        assert_eq!(esme.check_send(C::BindReceiver), Ok(()));
        assert_eq!(
            esme.check_send(C::BindTransmitter),
            Err(CommandStatus::ESME_RINVBNDSTS)
        );
        assert_eq!(
            esme.apply(C::BindTransmitterResp, CommandStatus::ESME_ROK),
            S::Outbound
        );
        assert_eq!(
            esme.apply(C::BindReceiverResp, CommandStatus::ESME_ROK),
            S::BoundRx
        );
        assert_eq!(esme.apply(C::Outbind, CommandStatus::ESME_ROK), S::BoundRx);
    }

    #[test]
    fn sequence_numbers_wrap_to_one_and_skip_zero() {
        let mut seq = SequenceNumbers::new();
        assert_eq!(seq.allocate(), 1);
        assert_eq!(seq.allocate(), 2);
        let mut seq = SequenceNumbers::starting_at(MAX_SEQUENCE_NUMBER - 1);
        assert_eq!(seq.allocate(), 0x7FFF_FFFE);
        assert_eq!(seq.allocate(), 0x7FFF_FFFF);
        assert_eq!(seq.allocate(), 1);
        assert_eq!(seq.peek(), 2);
        assert_eq!(SequenceNumbers::starting_at(0).allocate(), 1);
        assert_eq!(SequenceNumbers::starting_at(0x8000_0000).allocate(), 1);
        assert_eq!(SequenceNumbers::starting_at(u32::MAX).allocate(), 1);
        assert!(!is_valid_sequence_number(0));
        assert!(!is_valid_sequence_number(0x8000_0000));
        assert!(is_valid_sequence_number(MAX_SEQUENCE_NUMBER));
    }

    fn window(capacity: usize, timeout_ms: u64) -> Window<&'static str> {
        Window::new(
            NonZeroUsize::new(capacity).expect("test capacity is positive"),
            timeout_ms,
        )
    }

    #[test]
    fn window_full_returns_the_tag() {
        let mut w = window(2, 1_000);
        assert_eq!(w.try_reserve(1, C::SubmitSm, 0, "a"), Ok(()));
        assert_eq!(
            w.try_reserve(1, C::SubmitSm, 0, "dup"),
            Err(ReserveError::DuplicateSequence("dup"))
        );
        assert_eq!(w.try_reserve(2, C::SubmitSm, 0, "b"), Ok(()));
        assert!(w.is_full());
        let refused = w.try_reserve(3, C::SubmitSm, 0, "c");
        assert_eq!(refused, Err(ReserveError::WindowFull("c")));
        assert_eq!(refused.map_err(ReserveError::into_tag), Err("c"));
        assert!(matches!(
            w.complete(1, C::SubmitSmResp),
            ResponseMatch::Matched(Outstanding { tag: "a", .. })
        ));
        assert_eq!(w.try_reserve(3, C::SubmitSm, 0, "c"), Ok(()));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn responses_match_by_sequence_and_command() {
        let mut w = window(4, 1_000);
        w.try_reserve(7, C::SubmitSm, 10, "submit").expect("room");
        w.try_reserve(8, C::EnquireLink, 10, "ping").expect("room");
        w.try_reserve(9, C::DeliverSm, 10, "dlr").expect("room");
        assert_eq!(
            w.complete(7, C::DeliverSmResp),
            ResponseMatch::Mismatched {
                sequence_number: 7,
                expected: Some(C::SubmitSmResp),
                received: C::DeliverSmResp
            }
        );
        assert!(w.contains(7), "a mismatched response leaves the request");
        assert_eq!(
            w.complete(99, C::SubmitSmResp),
            ResponseMatch::Unknown {
                sequence_number: 99,
                received: C::SubmitSmResp
            }
        );
        let matched = w.complete(7, C::SubmitSmResp);
        assert_eq!(
            matched,
            ResponseMatch::Matched(Outstanding {
                sequence_number: 7,
                command_id: C::SubmitSm,
                sent_at_ms: 10,
                deadline_ms: 1_010,
                tag: "submit"
            })
        );
        assert!(matches!(
            w.complete(8, C::GenericNack),
            ResponseMatch::Nacked(Outstanding { tag: "ping", .. })
        ));
        assert!(matches!(
            w.complete(7, C::SubmitSmResp),
            ResponseMatch::Unknown { .. }
        ));
        assert_eq!(w.len(), 1);
        assert!(w.contains(9));
    }

    #[test]
    fn expiry_yields_oldest_first_and_only_due_entries() {
        let mut w = window(8, 100);
        w.try_reserve(1, C::SubmitSm, 0, "t0").expect("room");
        w.try_reserve(2, C::SubmitSm, 50, "t50").expect("room");
        w.try_reserve(3, C::SubmitSm, 60, "t60").expect("room");
        assert_eq!(w.next_deadline_ms(), Some(100));
        assert_eq!(w.expire(99).count(), 0);
        let due: Vec<_> = w.expire(150).map(|e| e.tag).collect();
        assert_eq!(due, vec!["t0", "t50"]);
        assert_eq!(w.next_deadline_ms(), Some(160));
        assert!(matches!(
            w.complete(2, C::SubmitSmResp),
            ResponseMatch::Unknown { .. }
        ));
        // A clock that stepped back still expires in deadline order.
        w.try_reserve(4, C::SubmitSm, 10, "t10").expect("room");
        assert_eq!(w.next_deadline_ms(), Some(110));
        let rest: Vec<_> = w.drain().map(|e| e.sequence_number).collect();
        assert_eq!(rest, vec![4, 3]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline_ms(), None);
    }

    #[test]
    fn dropping_the_expiry_iterator_keeps_the_rest() {
        let mut w = window(4, 10);
        for seq in 1..=4 {
            w.try_reserve(seq, C::SubmitSm, u64::from(seq), "x")
                .expect("room");
        }
        assert_eq!(w.expire(1_000).next().map(|e| e.sequence_number), Some(1));
        assert_eq!(w.len(), 3);
        w.complete(3, C::SubmitSmResp);
        let rest: Vec<_> = w.expire(1_000).map(|e| e.sequence_number).collect();
        assert_eq!(rest, vec![2, 4]);
    }

    #[test]
    fn window_survives_heavy_churn_at_capacity() {
        let mut w: Window<u64> = Window::new(NonZeroUsize::new(16).expect("positive"), 1_000);
        let mut seqs = SequenceNumbers::starting_at(MAX_SEQUENCE_NUMBER - 100);
        let mut in_flight = std::collections::VecDeque::new();
        for now_ms in 0..10_000u64 {
            while !w.is_full() {
                let seq = seqs.allocate();
                w.try_reserve(seq, C::SubmitSm, now_ms, now_ms)
                    .expect("room");
                in_flight.push_back(seq);
            }
            // Answer every other request out of order; let the rest time out.
            if let Some(seq) = in_flight.pop_back() {
                if now_ms % 2 == 0 {
                    assert!(matches!(
                        w.complete(seq, C::SubmitSmResp),
                        ResponseMatch::Matched(_)
                    ));
                }
            }
            for expired in w.expire(now_ms) {
                assert!(expired.deadline_ms <= now_ms);
                in_flight.retain(|s| *s != expired.sequence_number);
            }
            assert!(w.len() <= w.capacity());
        }
        let remaining = w.len();
        assert_eq!(w.drain().count(), remaining);
        assert!(w.is_empty());
        assert_eq!(w.try_reserve(seqs.allocate(), C::SubmitSm, 0, 0), Ok(()));
    }

    #[test]
    fn keepalive_probes_when_idle_and_declares_death_after_silence() {
        let config = KeepAliveConfig {
            enquire_after_idle_ms: 30_000,
            dead_after_silence_ms: 90_000,
        };
        let mut k = KeepAlive::new(config, 1_000);
        assert!(!k.should_send_enquire(30_999));
        assert!(k.should_send_enquire(31_000));
        k.on_enquire_sent(31_000);
        assert!(!k.should_send_enquire(60_999), "one probe per idle period");
        assert_eq!(k.next_enquire_at_ms(), 61_000);
        k.on_received(45_000);
        assert_eq!(k.next_enquire_at_ms(), 75_000);
        assert_eq!(k.dead_at_ms(), 135_000);
        assert!(!k.is_peer_dead(134_999));
        assert!(k.is_peer_dead(135_000));
        assert_eq!(k.next_wakeup_ms(), 75_000);
        k.on_received(10);
        assert_eq!(k.last_received_ms(), 45_000, "time never runs backwards");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Reserve { seq: u32, now_ms: u64 },
            Respond { seq: u32, nack: bool, wrong: bool },
            Expire { now_ms: u64 },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (1u32..12, 0u64..500).prop_map(|(seq, now_ms)| Op::Reserve { seq, now_ms }),
                (1u32..12, any::<bool>(), any::<bool>())
                    .prop_map(|(seq, nack, wrong)| Op::Respond { seq, nack, wrong }),
                (0u64..700).prop_map(|now_ms| Op::Expire { now_ms }),
            ]
        }

        proptest! {
            /// The window behaves like a plain list of (deadline, arrival)
            /// entries, whatever order times and responses come in.
            #[test]
            fn window_matches_a_simple_model(ops in proptest::collection::vec(op(), 0..200)) {
                const CAPACITY: usize = 5;
                const TIMEOUT_MS: u64 = 100;
                let mut window: Window<u64> =
                    Window::new(NonZeroUsize::new(CAPACITY).expect("positive"), TIMEOUT_MS);
                // (deadline_ms, arrival, seq)
                let mut model: Vec<(u64, u64, u32)> = Vec::new();
                for (arrival, op) in (0u64..).zip(ops) {
                    match op {
                        Op::Reserve { seq, now_ms } => {
                            let got = window.try_reserve(seq, CommandId::SubmitSm, now_ms, arrival);
                            if model.iter().any(|e| e.2 == seq) {
                                prop_assert_eq!(got, Err(ReserveError::DuplicateSequence(arrival)));
                            } else if model.len() == CAPACITY {
                                prop_assert_eq!(got, Err(ReserveError::WindowFull(arrival)));
                            } else {
                                prop_assert_eq!(got, Ok(()));
                                model.push((now_ms + TIMEOUT_MS, arrival, seq));
                            }
                        }
                        Op::Respond { seq, nack, wrong } => {
                            let received = if nack {
                                CommandId::GenericNack
                            } else if wrong {
                                CommandId::DeliverSmResp
                            } else {
                                CommandId::SubmitSmResp
                            };
                            let position = model.iter().position(|e| e.2 == seq);
                            match (window.complete(seq, received), position) {
                                (ResponseMatch::Matched(entry), Some(i)) if !nack && !wrong => {
                                    prop_assert_eq!(entry.tag, model.remove(i).1);
                                }
                                (ResponseMatch::Nacked(entry), Some(i)) if nack => {
                                    prop_assert_eq!(entry.tag, model.remove(i).1);
                                }
                                (ResponseMatch::Mismatched { .. }, Some(_)) if wrong && !nack => {}
                                (ResponseMatch::Unknown { .. }, None) => {}
                                (other, position) => {
                                    prop_assert!(false, "unexpected {:?} for model position {:?}", other, position);
                                }
                            }
                        }
                        Op::Expire { now_ms } => {
                            let got: Vec<u32> =
                                window.expire(now_ms).map(|e| e.sequence_number).collect();
                            let mut due: Vec<(u64, u64, u32)> =
                                model.iter().copied().filter(|e| e.0 <= now_ms).collect();
                            due.sort();
                            model.retain(|e| e.0 > now_ms);
                            let want: Vec<u32> = due.iter().map(|e| e.2).collect();
                            prop_assert_eq!(got, want);
                        }
                    }
                    prop_assert_eq!(window.len(), model.len());
                    prop_assert_eq!(window.next_deadline_ms(), model.iter().map(|e| e.0).min());
                }
            }
        }
    }
}
