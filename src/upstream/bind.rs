//! One SMPP client bind to an operator: connect, bind, submit, keep alive,
//! take receipts and MOs, reconnect with backoff.
//!
//! Owns: the bind's connection, window, sequence numbers, keep-alive,
//! throughput bucket, and the per-core context binds share (store handle,
//! MO id generator, outcome channel). Must not touch: routing or retry
//! decisions (the dispatcher's), or other binds.
//!
//! deliver_sm is answered only after its `Receipt` / `MoReceived` committed:
//! the proposal runs as its own task and queues the response here.
//!
//! Long messages follow the connector's `long_messages`: `as-submitted`
//! sends what the customer sent (a part with its UDH or SAR values, a long
//! payload in message_payload once it exceeds short_message); `udh` and
//! `sar` split an unsegmented message longer than one SMS into parts, each
//! its own submit_sm; `payload` sends such a message whole in
//! message_payload. A split message is one job: its parts go out in order
//! (as the window allows) and, once every part is answered, each accepted
//! part's operator id is proposed as its own `Submitted` (so every part's
//! receipt matches the message); only if no part was accepted does the job
//! fail (with the first part's status). The message's final state then
//! comes from the store's rule: the first final receipt of any part.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;

use super::{status, unix_now_ms, ConnectorShared, Job, Outcome};
use crate::config::LongMessages;
use crate::metrics::Histogram;
use crate::peer::{Event, LocalNotify, PduConnection, PeerConfig};
use crate::smpp::frame::Frame;
use crate::smpp::pdu::{Bind, Body, DeliverSm, DeliverSmResp, Pdu, SubmitSm};
use crate::smpp::receipt::{identify_receipt, ReceiptSyntax};
use crate::smpp::segment::{self, Carriage, ConcatReference};
use crate::smpp::session::{KeepAlive, KeepAliveConfig, ResponseMatch, SequenceNumbers, Window};
use crate::smpp::status::CommandStatus;
use crate::smpp::text::{DataCoding, DefaultAlphabet};
use crate::smpp::wire::{Address, Password, SystemId, SystemType};
use crate::smpp::CommandId;
use crate::store::command::{Accept, Address as StoreAddress, Command, MoReceived, Receipt};
use crate::store::driver::{ProposeError, StoreHandle};
use crate::store::id::IdGenerator;
use crate::store::state::ApplyOutcome;

/// deliver_sm proposals in flight per bind; beyond it the operator is told
/// to try again later (ESME_RX_T_APPN) instead of queueing without bound.
const MAX_DELIVERIES_IN_FLIGHT: usize = 1024;
/// A job older than this when a bind takes it is handed back unsent.
pub const MAX_QUEUED_MS: u64 = 5_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BIND_TIMEOUT: Duration = Duration::from_secs(10);
/// Proposal attempts for one command before giving up on it.
const PROPOSE_ATTEMPTS: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Transceiver,
    Transmitter,
    Receiver,
}

impl Role {
    fn submits(self) -> bool {
        self != Role::Receiver
    }
}

pub struct BindSpec {
    pub connector: Arc<ConnectorShared>,
    pub bind_index: usize,
    pub role: Role,
}

/// What a core needs, sent to its executor thread.
pub struct CoreStart {
    pub id_shard: u8,
    pub node_id: u64,
    pub epoch: u32,
    pub store: StoreHandle,
    pub outcomes: flume::Sender<Outcome>,
    pub stop: Arc<AtomicBool>,
}

/// What a core's binds share (single-threaded).
pub struct CoreContext {
    store: StoreHandle,
    outcomes: flume::Sender<Outcome>,
    stop: Arc<AtomicBool>,
    mo_ids: RefCell<IdGenerator>,
    started: Instant,
}

impl CoreContext {
    pub fn new(start: CoreStart) -> Result<CoreContext, String> {
        let ids = IdGenerator::new(start.node_id, start.id_shard, start.epoch)
            .map_err(|e| format!("MO ids: {e}"))?;
        Ok(CoreContext {
            store: start.store,
            outcomes: start.outcomes,
            stop: start.stop,
            mo_ids: RefCell::new(ids),
            started: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Counts a bind in a connector counter while it lives (and, for the submit
/// counter, in the open-binds metric).
struct CountGuard<'a> {
    counter: &'a AtomicUsize,
    metric_of: Option<&'a str>,
}

impl<'a> CountGuard<'a> {
    fn new(counter: &'a AtomicUsize, metric_of: Option<&'a str>) -> CountGuard<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(name) = metric_of {
            crate::metrics::upstream_binds_open_add(name, 1);
        }
        CountGuard { counter, metric_of }
    }
}

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
        if let Some(name) = self.metric_of {
            crate::metrics::upstream_binds_open_add(name, -1);
        }
    }
}

/// Tells the fleet the bind task ended (counted up when it was spawned).
struct RunningGuard<'a>(&'a ConnectorShared);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running_binds.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one bind until the stop flag or its connector's retirement:
/// reconnects with exponential backoff and jitter after every failure.
pub async fn run(context: Rc<CoreContext>, spec: BindSpec) {
    let connector = &spec.connector;
    let _running = RunningGuard(connector);
    let min_ms = connector.record.reconnect_min_ms.max(1);
    let max_ms = connector.record.reconnect_max_ms.max(min_ms);
    let mut delay_ms = min_ms;
    let mut attempt = spec.bind_index;
    while !context.stopping() && !connector.is_retired() {
        let host = match connector.hosts.get(attempt % connector.hosts.len().max(1)) {
            Some(host) => *host,
            None => return,
        };
        attempt = attempt.wrapping_add(1);
        match connect_and_bind(&context, &spec, host).await {
            Ok((conn, seq)) => {
                tracing::info!(connector = connector.name.as_str(), %host, role = ?spec.role, "bound");
                delay_ms = min_ms;
                let result = Session::new(&context, &spec, seq).serve(conn).await;
                match result {
                    Ok(()) => tracing::info!(connector = connector.name.as_str(), "bind closed"),
                    Err(e) => {
                        tracing::warn!(connector = connector.name.as_str(), %host, "bind lost: {e}");
                        connector.set_last_error(format!("{host}: bind lost: {e}"));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(connector = connector.name.as_str(), %host, "cannot bind: {e}");
                connector.set_last_error(format!("{host}: cannot bind: {e}"));
            }
        }
        if context.stopping() || connector.is_retired() {
            break;
        }
        // Half fixed, half random: binds that fell together spread out.
        let jitter = rand::thread_rng().gen_range(0..=delay_ms / 2);
        sleep_unless_stopped(
            &context,
            connector,
            Duration::from_millis(delay_ms / 2 + jitter),
        )
        .await;
        delay_ms = delay_ms.saturating_mul(2).min(max_ms);
    }
}

async fn sleep_unless_stopped(context: &CoreContext, connector: &ConnectorShared, total: Duration) {
    let until = Instant::now() + total;
    while !context.stopping() && !connector.is_retired() && Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        glommio::timer::sleep(left.min(Duration::from_millis(100))).await;
    }
}

async fn connect_and_bind(
    context: &CoreContext,
    spec: &BindSpec,
    host: std::net::SocketAddr,
) -> Result<(PduConnection, SequenceNumbers), String> {
    let config = &spec.connector.record;
    let mut conn = glommio::timer::timeout(CONNECT_TIMEOUT, async {
        PduConnection::connect(host, PeerConfig::default())
            .await
            .map_err(glommio::GlommioError::from)
    })
    .await
    .map_err(|e| format!("connect: {e}"))?;
    let bind = Bind {
        system_id: SystemId::from_text(&config.system_id).unwrap_or_default(),
        password: Password::from_text(&config.password).unwrap_or_default(),
        system_type: SystemType::from_text(&config.system_type).unwrap_or_default(),
        interface_version: 0x34,
        ..Bind::default()
    };
    let mut seq = SequenceNumbers::new();
    let bind_seq = seq.allocate();
    let body = match spec.role {
        Role::Transceiver => Body::BindTransceiver(bind),
        Role::Transmitter => Body::BindTransmitter(bind),
        Role::Receiver => Body::BindReceiver(bind),
    };
    conn.send(&Pdu::new(bind_seq, body))
        .map_err(|e| e.to_string())?;
    let answer = glommio::timer::timeout(BIND_TIMEOUT, async {
        loop {
            match conn.read_pdu().await {
                Ok(Some(Frame::Pdu(p))) if p.sequence_number == bind_seq => return Ok(Ok(p)),
                Ok(Some(_)) => {}
                Ok(None) => return Ok(Err("closed during bind".to_string())),
                Err(e) => return Ok(Err(e.to_string())),
            }
        }
    })
    .await
    .map_err(|_| "no bind response in time".to_string())?;
    let pdu = answer?;
    if !pdu.command_status.is_ok() {
        return Err(format!("bind refused: {}", pdu.command_status));
    }
    if context.stopping() || spec.connector.is_retired() {
        return Err("stopping".into());
    }
    Ok((conn, seq))
}

enum Wake {
    Job(Option<Job>),
    Notified,
    Tick,
}

/// A message split into parts: one job, answered once every part is.
struct Split {
    job: Option<Job>,
    total: usize,
    answered: usize,
    /// (seqnum, normalised operator id) of each accepted part.
    accepted: Vec<(usize, String)>,
    first_failure: Option<u32>,
}

/// What one submit_sm in the window stands for.
enum Sent {
    Whole(Job),
    Part {
        split: Rc<RefCell<Split>>,
        seqnum: usize,
    },
}

struct Session<'a> {
    context: &'a Rc<CoreContext>,
    connector: &'a Arc<ConnectorShared>,
    role: Role,
    seq: SequenceNumbers,
    window: Window<Sent>,
    /// Parts of a split message not yet in the window, in order; no new job
    /// is taken while any wait (bounded by one message's parts).
    parts: VecDeque<(SubmitSm, Rc<RefCell<Split>>, usize)>,
    keepalive: KeepAlive,
    tokens: f64,
    refilled_ms: u64,
    rate_per_s: Option<f64>,
    responses: Rc<RefCell<VecDeque<Pdu>>>,
    deliveries_in_flight: Rc<Cell<usize>>,
    notify: Rc<LocalNotify>,
}

impl<'a> Session<'a> {
    fn new(context: &'a Rc<CoreContext>, spec: &'a BindSpec, seq: SequenceNumbers) -> Self {
        let config = &spec.connector.record;
        let now_ms = context.now_ms();
        let enquire_ms = u64::from(config.enquire_link_s)
            .saturating_mul(1000)
            .max(1000);
        let capacity = NonZeroUsize::new(usize::from(config.window)).unwrap_or(NonZeroUsize::MIN);
        Session {
            context,
            connector: &spec.connector,
            role: spec.role,
            seq,
            window: Window::new(capacity, config.submit_timeout_ms.max(1)),
            parts: VecDeque::new(),
            keepalive: KeepAlive::new(
                KeepAliveConfig {
                    enquire_after_idle_ms: enquire_ms,
                    dead_after_silence_ms: enquire_ms.saturating_mul(3),
                },
                now_ms,
            ),
            tokens: 1.0,
            refilled_ms: now_ms,
            rate_per_s: (config.throughput_per_s > 0)
                .then(|| f64::from(config.throughput_per_s) / f64::from(config.bind_count.max(1))),
            responses: Rc::new(RefCell::new(VecDeque::new())),
            deliveries_in_flight: Rc::new(Cell::new(0)),
            notify: Rc::new(LocalNotify::new()),
        }
    }

    async fn serve(mut self, mut conn: PduConnection) -> Result<(), String> {
        let connector = self.connector;
        let _bound = CountGuard::new(&connector.bound, None);
        let _up = self
            .role
            .submits()
            .then(|| CountGuard::new(&connector.up_binds, Some(connector.name.as_str())));
        let result = self.serve_loop(&mut conn).await;
        // Outstanding submits: the operator may or may not have taken them.
        let outstanding: Vec<Sent> = self.window.drain().map(|o| o.tag).collect();
        for sent in outstanding {
            self.answer(sent, Err(status::BIND_LOST));
        }
        while let Some((_, split, seqnum)) = self.parts.pop_front() {
            self.answer(Sent::Part { split, seqnum }, Err(status::BIND_LOST));
        }
        if result.is_ok() {
            conn.close().await;
        }
        result
    }

    fn refill(&mut self, now_ms: u64) {
        if let Some(rate) = self.rate_per_s {
            let elapsed_s = now_ms.saturating_sub(self.refilled_ms) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed_s * rate).min(rate.max(1.0));
            self.refilled_ms = now_ms;
        }
    }

    /// Whether one more submit_sm may go out now.
    fn may_send(&self, conn: &PduConnection) -> bool {
        self.role.submits()
            && !self.window.is_full()
            && !conn.is_write_congested()
            && (self.rate_per_s.is_none() || self.tokens >= 1.0)
    }

    /// Whether a new job may be taken: room to send, no parts waiting, and
    /// the connector not retiring.
    fn may_submit(&self, conn: &PduConnection) -> bool {
        self.parts.is_empty() && !self.connector.is_retired() && self.may_send(conn)
    }

    async fn serve_loop(&mut self, conn: &mut PduConnection) -> Result<(), String> {
        loop {
            let now_ms = self.context.now_ms();
            // A retired connector finishes what the operator holds, then
            // unbinds; what was queued goes back to the dispatcher.
            let retired_and_done =
                self.connector.is_retired() && self.window.is_empty() && self.parts.is_empty();
            if self.context.stopping() || retired_and_done {
                let seq = self.seq.allocate();
                let _ = conn.send(&Pdu::new(seq, Body::Unbind));
                let _ = conn.flush().await;
                return Ok(());
            }
            loop {
                let next = self.responses.borrow_mut().pop_front();
                let Some(pdu) = next else { break };
                conn.send(&pdu).map_err(|e| e.to_string())?;
            }
            let expired: Vec<Sent> = self.window.expire(now_ms).map(|o| o.tag).collect();
            for sent in expired {
                self.answer(sent, Err(status::RESPONSE_TIMEOUT));
            }
            if self.keepalive.is_peer_dead(now_ms) {
                return Err("operator silent past the keep-alive limit".into());
            }
            if self.keepalive.should_send_enquire(now_ms) {
                let seq = self.seq.allocate();
                conn.send(&Pdu::new(seq, Body::EnquireLink))
                    .map_err(|e| e.to_string())?;
                self.keepalive.on_enquire_sent(now_ms);
            }
            self.refill(now_ms);
            self.send_parts(conn, now_ms)?;
            while self.may_submit(conn) {
                match self.connector.jobs_rx.try_recv() {
                    Ok(job) => self.submit(conn, job, now_ms)?,
                    Err(_) => break,
                }
            }
            let wait_ms = self
                .window
                .next_deadline_ms()
                .unwrap_or(u64::MAX)
                .min(self.keepalive.next_wakeup_ms())
                .saturating_sub(now_ms)
                .clamp(1, 1000);
            let wait_ms = if self.rate_per_s.is_some() && self.tokens < 1.0 {
                wait_ms.min(5)
            } else if self.connector.is_retired() {
                // Look again soon whether the window drained.
                wait_ms.min(50)
            } else {
                wait_ms
            };
            let can_take = self.may_submit(conn);
            let jobs = self.connector.jobs_rx.clone();
            let notify = Rc::clone(&self.notify);
            let wake = async move {
                let job = async {
                    if can_take {
                        Wake::Job(jobs.recv_async().await.ok())
                    } else {
                        std::future::pending().await
                    }
                };
                let notified = async {
                    notify.notified().await;
                    Wake::Notified
                };
                let tick = async {
                    glommio::timer::sleep(Duration::from_millis(wait_ms)).await;
                    Wake::Tick
                };
                futures_lite::future::or(job, futures_lite::future::or(notified, tick)).await
            };
            match conn.next_event(wake).await.map_err(|e| e.to_string())? {
                Event::Frame(frame) => {
                    self.keepalive.on_received(self.context.now_ms());
                    if !self.on_frame(conn, frame)? {
                        return Ok(());
                    }
                }
                Event::Closed => return Err("operator closed the connection".into()),
                Event::Woken(Wake::Job(Some(job))) => {
                    let now_ms = self.context.now_ms();
                    self.submit(conn, job, now_ms)?;
                }
                Event::Woken(Wake::Job(None) | Wake::Notified | Wake::Tick) => {}
            }
        }
    }

    fn submit(&mut self, conn: &mut PduConnection, job: Job, now_ms: u64) -> Result<(), String> {
        let connector = self.connector;
        let age_ms = u64::try_from(job.queued_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        if age_ms > MAX_QUEUED_MS || connector.is_retired() {
            let _ = self.context.outcomes.send(Outcome::Unsent {
                job,
                connector: connector.key,
            });
            return Ok(());
        }
        let reference = job.id.stable_hash();
        let Some(mut pdus) = submits_for(
            &job.accept,
            connector.default_alphabet,
            connector.long_messages,
            reference,
        ) else {
            let _ = self.context.outcomes.send(Outcome::Failed {
                job,
                connector: connector.key,
                status: CommandStatus::ESME_RINVSRCADR.0,
            });
            return Ok(());
        };
        if pdus.len() == 1 {
            if let Some(sm) = pdus.pop() {
                self.send_one(conn, sm, Sent::Whole(job), now_ms)?;
            }
            return Ok(());
        }
        let split = Rc::new(RefCell::new(Split {
            job: Some(job),
            total: pdus.len(),
            answered: 0,
            accepted: Vec::with_capacity(pdus.len()),
            first_failure: None,
        }));
        for (index, sm) in pdus.into_iter().enumerate() {
            self.parts.push_back((sm, Rc::clone(&split), index + 1));
        }
        self.send_parts(conn, now_ms)
    }

    /// Sends waiting parts, in order, while the window and throughput allow.
    fn send_parts(&mut self, conn: &mut PduConnection, now_ms: u64) -> Result<(), String> {
        while !self.parts.is_empty() && self.may_send(conn) {
            let Some((sm, split, seqnum)) = self.parts.pop_front() else {
                break;
            };
            self.send_one(conn, sm, Sent::Part { split, seqnum }, now_ms)?;
        }
        Ok(())
    }

    fn send_one(
        &mut self,
        conn: &mut PduConnection,
        sm: SubmitSm,
        sent: Sent,
        now_ms: u64,
    ) -> Result<(), String> {
        let seq = self.seq.allocate();
        match self
            .window
            .try_reserve(seq, CommandId::SubmitSm, now_ms, sent)
        {
            Ok(()) => crate::metrics::observe(Histogram::WindowOccupancy, self.window.len() as u64),
            Err(e) => {
                match e.into_tag() {
                    Sent::Whole(job) => {
                        let _ = self.context.outcomes.send(Outcome::Unsent {
                            job,
                            connector: self.connector.key,
                        });
                    }
                    // Callers check the room first; should a part not fit,
                    // it waits at the front for the next turn.
                    Sent::Part { split, seqnum } => self.parts.push_front((sm, split, seqnum)),
                }
                return Ok(());
            }
        }
        if self.rate_per_s.is_some() {
            self.tokens -= 1.0;
        }
        conn.send(&Pdu::new(seq, Body::SubmitSm(sm)))
            .map_err(|e| e.to_string())
    }

    /// Handles one frame; false when the operator unbound.
    fn on_frame(&mut self, conn: &mut PduConnection, frame: Frame) -> Result<bool, String> {
        let pdu = match frame {
            Frame::Pdu(pdu) => pdu,
            Frame::Rejected { reply, .. } => {
                if let Some(reply) = reply {
                    conn.send(&reply).map_err(|e| e.to_string())?;
                }
                return Ok(true);
            }
        };
        let seq = pdu.sequence_number;
        let command_status = pdu.command_status;
        match pdu.body {
            Body::SubmitSmResp(resp) => {
                if let ResponseMatch::Matched(o) =
                    self.window.complete(seq, CommandId::SubmitSmResp)
                {
                    self.on_submit_resp(o.tag, command_status, resp.message_id.as_bytes());
                }
            }
            Body::GenericNack => {
                if let ResponseMatch::Nacked(o) = self.window.complete(seq, CommandId::GenericNack)
                {
                    let status = if command_status.is_ok() {
                        CommandStatus::ESME_RSYSERR
                    } else {
                        command_status
                    };
                    self.on_submit_resp(o.tag, status, &[]);
                }
            }
            Body::DeliverSm(sm) => self.on_deliver(seq, sm),
            Body::EnquireLink => conn
                .send(&Pdu::new(seq, Body::EnquireLinkResp))
                .map_err(|e| e.to_string())?,
            Body::Unbind => {
                conn.send(&Pdu::new(seq, Body::UnbindResp))
                    .map_err(|e| e.to_string())?;
                return Ok(false);
            }
            Body::UnbindResp => return Ok(false),
            Body::EnquireLinkResp => {}
            body => {
                if !body.command_id().is_response() {
                    conn.send(&Pdu::generic_nack(seq, CommandStatus::ESME_RINVCMDID))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(true)
    }

    fn on_submit_resp(&mut self, sent: Sent, command_status: CommandStatus, message_id: &[u8]) {
        if !command_status.is_ok() {
            crate::metrics::submit_failed(&self.connector.name, command_status);
            self.answer(sent, Err(command_status.0));
            return;
        }
        crate::metrics::submitted(&self.connector.name);
        let raw = String::from_utf8_lossy(message_id);
        // The receipt side normalises the same way: the store compares bytes.
        let upstream_id = match self.connector.id_format.key_from_submit_resp(&raw) {
            Ok(key) => key.as_str().to_owned(),
            Err(e) => {
                tracing::warn!(
                    connector = self.connector.name.as_str(),
                    "submit_sm_resp id `{raw}` does not fit id_format ({e}); kept as sent"
                );
                raw.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0')
                    .to_owned()
            }
        };
        self.answer(sent, Ok(upstream_id));
    }

    /// One submit_sm answered: the operator's id, or a failure status (its
    /// own, or a local one for a timeout or a lost bind).
    fn answer(&mut self, sent: Sent, result: Result<String, u32>) {
        let connector = self.connector;
        match &result {
            Ok(_) => connector.submitted.fetch_add(1, Ordering::Relaxed),
            Err(_) => connector.failed.fetch_add(1, Ordering::Relaxed),
        };
        match sent {
            Sent::Whole(job) => match result {
                Ok(upstream_id) => self.propose_submitted(job.id, vec![upstream_id]),
                Err(status) => {
                    let _ = self.context.outcomes.send(Outcome::Failed {
                        job,
                        connector: connector.key,
                        status,
                    });
                }
            },
            Sent::Part { split, seqnum } => {
                let finished = {
                    let mut split = split.borrow_mut();
                    split.answered += 1;
                    match result {
                        Ok(upstream_id) => split.accepted.push((seqnum, upstream_id)),
                        Err(status) => {
                            split.first_failure.get_or_insert(status);
                        }
                    }
                    debug_assert!(split.answered <= split.total, "a part answered twice");
                    (split.answered == split.total).then(|| {
                        let mut accepted = std::mem::take(&mut split.accepted);
                        accepted.sort_by_key(|(seqnum, _)| *seqnum);
                        (split.job.take(), accepted, split.first_failure, split.total)
                    })
                };
                let Some((Some(job), accepted, first_failure, total)) = finished else {
                    return;
                };
                if accepted.is_empty() {
                    let _ = self.context.outcomes.send(Outcome::Failed {
                        job,
                        connector: connector.key,
                        status: first_failure.unwrap_or(status::BIND_LOST),
                    });
                    return;
                }
                if let Some(status) = first_failure {
                    // The operator holds some parts: the message stands on
                    // them (resending all would duplicate those parts).
                    tracing::warn!(
                        connector = connector.name.as_str(),
                        id = %job.id,
                        status = format_args!("0x{status:08X}"),
                        "{} of {total} parts refused; the message goes on with the rest",
                        total - accepted.len()
                    );
                }
                self.propose_submitted(job.id, accepted.into_iter().map(|(_, id)| id).collect());
            }
        }
    }

    /// Proposes one `Submitted` per operator id (one per part), in order.
    fn propose_submitted(&self, id: crate::store::id::MessageId, upstream_ids: Vec<String>) {
        let store = self.context.store.clone();
        let outcomes = self.context.outcomes.clone();
        let connector = self.connector.name.clone();
        glommio::spawn_local(async move {
            let mut committed = true;
            for upstream_id in upstream_ids {
                let command = Command::Submitted {
                    id,
                    connector: connector.clone(),
                    upstream_id,
                    at_ms: unix_now_ms(),
                };
                committed &= propose_until_committed(&store, &command).await.is_some();
            }
            let outcome = if committed {
                Outcome::Submitted { id }
            } else {
                Outcome::Lost { id }
            };
            let _ = outcomes.send(outcome);
        })
        .detach();
    }

    fn on_deliver(&mut self, seq: u32, sm: DeliverSm) {
        if self.deliveries_in_flight.get() >= MAX_DELIVERIES_IN_FLIGHT {
            self.respond(seq, CommandStatus::ESME_RX_T_APPN);
            return;
        }
        let command = match self.deliver_command(&sm) {
            Ok(command) => command,
            Err(status) => {
                self.respond(seq, status);
                return;
            }
        };
        self.deliveries_in_flight
            .set(self.deliveries_in_flight.get() + 1);
        let store = self.context.store.clone();
        let responses = Rc::clone(&self.responses);
        let in_flight = Rc::clone(&self.deliveries_in_flight);
        let notify = Rc::clone(&self.notify);
        glommio::spawn_local(async move {
            let status = match propose_until_committed(&store, &command).await {
                Some(ApplyOutcome::Rejected(_)) => CommandStatus::ESME_RX_P_APPN,
                Some(_) => CommandStatus::ESME_ROK,
                // Not committed: the operator sends it again later.
                None => CommandStatus::ESME_RX_T_APPN,
            };
            in_flight.set(in_flight.get().saturating_sub(1));
            responses.borrow_mut().push_back(deliver_resp(seq, status));
            notify.notify();
        })
        .detach();
    }

    fn respond(&mut self, seq: u32, status: CommandStatus) {
        self.responses
            .borrow_mut()
            .push_back(deliver_resp(seq, status));
        self.notify.notify();
    }

    /// The command a deliver_sm becomes, or the status to refuse it with.
    fn deliver_command(&self, sm: &DeliverSm) -> Result<Command, CommandStatus> {
        let connector = &self.connector.name;
        let identified = identify_receipt(
            sm.esm_class,
            &sm.message(),
            sm.tlvs.get(crate::smpp::tlv::tag::RECEIPTED_MESSAGE_ID),
            sm.tlvs.message_state(),
            sm.tlvs.network_error_code(),
            ReceiptSyntax::default(),
        );
        match identified {
            Ok(Some(found)) => {
                let receipt = found.receipt;
                crate::metrics::receipt_received(
                    connector,
                    receipt.stat.as_ref().map_or("none", |s| s.stat_text()),
                );
                let upstream_id = self
                    .connector
                    .id_format
                    .key_from_receipt(&receipt.id)
                    .map_err(|e| {
                        tracing::warn!(
                            connector = connector.as_str(),
                            "receipt id `{}`: {e}",
                            receipt.id
                        );
                        CommandStatus::ESME_RX_P_APPN
                    })?;
                let state = receipt
                    .stat
                    .as_ref()
                    .and_then(|s| s.message_state())
                    .unwrap_or(7);
                let err = receipt
                    .err
                    .as_ref()
                    .and_then(|e| e.value)
                    .map_or(0, |v| u16::try_from(v).unwrap_or(u16::MAX));
                Ok(Command::Receipt(Receipt {
                    connector: connector.clone(),
                    upstream_id: upstream_id.as_str().to_owned(),
                    state,
                    err,
                    done_at_ms: unix_now_ms(),
                    raw: Some(sm.short_message.to_vec()),
                }))
            }
            Ok(None) => {
                let id = self
                    .context
                    .mo_ids
                    .borrow_mut()
                    .next_id()
                    .map_err(|_| CommandStatus::ESME_RX_T_APPN)?;
                Ok(Command::MoReceived(MoReceived {
                    id,
                    connector: connector.clone(),
                    source: store_address(sm.source_addr_ton, sm.source_addr_npi, &sm.source_addr),
                    destination: store_address(
                        sm.dest_addr_ton,
                        sm.dest_addr_npi,
                        &sm.destination_addr,
                    ),
                    data_coding: sm.data_coding,
                    esm_class: sm.esm_class,
                    payload: sm.message().to_vec(),
                    segment: None,
                    received_at_ms: unix_now_ms(),
                }))
            }
            Err(e) => {
                tracing::warn!(connector = connector.as_str(), "unreadable receipt: {e}");
                Err(CommandStatus::ESME_RX_P_APPN)
            }
        }
    }
}

fn deliver_resp(seq: u32, status: CommandStatus) -> Pdu {
    let mut pdu = Pdu::new(seq, Body::DeliverSmResp(DeliverSmResp::default()));
    pdu.command_status = status;
    pdu
}

fn store_address(ton: u8, npi: u8, address: &Address) -> StoreAddress {
    StoreAddress {
        ton,
        npi,
        digits: String::from_utf8_lossy(address.as_bytes()).into_owned(),
    }
}

/// The data_coding to send for a stored value on a link whose 0 means
/// `operator_default`. Customers' 0 is GSM 03.38; the octets never change,
/// only the label. A value we do not understand goes out as stored.
fn upstream_data_coding(stored: u8, operator_default: DefaultAlphabet) -> u8 {
    DataCoding::from_smpp(stored, DefaultAlphabet::Gsm7)
        .map_or(stored, |coding| coding.to_smpp(operator_default))
}

/// The largest short_message (its length is one octet; 255 is reserved).
const MAX_SHORT_MESSAGE_BYTES: usize = 254;

/// The submit_sm fields common to every part of a stored message; None when
/// an address cannot go on the wire.
fn submit_sm_base(accept: &Accept, operator_default: DefaultAlphabet) -> Option<SubmitSm> {
    Some(SubmitSm {
        source_addr_ton: accept.source.ton,
        source_addr_npi: accept.source.npi,
        source_addr: Address::from_text(&accept.source.digits)?,
        dest_addr_ton: accept.destination.ton,
        dest_addr_npi: accept.destination.npi,
        destination_addr: Address::from_text(&accept.destination.digits)?,
        esm_class: accept.esm_class,
        protocol_id: accept.protocol_id,
        priority_flag: accept.priority,
        // Always ask for the final receipt: the customer's DLR comes from it.
        registered_delivery: 1,
        data_coding: upstream_data_coding(accept.data_coding, operator_default),
        ..SubmitSm::default()
    })
}

/// The submit_sm PDUs for a stored message under the connector's
/// `long_messages` mode (one, or one per part); None when an address cannot
/// go on the wire. `reference` (the message id's hash) gives the parts'
/// concatenation reference: the same on every attempt of the message.
fn submits_for(
    accept: &Accept,
    operator_default: DefaultAlphabet,
    mode: LongMessages,
    reference: u64,
) -> Option<Vec<SubmitSm>> {
    let base = submit_sm_base(accept, operator_default)?;
    // Already a part (UDH in the payload, or SAR values): it goes as one.
    let unsegmented = accept.segment.is_none() && accept.esm_class & ESM_UDHI == 0;
    // Text the segmenter can cut safely: a data_coding we understand. The
    // stored payload is as the customer's data_coding says (0 = GSM).
    let encoding = DataCoding::from_smpp(accept.data_coding, DefaultAlphabet::Gsm7)
        .ok()
        .map(|coding| coding.encoding);
    let single_bytes = encoding.map_or(140, |e| {
        segment::limits(e, Carriage::Sar { reference: 0 }).single_bytes
    });
    let too_long = accept.payload.len() > single_bytes;
    let carriage = match mode {
        LongMessages::Udh => Some(Carriage::Udh(ConcatReference::Eight(reference as u8))),
        LongMessages::Sar => Some(Carriage::Sar {
            reference: reference as u16,
        }),
        LongMessages::AsSubmitted | LongMessages::Payload => None,
    };
    if unsegmented && too_long {
        if let (Some(carriage), Some(encoding)) = (carriage, encoding) {
            match segment::segment(encoding, &accept.payload, carriage) {
                Ok(parts) => {
                    let mut pdus = Vec::with_capacity(parts.len());
                    for part in parts {
                        let mut sm = base.clone();
                        if part.udhi {
                            sm.esm_class |= ESM_UDHI;
                        }
                        if let Some(sar) = part.sar {
                            set_sar(&mut sm, sar.reference, sar.total, sar.seqnum)?;
                        }
                        sm.short_message = Bytes::from(part.bytes);
                        pdus.push(sm);
                    }
                    return Some(pdus);
                }
                Err(e) => {
                    tracing::warn!(id = %accept.id, "cannot split ({e}); sent in message_payload");
                }
            }
        }
    }
    let mut sm = base;
    if let Some(info) = accept.segment.filter(|_| accept.esm_class & ESM_UDHI == 0) {
        // A customer's SAR part: the operator must see the same values.
        set_sar(&mut sm, info.reference, info.total, info.sequence)?;
    }
    let whole_in_payload = accept.payload.len() > MAX_SHORT_MESSAGE_BYTES
        || (mode == LongMessages::Payload && unsegmented && too_long);
    if whole_in_payload {
        sm.tlvs.set_message_payload(&accept.payload).ok()?;
    } else {
        sm.short_message = Bytes::copy_from_slice(&accept.payload);
    }
    Some(vec![sm])
}

/// esm_class bit: short_message starts with a User Data Header.
const ESM_UDHI: u8 = 0x40;

fn set_sar(sm: &mut SubmitSm, reference: u16, total: u8, seqnum: u8) -> Option<()> {
    sm.tlvs.set_sar_msg_ref_num(reference).ok()?;
    sm.tlvs.set_sar_total_segments(total).ok()?;
    sm.tlvs.set_sar_segment_seqnum(seqnum).ok()
}

/// Proposes until the command commits (idempotent commands: a retry after an
/// unknown outcome is safe). None when it never did within the attempts.
pub async fn propose_until_committed(
    store: &StoreHandle,
    command: &Command,
) -> Option<ApplyOutcome> {
    let bytes = command.encode();
    let mut delay_ms = 10u64;
    for _ in 0..PROPOSE_ATTEMPTS {
        match store.propose(bytes.clone()).await {
            Ok(outcome) => return Some(outcome),
            Err(ProposeError::Stopped) => return None,
            Err(ProposeError::Retry(_) | ProposeError::Busy) => {
                glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
                delay_ms = (delay_ms * 2).min(1000);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::id::MessageId;

    fn accept(payload: Vec<u8>, data_coding: u8) -> Accept {
        Accept {
            id: MessageId::from_parts(1, 1, 0, 1).expect("id"),
            account: "a".into(),
            source: StoreAddress {
                ton: 5,
                npi: 0,
                digits: "TERN".into(),
            },
            destination: StoreAddress {
                ton: 1,
                npi: 1,
                digits: "447700900123".into(),
            },
            data_coding,
            esm_class: 0x40,
            protocol_id: 0,
            priority: 1,
            registered_delivery: 0,
            payload,
            segment: None,
            received_at_ms: 0,
            validity_until_ms: None,
            owner_node: 1,
            client_ref: None,
            scheduled_at_ms: None,
        }
    }

    fn one(accept: &Accept, mode: LongMessages) -> SubmitSm {
        let mut pdus = submits_for(accept, DefaultAlphabet::Gsm7, mode, 0x1234_5678).expect("sm");
        assert_eq!(pdus.len(), 1, "one submit_sm");
        pdus.remove(0)
    }

    #[test]
    fn short_and_long_messages_go_as_stored() {
        let sm = one(&accept(b"hi".to_vec(), 0), LongMessages::AsSubmitted);
        assert_eq!(&sm.short_message[..], b"hi");
        assert_eq!(sm.esm_class, 0x40, "UDHI kept");
        assert_eq!(
            sm.registered_delivery, 1,
            "the operator's receipt is always asked for"
        );
        let long = vec![b'x'; 300];
        let sm = one(&accept(long.clone(), 8), LongMessages::AsSubmitted);
        assert!(sm.short_message.is_empty());
        assert_eq!(sm.message(), Bytes::from(long));
        let mut bad = accept(b"hi".to_vec(), 0);
        bad.destination.digits = "1".repeat(40);
        assert!(submits_for(&bad, DefaultAlphabet::Gsm7, LongMessages::Udh, 0).is_none());
    }

    /// An unsegmented GSM text of `len` septets.
    fn long_text(len: usize) -> Accept {
        let mut a = accept((0..len).map(|i| b'a' + (i % 26) as u8).collect(), 0);
        a.esm_class = 0;
        a
    }

    #[test]
    fn as_submitted_keeps_long_text_in_one_pdu() {
        let a = long_text(200);
        let sm = one(&a, LongMessages::AsSubmitted);
        assert_eq!(
            &sm.short_message[..],
            &a.payload[..],
            "200 octets fit short_message"
        );
        assert!(sm.tlvs.sar_msg_ref_num().is_none());
    }

    #[test]
    fn udh_mode_splits_with_a_concatenation_header() {
        let a = long_text(400);
        let pdus =
            submits_for(&a, DefaultAlphabet::Gsm7, LongMessages::Udh, 0x1234_5678).expect("parts");
        assert_eq!(pdus.len(), 3, "400 septets at 153 a part");
        let mut body = Vec::new();
        for (i, sm) in pdus.iter().enumerate() {
            assert_eq!(sm.esm_class & 0x40, 0x40, "UDHI set");
            let seqnum = u8::try_from(i + 1).expect("small");
            assert_eq!(
                &sm.short_message[..6],
                &[0x05, 0x00, 0x03, 0x78, 3, seqnum],
                "8-bit reference from the id hash, total, seqnum"
            );
            assert!(sm.short_message.len() <= 6 + 153);
            assert!(sm
                .tlvs
                .get(crate::smpp::tlv::tag::MESSAGE_PAYLOAD)
                .is_none());
            body.extend_from_slice(&sm.short_message[6..]);
        }
        assert_eq!(body, a.payload, "the parts carry the whole text in order");
        // A message that fits one SMS goes as one, without a header.
        let sm = one(&long_text(160), LongMessages::Udh);
        assert_eq!(sm.esm_class & 0x40, 0);
        assert_eq!(sm.short_message.len(), 160);
    }

    #[test]
    fn sar_mode_splits_with_sar_tlvs() {
        let a = long_text(400);
        let pdus =
            submits_for(&a, DefaultAlphabet::Gsm7, LongMessages::Sar, 0x1234_5678).expect("parts");
        assert_eq!(pdus.len(), 3, "400 septets at 152 a part");
        let mut body = Vec::new();
        for (i, sm) in pdus.iter().enumerate() {
            assert_eq!(sm.esm_class & 0x40, 0, "no UDH");
            assert_eq!(sm.tlvs.sar_msg_ref_num(), Some(0x5678));
            assert_eq!(sm.tlvs.sar_total_segments(), Some(3));
            assert_eq!(
                sm.tlvs.sar_segment_seqnum(),
                Some(u8::try_from(i + 1).expect("small"))
            );
            body.extend_from_slice(&sm.short_message);
        }
        assert_eq!(body, a.payload);
    }

    #[test]
    fn ucs2_is_split_on_character_boundaries() {
        let mut a = accept([0x04, 0x10].repeat(150), 8);
        a.esm_class = 0;
        let pdus = submits_for(&a, DefaultAlphabet::Gsm7, LongMessages::Udh, 7).expect("parts");
        assert_eq!(pdus.len(), 3, "150 UCS-2 characters at 67 a part");
        assert!(pdus.iter().all(|sm| (sm.short_message.len() - 6) % 2 == 0));
        assert!(pdus.iter().all(|sm| sm.data_coding == 8));
    }

    #[test]
    fn payload_mode_sends_a_long_message_whole_in_message_payload() {
        let a = long_text(200);
        let sm = one(&a, LongMessages::Payload);
        assert!(sm.short_message.is_empty());
        assert_eq!(sm.message(), Bytes::from(a.payload.clone()));
        assert_eq!(sm.esm_class & 0x40, 0);
        let short = one(&long_text(100), LongMessages::Payload);
        assert_eq!(
            short.short_message.len(),
            100,
            "one SMS stays in short_message"
        );
    }

    #[test]
    fn parts_from_the_customer_go_as_parts_in_every_mode() {
        // A UDH part (esm_class 0x40 in `accept`): never split again.
        let mut udh_part = accept(vec![b'x'; 159], 0);
        udh_part.segment = Some(crate::store::command::SegmentInfo {
            reference: 9,
            total: 2,
            sequence: 1,
        });
        // A SAR part: its SAR values go to the operator too.
        let mut sar_part = udh_part.clone();
        sar_part.esm_class = 0;
        sar_part.payload = vec![b'y'; 152];
        for mode in [
            LongMessages::AsSubmitted,
            LongMessages::Udh,
            LongMessages::Sar,
            LongMessages::Payload,
        ] {
            let sm = one(&udh_part, mode);
            assert_eq!(&sm.short_message[..], &udh_part.payload[..], "{mode:?}");
            assert_eq!(sm.esm_class & 0x40, 0x40);
            let sm = one(&sar_part, mode);
            assert_eq!(sm.short_message.len(), 152, "{mode:?}");
            assert_eq!(sm.tlvs.sar_msg_ref_num(), Some(9));
            assert_eq!(sm.tlvs.sar_total_segments(), Some(2));
            assert_eq!(sm.tlvs.sar_segment_seqnum(), Some(1));
        }
    }

    #[test]
    fn latin1_operator_label_applies_to_every_part() {
        let a = long_text(400);
        let pdus = submits_for(&a, DefaultAlphabet::Latin1, LongMessages::Udh, 1).expect("parts");
        assert_eq!(pdus.len(), 3);
        assert!(
            pdus.iter().all(|sm| sm.data_coding == 0xF1),
            "GSM text to a Latin-1 operator is labelled 0xF1 on every part"
        );
    }

    #[test]
    fn data_coding_zero_is_relabelled_per_operator() {
        assert_eq!(upstream_data_coding(0, DefaultAlphabet::Gsm7), 0);
        assert_eq!(upstream_data_coding(0, DefaultAlphabet::Latin1), 0xF1);
        assert_eq!(upstream_data_coding(3, DefaultAlphabet::Latin1), 0);
        assert_eq!(upstream_data_coding(3, DefaultAlphabet::Gsm7), 3);
        assert_eq!(upstream_data_coding(8, DefaultAlphabet::Latin1), 8);
        assert_eq!(upstream_data_coding(0x05, DefaultAlphabet::Latin1), 0x05);
    }
}
