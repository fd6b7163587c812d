//! DLR and MO delivery to customers: which pending delivery goes to which
//! receiving bind of this node, its retries, and its commit.
//!
//! Owns: the node's delivery hub (one task, on the first connection core)
//! that consumes this node's `Effect::Deliver`, rescans the store when told
//! to (start, a new receiving bind, lost effects, a bind gone with
//! deliveries in hand), loads what a deliver_sm needs, hands each delivery
//! to a receiver/transceiver session of its account by a bounded channel to
//! that session's core, retries with backoff what came back unanswered or
//! refused, parks what failed too often until the account binds again, and
//! proposes `DlrDelivered` / `MoDelivered` once a deliver_sm_resp OK came.
//! Also the deliver_sm bodies themselves (`dlr_deliver_sm`, `mo_deliver_sm`).
//! Must not touch: the socket side of a session (see `session`, which sends
//! what it is handed and reports each answer), the store's internals (only
//! `StoreHandle`), or dispatch to operators.
//!
//! Ownership of a delivery is decided by the replicated state (the node of a
//! receiving bind); this node acts only on deliveries aimed at it, and a
//! delivery whose account has no receiving bind here is left to the store.
//!
//! At-least-once: the store clears a delivery only when `DlrDelivered` /
//! `MoDelivered` commits after the customer's deliver_sm_resp OK. A response
//! lost on the way, a session closed with deliver_sm outstanding, a crash
//! between the response and the commit, or a failed commit all lead to the
//! same delivery being sent again later: customers may see duplicates (same
//! receipted_message_id) and must treat them as such. Nothing is lost.
//!
//! Bounds: the hub tracks at most [`MAX_TRACKED`] SMPP deliveries (loaded,
//! queued, in a session, retrying, committing or parked) and, apart from
//! them, at most [`MAX_WEBHOOKS_IN_HAND`] webhook deliveries (with the
//! webhook sender, which retries them until a 2xx): a dead webhook receiver
//! with a large backlog fills only its own budget, and deliver_sm keep
//! loading. Beyond either bound deliveries stay owed in the store (effects
//! are dropped, webhook deliveries are not even loaded) and a rescan picks
//! them up once room frees. Sessions get at most their window's worth of
//! deliveries at once. A webhook retry is sent only if the store still owes
//! it here ([`still_owed`]): one whose message retention purged meanwhile is
//! dropped and counted instead.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::or;

use crate::smpp::pdu::{self, DeliverSm, ESM_TYPE_DELIVERY_RECEIPT, ESM_UDHI};
use crate::smpp::receipt::{self, Receipt};
use crate::smpp::status::CommandStatus;
use crate::smpp::text::{self, DataCoding, DefaultAlphabet};
use crate::smpp::time::DateTime;
use crate::store::command::{Address, Command, MoReceived};
use crate::store::driver::StoreHandle;
use crate::store::id::{MessageId, MESSAGE_ID_TEXT_LEN};
use crate::store::state::{AppState, ApplyOutcome, DeliveryKind, Effect, PendingDelivery};

use super::webhook;

/// SMPP deliveries (and ids being loaded) the hub keeps in hand at once.
pub const MAX_TRACKED: usize = 65_536;
/// Webhook deliveries the hub keeps in hand at once (with the sender:
/// sending or waiting for a retry), apart from [`MAX_TRACKED`].
pub const MAX_WEBHOOKS_IN_HAND: usize = 8192;
/// Events from sessions and commits queued towards the hub.
pub const HUB_INBOX_CAPACITY: usize = 4096;
/// Deliveries loaded from the store by one rescan query.
const RESCAN_PAGE: usize = 512;
/// Effects taken from the store's queue before one load query.
const EFFECT_BATCH: usize = 512;
/// The hub looks at the stop flag, lost effects and due retries this often.
const HUB_TICK: Duration = Duration::from_millis(200);
/// A safety net: while a receiving bind is here, the hub rescans this often,
/// so a delivery aimed here that no effect announced (the effect queue is
/// shared by every consumer of this node's effects) still goes out.
const SWEEP_INTERVAL_MS: u64 = 30_000;
/// Sends of one delivery before it is parked until the account binds again.
pub const MAX_ATTEMPTS: u32 = 6;
/// First retry delay; doubled per attempt up to [`RETRY_MAX_MS`].
const RETRY_BASE_MS: u64 = 1_000;
const RETRY_MAX_MS: u64 = 60_000;
/// How long a session waits for a deliver_sm_resp before the delivery is
/// handed back for a retry.
pub const DELIVER_RESP_TIMEOUT_MS: u64 = 10_000;
/// Characters of the message text a DLR repeats are taken from at most
/// this many leading payload octets (20 UCS-2 characters with surrogates).
const TEXT_HEAD_BYTES: usize = 80;

/// One delivery on its way to a customer: the deliver_sm body (without a
/// sequence number) and what the hub needs back when it is answered.
#[derive(Debug)]
pub struct Job {
    pub id: MessageId,
    pub kind: DeliveryKind,
    pub account: String,
    /// Sends so far, this one included once the session sent it.
    pub attempts: u32,
    pub deliver_sm: DeliverSm,
}

/// What sessions and commit tasks tell the hub.
pub enum HubEvent {
    /// A receiving bind of `account` is up; deliveries go to `jobs`.
    Opened {
        account: String,
        session: u64,
        jobs: flume::Sender<Job>,
    },
    /// The session is gone; deliveries it held come back through a rescan.
    Closed { session: u64 },
    /// The customer answered deliver_sm_resp OK.
    Acked { id: MessageId, kind: DeliveryKind },
    /// An error response, a generic_nack (`Some` status) or a timeout (`None`).
    Failed {
        job: Job,
        status: Option<CommandStatus>,
    },
    /// The commit of a delivery's acknowledgement finished.
    Committed { id: MessageId, cleared: bool },
}

/// The sessions' way to the hub; cheap to clone, usable from any core.
#[derive(Clone)]
pub struct DeliveryLink {
    to_hub: flume::Sender<HubEvent>,
}

impl DeliveryLink {
    /// A link and the inbox the hub reads.
    pub fn new() -> (DeliveryLink, flume::Receiver<HubEvent>) {
        let (to_hub, inbox) = flume::bounded(HUB_INBOX_CAPACITY);
        (DeliveryLink { to_hub }, inbox)
    }

    /// Waits for room in the hub's inbox. A stopped hub drops the event:
    /// the store still holds every undelivered delivery.
    pub async fn send(&self, event: HubEvent) {
        let _ = self.to_hub.send_async(event).await;
    }
}

/// Where a tracked delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Queued,
    Session(u64),
    Retrying,
    Committing,
    Parked,
    /// With the webhook sender (its account has a webhook URL).
    Webhook,
}

struct Receiver {
    session: u64,
    jobs: flume::Sender<Job>,
}

/// What a deliver_sm is built from, copied out of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Material {
    Dlr {
        source: Address,
        destination: Address,
        received_at_ms: u64,
        done_at_ms: Option<u64>,
        message_state: u8,
        err: u16,
        data_coding: u8,
        esm_class: u8,
        /// The first octets of the payload, for the receipt's `text:`.
        text_head: Vec<u8>,
    },
    Mo(MoReceived),
    /// The account takes its deliveries by webhook.
    Webhook(webhook::Prepared),
}

/// A pending delivery as loaded for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub id: MessageId,
    pub kind: DeliveryKind,
    pub account: String,
    pub material: Material,
}

/// Whether the store still owes delivery `id` (of `kind`) from this node: a
/// webhook retry is sent only then (on the store thread). No longer owed:
/// delivered (acknowledged meanwhile), its message purged by retention, or
/// re-aimed at another node.
pub fn still_owed(state: &AppState, node: u64, id: MessageId, kind: DeliveryKind) -> bool {
    state
        .pending_delivery(&id)
        .is_some_and(|pending| pending.kind == kind && pending.target == Some(node))
}

/// [`load`] within the webhook room left: a webhook delivery beyond it is
/// not loaded (it stays in the store) and `skipped` says so.
fn load_within(
    state: &AppState,
    id: MessageId,
    pending: &PendingDelivery,
    webhook_room: &mut usize,
    skipped: &mut bool,
) -> Option<Loaded> {
    if webhook::takes_webhooks(state, &pending.account) {
        if *webhook_room == 0 {
            *skipped = true;
            return None;
        }
        *webhook_room -= 1;
    }
    load(state, id, pending)
}

/// Reads what delivery `id` needs from the state (on the store thread).
pub fn load(state: &AppState, id: MessageId, pending: &PendingDelivery) -> Option<Loaded> {
    if let Some(prepared) = webhook::prepare(state, id, pending) {
        return Some(Loaded {
            id,
            kind: pending.kind,
            account: pending.account.clone(),
            material: Material::Webhook(prepared),
        });
    }
    let material = match pending.kind {
        DeliveryKind::Dlr => {
            let message = state.message(&id)?;
            let accept = &message.accept;
            let head_len = accept.payload.len().min(TEXT_HEAD_BYTES);
            Material::Dlr {
                source: accept.source.clone(),
                destination: accept.destination.clone(),
                received_at_ms: accept.received_at_ms,
                done_at_ms: message.done_at_ms,
                message_state: message.state.receipt_code(),
                err: message.receipt_err,
                data_coding: accept.data_coding,
                esm_class: accept.esm_class,
                text_head: accept.payload.get(..head_len).unwrap_or_default().to_vec(),
            }
        }
        DeliveryKind::Mo => Material::Mo(state.mo(&id)?.mo.clone()),
    };
    Some(Loaded {
        id,
        kind: pending.kind,
        account: pending.account.clone(),
        material,
    })
}

/// Why a deliver_sm could not be built from stored fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("{0} does not fit a deliver_sm address")]
    Address(&'static str),
    #[error("the receipt text does not fit short_message")]
    Text,
    #[error("{0} ms is no calendar date")]
    Date(u64),
    #[error("a TLV does not fit: {0}")]
    Tlv(String),
}

fn put_address(
    field: &'static str,
    address: &Address,
) -> Result<(u8, u8, pdu::Address), BuildError> {
    let value = pdu::Address::new(address.digits.as_bytes()).ok_or(BuildError::Address(field))?;
    Ok((address.ton, address.npi, value))
}

fn date_of(unix_ms: u64) -> Result<DateTime, BuildError> {
    i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| DateTime::from_unix_ms(ms).ok())
        .ok_or(BuildError::Date(unix_ms))
}

/// The first characters of a message for a receipt's `text:`, in plain
/// ASCII (the receipt goes out with data_coding 0); binary becomes empty.
fn receipt_text(data_coding: u8, esm_class: u8, head: &[u8]) -> String {
    let body = if esm_class & ESM_UDHI != 0 {
        let udh_len = head.first().map_or(0, |n| usize::from(*n) + 1);
        head.get(udh_len..).unwrap_or_default()
    } else {
        head
    };
    let decoded = DataCoding::from_smpp(data_coding, DefaultAlphabet::Gsm7)
        .ok()
        .and_then(|coding| text::decode(coding, body).ok())
        .unwrap_or_default();
    decoded
        .chars()
        .take(receipt::RECEIPT_TEXT_CHARS)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The DLR for message `id`: addresses swapped from the original message,
/// esm_class 0x04, data_coding 0, the standard receipt text carrying our
/// id, and the receipted_message_id and message_state TLVs.
pub fn dlr_deliver_sm(id: MessageId, material: &Material) -> Result<DeliverSm, BuildError> {
    let Material::Dlr {
        source,
        destination,
        received_at_ms,
        done_at_ms,
        message_state,
        err,
        data_coding,
        esm_class,
        text_head,
    } = material
    else {
        return Err(BuildError::Text);
    };
    let mut id_text = [0u8; MESSAGE_ID_TEXT_LEN];
    id.encode_text(&mut id_text);
    let id_str = std::str::from_utf8(&id_text).map_err(|_| BuildError::Text)?;
    let stat = receipt::MessageState::from_message_state(*message_state)
        .unwrap_or(receipt::MessageState::Unknown);
    let text = Receipt::for_customer(
        id_str,
        date_of(*received_at_ms)?,
        date_of(done_at_ms.unwrap_or(*received_at_ms))?,
        stat,
        u32::from(*err),
        &receipt_text(*data_coding, *esm_class, text_head),
    )
    .format();
    if text.len() > pdu::MAX_SHORT_MESSAGE_LEN {
        return Err(BuildError::Text);
    }
    // The DLR goes from the handset (the original destination) back to the
    // original sender.
    let (source_addr_ton, source_addr_npi, source_addr) = put_address("destination", destination)?;
    let (dest_addr_ton, dest_addr_npi, destination_addr) = put_address("source", source)?;
    let mut sm = DeliverSm {
        source_addr_ton,
        source_addr_npi,
        source_addr,
        dest_addr_ton,
        dest_addr_npi,
        destination_addr,
        esm_class: ESM_TYPE_DELIVERY_RECEIPT,
        data_coding: 0,
        short_message: Bytes::from(text.into_bytes()),
        ..DeliverSm::default()
    };
    let receipted = pdu::MessageId::new(&id_text).ok_or(BuildError::Text)?;
    sm.tlvs
        .set_receipted_message_id(&receipted)
        .map_err(|e| BuildError::Tlv(e.to_string()))?;
    sm.tlvs
        .set_message_state(*message_state)
        .map_err(|e| BuildError::Tlv(e.to_string()))?;
    Ok(sm)
}

/// An MO as received: addresses, data_coding, esm_class and payload (in
/// message_payload when it is longer than short_message allows; SAR TLVs
/// when the operator sent the parts that way).
pub fn mo_deliver_sm(mo: &MoReceived) -> Result<DeliverSm, BuildError> {
    let (source_addr_ton, source_addr_npi, source_addr) = put_address("source", &mo.source)?;
    let (dest_addr_ton, dest_addr_npi, destination_addr) =
        put_address("destination", &mo.destination)?;
    let mut sm = DeliverSm {
        source_addr_ton,
        source_addr_npi,
        source_addr,
        dest_addr_ton,
        dest_addr_npi,
        destination_addr,
        esm_class: mo.esm_class & !pdu::ESM_MESSAGE_TYPE_MASK,
        data_coding: mo.data_coding,
        ..DeliverSm::default()
    };
    let tlv = |e: crate::smpp::tlv::TlvError| BuildError::Tlv(e.to_string());
    if mo.payload.len() <= pdu::MAX_SHORT_MESSAGE_LEN {
        sm.short_message = Bytes::copy_from_slice(&mo.payload);
    } else {
        sm.tlvs.set_message_payload(&mo.payload).map_err(tlv)?;
    }
    if let (Some(segment), false) = (mo.segment, mo.esm_class & ESM_UDHI != 0) {
        sm.tlvs
            .set_sar_msg_ref_num(segment.reference)
            .map_err(tlv)?;
        sm.tlvs.set_sar_total_segments(segment.total).map_err(tlv)?;
        sm.tlvs
            .set_sar_segment_seqnum(segment.sequence)
            .map_err(tlv)?;
    }
    Ok(sm)
}

/// The delay before the next send after `attempts` sends.
pub fn retry_delay_ms(attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(16);
    RETRY_BASE_MS
        .saturating_mul(1 << doublings)
        .min(RETRY_MAX_MS)
}

/// What the hub needs to start (built by the engine, run on one core).
pub struct HubStart {
    pub node_id: u64,
    /// TLS client settings of `https://` webhooks (`webhook::tls_config`).
    pub webhook_tls: Arc<rustls::ClientConfig>,
    pub store: StoreHandle,
    pub inbox: flume::Receiver<HubEvent>,
    pub link: DeliveryLink,
    pub stop: Arc<AtomicBool>,
}

/// A rescan of this node's deliveries, page by page in id order.
#[derive(Debug, Clone, Copy, Default)]
struct Rescan {
    active: bool,
    after: Option<MessageId>,
    /// Asked for while a pass ran: run another from the start afterwards.
    again: bool,
}

impl Rescan {
    fn request(&mut self) {
        if self.active {
            self.again = true;
        } else {
            self.active = true;
            self.after = None;
        }
    }

    fn page_done(&mut self, last: Option<MessageId>, full_page: bool) {
        if full_page {
            self.after = last;
        } else if self.again {
            self.again = false;
            self.after = None;
        } else {
            self.active = false;
            self.after = None;
        }
    }
}

/// The hub's book of deliveries in hand: pure bookkeeping (no store, no
/// clock of its own), so its rules are tested on their own.
#[derive(Default)]
struct Ledger {
    /// Receiving binds here per account, with the round-robin position.
    receivers: HashMap<String, (Vec<Receiver>, usize)>,
    ready: HashMap<String, VecDeque<Job>>,
    retrying: BTreeMap<(u64, MessageId), Job>,
    parked: HashMap<String, Vec<MessageId>>,
    tracked: HashMap<MessageId, Place>,
    /// Entries of `tracked` at `Place::Webhook` (their own budget).
    webhooks_in_hand: usize,
    /// Webhook deliveries were left in the store for want of room: rescan
    /// once enough room freed.
    webhook_backlog: bool,
    rescan: Rescan,
    /// Webhook deliveries can go out from here (any node can send them), so
    /// loading is worth it even with no receiving bind.
    webhooks: bool,
    /// Loaded webhook deliveries for the sender.
    webhook_out: Vec<webhook::Job>,
}

struct Hub {
    node_id: u64,
    store: StoreHandle,
    link: DeliveryLink,
    ledger: Ledger,
    webhooks: webhook::Sender,
    started: Instant,
}

// One value at a time, on the hub's stack; boxing the event would allocate per event.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Inbox(Option<HubEvent>),
    Effect(Option<Effect>),
    Tick,
}

/// Runs the hub until the stop flag is set.
pub async fn run_hub(start: HubStart) {
    let HubStart {
        node_id,
        webhook_tls,
        store,
        inbox,
        link,
        stop,
    } = start;
    let effects = store.delivery_effects().receiver().clone();
    let mut hub = Hub {
        node_id,
        store,
        webhooks: webhook::Sender::new(link.clone(), webhook_tls),
        link,
        ledger: Ledger {
            webhooks: true,
            ..Ledger::default()
        },
        started: Instant::now(),
    };
    hub.ledger.rescan.request();
    let mut next_sweep_ms = SWEEP_INTERVAL_MS;
    while !stop.load(Ordering::Relaxed) {
        if hub.store.delivery_effects().take_lost() {
            hub.ledger.rescan.request();
        }
        if hub.ledger.wants_rescan_page() {
            hub.rescan_page().await;
        } else if !hub.ledger.can_send() {
            // Nothing can go out; a receiving bind asks for a rescan itself.
            hub.ledger.rescan = Rescan::default();
        }
        let now_ms = hub.now_ms();
        hub.ledger.release_due_retries(now_ms);
        hub.ledger.pump();
        for job in hub.ledger.webhook_out.drain(..) {
            hub.webhooks.push(job);
        }
        hub.webhooks.poll();
        hub.check_due_webhooks().await;
        let wait = if hub.ledger.wants_rescan_page() {
            Duration::ZERO
        } else {
            hub.ledger.next_retry_in(now_ms).min(HUB_TICK)
        };
        let wake = or(
            async { Wake::Inbox(inbox.recv_async().await.ok()) },
            async {
                or(
                    async { Wake::Effect(effects.recv_async().await.ok()) },
                    async {
                        glommio::timer::sleep(wait).await;
                        Wake::Tick
                    },
                )
                .await
            },
        )
        .await;
        let mut batch = Vec::new();
        match wake {
            Wake::Inbox(Some(event)) => hub.on_event(event),
            Wake::Effect(Some(effect)) => batch.push(effect),
            // Both channels outlive the hub; a closed one means shutdown.
            Wake::Inbox(None) | Wake::Effect(None) => break,
            Wake::Tick => {}
        }
        // Whichever woke us, take what else waits on both sides (bounded), so
        // a busy inbox cannot starve the effects or the other way round.
        for _ in 0..HUB_INBOX_CAPACITY {
            match inbox.try_recv() {
                Ok(event) => hub.on_event(event),
                Err(_) => break,
            }
        }
        while batch.len() < EFFECT_BATCH {
            match effects.try_recv() {
                Ok(effect) => batch.push(effect),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            hub.on_effects(batch).await;
        }
        if hub.now_ms() >= next_sweep_ms {
            next_sweep_ms = hub.now_ms().saturating_add(SWEEP_INTERVAL_MS);
            if hub.ledger.can_send() {
                hub.ledger.rescan.request();
            }
        }
    }
    tracing::debug!(node = node_id, "delivery hub stopped");
}

impl Hub {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_event(&mut self, event: HubEvent) {
        match event {
            HubEvent::Opened {
                account,
                session,
                jobs,
            } => {
                tracing::debug!(session, account = account.as_str(), "receiving bind");
                self.ledger.opened(account, session, jobs);
            }
            HubEvent::Closed { session } => self.ledger.closed(session),
            HubEvent::Acked { id, kind } => {
                self.ledger.place(id, Place::Committing);
                let command = match kind {
                    DeliveryKind::Dlr => Command::DlrDelivered { id },
                    DeliveryKind::Mo => Command::MoDelivered { id },
                }
                .encode();
                let store = self.store.clone();
                let link = self.link.clone();
                glommio::spawn_local(async move {
                    let cleared = matches!(
                        store.propose(command).await,
                        Ok(ApplyOutcome::Applied | ApplyOutcome::Ignored)
                    );
                    link.send(HubEvent::Committed { id, cleared }).await;
                })
                .detach();
            }
            HubEvent::Failed { job, status } => {
                tracing::debug!(id = %job.id, attempts = job.attempts, ?status, "deliver_sm not accepted");
                let now_ms = self.now_ms();
                self.ledger.retry_or_park(job, now_ms);
            }
            HubEvent::Committed { id, cleared } => {
                if !cleared {
                    tracing::warn!(%id, "delivery acknowledged but not committed; will resend");
                }
                self.ledger.committed(id, cleared);
            }
        }
    }

    async fn on_effects(&mut self, batch: Vec<Effect>) {
        let node = self.node_id;
        let wanted = self
            .ledger
            .claim(batch.iter().filter_map(|effect| match effect {
                Effect::Deliver { id, node: to, .. } => {
                    debug_assert_eq!(*to, node, "the driver forwards only this node's effects");
                    Some(*id)
                }
                // Dispatch is the operator side's work.
                Effect::Dispatch { .. } => None,
            }));
        if wanted.is_empty() {
            return;
        }
        let lookup = wanted.clone();
        let mut webhook_room = self.ledger.webhook_load_limit();
        let loaded = self
            .store
            .query(move |state| {
                let mut skipped = false;
                let loaded = lookup
                    .iter()
                    .filter_map(|id| {
                        let pending = state.pending_delivery(id)?;
                        if pending.target != Some(node) {
                            return None;
                        }
                        load_within(state, *id, pending, &mut webhook_room, &mut skipped)
                    })
                    .collect::<Vec<_>>();
                (loaded, skipped)
            })
            .await;
        for id in &wanted {
            self.ledger.untrack(*id);
        }
        match loaded {
            Ok((loaded, skipped)) => {
                self.ledger.webhook_backlog |= skipped;
                self.ledger.take_loaded(loaded);
            }
            Err(e) => {
                tracing::warn!("loading deliveries failed: {e}; rescanning");
                self.ledger.rescan.request();
            }
        }
    }

    async fn rescan_page(&mut self) {
        let node = self.node_id;
        let after = self.ledger.rescan.after;
        let mut webhook_room = self.ledger.webhook_load_limit();
        let page = self
            .store
            .query(move |state| {
                let mut last = None;
                let mut count = 0;
                let mut loaded = Vec::new();
                let mut skipped = false;
                // A seek to `after`: a pass over n deliveries costs
                // O(n log n), not the O(n^2 / page) of walking from the start.
                for (id, pending) in state
                    .deliveries_for_node_after(node, after)
                    .take(RESCAN_PAGE)
                {
                    last = Some(id);
                    count += 1;
                    if let Some(l) =
                        load_within(state, id, pending, &mut webhook_room, &mut skipped)
                    {
                        loaded.push(l);
                    }
                }
                (loaded, last, count == RESCAN_PAGE, skipped)
            })
            .await;
        match page {
            Ok((loaded, last, full, skipped)) => {
                self.ledger.webhook_backlog |= skipped;
                let fresh = loaded
                    .into_iter()
                    .filter(|l| !self.ledger.tracked.contains_key(&l.id))
                    .collect();
                self.ledger.take_loaded(fresh);
                self.ledger.rescan.page_done(last, full);
            }
            Err(e) => tracing::warn!("delivery rescan failed: {e}"),
        }
    }
}

impl Hub {
    /// Due webhook retries go out again only if the store still owes them
    /// here; the others (their message purged by retention, say) are
    /// dropped, counted and logged once, and their room freed.
    async fn check_due_webhooks(&mut self) {
        let due = self.webhooks.take_due();
        if due.is_empty() {
            return;
        }
        let node = self.node_id;
        let keys: Vec<(MessageId, DeliveryKind)> = due.iter().map(|j| (j.id, j.kind)).collect();
        let owed = self
            .store
            .query(move |state| {
                keys.iter()
                    .map(|(id, kind)| still_owed(state, node, *id, *kind))
                    .collect::<Vec<bool>>()
            })
            .await;
        let owed = match owed {
            Ok(owed) => owed,
            Err(e) => {
                // Unknown: send them; a delivery no longer owed is at worst
                // sent once more (the commit after a 2xx is then ignored).
                tracing::warn!("checking due webhook retries failed: {e}");
                vec![true; due.len()]
            }
        };
        debug_assert_eq!(owed.len(), due.len(), "one answer per due retry");
        let mut resent = false;
        for (job, owed) in due
            .into_iter()
            .zip(owed.into_iter().chain(std::iter::repeat(true)))
        {
            if owed {
                resent = true;
                self.webhooks.push(job);
            } else {
                crate::metrics::webhook_dropped();
                tracing::info!(
                    id = %job.id,
                    account = job.account.as_str(),
                    attempts = job.attempts,
                    "webhook dropped: the store no longer owes it here (its message was purged, delivered or re-aimed)"
                );
                self.ledger.untrack(job.id);
            }
        }
        if resent {
            // Out now, not at the next turn of the loop.
            self.webhooks.poll();
        }
    }
}

impl Ledger {
    /// Room for SMPP deliveries: webhooks in hand have their own budget.
    fn has_room(&self) -> bool {
        self.tracked.len().saturating_sub(self.webhooks_in_hand) < MAX_TRACKED
    }

    /// Webhook deliveries that may still be taken into hand.
    fn webhook_room(&self) -> usize {
        MAX_WEBHOOKS_IN_HAND.saturating_sub(self.webhooks_in_hand)
    }

    /// Webhook deliveries a store query may load: none with the budget
    /// full; else the room plus those in hand, since a rescan page may load
    /// those again (then skipped) and they must not use up the room of the
    /// ones waiting. `take_loaded` keeps the exact budget.
    fn webhook_load_limit(&self) -> usize {
        if self.webhook_room() == 0 {
            0
        } else {
            self.webhook_room() + self.webhooks_in_hand
        }
    }

    /// Puts `id` at `place`, keeping the webhook count.
    fn place(&mut self, id: MessageId, place: Place) {
        let before = self.tracked.insert(id, place);
        self.count_webhook(before, Some(place));
    }

    /// Lets `id` go from the hub's hands (the store still has it if owed).
    fn untrack(&mut self, id: MessageId) {
        let before = self.tracked.remove(&id);
        self.count_webhook(before, None);
    }

    fn count_webhook(&mut self, before: Option<Place>, after: Option<Place>) {
        let was = before == Some(Place::Webhook);
        let is = after == Some(Place::Webhook);
        if was && !is {
            debug_assert!(self.webhooks_in_hand > 0, "a webhook left hand twice");
            self.webhooks_in_hand = self.webhooks_in_hand.saturating_sub(1);
            // Half the budget free again: time to load what waits.
            if self.webhook_backlog && self.webhooks_in_hand <= MAX_WEBHOOKS_IN_HAND / 2 {
                self.webhook_backlog = false;
                self.rescan.request();
            }
        } else if is && !was {
            self.webhooks_in_hand += 1;
            debug_assert!(
                self.webhooks_in_hand <= MAX_WEBHOOKS_IN_HAND,
                "webhooks in hand beyond their budget"
            );
        }
    }

    /// A rescan page is due now: asked for, room for it, and someone to send to.
    fn wants_rescan_page(&self) -> bool {
        self.rescan.active && self.has_room() && self.can_send()
    }

    /// Some delivery can go out from here: a receiving bind, or webhooks.
    fn can_send(&self) -> bool {
        self.webhooks || !self.receivers.is_empty()
    }

    fn next_retry_in(&self, now_ms: u64) -> Duration {
        match self.retrying.keys().next() {
            Some((due_ms, _)) => Duration::from_millis(due_ms.saturating_sub(now_ms)),
            None => HUB_TICK,
        }
    }

    fn opened(&mut self, account: String, session: u64, jobs: flume::Sender<Job>) {
        // Deliveries parked after too many attempts get a new chance.
        for id in self.parked.remove(&account).unwrap_or_default() {
            self.untrack(id);
        }
        let entry = self.receivers.entry(account).or_default();
        entry.0.push(Receiver { session, jobs });
        self.rescan.request();
    }

    fn committed(&mut self, id: MessageId, cleared: bool) {
        self.untrack(id);
        if !cleared {
            // Still pending in the store: it goes out again (a duplicate).
            self.rescan.request();
        }
    }

    /// Ids of announced deliveries worth loading: not in hand already, and
    /// only while someone here can take them and there is room. Claimed ids
    /// count as in hand (so a rescan page skips them) until released.
    fn claim(&mut self, announced: impl Iterator<Item = MessageId>) -> Vec<MessageId> {
        let mut wanted = Vec::new();
        if !self.can_send() {
            // Nothing can go out here; a receiving bind rescans.
            return wanted;
        }
        for id in announced {
            if self.tracked.contains_key(&id) {
                continue;
            }
            if !self.has_room() {
                self.rescan.request();
                break;
            }
            self.place(id, Place::Queued);
            wanted.push(id);
        }
        wanted
    }

    fn closed(&mut self, session: u64) {
        let mut emptied = None;
        for (account, (list, _)) in &mut self.receivers {
            if let Some(index) = list.iter().position(|r| r.session == session) {
                list.swap_remove(index);
                if list.is_empty() {
                    emptied = Some(account.clone());
                }
                break;
            }
        }
        if let Some(account) = emptied {
            self.receivers.remove(&account);
            // The store re-aims them (or lets them wait) once BindClosed commits.
            for job in self.ready.remove(&account).unwrap_or_default() {
                self.untrack(job.id);
            }
        }
        let before = self.tracked.len();
        self.tracked
            .retain(|_, place| *place != Place::Session(session));
        if self.tracked.len() != before {
            self.rescan.request();
        }
    }

    fn retry_or_park(&mut self, job: Job, now_ms: u64) {
        if job.attempts >= MAX_ATTEMPTS {
            tracing::info!(id = %job.id, account = job.account.as_str(), "delivery parked until the account binds again");
            self.place(job.id, Place::Parked);
            self.parked.entry(job.account).or_default().push(job.id);
            return;
        }
        let due_ms = now_ms.saturating_add(retry_delay_ms(job.attempts));
        self.place(job.id, Place::Retrying);
        self.retrying.insert((due_ms, job.id), job);
    }

    fn release_due_retries(&mut self, now_ms: u64) {
        while let Some(entry) = self.retrying.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let job = entry.remove();
            self.queue(job);
        }
    }

    /// Queues a loaded job for its account, or lets it go when the account
    /// has no receiving bind here (the store keeps it).
    fn queue(&mut self, job: Job) {
        if !self.receivers.contains_key(&job.account) {
            self.untrack(job.id);
            return;
        }
        self.place(job.id, Place::Queued);
        self.ready
            .entry(job.account.clone())
            .or_default()
            .push_back(job);
    }

    /// Hands queued jobs to sessions with room, round robin per account.
    fn pump(&mut self) {
        let mut gone = Vec::new();
        for (account, queue) in &mut self.ready {
            let Some((list, next)) = self.receivers.get_mut(account) else {
                gone.push(account.clone());
                continue;
            };
            while let Some(job) = queue.pop_front() {
                let id = job.id;
                let mut unplaced = Some(job);
                for _ in 0..list.len() {
                    *next = (*next + 1) % list.len().max(1);
                    let Some(receiver) = list.get(*next) else {
                        break;
                    };
                    let Some(job) = unplaced.take() else {
                        break;
                    };
                    match receiver.jobs.try_send(job) {
                        Ok(()) => {
                            self.tracked.insert(id, Place::Session(receiver.session));
                            break;
                        }
                        Err(
                            flume::TrySendError::Full(back)
                            | flume::TrySendError::Disconnected(back),
                        ) => unplaced = Some(back),
                    }
                }
                if let Some(job) = unplaced {
                    queue.push_front(job);
                    break;
                }
            }
        }
        for account in gone {
            for job in self.ready.remove(&account).unwrap_or_default() {
                self.untrack(job.id);
            }
        }
        self.ready.retain(|_, queue| !queue.is_empty());
    }

    /// Takes loaded deliveries into hand, each within its own budget: a
    /// webhook delivery beyond [`MAX_WEBHOOKS_IN_HAND`] or an SMPP one beyond
    /// [`MAX_TRACKED`] is let go (the store keeps it) and a rescan fetches
    /// it once room frees.
    fn take_loaded(&mut self, loaded: Vec<Loaded>) {
        for item in loaded {
            let built = match item.material {
                Material::Webhook(prepared) => {
                    if self.webhook_room() == 0 {
                        self.webhook_backlog = true;
                        continue;
                    }
                    self.place(item.id, Place::Webhook);
                    self.webhook_out.push(webhook::Job::new(
                        item.id,
                        item.kind,
                        item.account,
                        prepared,
                    ));
                    continue;
                }
                _ if !self.has_room() => {
                    self.rescan.request();
                    continue;
                }
                Material::Dlr { .. } => dlr_deliver_sm(item.id, &item.material),
                Material::Mo(ref mo) => mo_deliver_sm(mo),
            };
            match built {
                Ok(deliver_sm) => self.queue(Job {
                    id: item.id,
                    kind: item.kind,
                    account: item.account,
                    attempts: 0,
                    deliver_sm,
                }),
                Err(e) => {
                    tracing::error!(id = %item.id, "cannot build the deliver_sm: {e}; parked");
                    self.place(item.id, Place::Parked);
                    self.parked.entry(item.account).or_default().push(item.id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::command::SegmentInfo;

    fn address(ton: u8, digits: &str) -> Address {
        Address {
            ton,
            npi: 1,
            digits: digits.into(),
        }
    }

    fn dlr_material(payload: &[u8], data_coding: u8, esm_class: u8) -> Material {
        Material::Dlr {
            source: address(5, "TERN"),
            destination: address(1, "447700900123"),
            received_at_ms: 1_700_000_000_000,
            done_at_ms: Some(1_700_000_060_000),
            message_state: 2,
            err: 0,
            data_coding,
            esm_class,
            text_head: payload.to_vec(),
        }
    }

    #[test]
    fn dlr_carries_our_id_in_text_and_tlvs_with_addresses_swapped() {
        let id = MessageId::from_parts(3, 1, 0, 42).unwrap();
        let sm = dlr_deliver_sm(id, &dlr_material(b"hello from a customer, long", 0, 0)).unwrap();
        assert_eq!(sm.esm_class, 0x04);
        assert!(sm.is_delivery_receipt());
        assert_eq!(sm.data_coding, 0);
        assert_eq!(sm.source_addr.as_bytes(), b"447700900123");
        assert_eq!(sm.source_addr_ton, 1);
        assert_eq!(sm.destination_addr.as_bytes(), b"TERN");
        assert_eq!(sm.dest_addr_ton, 5);
        let text = std::str::from_utf8(&sm.short_message).unwrap();
        let parsed = Receipt::parse(text).unwrap();
        assert_eq!(parsed.id, id.to_string());
        assert_eq!(parsed.stat, Some(receipt::MessageState::Delivered));
        assert_eq!(parsed.text.as_deref(), Some("hello from a custome"));
        assert!(text.contains("dlvrd:001"), "{text}");
        assert_eq!(
            sm.tlvs.receipted_message_id().unwrap().as_bytes(),
            id.to_string().as_bytes()
        );
        assert_eq!(sm.tlvs.message_state(), Some(2));
        // The body encodes as a whole PDU.
        let pdu = pdu::Pdu::new(7, pdu::Body::DeliverSm(sm));
        assert!(pdu.to_bytes().is_ok());
    }

    #[test]
    fn receipt_text_skips_udh_and_decodes_ucs2_to_ascii() {
        // UDH (6 octets) then "Hi" in UCS-2 and a non-ASCII letter.
        let payload = [5, 0, 3, 9, 2, 1, 0, b'H', 0, b'i', 0x04, 0x1F];
        assert_eq!(receipt_text(0x08, ESM_UDHI, &payload), "Hi?");
        assert_eq!(receipt_text(0x04, 0, b"\x00\x01binary"), "");
        assert_eq!(receipt_text(0x00, ESM_UDHI, &[200]), "");
    }

    #[test]
    fn failed_message_receipt_says_so() {
        let id = MessageId::from_parts(3, 1, 0, 43).unwrap();
        let mut material = dlr_material(b"x", 0, 0);
        if let Material::Dlr {
            message_state, err, ..
        } = &mut material
        {
            *message_state = 5;
            *err = 11;
        }
        let sm = dlr_deliver_sm(id, &material).unwrap();
        let text = std::str::from_utf8(&sm.short_message).unwrap();
        assert!(text.contains("stat:UNDELIV"), "{text}");
        assert!(text.contains("err:011"), "{text}");
        assert!(text.contains("dlvrd:000"), "{text}");
        assert_eq!(sm.tlvs.message_state(), Some(5));
    }

    #[test]
    fn bad_addresses_are_errors_not_panics() {
        let id = MessageId::from_parts(3, 1, 0, 44).unwrap();
        let mut material = dlr_material(b"x", 0, 0);
        if let Material::Dlr { destination, .. } = &mut material {
            destination.digits = "1".repeat(40);
        }
        assert_eq!(
            dlr_deliver_sm(id, &material),
            Err(BuildError::Address("destination"))
        );
    }

    #[test]
    fn mo_goes_out_as_received() {
        let mut mo = MoReceived {
            id: MessageId::from_parts(3, 1, 0, 45).unwrap(),
            connector: "op".into(),
            source: address(1, "447700900999"),
            destination: address(1, "44800123"),
            data_coding: 8,
            esm_class: 0,
            payload: vec![0, b'o', 0, b'k'],
            segment: None,
            received_at_ms: 0,
        };
        let sm = mo_deliver_sm(&mo).unwrap();
        assert_eq!(sm.source_addr.as_bytes(), b"447700900999");
        assert_eq!(sm.destination_addr.as_bytes(), b"44800123");
        assert_eq!(sm.data_coding, 8);
        assert_eq!(sm.esm_class, 0);
        assert_eq!(&sm.short_message[..], &[0, b'o', 0, b'k']);

        mo.payload = vec![b'a'; 300];
        mo.segment = Some(SegmentInfo {
            reference: 7,
            total: 2,
            sequence: 1,
        });
        let sm = mo_deliver_sm(&mo).unwrap();
        assert!(sm.short_message.is_empty());
        assert_eq!(sm.message().len(), 300);
        assert_eq!(sm.tlvs.sar_msg_ref_num(), Some(7));
        assert_eq!(sm.tlvs.sar_segment_seqnum(), Some(1));
    }

    #[test]
    fn retries_back_off_and_stay_bounded() {
        assert_eq!(retry_delay_ms(1), 1_000);
        assert_eq!(retry_delay_ms(2), 2_000);
        assert_eq!(retry_delay_ms(5), 16_000);
        assert_eq!(retry_delay_ms(MAX_ATTEMPTS + 10), RETRY_MAX_MS);
        assert_eq!(retry_delay_ms(u32::MAX), RETRY_MAX_MS);
    }

    #[test]
    fn rescan_pages_then_runs_again_when_asked_meanwhile() {
        let id = |n| MessageId::from_parts(1, 1, 0, n).unwrap();
        let mut rescan = Rescan::default();
        rescan.request();
        assert!(rescan.active);
        rescan.page_done(Some(id(10)), true);
        assert_eq!(rescan.after, Some(id(10)));
        rescan.request();
        rescan.page_done(Some(id(12)), false);
        assert!(rescan.active, "a request during the pass starts another");
        assert_eq!(rescan.after, None);
        rescan.page_done(None, false);
        assert!(!rescan.active);
    }

    /// A state on node 1 owing the DLR of one finished message of `acme`
    /// (received at 1 000 ms), whose account has `webhook_url`.
    fn state_owing_a_dlr(webhook_url: Option<&str>) -> (AppState, MessageId) {
        use crate::store::command::{Accept, Account, Receipt as StoreReceipt};
        let mut state = AppState::new();
        let id = MessageId::from_parts(1, 1, 0, 1).unwrap();
        let account = Account {
            name: "acme".into(),
            password_hash: String::new(),
            max_binds: 0,
            throughput_per_s: 0,
            allowed_ips: Vec::new(),
            allowed_senders: Vec::new(),
            retention_s: 0,
            enabled: true,
            webhook_url: webhook_url.map(str::to_string),
            api_key_hash: None,
            webhook_secret: None,
            window: 0,
        };
        let commands = [
            Command::NodeUp {
                node: 1,
                incarnation: 1,
            },
            Command::UpsertAccount(account),
            Command::Accept(Accept {
                id,
                account: "acme".into(),
                source: address(5, "ACME"),
                destination: address(1, "447700900123"),
                data_coding: 0,
                esm_class: 0,
                protocol_id: 0,
                priority: 0,
                registered_delivery: 1,
                payload: b"hello".to_vec(),
                segment: None,
                received_at_ms: 1_000,
                validity_until_ms: None,
                owner_node: 1,
                client_ref: None,
                scheduled_at_ms: None,
            }),
            Command::Submitted {
                id,
                connector: "op".into(),
                upstream_id: "u1".into(),
                at_ms: 2_000,
            },
            Command::Receipt(StoreReceipt {
                connector: "op".into(),
                upstream_id: "u1".into(),
                state: 2,
                err: 0,
                done_at_ms: 3_000,
                raw: None,
            }),
        ];
        for command in commands {
            state.apply_command(command);
        }
        (state, id)
    }

    #[test]
    fn load_reads_a_queued_dlr() {
        use crate::store::command::BindKind;
        let (mut state, id) = state_owing_a_dlr(None);
        let pending = state.pending_delivery(&id).cloned().unwrap();
        assert_eq!(pending.target, None, "no receiving bind: the DLR waits");
        state.apply_command(Command::BindOpened {
            node: 1,
            session: 9,
            account: "acme".into(),
            kind: BindKind::Receiver,
        });
        let pending = state.pending_delivery(&id).cloned().unwrap();
        assert_eq!(pending.target, Some(1));
        let loaded = load(&state, id, &pending).unwrap();
        assert_eq!(loaded.account, "acme");
        assert_eq!(loaded.kind, DeliveryKind::Dlr);
        let Material::Dlr {
            done_at_ms,
            message_state,
            text_head,
            ..
        } = &loaded.material
        else {
            panic!("a DLR loads DLR material: {loaded:?}");
        };
        assert_eq!(*done_at_ms, Some(3_000));
        assert_eq!(*message_state, 2);
        assert_eq!(text_head, b"hello");
    }

    fn job(counter: u64, account: &str, attempts: u32) -> Job {
        Job {
            id: MessageId::from_parts(2, 1, 0, counter).unwrap(),
            kind: DeliveryKind::Dlr,
            account: account.into(),
            attempts,
            deliver_sm: DeliverSm::default(),
        }
    }

    fn ledger_with(sessions: &[(&str, u64, usize)]) -> (Ledger, Vec<flume::Receiver<Job>>) {
        let mut ledger = Ledger::default();
        let mut inboxes = Vec::new();
        for (account, session, capacity) in sessions {
            let (tx, rx) = flume::bounded(*capacity);
            ledger.opened((*account).into(), *session, tx);
            inboxes.push(rx);
        }
        ledger.rescan = Rescan::default();
        (ledger, inboxes)
    }

    #[test]
    fn pump_spreads_over_receivers_and_keeps_what_does_not_fit() {
        let (mut ledger, inboxes) = ledger_with(&[("acme", 1, 1), ("acme", 2, 1)]);
        for n in 0..3 {
            ledger.queue(job(n, "acme", 0));
        }
        ledger.pump();
        assert_eq!(inboxes[0].len(), 1);
        assert_eq!(inboxes[1].len(), 1);
        let places: Vec<Place> = (0..3)
            .map(|n| ledger.tracked[&job(n, "acme", 0).id])
            .collect();
        assert!(places.contains(&Place::Session(1)) && places.contains(&Place::Session(2)));
        assert!(
            places.contains(&Place::Queued),
            "one waits for room: {places:?}"
        );
        let taken = inboxes[0].try_recv().unwrap();
        assert_eq!(ledger.tracked[&taken.id], Place::Session(1));
        ledger.pump();
        assert!(
            ledger.ready.is_empty(),
            "the third went out once there was room"
        );
        assert_eq!(inboxes[0].len() + inboxes[1].len(), 2);
    }

    #[test]
    fn a_closed_session_gives_back_what_it_held_through_a_rescan() {
        let (mut ledger, _inboxes) = ledger_with(&[("acme", 1, 1)]);
        ledger.queue(job(1, "acme", 0));
        ledger.queue(job(2, "acme", 0));
        ledger.pump();
        assert_eq!(ledger.tracked.len(), 2);
        ledger.closed(1);
        assert!(
            ledger.tracked.is_empty(),
            "nothing stays in hand: {:?}",
            ledger.tracked
        );
        assert!(ledger.ready.is_empty());
        assert!(ledger.receivers.is_empty());
        assert!(ledger.rescan.active, "the store still has them: rescan");
        // With nobody to send to, loaded deliveries are left to the store.
        ledger.queue(job(3, "acme", 0));
        assert!(ledger.tracked.is_empty());
    }

    #[test]
    fn failures_back_off_then_park_until_the_account_binds_again() {
        let (mut ledger, _inboxes) = ledger_with(&[("acme", 1, 4)]);
        let first = job(1, "acme", 1);
        let id = first.id;
        ledger.retry_or_park(first, 5_000);
        assert_eq!(ledger.tracked[&id], Place::Retrying);
        assert_eq!(ledger.next_retry_in(5_000), Duration::from_millis(1_000));
        ledger.release_due_retries(5_999);
        assert_eq!(ledger.tracked[&id], Place::Retrying, "not due yet");
        ledger.release_due_retries(6_000);
        assert_eq!(ledger.tracked[&id], Place::Queued);

        let tired = job(2, "acme", MAX_ATTEMPTS);
        let tired_id = tired.id;
        ledger.retry_or_park(tired, 6_000);
        assert_eq!(ledger.tracked[&tired_id], Place::Parked);
        assert!(
            ledger.claim([tired_id].into_iter()).is_empty(),
            "parked stays parked"
        );
        let (tx, _rx) = flume::bounded(1);
        ledger.opened("acme".into(), 2, tx);
        assert!(
            !ledger.tracked.contains_key(&tired_id),
            "a new bind unparks it"
        );
        assert!(ledger.rescan.active, "and rescans to load it again");
    }

    #[test]
    fn webhook_deliveries_need_no_receiver_and_go_to_the_sender() {
        let id = |n| MessageId::from_parts(2, 1, 0, n).unwrap();
        let mut ledger = Ledger {
            webhooks: true,
            ..Ledger::default()
        };
        assert_eq!(ledger.claim([id(1), id(2)].into_iter()), vec![id(1), id(2)]);
        let prepared = webhook_prepared(Some("s"));
        ledger.take_loaded(vec![
            Loaded {
                id: id(1),
                kind: DeliveryKind::Dlr,
                account: "http-customer".into(),
                material: Material::Webhook(prepared),
            },
            Loaded {
                id: id(2),
                kind: DeliveryKind::Dlr,
                account: "smpp-customer".into(),
                material: dlr_material(b"x", 0, 0),
            },
        ]);
        assert_eq!(ledger.tracked.get(&id(1)), Some(&Place::Webhook));
        assert_eq!(ledger.webhook_out.len(), 1);
        assert_eq!(ledger.webhook_out[0].id, id(1));
        assert!(
            !ledger.tracked.contains_key(&id(2)),
            "an SMPP delivery with no receiver here is left to the store"
        );
        // A rebind or a closed session does not disturb a webhook in hand.
        ledger.closed(7);
        assert_eq!(ledger.tracked.get(&id(1)), Some(&Place::Webhook));
        assert!(ledger.claim([id(1)].into_iter()).is_empty(), "in hand once");
        ledger.committed(id(1), true);
        assert!(ledger.tracked.is_empty());
    }

    #[test]
    fn a_webhook_whose_message_retention_purged_is_no_longer_owed() {
        let (mut state, id) = state_owing_a_dlr(Some("https://hooks.example/dlr"));
        let pending = state.pending_delivery(&id).cloned().unwrap();
        assert_eq!(pending.target, Some(1), "a webhook account needs no bind");
        assert!(still_owed(&state, 1, id, DeliveryKind::Dlr));
        assert!(
            !still_owed(&state, 2, id, DeliveryKind::Dlr),
            "aimed at node 1"
        );
        assert!(
            !still_owed(&state, 1, id, DeliveryKind::Mo),
            "a DLR, not an MO"
        );
        let loaded = load(&state, id, &pending).unwrap();
        assert!(
            matches!(loaded.material, Material::Webhook(_)),
            "{loaded:?}"
        );

        state.apply_command(Command::Purge {
            before_ms: 2_000,
            account: None,
        });
        assert!(state.message(&id).is_none(), "retention took the message");
        assert!(
            !still_owed(&state, 1, id, DeliveryKind::Dlr),
            "its webhook goes with it: a due retry is dropped, not sent"
        );
        assert_eq!(state.counters().purged_deliveries, 1);

        // The hub lets the dropped delivery go and its room frees.
        let mut ledger = Ledger {
            webhooks: true,
            ..Ledger::default()
        };
        ledger.take_loaded(vec![loaded]);
        assert_eq!(ledger.webhooks_in_hand, 1);
        ledger.untrack(id);
        assert_eq!(ledger.webhooks_in_hand, 0);
        assert!(ledger.tracked.is_empty());
    }

    fn webhook_loaded(counter: u64) -> Loaded {
        Loaded {
            id: MessageId::from_parts(4, 1, 0, counter).unwrap(),
            kind: DeliveryKind::Dlr,
            account: "http-customer".into(),
            material: Material::Webhook(webhook_prepared(None)),
        }
    }

    /// A delivered-DLR webhook to a receiver that is never asked here.
    fn webhook_prepared(secret: Option<&str>) -> webhook::Prepared {
        webhook::Prepared {
            target: webhook::Target {
                url: "http://127.0.0.1:9/hook".into(),
                secret: secret.map(str::to_string),
            },
            facts: webhook::Facts::Dlr(webhook::DlrFacts {
                from: "TERN".into(),
                to: "447700900123".into(),
                client_ref: None,
                message_state: 2,
                error_code: 0,
                connector: None,
                operator_id: None,
                accepted_at_ms: 0,
                submitted_at_ms: None,
                done_at_ms: None,
            }),
        }
    }

    #[test]
    fn a_full_webhook_budget_does_not_stop_smpp_deliveries() {
        let (mut ledger, inboxes) = ledger_with(&[("acme", 1, 4)]);
        ledger.webhooks = true;
        let webhooks: Vec<Loaded> = (0..MAX_WEBHOOKS_IN_HAND as u64)
            .map(webhook_loaded)
            .collect();
        ledger.take_loaded(webhooks);
        assert_eq!(ledger.webhooks_in_hand, MAX_WEBHOOKS_IN_HAND);
        assert_eq!(ledger.webhook_room(), 0);
        assert_eq!(ledger.webhook_load_limit(), 0, "no webhook even loaded");
        ledger.webhook_out.clear();
        // One more webhook stays in the store, remembered as a backlog.
        let extra = webhook_loaded(MAX_WEBHOOKS_IN_HAND as u64);
        let extra_id = extra.id;
        ledger.take_loaded(vec![extra]);
        assert!(!ledger.tracked.contains_key(&extra_id));
        assert!(ledger.webhook_out.is_empty());
        assert!(ledger.webhook_backlog);

        // An SMPP delivery is still claimed, loaded and handed to its bind.
        let smpp_id = MessageId::from_parts(2, 1, 0, 1).unwrap();
        assert!(ledger.has_room());
        assert_eq!(ledger.claim([smpp_id].into_iter()), vec![smpp_id]);
        ledger.untrack(smpp_id);
        ledger.take_loaded(vec![Loaded {
            id: smpp_id,
            kind: DeliveryKind::Dlr,
            account: "acme".into(),
            material: dlr_material(b"x", 0, 0),
        }]);
        ledger.pump();
        assert_eq!(ledger.tracked[&smpp_id], Place::Session(1));
        assert_eq!(inboxes[0].try_recv().unwrap().id, smpp_id);
        assert!(!ledger.rescan.active, "nothing waited for SMPP room");

        // Webhooks acknowledged and committed free their room; once half the
        // budget is free the backlog is fetched by a rescan.
        for counter in 0..(MAX_WEBHOOKS_IN_HAND / 2) as u64 {
            let id = webhook_loaded(counter).id;
            ledger.place(id, Place::Committing);
            assert_eq!(
                ledger.rescan.active,
                counter + 1 == MAX_WEBHOOKS_IN_HAND as u64 / 2
            );
            ledger.committed(id, true);
        }
        assert_eq!(ledger.webhooks_in_hand, MAX_WEBHOOKS_IN_HAND / 2);
        assert!(
            ledger.rescan.active,
            "the waiting webhooks are loaded again"
        );
        assert!(!ledger.webhook_backlog);
        assert_eq!(
            ledger.webhook_load_limit(),
            MAX_WEBHOOKS_IN_HAND,
            "a page may load those in hand again besides the room"
        );
    }

    #[test]
    fn claims_skip_deliveries_in_hand_and_need_a_receiver() {
        let id = |n| MessageId::from_parts(2, 1, 0, n).unwrap();
        let mut nobody = Ledger::default();
        assert!(nobody.claim([id(1)].into_iter()).is_empty());
        let (mut ledger, _inboxes) = ledger_with(&[("acme", 1, 1)]);
        assert_eq!(ledger.claim([id(1), id(2)].into_iter()), vec![id(1), id(2)]);
        assert_eq!(ledger.claim([id(1), id(3)].into_iter()), vec![id(3)]);
        ledger.committed(id(1), true);
        assert!(!ledger.rescan.active);
        ledger.committed(id(2), false);
        assert!(ledger.rescan.active, "an uncommitted ack is sent again");
        assert!(!ledger.tracked.contains_key(&id(2)));
    }
}
