//! One customer SMPP connection, server side, from accept to close.
//!
//! Owns: the connection's read buffer, framing, bind state (through
//! `smpp::session`), authentication of the bind, the per-bind window, the
//! throttle check, turning submit_sm / data_sm into an `Accept` proposal and
//! answering only once it committed, query_sm from the store, enquire_link
//! both ways, dropping a silent peer, the unbind on shutdown or when the
//! bind's account is removed, disabled or its password changed, and on a
//! receiver/transceiver bind sending the deliver_sm the delivery hub hands
//! it (in the bind's window, timed out there) and reporting each answer back
//! to the hub. Must not touch: other connections, the store's internals
//! (only `StoreHandle`), which delivery goes where or its commit (see
//! `delivery`), or routing and delivery to operators.
//!
//! Shape: one task per connection owns all of this state; it waits on
//! whichever comes first of bytes from the socket, a committed proposal, a
//! delivery to send (only while the delivery window has room), or its next
//! timer. Each proposal is awaited by a small task of its own that
//! hands the outcome back through a channel, so the connection keeps reading
//! while commits are in flight. That channel holds at most one completion
//! per outstanding proposal, and `admit` keeps those within the bind's
//! window (itself at most [`MAX_WINDOW`]): the window is its bound, known
//! only at bind, so nothing is sized for the largest window in advance.
//! Responses produced by one read are written with one write.
//!
//! An account change (see `Shard::register_bound`) sets the bind's re-check
//! flag; the connection looks at it whenever it wakes (at least every
//! [`SHUTDOWN_POLL`]) and re-reads the account once.

use std::cell::Cell;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::future::{or, poll_once};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;

use super::auth;
use super::delivery::{HubEvent, Job, DELIVER_RESP_TIMEOUT_MS};
use super::shard::Shard;
use super::throttle::{per_core_rate, TokenBucket};
use super::MAX_WINDOW;
use crate::metrics::{Counter, Gauge, Histogram};
use crate::smpp::command::CommandId;
use crate::smpp::frame::{Frame, FrameDecoder};
use crate::smpp::pdu::{
    self, BindResp, Body, DataSm, DataSmResp, Pdu, QuerySm, QuerySmResp, SubmitSm, SubmitSmResp,
    SystemId,
};
use crate::smpp::segment::parse_udh;
use crate::smpp::session::{
    BindSession, KeepAlive, KeepAliveConfig, ResponseMatch, Role, SequenceNumbers, Window,
};
use crate::smpp::status::CommandStatus;
use crate::smpp::time::{AbsoluteTime, SmppTime, TimeField};
use crate::store::command::{Accept, Address, BindKind, Command, SegmentInfo};
use crate::store::driver::ProposeError;
use crate::store::id::{MessageId, MESSAGE_ID_TEXT_LEN};
use crate::store::retention::ArchiveLookupError;
use crate::store::state::{ApplyOutcome, MessageState, RejectReason};

type S = CommandStatus;

/// Bytes read from the socket at once.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// The system_id we answer binds with.
const SERVER_SYSTEM_ID: &[u8] = b"tern";
/// A bind or query waits this long for the store before answering RSYSERR.
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the connection looks at the shutdown flag when otherwise idle.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);
/// A bind whose account was revoked has this long to answer our unbind and
/// take its last responses (at most the shutdown grace period).
const REVOKED_GRACE_MS: u64 = 2_000;

/// The account a bind authenticated as, with what the hot path needs.
struct Bound {
    account: String,
    kind: BindKind,
    /// The replicated account's window (0 = the node's default).
    window: u32,
    allowed_senders: Vec<String>,
    bucket: Option<TokenBucket>,
    /// The hash the bind's password matched: another one means the
    /// password changed and the bind must authenticate again.
    password_hash: String,
    /// Set by the shard when the account changed.
    recheck: Rc<Cell<bool>>,
}

/// What a proposal's task hands back.
struct Completion {
    sequence_number: u32,
    request: CommandId,
    id: MessageId,
    result: Result<ApplyOutcome, ProposeError>,
    received_at: Instant,
}

enum Event {
    Read(std::io::Result<usize>),
    Committed(Option<Completion>),
    Deliver(Option<Job>),
    Timer,
}

/// A receiving bind's side of delivery: what the hub hands it, and the
/// deliver_sm sent and not yet answered.
struct Deliveries {
    jobs: flume::Receiver<Job>,
    window: Window<Job>,
}

struct Connection {
    shard: Rc<Shard>,
    peer: SocketAddr,
    session_id: u64,
    decoder: FrameDecoder,
    bind: BindSession,
    keepalive: KeepAlive,
    sequence: SequenceNumbers,
    bound: Option<Bound>,
    window: usize,
    /// Our responses still owed (proposals in flight on this bind).
    outstanding: usize,
    out: BytesMut,
    completions_tx: Rc<LocalSender<Completion>>,
    deliveries: Option<Deliveries>,
    bind_deadline_ms: u64,
    /// Set once we decided to close: after the flush, or once `outstanding`
    /// drains and the unbind is answered (or the grace period ends).
    closing: Option<Closing>,
}

#[derive(Debug, Clone, Copy)]
enum Closing {
    /// Close after writing what is queued.
    Now,
    /// We sent unbind; wait for in-flight commits and unbind_resp until the deadline.
    Draining {
        deadline_ms: u64,
        unbind_answered: bool,
    },
}

/// Serves one accepted connection until it closes. Never panics on input.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let session_id = shard.next_session_id();
    let settings = shard.settings();
    // A customer that stops reading must not hold the connection forever.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(settings.dead_after_ms.max(1))));
    let now_ms = shard.now_ms();
    // Bounded by the window through `admit` (see the module header).
    let (completions_tx, completions_rx) = local_channel::new_unbounded();
    let mut conn = Connection {
        shard: Rc::clone(&shard),
        peer,
        session_id,
        decoder: FrameDecoder::new(settings.max_command_length),
        bind: BindSession::new(Role::Smsc),
        keepalive: KeepAlive::new(
            KeepAliveConfig {
                enquire_after_idle_ms: settings.enquire_link_interval_ms,
                dead_after_silence_ms: settings.dead_after_ms,
            },
            now_ms,
        ),
        sequence: SequenceNumbers::new(),
        bound: None,
        window: settings.default_window,
        outstanding: 0,
        out: BytesMut::with_capacity(4096),
        completions_tx: Rc::new(completions_tx),
        deliveries: None,
        bind_deadline_ms: now_ms.saturating_add(settings.bind_timeout_ms),
        closing: None,
    };
    tracing::debug!(session = session_id, %peer, "connection opened");
    crate::metrics::gauge_add(Gauge::ConnectionsOpen, 1);
    let reason = conn.run(&mut stream, &completions_rx).await;
    tracing::debug!(session = session_id, %peer, reason, "connection closed");
    crate::metrics::gauge_add(Gauge::ConnectionsOpen, -1);
    conn.release_deliveries().await;
    conn.release_bind().await;
    let _ = stream.close().await;
}

impl Connection {
    async fn run(
        &mut self,
        stream: &mut TcpStream,
        completions: &LocalReceiver<Completion>,
    ) -> &'static str {
        let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            let recheck = self
                .bound
                .as_ref()
                .is_some_and(|bound| bound.recheck.replace(false));
            if recheck {
                self.recheck_account().await;
            }
            if !self.out.is_empty() {
                if stream.write_all(&self.out).await.is_err() {
                    return "write failed";
                }
                self.out.clear();
            }
            let now_ms = self.shard.now_ms();
            if let Some(reason) = self.check_timers(now_ms) {
                return reason;
            }
            self.expire_deliveries(now_ms).await;
            let wait = self.next_wakeup(now_ms);
            let jobs = self
                .deliveries
                .as_ref()
                .filter(|d| self.closing.is_none() && !d.window.is_full())
                .map(|d| &d.jobs);
            let event = or(
                async { Event::Read(stream.read(&mut chunk).await) },
                or(
                    async { Event::Committed(completions.recv().await) },
                    or(
                        async {
                            match jobs {
                                Some(jobs) => Event::Deliver(jobs.recv_async().await.ok()),
                                None => futures_lite::future::pending().await,
                            }
                        },
                        async {
                            glommio::timer::sleep(wait).await;
                            Event::Timer
                        },
                    ),
                ),
            )
            .await;
            match event {
                Event::Read(Ok(0)) => return "peer closed",
                Event::Read(Ok(n)) => {
                    let Some(bytes) = chunk.get(..n) else {
                        return "read overflow";
                    };
                    buf.extend_from_slice(bytes);
                    self.keepalive.on_received(self.shard.now_ms());
                    if let Err(reason) = self.handle_frames(&mut buf).await {
                        if !self.out.is_empty() {
                            let _ = stream.write_all(&self.out).await;
                        }
                        return reason;
                    }
                    // Reads win ties in `or`; a customer that keeps sending
                    // still gets the answers that are ready.
                    while let Some(Some(done)) = poll_once(completions.recv()).await {
                        self.on_committed(done);
                    }
                }
                Event::Read(Err(_)) => return "read failed",
                Event::Committed(Some(completion)) => {
                    self.on_committed(completion);
                    // Gather every other outcome already waiting into the same write.
                    while let Some(Some(more)) = poll_once(completions.recv()).await {
                        self.on_committed(more);
                    }
                }
                Event::Committed(None) => return "completion channel closed",
                Event::Deliver(Some(job)) => self.send_deliveries(job).await,
                // The hub stopped (shutdown): nothing more to deliver here.
                Event::Deliver(None) => self.deliveries = None,
                Event::Timer => {}
            }
        }
    }

    fn next_wakeup(&self, now_ms: u64) -> Duration {
        let mut at_ms = self.keepalive.next_wakeup_ms();
        if self.bound.is_none() {
            at_ms = at_ms.min(self.bind_deadline_ms);
        }
        if let Some(Closing::Draining { deadline_ms, .. }) = self.closing {
            at_ms = at_ms.min(deadline_ms);
        }
        if let Some(due_ms) = self
            .deliveries
            .as_ref()
            .and_then(|d| d.window.next_deadline_ms())
        {
            at_ms = at_ms.min(due_ms);
        }
        Duration::from_millis(at_ms.saturating_sub(now_ms)).min(SHUTDOWN_POLL)
    }

    /// Keep-alive, bind timeout, shutdown and drain; `Some` means close now.
    fn check_timers(&mut self, now_ms: u64) -> Option<&'static str> {
        match self.closing {
            Some(Closing::Now) => return Some("closed by us"),
            Some(Closing::Draining {
                deadline_ms,
                unbind_answered,
            }) => {
                if self.outstanding == 0 && unbind_answered {
                    return Some("unbound");
                }
                if now_ms >= deadline_ms {
                    return Some("shutdown grace period over");
                }
            }
            None => {}
        }
        if self.keepalive.is_peer_dead(now_ms) {
            tracing::info!(session = self.session_id, peer = %self.peer, "dropping silent peer");
            return Some("peer silent");
        }
        if self.bound.is_none() && now_ms >= self.bind_deadline_ms && self.closing.is_none() {
            return Some("no bind in time");
        }
        if self.closing.is_none() && self.shard.stopping() {
            if !self.bind.state().is_bound() {
                return Some("shutting down");
            }
            let sequence_number = self.sequence.allocate();
            self.push(&Pdu::new(sequence_number, Body::Unbind));
            self.bind.apply(CommandId::Unbind, S::ESME_ROK);
            self.closing = Some(Closing::Draining {
                deadline_ms: now_ms.saturating_add(self.shard.settings().shutdown_grace_ms),
                unbind_answered: false,
            });
            return None;
        }
        if self.closing.is_none() && self.keepalive.should_send_enquire(now_ms) {
            let sequence_number = self.sequence.allocate();
            self.push(&Pdu::new(sequence_number, Body::EnquireLink));
            self.keepalive.on_enquire_sent(now_ms);
        }
        None
    }

    fn push(&mut self, pdu: &Pdu) {
        if let Err(e) = pdu.encode(&mut self.out) {
            // Our own responses always fit; a failure is a bug in building them.
            debug_assert!(false, "response failed to encode: {e}");
            tracing::error!(session = self.session_id, "cannot encode {pdu}: {e}");
        }
    }

    fn respond_error(&mut self, request: CommandId, sequence_number: u32, status: CommandStatus) {
        let reply = Pdu::error_response(request, sequence_number, status)
            .unwrap_or_else(|| Pdu::generic_nack(sequence_number, status));
        if matches!(request, CommandId::SubmitSm | CommandId::DataSm) {
            crate::metrics::submit_refused(
                self.bound
                    .as_ref()
                    .map_or("unbound", |b| b.account.as_str()),
                status,
            );
        }
        self.push(&reply);
    }

    /// Handles every whole frame in `buf`. `Err` closes the connection.
    async fn handle_frames(&mut self, buf: &mut BytesMut) -> Result<(), &'static str> {
        loop {
            match self.decoder.decode(buf) {
                Ok(None) => return Ok(()),
                Ok(Some(Frame::Pdu(pdu))) => self.handle_pdu(pdu).await?,
                Ok(Some(Frame::Rejected { error, reply, .. })) => {
                    tracing::debug!(session = self.session_id, "rejected frame: {error}");
                    if let Some(reply) = reply {
                        self.push(&reply);
                    }
                }
                Err(framing) => {
                    tracing::info!(session = self.session_id, peer = %self.peer, "{framing}");
                    self.push(&framing.nack());
                    return Err("unframeable stream");
                }
            }
            if matches!(self.closing, Some(Closing::Now)) {
                return Ok(());
            }
        }
    }

    async fn handle_pdu(&mut self, pdu: Pdu) -> Result<(), &'static str> {
        let command = pdu.command_id();
        let sequence_number = pdu.sequence_number;
        if let Err(status) = self.bind.check_receive(command) {
            if command.is_response() || command == CommandId::GenericNack {
                return Ok(());
            }
            self.respond_error(command, sequence_number, status);
            return Ok(());
        }
        match pdu.body {
            Body::BindTransmitter(bind) => {
                self.on_bind(bind, BindKind::Transmitter, sequence_number)
                    .await
            }
            Body::BindReceiver(bind) => {
                self.on_bind(bind, BindKind::Receiver, sequence_number)
                    .await
            }
            Body::BindTransceiver(bind) => {
                self.on_bind(bind, BindKind::Transceiver, sequence_number)
                    .await
            }
            Body::SubmitSm(sm) => self.on_submit(&sm, sequence_number),
            Body::DataSm(sm) => self.on_data_sm(&sm, sequence_number),
            Body::QuerySm(query) => self.on_query(&query, sequence_number).await,
            Body::EnquireLink => self.push(&Pdu::new(sequence_number, Body::EnquireLinkResp)),
            Body::Unbind => {
                self.bind.apply(CommandId::Unbind, S::ESME_ROK);
                self.push(&Pdu::new(sequence_number, Body::UnbindResp));
                if self.outstanding == 0 {
                    self.closing = Some(Closing::Now);
                } else {
                    self.closing = Some(Closing::Draining {
                        deadline_ms: self
                            .shard
                            .now_ms()
                            .saturating_add(self.shard.settings().shutdown_grace_ms),
                        unbind_answered: true,
                    });
                }
            }
            Body::UnbindResp => {
                if let Some(Closing::Draining {
                    unbind_answered, ..
                }) = &mut self.closing
                {
                    *unbind_answered = true;
                }
            }
            Body::DeliverSmResp(_) | Body::GenericNack => {
                self.on_delivery_answer(sequence_number, command, pdu.command_status)
                    .await;
            }
            // Answers to our enquire_link, and acks we do not track.
            Body::EnquireLinkResp | Body::DataSmResp(_) => {}
            _ if command.is_response() => {}
            _ => self.respond_error(command, sequence_number, S::ESME_RINVCMDID),
        }
        Ok(())
    }

    async fn on_bind(&mut self, bind: pdu::Bind, kind: BindKind, sequence_number: u32) {
        let response_id = match kind {
            BindKind::Transmitter => CommandId::BindTransmitterResp,
            BindKind::Receiver => CommandId::BindReceiverResp,
            BindKind::Transceiver => CommandId::BindTransceiverResp,
        };
        match self.authenticate(&bind, kind).await {
            Ok(bound) => {
                self.shard.failed_binds().record_success(self.peer.ip());
                debug_assert_eq!(self.outstanding, 0, "proposals before the bind");
                // The replicated window (set in the config file or through
                // the admin API) wins over the node's settings.
                let window = match usize::try_from(bound.window) {
                    Ok(window) if window > 0 => window,
                    _ => self.shard.settings().window_for(&bound.account),
                };
                self.window = window.clamp(1, MAX_WINDOW);
                tracing::info!(
                    session = self.session_id,
                    peer = %self.peer,
                    account = bound.account.as_str(),
                    ?kind,
                    "bound"
                );
                crate::metrics::binds_open_add(&bound.account, kind.into(), 1);
                let receiving = kind.receives().then(|| bound.account.clone());
                self.bound = Some(bound);
                let body = bind_resp_body(response_id);
                self.push(&Pdu::new(sequence_number, body));
                self.bind.apply(response_id, S::ESME_ROK);
                if let Some(account) = receiving {
                    self.open_deliveries(account).await;
                }
            }
            Err(status) => {
                let delay_ms = self
                    .shard
                    .failed_binds()
                    .record_failure(self.peer.ip(), self.shard.now_ms());
                tracing::info!(
                    session = self.session_id,
                    peer = %self.peer,
                    system_id = %String::from_utf8_lossy(bind.system_id.as_bytes()),
                    status = status.name().unwrap_or("?"),
                    delay_ms,
                    "bind refused"
                );
                glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
                self.respond_error(bind_request_id(kind), sequence_number, status);
            }
        }
    }

    async fn authenticate(
        &mut self,
        bind: &pdu::Bind,
        kind: BindKind,
    ) -> Result<Bound, CommandStatus> {
        let Some(name) = bind.system_id.as_str().map(str::to_string) else {
            return Err(S::ESME_RINVSYSID);
        };
        // Watched before the account is read: a change applied between the
        // read and the bind_resp still reaches this bind.
        let recheck = self.shard.register_bound(self.session_id, &name);
        let checked = self.check_account(bind, kind, name, recheck).await;
        if checked.is_err() {
            self.shard.unregister_bound(self.session_id);
        }
        checked
    }

    /// The account `name` allows this bind: password, state, address and
    /// the bind registry's limit.
    async fn check_account(
        &mut self,
        bind: &pdu::Bind,
        kind: BindKind,
        name: String,
        recheck: Rc<Cell<bool>>,
    ) -> Result<Bound, CommandStatus> {
        let lookup = name.clone();
        let account = self
            .store_call(
                self.shard
                    .store()
                    .query(move |state| state.account(&lookup).cloned()),
            )
            .await?
            .ok_or(S::ESME_RINVSYSID)?;
        if !account.enabled {
            return Err(S::ESME_RBINDFAIL);
        }
        if !auth::verify_password(bind.password.as_bytes(), &account.password_hash) {
            return Err(S::ESME_RINVPASWD);
        }
        if !auth::address_allowed(&account.allowed_ips, self.peer.ip()) {
            return Err(S::ESME_RBINDFAIL);
        }
        let opened = Command::BindOpened {
            node: self.shard.node_id(),
            session: self.session_id,
            account: name.clone(),
            kind,
        }
        .encode();
        match self.store_call(self.shard.store().propose(opened)).await? {
            ApplyOutcome::Applied | ApplyOutcome::Ignored => {}
            ApplyOutcome::Rejected(RejectReason::TooManyBinds) => return Err(S::ESME_RBINDFAIL),
            other => {
                tracing::warn!(
                    session = self.session_id,
                    ?other,
                    "bind registry refused the bind"
                );
                return Err(S::ESME_RBINDFAIL);
            }
        }
        let bucket = per_core_rate(account.throughput_per_s, self.shard.cores())
            .map(|rate| TokenBucket::new(rate, self.shard.now_ms()));
        Ok(Bound {
            window: account.window,
            account: name,
            kind,
            allowed_senders: account.allowed_senders,
            bucket,
            password_hash: account.password_hash,
            recheck,
        })
    }

    /// The bind's account changed: re-read it. Removed, disabled, another
    /// password or an address no longer allowed ends the bind (unbind, then
    /// close after a short grace); otherwise the sender list and throughput
    /// follow the new record.
    async fn recheck_account(&mut self) {
        if self.closing.is_some() {
            return;
        }
        let Some(bound) = &self.bound else {
            return;
        };
        let lookup = bound.account.clone();
        let read = self
            .store_call(
                self.shard
                    .store()
                    .query(move |state| state.account(&lookup).cloned()),
            )
            .await;
        let Some(bound) = &mut self.bound else {
            return;
        };
        let account = match read {
            Ok(account) => account,
            Err(_) => {
                // The store did not answer: look again at the next wake-up.
                bound.recheck.set(true);
                return;
            }
        };
        let reason = match &account {
            None => Some("account removed"),
            Some(a) if !a.enabled => Some("account disabled"),
            Some(a) if a.password_hash != bound.password_hash => Some("password changed"),
            Some(a) if !auth::address_allowed(&a.allowed_ips, self.peer.ip()) => {
                Some("address no longer allowed")
            }
            Some(_) => None,
        };
        match (reason, account) {
            (None, Some(account)) => {
                bound.allowed_senders = account.allowed_senders;
                let rate = per_core_rate(account.throughput_per_s, self.shard.cores());
                match (&mut bound.bucket, rate) {
                    (Some(bucket), Some(rate)) => bucket.set_rate(rate),
                    (bucket, rate) => {
                        *bucket = rate.map(|rate| TokenBucket::new(rate, self.shard.now_ms()))
                    }
                }
            }
            (Some(reason), _) => self.revoke(reason),
            (None, None) => {}
        }
    }

    /// Ends a bind whose account no longer allows it: an unbind the customer
    /// answers while its last responses go out, or a plain close when the
    /// session is not in a bound state.
    fn revoke(&mut self, reason: &'static str) {
        tracing::info!(
            session = self.session_id,
            peer = %self.peer,
            account = self.bound.as_ref().map_or("", |b| b.account.as_str()),
            reason,
            "closing a bind its account no longer allows"
        );
        crate::metrics::count(Counter::BindsRevoked);
        if !self.bind.state().is_bound() {
            self.closing = Some(Closing::Now);
            return;
        }
        let sequence_number = self.sequence.allocate();
        self.push(&Pdu::new(sequence_number, Body::Unbind));
        self.bind.apply(CommandId::Unbind, S::ESME_ROK);
        let grace_ms = REVOKED_GRACE_MS.min(self.shard.settings().shutdown_grace_ms);
        self.closing = Some(Closing::Draining {
            deadline_ms: self.shard.now_ms().saturating_add(grace_ms),
            unbind_answered: false,
        });
    }

    /// Awaits a store call with a deadline, mapping failures to RSYSERR.
    async fn store_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ProposeError>>,
    ) -> Result<T, CommandStatus> {
        match glommio::timer::timeout(STORE_CALL_TIMEOUT, async { Ok(call.await) }).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                tracing::warn!(session = self.session_id, "store call failed: {e}");
                Err(S::ESME_RSYSERR)
            }
            Err(_) => {
                tracing::warn!(session = self.session_id, "store call timed out");
                Err(S::ESME_RSYSERR)
            }
        }
    }

    /// Window, throttle and in-flight checks shared by submit_sm and data_sm.
    fn admit(&mut self) -> Result<(), CommandStatus> {
        if self.outstanding >= self.window {
            return Err(S::ESME_RTHROTTLED);
        }
        let now_ms = self.shard.now_ms();
        if let Some(bound) = &mut self.bound {
            if let Some(bucket) = &mut bound.bucket {
                if !bucket.try_take(now_ms) {
                    return Err(S::ESME_RTHROTTLED);
                }
            }
        }
        if !self.shard.try_reserve_in_flight() {
            return Err(S::ESME_RMSGQFUL);
        }
        Ok(())
    }

    fn on_submit(&mut self, sm: &SubmitSm, sequence_number: u32) {
        if let Err(rejection) = pdu::validate_submit(sm) {
            self.respond_error(CommandId::SubmitSm, sequence_number, rejection.status);
            return;
        }
        let fields = MessageFields {
            source: (
                sm.source_addr_ton,
                sm.source_addr_npi,
                sm.source_addr.as_bytes(),
            ),
            destination: (
                sm.dest_addr_ton,
                sm.dest_addr_npi,
                sm.destination_addr.as_bytes(),
            ),
            data_coding: sm.data_coding,
            esm_class: sm.esm_class,
            protocol_id: sm.protocol_id,
            priority: sm.priority_flag,
            registered_delivery: sm.registered_delivery,
            payload: sm.message(),
            segment: segment_of(sm),
            validity: sm.validity_period.as_bytes(),
            schedule: sm.schedule_delivery_time.as_bytes(),
        };
        self.accept(CommandId::SubmitSm, sequence_number, fields);
    }

    fn on_data_sm(&mut self, sm: &DataSm, sequence_number: u32) {
        if let Err(status) = validate_data_sm(sm) {
            self.respond_error(CommandId::DataSm, sequence_number, status);
            return;
        }
        let segment = sar_segment(&sm.tlvs);
        let fields = MessageFields {
            source: (
                sm.source_addr_ton,
                sm.source_addr_npi,
                sm.source_addr.as_bytes(),
            ),
            destination: (
                sm.dest_addr_ton,
                sm.dest_addr_npi,
                sm.destination_addr.as_bytes(),
            ),
            data_coding: sm.data_coding,
            esm_class: sm.esm_class,
            protocol_id: 0,
            priority: 0,
            registered_delivery: sm.registered_delivery,
            payload: sm.tlvs.message_payload().unwrap_or_default(),
            segment,
            validity: b"",
            schedule: b"",
        };
        self.accept(CommandId::DataSm, sequence_number, fields);
    }

    fn accept(&mut self, request: CommandId, sequence_number: u32, fields: MessageFields<'_>) {
        let received_at = Instant::now();
        let Some(bound) = &self.bound else {
            self.respond_error(request, sequence_number, S::ESME_RINVBNDSTS);
            return;
        };
        if !bound.allowed_senders.is_empty()
            && !bound
                .allowed_senders
                .iter()
                .any(|s| s.as_bytes() == fields.source.2)
        {
            self.respond_error(request, sequence_number, S::ESME_RINVSRCADR);
            return;
        }
        let received_at_ms = unix_now_ms();
        let validity_until_ms = match parse_validity(fields.validity, received_at_ms) {
            Ok(v) => v,
            Err(status) => {
                self.respond_error(request, sequence_number, status);
                return;
            }
        };
        let scheduled_at_ms = match parse_schedule(fields.schedule, received_at_ms) {
            Ok(v) => v,
            Err(status) => {
                self.respond_error(request, sequence_number, status);
                return;
            }
        };
        if let Err(status) = self.admit() {
            self.respond_error(request, sequence_number, status);
            return;
        }
        let id = match self.shard.next_message_id() {
            Ok(id) => id,
            Err(e) => {
                self.shard.release_in_flight();
                tracing::error!(session = self.session_id, "no message id: {e}");
                self.respond_error(request, sequence_number, S::ESME_RSYSERR);
                return;
            }
        };
        let account = match &self.bound {
            Some(bound) => bound.account.clone(),
            None => String::new(),
        };
        let command = Command::Accept(Accept {
            id,
            account,
            source: address(fields.source),
            destination: address(fields.destination),
            data_coding: fields.data_coding,
            esm_class: fields.esm_class,
            protocol_id: fields.protocol_id,
            priority: fields.priority,
            registered_delivery: fields.registered_delivery,
            payload: fields.payload.to_vec(),
            segment: fields.segment,
            received_at_ms,
            validity_until_ms,
            owner_node: self.shard.node_id(),
            client_ref: None,
            scheduled_at_ms,
        })
        .encode();
        let proposed_at = Instant::now();
        let pending = match self.shard.store().try_propose(command) {
            Ok(pending) => pending,
            Err(e) => {
                self.shard.release_in_flight();
                let status = if e == ProposeError::Busy {
                    S::ESME_RMSGQFUL
                } else {
                    S::ESME_RSYSERR
                };
                tracing::warn!(session = self.session_id, "proposal not queued: {e}");
                self.respond_error(request, sequence_number, status);
                return;
            }
        };
        self.outstanding += 1;
        let tx = Rc::clone(&self.completions_tx);
        let shard = Rc::clone(&self.shard);
        glommio::spawn_local(async move {
            let result = pending.outcome().await;
            crate::metrics::observe_duration(Histogram::CommitLatency, proposed_at.elapsed());
            shard.release_in_flight();
            // The connection may be gone; its customer then never saw an ack.
            let _ = tx
                .send(Completion {
                    sequence_number,
                    request,
                    id,
                    result,
                    received_at,
                })
                .await;
        })
        .detach();
    }

    fn on_committed(&mut self, completion: Completion) {
        debug_assert!(
            self.outstanding > 0 && self.outstanding <= self.window,
            "a completion without a proposal, or beyond the window"
        );
        self.outstanding = self.outstanding.saturating_sub(1);
        let Completion {
            sequence_number,
            request,
            id,
            result,
            received_at,
        } = completion;
        let status = match result {
            Ok(ApplyOutcome::Accepted(committed) | ApplyOutcome::Duplicate(committed)) => {
                debug_assert_eq!(committed, id, "the store answered for another message");
                S::ESME_ROK
            }
            Ok(ApplyOutcome::Rejected(reason)) => {
                tracing::warn!(session = self.session_id, %id, ?reason, "accept rejected by the store");
                S::ESME_RSUBMITFAIL
            }
            Ok(other) => {
                tracing::error!(session = self.session_id, %id, ?other, "unexpected outcome of an accept");
                S::ESME_RSYSERR
            }
            Err(ProposeError::Busy) => S::ESME_RMSGQFUL,
            Err(e) => {
                tracing::warn!(session = self.session_id, %id, "accept not committed: {e}");
                S::ESME_RSYSERR
            }
        };
        crate::metrics::observe_duration(Histogram::SubmitLatency, received_at.elapsed());
        if status != S::ESME_ROK {
            self.respond_error(request, sequence_number, status);
            return;
        }
        if let Some(bound) = &self.bound {
            crate::metrics::accepted(&bound.account);
        }
        let message_id = message_id_field(id);
        let body = if request == CommandId::DataSm {
            Body::DataSmResp(DataSmResp {
                message_id,
                tlvs: Default::default(),
            })
        } else {
            Body::SubmitSmResp(SubmitSmResp { message_id })
        };
        self.push(&Pdu::new(sequence_number, body));
    }

    async fn on_query(&mut self, query: &QuerySm, sequence_number: u32) {
        let Some(id) = query
            .message_id
            .as_str()
            .and_then(|text| MessageId::parse(text).ok())
        else {
            self.respond_error(CommandId::QuerySm, sequence_number, S::ESME_RINVMSGID);
            return;
        };
        let Some(bound) = &self.bound else {
            self.respond_error(CommandId::QuerySm, sequence_number, S::ESME_RINVBNDSTS);
            return;
        };
        let account = bound.account.clone();
        let hot_account = account.clone();
        // Outer `None`: not in the hot state (maybe archived); inner `None`:
        // another account's message, answered like an unknown id.
        let hot = self
            .store_call(self.shard.store().query(move |state| {
                state.message(&id).map(|m| {
                    (m.accept.account == hot_account).then_some((
                        m.state,
                        m.done_at_ms,
                        m.receipt_err,
                    ))
                })
            }))
            .await;
        let found = match hot {
            Ok(Some(found)) => Ok(found),
            Ok(None) => self.archived_state(id, &account).await,
            Err(status) => Err(status),
        };
        match found {
            Ok(Some((state, done_at_ms, err))) => {
                let final_date = done_at_ms
                    .and_then(|ms| i64::try_from(ms).ok())
                    .and_then(|ms| AbsoluteTime::from_unix_ms(ms).ok())
                    .and_then(|t| pdu::SmppTime::new(&SmppTime::Absolute(t).format()))
                    .unwrap_or_default();
                let body = Body::QuerySmResp(QuerySmResp {
                    message_id: query.message_id,
                    final_date,
                    message_state: state.receipt_code(),
                    error_code: u8::try_from(err).unwrap_or(u8::MAX),
                });
                self.push(&Pdu::new(sequence_number, body));
            }
            Ok(None) => self.respond_error(CommandId::QuerySm, sequence_number, S::ESME_RQUERYFAIL),
            Err(status) => self.respond_error(CommandId::QuerySm, sequence_number, status),
        }
    }

    /// query_sm for a message that left the hot state: its final record from
    /// this node's archive (another node's archive may hold it when this one
    /// applied the log later than it was archived: then it is unknown here).
    async fn archived_state(
        &self,
        id: MessageId,
        account: &str,
    ) -> Result<Option<(MessageState, Option<u64>, u16)>, CommandStatus> {
        let lookup = self.shard.store().archived(id);
        match glommio::timer::timeout(STORE_CALL_TIMEOUT, async { Ok(lookup.await) }).await {
            Ok(Ok(record)) => Ok(record
                .filter(|r| r.account == account)
                .map(|r| (r.state, r.done_at_ms, r.receipt_err))),
            Ok(Err(ArchiveLookupError::Unavailable)) => Ok(None),
            Ok(Err(e)) => {
                tracing::warn!(session = self.session_id, "archive lookup failed: {e}");
                Err(S::ESME_RSYSERR)
            }
            Err(_) => {
                tracing::warn!(session = self.session_id, "archive lookup timed out");
                Err(S::ESME_RSYSERR)
            }
        }
    }

    /// Tells the hub this bind takes deliveries, in a window of its size.
    async fn open_deliveries(&mut self, account: String) {
        let window = NonZeroUsize::new(self.window).unwrap_or(NonZeroUsize::MIN);
        let (jobs_tx, jobs) = flume::bounded(window.get());
        self.deliveries = Some(Deliveries {
            jobs,
            window: Window::new(window, DELIVER_RESP_TIMEOUT_MS),
        });
        self.shard
            .delivery()
            .send(HubEvent::Opened {
                account,
                session: self.session_id,
                jobs: jobs_tx,
            })
            .await;
    }

    /// Sends `first` and whatever else the hub handed over while the window
    /// has room, all in one write.
    async fn send_deliveries(&mut self, first: Job) {
        let mut next = Some(first);
        while let Some(mut job) = next.take() {
            let Some(deliveries) = &self.deliveries else {
                return;
            };
            if deliveries.window.is_full() {
                // Only reachable through a bug in the caller's room check.
                debug_assert!(false, "a delivery was taken with a full window");
                self.shard
                    .delivery()
                    .send(HubEvent::Failed { job, status: None })
                    .await;
                return;
            }
            let sequence_number = self.sequence.allocate();
            job.attempts = job.attempts.saturating_add(1);
            let pdu = Pdu::new(
                sequence_number,
                Body::DeliverSm(std::mem::take(&mut job.deliver_sm)),
            );
            self.push(&pdu);
            if let Body::DeliverSm(sm) = pdu.body {
                job.deliver_sm = sm;
            }
            let now_ms = self.shard.now_ms();
            let Some(deliveries) = &mut self.deliveries else {
                return;
            };
            if let Err(refused) =
                deliveries
                    .window
                    .try_reserve(sequence_number, CommandId::DeliverSm, now_ms, job)
            {
                // A fresh sequence number in a window with room always fits.
                debug_assert!(false, "delivery window refused a reservation");
                self.shard
                    .delivery()
                    .send(HubEvent::Failed {
                        job: refused.into_tag(),
                        status: None,
                    })
                    .await;
                return;
            }
            if !deliveries.window.is_full() {
                next = deliveries.jobs.try_recv().ok();
            }
        }
    }

    /// A deliver_sm_resp or generic_nack: matched against the window and
    /// reported to the hub (OK → commit; anything else → retry later).
    async fn on_delivery_answer(
        &mut self,
        sequence_number: u32,
        command: CommandId,
        status: CommandStatus,
    ) {
        let Some(deliveries) = &mut self.deliveries else {
            return;
        };
        let event = match deliveries.window.complete(sequence_number, command) {
            ResponseMatch::Matched(sent) if status == S::ESME_ROK => HubEvent::Acked {
                id: sent.tag.id,
                kind: sent.tag.kind,
            },
            ResponseMatch::Matched(sent) | ResponseMatch::Nacked(sent) => HubEvent::Failed {
                job: sent.tag,
                status: Some(status),
            },
            ResponseMatch::Mismatched { .. } | ResponseMatch::Unknown { .. } => return,
        };
        if let (HubEvent::Acked { kind, .. }, Some(bound)) = (&event, &self.bound) {
            crate::metrics::delivered_to_customer(&bound.account, *kind);
        }
        self.shard.delivery().send(event).await;
    }

    /// Hands deliver_sm unanswered past their deadline back for a retry.
    async fn expire_deliveries(&mut self, now_ms: u64) {
        let Some(deliveries) = &mut self.deliveries else {
            return;
        };
        match deliveries.window.next_deadline_ms() {
            Some(due_ms) if due_ms <= now_ms => {}
            _ => return,
        }
        let expired: Vec<Job> = deliveries.window.expire(now_ms).map(|o| o.tag).collect();
        for job in expired {
            tracing::debug!(session = self.session_id, id = %job.id, "deliver_sm unanswered");
            self.shard
                .delivery()
                .send(HubEvent::Failed { job, status: None })
                .await;
        }
    }

    /// Tells the hub this bind takes no more deliveries; what it held goes
    /// out again (the store still has it).
    async fn release_deliveries(&mut self) {
        if self.deliveries.take().is_some() {
            self.shard
                .delivery()
                .send(HubEvent::Closed {
                    session: self.session_id,
                })
                .await;
        }
    }

    /// Records the end of a bind in the registry (bounded wait).
    async fn release_bind(&mut self) {
        let Some(bound) = self.bound.take() else {
            return;
        };
        self.shard.unregister_bound(self.session_id);
        crate::metrics::binds_open_add(&bound.account, bound.kind.into(), -1);
        let closed = Command::BindClosed {
            node: self.shard.node_id(),
            session: self.session_id,
        }
        .encode();
        match self.store_call(self.shard.store().propose(closed)).await {
            Ok(_) => tracing::debug!(
                session = self.session_id,
                account = bound.account.as_str(),
                kind = ?bound.kind,
                "bind closed"
            ),
            Err(status) => tracing::warn!(
                session = self.session_id,
                account = bound.account.as_str(),
                ?status,
                "bind close not recorded; the next NodeUp clears it"
            ),
        }
    }
}

/// The parts of submit_sm / data_sm that become an `Accept`.
struct MessageFields<'a> {
    source: (u8, u8, &'a [u8]),
    destination: (u8, u8, &'a [u8]),
    data_coding: u8,
    esm_class: u8,
    protocol_id: u8,
    priority: u8,
    registered_delivery: u8,
    payload: Bytes,
    segment: Option<SegmentInfo>,
    validity: &'a [u8],
    /// schedule_delivery_time, absolute or relative; empty = at once.
    schedule: &'a [u8],
}

fn address((ton, npi, digits): (u8, u8, &[u8])) -> Address {
    Address {
        ton,
        npi,
        digits: String::from_utf8_lossy(digits).into_owned(),
    }
}

fn bind_request_id(kind: BindKind) -> CommandId {
    match kind {
        BindKind::Transmitter => CommandId::BindTransmitter,
        BindKind::Receiver => CommandId::BindReceiver,
        BindKind::Transceiver => CommandId::BindTransceiver,
    }
}

fn bind_resp_body(response: CommandId) -> Body {
    let resp = BindResp {
        system_id: SystemId::new(SERVER_SYSTEM_ID).unwrap_or_default(),
        tlvs: Default::default(),
    };
    match response {
        CommandId::BindTransmitterResp => Body::BindTransmitterResp(resp),
        CommandId::BindReceiverResp => Body::BindReceiverResp(resp),
        _ => Body::BindTransceiverResp(resp),
    }
}

fn message_id_field(id: MessageId) -> pdu::MessageId {
    let mut text = [0u8; MESSAGE_ID_TEXT_LEN];
    id.encode_text(&mut text);
    // 20 characters always fit the 65-octet field.
    pdu::MessageId::new(&text).unwrap_or_default()
}

/// Where this part sits in a long message: the UDH's concatenation element,
/// else the SAR TLVs. Messages without either are whole.
fn segment_of(sm: &SubmitSm) -> Option<SegmentInfo> {
    if sm.has_udh() {
        if let Ok((header, _)) = parse_udh(&sm.message()) {
            if let Some(part) = header.concat {
                return Some(SegmentInfo {
                    reference: part.reference,
                    total: part.total,
                    sequence: part.seqnum,
                });
            }
        }
    }
    sar_segment(&sm.tlvs)
}

fn sar_segment(tlvs: &crate::smpp::tlv::Tlvs) -> Option<SegmentInfo> {
    Some(SegmentInfo {
        reference: tlvs.sar_msg_ref_num()?,
        total: tlvs.sar_total_segments()?,
        sequence: tlvs.sar_segment_seqnum()?,
    })
}

fn parse_validity(field: &[u8], now_ms: u64) -> Result<Option<u64>, CommandStatus> {
    if field.is_empty() {
        return Ok(None);
    }
    let invalid = TimeField::ValidityPeriod.invalid_status();
    let time = SmppTime::parse(field).map_err(|_| invalid)?;
    let now = i64::try_from(now_ms).map_err(|_| invalid)?;
    let until = time.resolve_unix_ms(now).map_err(|_| invalid)?;
    Ok(Some(u64::try_from(until).unwrap_or(0)))
}

/// A schedule_delivery_time in the past means "at once" (no schedule).
fn parse_schedule(field: &[u8], now_ms: u64) -> Result<Option<u64>, CommandStatus> {
    if field.is_empty() {
        return Ok(None);
    }
    let invalid = TimeField::ScheduleDeliveryTime.invalid_status();
    let time = SmppTime::parse(field).map_err(|_| invalid)?;
    let now = i64::try_from(now_ms).map_err(|_| invalid)?;
    let at = time.resolve_unix_ms(now).map_err(|_| invalid)?;
    Ok(u64::try_from(at).ok().filter(|&at_ms| at_ms > now_ms))
}

/// data_sm has no validator in `smpp::pdu`; these are the checks submit_sm's
/// would make on the fields data_sm has.
fn validate_data_sm(sm: &DataSm) -> Result<(), CommandStatus> {
    if !pdu::valid_ton(sm.source_addr_ton) {
        return Err(S::ESME_RINVSRCTON);
    }
    if !pdu::valid_npi(sm.source_addr_npi) {
        return Err(S::ESME_RINVSRCNPI);
    }
    if !pdu::valid_ton(sm.dest_addr_ton) {
        return Err(S::ESME_RINVDSTTON);
    }
    if !pdu::valid_npi(sm.dest_addr_npi) {
        return Err(S::ESME_RINVDSTNPI);
    }
    if sm.destination_addr.is_empty() {
        return Err(S::ESME_RINVDSTADR);
    }
    if !pdu::supported_data_coding(sm.data_coding) {
        return Err(S::ESME_RINVDCS);
    }
    match sm.tlvs.message_payload() {
        Some(payload) if !payload.is_empty() => Ok(()),
        _ => Err(S::ESME_RMISSINGOPTPARAM),
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_parsing() {
        assert_eq!(parse_validity(b"", 1000), Ok(None));
        assert_eq!(parse_validity(b"000000000100000R", 1000), Ok(Some(61_000)));
        assert_eq!(parse_validity(b"garbage", 0), Err(S::ESME_RINVEXPIRY));
    }

    #[test]
    fn message_id_fits_the_response() {
        let id = MessageId::from_parts(3, 1, 0, 42).unwrap();
        let field = message_id_field(id);
        assert_eq!(field.len(), MESSAGE_ID_TEXT_LEN);
        assert_eq!(MessageId::parse(field.as_str().unwrap()).unwrap(), id);
    }

    #[test]
    fn data_sm_needs_a_payload() {
        let mut sm = DataSm {
            destination_addr: pdu::LongAddress::new(b"447700900123").unwrap(),
            dest_addr_ton: 1,
            dest_addr_npi: 1,
            ..DataSm::default()
        };
        assert_eq!(validate_data_sm(&sm), Err(S::ESME_RMISSINGOPTPARAM));
        sm.tlvs.set_message_payload(b"hi").unwrap();
        assert_eq!(validate_data_sm(&sm), Ok(()));
        sm.data_coding = 0x05;
        assert_eq!(validate_data_sm(&sm), Err(S::ESME_RINVDCS));
    }

    #[test]
    fn segments_from_sar() {
        let mut sm = SubmitSm::default();
        assert_eq!(segment_of(&sm), None);
        sm.tlvs.set_sar_msg_ref_num(7).unwrap();
        sm.tlvs.set_sar_total_segments(2).unwrap();
        sm.tlvs.set_sar_segment_seqnum(1).unwrap();
        assert_eq!(
            segment_of(&sm),
            Some(SegmentInfo {
                reference: 7,
                total: 2,
                sequence: 1
            })
        );
    }
}
