//! One connection core: its SMPP listener and the state its connections share.
//!
//! Owns: the per-core context (store handle, message-id generator, in-flight
//! proposal count, failed-bind table, clock), this core's watch of account
//! changes (which binds of an account must re-check it, and the listeners
//! such as the HTTP key cache that forget it), the accept loop on this core's
//! SO_REUSEPORT listener, starting this core's HTTP server (see `crate::http`)
//! on the same context, and this core's part of the graceful shutdown
//! (stop accepting, let connections unbind and drain, bounded). Must not
//! touch: other cores (nothing here is shared across threads except the
//! store handle and the stop flag), or session logic (see `session`).
//!
//! Everything here lives on one executor thread, so plain `Cell`/`RefCell`
//! suffice; no borrow is ever held across an await.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;

use super::auth::FailedBinds;
use super::delivery::{self, DeliveryLink, HubStart};
use super::{session, SessionSettings};
use crate::store::driver::{AccountChange, AccountWatcher, StoreHandle};
use crate::store::id::{IdError, IdGenerator, MessageId};

/// Addresses remembered per core for failed-bind slow-down.
const FAILED_BIND_TABLE_CAPACITY: usize = 4096;
/// A source address's failures are forgotten after this long without one.
const FAILED_BIND_WINDOW_MS: u64 = 10 * 60 * 1000;
/// How often the accept loop and the drain look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// What one core's connections share.
pub struct Shard {
    index: u8,
    node_id: u64,
    cores: usize,
    store: StoreHandle,
    settings: Rc<SessionSettings>,
    ids: RefCell<IdGenerator>,
    in_flight: Cell<usize>,
    failed_binds: RefCell<FailedBinds>,
    next_session: Cell<u64>,
    open_connections: Cell<usize>,
    delivery: DeliveryLink,
    stop: Arc<AtomicBool>,
    started: Instant,
    accounts: AccountWatcher,
    /// Bound sessions of this core: session id → (account, re-check flag).
    /// Bounded by the connection limit.
    bound_sessions: RefCell<HashMap<u64, BoundSession>>,
    account_listeners: RefCell<Vec<AccountListener>>,
}

/// Told of each account change applied on this node (this core's HTTP key
/// cache is one).
pub type AccountListener = Box<dyn Fn(&AccountChange)>;

struct BoundSession {
    account: String,
    recheck: Rc<Cell<bool>>,
}

/// Everything a core needs to start, sent to its executor thread.
pub struct ShardStart {
    pub index: u8,
    pub node_id: u64,
    pub cores: usize,
    pub epoch: u32,
    pub listen: SocketAddr,
    pub store: StoreHandle,
    pub settings: SessionSettings,
    pub stop: Arc<AtomicBool>,
    /// Receiving binds register here to be handed DLRs and MOs.
    pub delivery: DeliveryLink,
    /// The node's delivery hub, on the one core that runs it.
    pub hub: Option<HubStart>,
    /// The HTTP server this core runs, unless HTTP is off.
    pub http: Option<crate::http::HttpSettings>,
    /// Told once the listeners are bound (or why one could not be).
    pub ready: crossbeam_channel::Sender<Result<SocketAddr, String>>,
}

impl Shard {
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn cores(&self) -> usize {
        self.cores
    }

    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    pub fn delivery(&self) -> &DeliveryLink {
        &self.delivery
    }

    /// Monotonic milliseconds since this core started.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Session ids are unique within a node incarnation: the core index in
    /// the top byte, a per-core counter below.
    pub fn next_session_id(&self) -> u64 {
        let counter = self.next_session.get().wrapping_add(1) & ((1 << 56) - 1);
        self.next_session.set(counter);
        (u64::from(self.index) << 56) | counter
    }

    pub fn next_message_id(&self) -> Result<MessageId, IdError> {
        self.ids.borrow_mut().next_id()
    }

    pub fn failed_binds(&self) -> RefMut<'_, FailedBinds> {
        self.failed_binds.borrow_mut()
    }

    /// Counts a proposal against the core's bound; false when it is reached.
    pub fn try_reserve_in_flight(&self) -> bool {
        let now = self.in_flight.get();
        if now >= self.settings.max_in_flight_per_core {
            return false;
        }
        self.in_flight.set(now + 1);
        true
    }

    /// Registers a bound session of `account`; the flag returned is set when
    /// the account changed, and the session re-checks it then.
    pub fn register_bound(&self, session: u64, account: &str) -> Rc<Cell<bool>> {
        let recheck = Rc::new(Cell::new(false));
        let previous = self.bound_sessions.borrow_mut().insert(
            session,
            BoundSession {
                account: account.to_string(),
                recheck: Rc::clone(&recheck),
            },
        );
        debug_assert!(previous.is_none(), "session {session} bound twice");
        recheck
    }

    pub fn unregister_bound(&self, session: u64) {
        self.bound_sessions.borrow_mut().remove(&session);
    }

    /// Adds a listener told of every account change from now on.
    pub fn on_account_change(&self, listener: AccountListener) {
        self.account_listeners.borrow_mut().push(listener);
    }

    /// Applies the account changes published since the last call: one
    /// atomic load when there are none. Callers about to trust something
    /// cached about an account call this first, so a change committed
    /// before their request arrived is never missed.
    pub fn take_account_changes(&self) {
        if self.accounts.has_news() {
            self.accounts
                .drain(|change| self.apply_account_change(&change));
        }
    }

    fn apply_account_change(&self, change: &AccountChange) {
        for session in self.bound_sessions.borrow().values() {
            let concerned = match change {
                AccountChange::All => true,
                AccountChange::Account(name) => *name == session.account,
            };
            if concerned {
                session.recheck.set(true);
            }
        }
        for listener in self.account_listeners.borrow().iter() {
            listener(change);
        }
    }

    pub fn release_in_flight(&self) {
        let now = self.in_flight.get();
        debug_assert!(now > 0, "released more proposals than reserved");
        self.in_flight.set(now.saturating_sub(1));
    }
}

/// Runs one core until the stop flag is set and its connections are gone
/// (or the grace period is over).
pub async fn run(start: ShardStart) {
    let ids = match IdGenerator::new(start.node_id, start.index, start.epoch) {
        Ok(ids) => ids,
        Err(e) => {
            let _ = start.ready.send(Err(format!("message ids: {e}")));
            return;
        }
    };
    let listener = match TcpListener::bind(start.listen) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = start
                .ready
                .send(Err(format!("cannot listen on {}: {e}", start.listen)));
            return;
        }
    };
    let http_listeners = match &start.http {
        Some(settings) => match crate::http::Listeners::bind(settings) {
            Ok(listeners) => Some(listeners),
            Err(e) => {
                let _ = start.ready.send(Err(e));
                return;
            }
        },
        None => None,
    };
    let local = listener.local_addr().unwrap_or(start.listen);
    let _ = start.ready.send(Ok(local));
    let grace_ms = start.settings.shutdown_grace_ms;
    let accounts = start.store.watch_accounts();
    let shard = Rc::new(Shard {
        index: start.index,
        node_id: start.node_id,
        cores: start.cores,
        store: start.store,
        settings: Rc::new(start.settings),
        ids: RefCell::new(ids),
        in_flight: Cell::new(0),
        failed_binds: RefCell::new(FailedBinds::new(
            FAILED_BIND_TABLE_CAPACITY,
            FAILED_BIND_WINDOW_MS,
        )),
        next_session: Cell::new(0),
        open_connections: Cell::new(0),
        delivery: start.delivery,
        stop: start.stop,
        started: Instant::now(),
        accounts,
        bound_sessions: RefCell::new(HashMap::new()),
        account_listeners: RefCell::new(Vec::new()),
    });
    tracing::debug!(core = shard.index, %local, "listening for SMPP");
    glommio::spawn_local(crate::metrics::sample_executor_load(Duration::from_secs(1))).detach();
    if let Some(hub) = start.hub {
        glommio::spawn_local(delivery::run_hub(hub)).detach();
    }
    glommio::spawn_local(follow_account_changes(Rc::clone(&shard))).detach();
    let acceptor = glommio::spawn_local(accept_loop(Rc::clone(&shard), listener));
    let mut http = match (start.http, http_listeners) {
        (Some(settings), Some(listeners)) => Some(crate::http::Server::start(
            Rc::clone(&shard),
            settings,
            listeners,
        )),
        _ => None,
    };
    while !shard.stopping() {
        glommio::timer::sleep(STOP_POLL).await;
    }
    // Cancelling the accept loops closes the listeners: no new connections.
    let _ = acceptor.cancel().await;
    if let Some(http) = &mut http {
        http.stop_accepting().await;
    }
    let open = |shard: &Shard| {
        shard.open_connections.get() + http.as_ref().map_or(0, |h| h.context().open_connections())
    };
    // Connections see the flag themselves, unbind (SMPP) or finish their
    // answers (HTTP) and close; give them the grace period plus a little for
    // the final writes and BindClosed.
    let deadline = Instant::now() + Duration::from_millis(grace_ms.saturating_add(1_000));
    while open(&shard) > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    if open(&shard) > 0 {
        tracing::warn!(
            core = shard.index,
            open = open(&shard),
            "connections still open after the grace period; closing them"
        );
    }
}

/// Applies account changes as the store publishes them, so binds of a
/// removed account close even when nothing else on this core looks.
async fn follow_account_changes(shard: Rc<Shard>) {
    while let Some(change) = shard.accounts.next().await {
        shard.apply_account_change(&change);
        shard.take_account_changes();
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                if shard.open_connections.get() >= shard.settings.max_connections_per_core {
                    tracing::warn!(core = shard.index, %peer, "connection limit reached; closing");
                    drop(stream);
                    continue;
                }
                shard.open_connections.set(shard.open_connections.get() + 1);
                let conn_shard = Rc::clone(&shard);
                glommio::spawn_local(async move {
                    session::serve(Rc::clone(&conn_shard), stream, peer).await;
                    let open = conn_shard.open_connections.get();
                    conn_shard.open_connections.set(open.saturating_sub(1));
                })
                .detach();
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(core = shard.index, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
