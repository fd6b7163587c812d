//! Peer transport: authenticated, framed TCP between the nodes of one raft
//! group.
//!
//! Owns: the listening socket, one outbound connection per (peer, lane), the
//! reader thread of every accepted connection, the wire framing, the mutual
//! HMAC handshake and per-frame authentication. Must not touch: raft state,
//! the log, or the state machine; it moves `raft::eraftpb::Message`s and
//! nothing else, and it may drop them (raft retransmits).
//!
//! Connections are one-directional: a node dials each peer to *send* and only
//! *reads* on connections it accepted. Each peer gets two outbound lanes, so a
//! multi-megabyte snapshot never delays heartbeats and appends queued behind it.
//!
//! Wire format, every frame: `u32 length (big-endian, bytes after this field)`,
//! `u8 version`, `u8 kind`, payload. Handshake (client = dialing side):
//!   HELLO     c->s  cluster_id u64, client_id u64, server_id u64, lane u8, client_nonce[32]
//!   CHALLENGE s->c  server_nonce[32], HMAC(secret, "server" | transcript)
//!   AUTH      c->s  HMAC(secret, "client" | transcript)
//!   ACCEPT    s->c  (empty)
//!   REJECT    either side, a reason code, then close
//! where transcript = cluster_id | client_id | server_id | lane | client_nonce |
//! server_nonce. Both nonces are fresh per connection, so no recorded handshake
//! verifies twice. After ACCEPT every frame carries a 16-byte tag
//! HMAC(session_key, seq | version | kind | payload) with a per-direction
//! sequence number starting at 0, where session_key is derived from the same
//! transcript: bytes injected into, replayed within, or spliced between
//! sessions fail the tag and close the connection.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use hmac::{Hmac, Mac};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rand::{Rng, RngCore};
use sha2::Sha256;

use super::StoreError;

type HmacSha256 = Hmac<Sha256>;

/// The only wire version this build speaks. A peer sending another is refused
/// with a clear log line on both sides.
pub const PROTOCOL_VERSION: u8 = 1;

const KIND_HELLO: u8 = 1;
const KIND_CHALLENGE: u8 = 2;
const KIND_AUTH: u8 = 3;
const KIND_ACCEPT: u8 = 4;
const KIND_REJECT: u8 = 5;
const KIND_RAFT: u8 = 16;
const KIND_PING: u8 = 17;

const NONCE_BYTES: usize = 32;
const PROOF_BYTES: usize = 32;
const TAG_BYTES: usize = 16;
const HELLO_PAYLOAD_BYTES: usize = 8 + 8 + 8 + 1 + NONCE_BYTES;
/// Handshake frames are tiny; an unauthenticated client never makes us buffer more.
const HANDSHAKE_MAX_FRAME_BYTES: u32 = 256;
/// Minimum secret length: shorter secrets are guessable offline from one recorded handshake.
pub const MIN_SECRET_BYTES: usize = 16;
/// A writer stops batching once this many bytes are encoded, so one burst
/// does not hold the socket for long and memory stays bounded.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Encode buffers above this are shrunk after use (a snapshot leaves a big one).
const RETAINED_BUFFER_BYTES: usize = 1024 * 1024;

/// Why a handshake was refused, sent in a REJECT frame so the dialing side can
/// log the real cause instead of a bare connection reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    Version = 1,
    Cluster = 2,
    WrongNode = 3,
    Authentication = 4,
    Protocol = 5,
    Busy = 6,
}

impl RejectReason {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => RejectReason::Version,
            2 => RejectReason::Cluster,
            3 => RejectReason::WrongNode,
            4 => RejectReason::Authentication,
            5 => RejectReason::Protocol,
            6 => RejectReason::Busy,
            _ => return None,
        })
    }

    fn describe(self) -> &'static str {
        match self {
            RejectReason::Version => "protocol version mismatch",
            RejectReason::Cluster => "cluster id mismatch",
            RejectReason::WrongNode => "peer is not the node id we dialed",
            RejectReason::Authentication => "shared secret mismatch (HMAC proof failed)",
            RejectReason::Protocol => "malformed handshake",
            RejectReason::Busy => "too many inbound connections",
        }
    }
}

/// Which of a peer's two outbound connections a message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Heartbeats, appends, votes and their responses.
    Regular = 0,
    /// `MsgSnapshot` only: large and rare, must not delay the regular lane.
    Snapshot = 1,
}

impl Lane {
    fn of(msg: &Message) -> Lane {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            Lane::Snapshot
        } else {
            Lane::Regular
        }
    }

    fn from_code(code: u8) -> Option<Lane> {
        match code {
            0 => Some(Lane::Regular),
            1 => Some(Lane::Snapshot),
            _ => None,
        }
    }
}

/// Everything the transport needs to know; build with [`TransportConfig::new`]
/// and adjust fields.
#[derive(Clone)]
pub struct TransportConfig {
    pub node_id: u64,
    /// Distinguishes clusters that share a network and (by mistake) a secret.
    pub cluster_id: u64,
    pub listen_addr: SocketAddr,
    /// Peers to dial, excluding this node. More can be added with [`Transport::set_peer`].
    pub peers: Vec<(u64, SocketAddr)>,
    /// The cluster's shared secret, at least [`MIN_SECRET_BYTES`] long.
    pub secret: Vec<u8>,
    /// Messages buffered per (peer, lane); beyond it new messages are dropped and counted.
    pub outbound_queue_capacity: usize,
    /// Messages buffered from all peers towards the raft thread.
    pub inbound_queue_capacity: usize,
    /// Largest authenticated frame accepted (bounds snapshot size on the wire).
    pub max_frame_bytes: u32,
    pub max_inbound_connections: usize,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub connect_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    /// A writer sends a ping after this much idle time, so readers can tell a
    /// quiet peer from a dead one.
    pub ping_interval_ms: u64,
    /// A reader that hears nothing (not even a ping) for this long closes.
    pub idle_timeout_ms: u64,
    /// A write blocked this long (peer not reading) drops the connection.
    pub write_timeout_ms: u64,
}

impl TransportConfig {
    pub fn new(node_id: u64, cluster_id: u64, listen_addr: SocketAddr, secret: Vec<u8>) -> Self {
        TransportConfig {
            node_id,
            cluster_id,
            listen_addr,
            peers: Vec::new(),
            secret,
            outbound_queue_capacity: 4096,
            inbound_queue_capacity: 16384,
            max_frame_bytes: 256 * 1024 * 1024,
            max_inbound_connections: 64,
            backoff_initial_ms: 50,
            backoff_max_ms: 2000,
            connect_timeout_ms: 1000,
            handshake_timeout_ms: 2000,
            ping_interval_ms: 1000,
            idle_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
        }
    }
}

impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("TransportConfig")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .field("listen_addr", &self.listen_addr)
            .field("peers", &self.peers)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Counters since start; read with [`Transport::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    /// Dropped because a peer's outbound queue was full.
    pub dropped_queue_full: u64,
    /// Dropped because no connection to the peer could be made.
    pub dropped_disconnected: u64,
    /// Dropped because the raft thread's inbound queue was full.
    pub dropped_inbound_full: u64,
    /// Sent to a node the transport does not know.
    pub dropped_unknown_peer: u64,
    pub connects: u64,
    pub connect_failures: u64,
    /// Handshakes refused in either direction (secret, cluster, version, garbage).
    pub handshakes_rejected: u64,
    /// Authenticated connections closed for a bad tag, bad frame or spoofed sender.
    pub protocol_errors: u64,
}

#[derive(Default)]
struct Counters {
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_disconnected: AtomicU64,
    dropped_inbound_full: AtomicU64,
    dropped_unknown_peer: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    handshakes_rejected: AtomicU64,
    protocol_errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            messages_sent: get(&self.messages_sent),
            bytes_sent: get(&self.bytes_sent),
            messages_received: get(&self.messages_received),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_disconnected: get(&self.dropped_disconnected),
            dropped_inbound_full: get(&self.dropped_inbound_full),
            dropped_unknown_peer: get(&self.dropped_unknown_peer),
            connects: get(&self.connects),
            connect_failures: get(&self.connect_failures),
            handshakes_rejected: get(&self.handshakes_rejected),
            protocol_errors: get(&self.protocol_errors),
        }
    }
}

/// State shared by every thread of one transport.
struct Shared {
    node_id: u64,
    cluster_id: u64,
    secret: Vec<u8>,
    config: TransportConfig,
    counters: Counters,
    shutdown: AtomicBool,
    inbound_connections: AtomicUsize,
    /// Clones of accepted sockets, so shutdown can unblock their readers.
    /// Locked only on accept, close and shutdown, never per message.
    open_inbound: Mutex<HashMap<u64, TcpStream>>,
    next_connection_id: AtomicU64,
}

struct PeerLane {
    queue: Sender<Message>,
    writer: JoinHandle<()>,
}

struct Peer {
    addr: SocketAddr,
    regular: PeerLane,
    snapshot: PeerLane,
}

/// A running transport. Owned by the raft thread: `send` never blocks.
pub struct Transport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    peers: HashMap<u64, Peer>,
    listener: Option<JoinHandle<()>>,
}

impl Transport {
    /// Binds the listener and starts dialing the configured peers. Messages
    /// from peers arrive on the returned receiver, authenticated and checked
    /// to be addressed to this node.
    pub fn start(config: TransportConfig) -> Result<(Transport, Receiver<Message>), StoreError> {
        if config.secret.len() < MIN_SECRET_BYTES {
            return Err(StoreError::Corrupt(format!(
                "cluster secret is {} bytes; at least {MIN_SECRET_BYTES} are required",
                config.secret.len()
            )));
        }
        if config.outbound_queue_capacity == 0 || config.inbound_queue_capacity == 0 {
            return Err(StoreError::Corrupt(
                "transport queue capacities must be positive".into(),
            ));
        }
        let listener = TcpListener::bind(config.listen_addr)?;
        let local_addr = listener.local_addr()?;
        let (inbound_tx, inbound_rx) = crossbeam_channel::bounded(config.inbound_queue_capacity);
        let shared = Arc::new(Shared {
            node_id: config.node_id,
            cluster_id: config.cluster_id,
            secret: config.secret.clone(),
            config: config.clone(),
            counters: Counters::default(),
            shutdown: AtomicBool::new(false),
            inbound_connections: AtomicUsize::new(0),
            open_inbound: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(0),
        });
        let listener_shared = Arc::clone(&shared);
        let listener_thread = thread::Builder::new()
            .name(format!("tern-listen-{}", config.node_id))
            .spawn(move || accept_loop(listener, listener_shared, inbound_tx))?;
        let mut transport = Transport {
            shared,
            local_addr,
            peers: HashMap::new(),
            listener: Some(listener_thread),
        };
        for (id, addr) in config.peers {
            transport.set_peer(id, addr)?;
        }
        Ok((transport, inbound_rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn node_id(&self) -> u64 {
        self.shared.node_id
    }

    /// Queues `msg` for `msg.to`. Never blocks; returns false when the message
    /// was dropped (unknown peer or full queue), which raft tolerates.
    pub fn send(&self, msg: Message) -> bool {
        let Some(peer) = self.peers.get(&msg.get_to()) else {
            Counters::bump(&self.shared.counters.dropped_unknown_peer);
            return false;
        };
        let lane = match Lane::of(&msg) {
            Lane::Regular => &peer.regular,
            Lane::Snapshot => &peer.snapshot,
        };
        match lane.queue.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                Counters::bump(&self.shared.counters.dropped_queue_full);
                false
            }
        }
    }

    /// Adds a peer or moves it to a new address (its connections restart;
    /// the same address again changes nothing).
    pub fn set_peer(&mut self, id: u64, addr: SocketAddr) -> Result<(), StoreError> {
        if id == self.shared.node_id || self.peers.get(&id).is_some_and(|p| p.addr == addr) {
            return Ok(());
        }
        self.remove_peer(id);
        let regular = spawn_writer(&self.shared, id, addr, Lane::Regular)?;
        let snapshot = spawn_writer(&self.shared, id, addr, Lane::Snapshot)?;
        self.peers.insert(
            id,
            Peer {
                addr,
                regular,
                snapshot,
            },
        );
        Ok(())
    }

    /// Stops dialing a peer; messages still queued for it are discarded.
    pub fn remove_peer(&mut self, id: u64) {
        if let Some(peer) = self.peers.remove(&id) {
            // Dropping the queue senders tells the writers to exit.
            let Peer {
                regular, snapshot, ..
            } = peer;
            drop(regular.queue);
            drop(snapshot.queue);
            join_quietly(regular.writer);
            join_quietly(snapshot.writer);
        }
    }

    pub fn peer_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.peers.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    /// Stops every thread and closes every socket. Also run on drop.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            self.remove_peer(id);
        }
        // Wake the blocking accept with a connection of our own.
        let mut wake_addr = self.local_addr;
        if wake_addr.ip().is_unspecified() {
            wake_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake_addr, Duration::from_millis(500));
        if let Some(listener) = self.listener.take() {
            join_quietly(listener);
        }
        if let Ok(open) = self.shared.open_inbound.lock() {
            for stream in open.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
    }
}

fn join_quietly(handle: JoinHandle<()>) {
    if handle.join().is_err() {
        tracing::error!("a transport thread panicked");
    }
}

fn spawn_writer(
    shared: &Arc<Shared>,
    peer_id: u64,
    addr: SocketAddr,
    lane: Lane,
) -> Result<PeerLane, StoreError> {
    let (queue, rx) = crossbeam_channel::bounded(shared.config.outbound_queue_capacity);
    let writer_shared = Arc::clone(shared);
    let writer = thread::Builder::new()
        .name(format!(
            "tern-send-{}-{}-{:?}",
            shared.node_id, peer_id, lane
        ))
        .spawn(move || writer_loop(writer_shared, peer_id, addr, lane, rx))?;
    Ok(PeerLane { queue, writer })
}

// ---------------------------------------------------------------------------
// Framing and authentication

/// Per-direction frame authentication once a session is established.
struct SessionMac {
    key: HmacSha256,
    seq: u64,
}

impl SessionMac {
    fn new(session_key: &[u8]) -> SessionMac {
        // HMAC accepts keys of any length; this cannot fail for a 32-byte key.
        let key = HmacSha256::new_from_slice(session_key)
            .unwrap_or_else(|_| unreachable!("HMAC-SHA256 accepts keys of every length"));
        SessionMac { key, seq: 0 }
    }

    fn tag(&mut self, header_and_payload: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = self.key.clone();
        mac.update(&self.seq.to_be_bytes());
        mac.update(header_and_payload);
        self.seq = self.seq.wrapping_add(1);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }

    fn verify(&mut self, header_and_payload: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.key.clone();
        mac.update(&self.seq.to_be_bytes());
        mac.update(header_and_payload);
        self.seq = self.seq.wrapping_add(1);
        mac.verify_truncated_left(tag).is_ok()
    }
}

/// Appends one frame to `buf`. `write_payload` appends the payload bytes.
fn encode_frame(
    buf: &mut Vec<u8>,
    kind: u8,
    mac: Option<&mut SessionMac>,
    write_payload: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, PROTOCOL_VERSION, kind]);
    if let Err(e) = write_payload(buf) {
        buf.truncate(start);
        return Err(e);
    }
    if let Some(mac) = mac {
        let tag = mac.tag(&buf[start + 4..]);
        buf.extend_from_slice(&tag);
    }
    let Ok(length) = u32::try_from(buf.len() - start - 4) else {
        buf.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame over 4 GiB",
        ));
    };
    buf[start..start + 4].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// A frame read off the wire; `body` is `version | kind | payload [| tag]`.
struct FrameReader<R> {
    inner: R,
    body: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    fn new(inner: R) -> Self {
        FrameReader {
            inner,
            body: Vec::new(),
        }
    }

    /// Reads one frame of at most `max_bytes` after the length field. Returns
    /// `(version, kind)`; the payload is `self.payload(tagged)`.
    fn read_frame(&mut self, max_bytes: u32) -> io::Result<(u8, u8)> {
        let mut length_bytes = [0u8; 4];
        self.inner.read_exact(&mut length_bytes)?;
        let length = u32::from_be_bytes(length_bytes);
        if length < 2 || length > max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame length {length} outside 2..={max_bytes}"),
            ));
        }
        // The bound above keeps this allocation within the configured limit.
        self.body.clear();
        self.body.resize(length as usize, 0);
        self.inner.read_exact(&mut self.body)?;
        if self.body.capacity() > RETAINED_BUFFER_BYTES && self.body.len() <= RETAINED_BUFFER_BYTES
        {
            self.body.shrink_to(RETAINED_BUFFER_BYTES);
        }
        match self.body.as_slice() {
            [version, kind, ..] => Ok((*version, *kind)),
            _ => unreachable!("frame length was checked to be at least 2"),
        }
    }

    fn payload(&self) -> &[u8] {
        self.body.get(2..).unwrap_or(&[])
    }

    /// Splits an authenticated frame into (header+payload, tag) and checks the tag.
    fn verify_tagged(&self, mac: &mut SessionMac) -> Option<&[u8]> {
        let split = self.body.len().checked_sub(TAG_BYTES)?;
        if split < 2 {
            return None;
        }
        let (signed, tag) = self.body.split_at(split);
        if mac.verify(signed, tag) {
            signed.get(2..)
        } else {
            None
        }
    }
}

struct Transcript {
    bytes: [u8; 8 + 8 + 8 + 1 + NONCE_BYTES + NONCE_BYTES],
}

impl Transcript {
    fn new(
        cluster_id: u64,
        client_id: u64,
        server_id: u64,
        lane: Lane,
        client_nonce: &[u8; NONCE_BYTES],
        server_nonce: &[u8; NONCE_BYTES],
    ) -> Transcript {
        let mut bytes = [0u8; 8 + 8 + 8 + 1 + NONCE_BYTES + NONCE_BYTES];
        bytes[0..8].copy_from_slice(&cluster_id.to_be_bytes());
        bytes[8..16].copy_from_slice(&client_id.to_be_bytes());
        bytes[16..24].copy_from_slice(&server_id.to_be_bytes());
        bytes[24] = lane as u8;
        bytes[25..25 + NONCE_BYTES].copy_from_slice(client_nonce);
        bytes[25 + NONCE_BYTES..].copy_from_slice(server_nonce);
        Transcript { bytes }
    }

    fn keyed(&self, secret: &[u8], label: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC-SHA256 accepts keys of every length"));
        mac.update(b"tern/v1/");
        mac.update(label);
        mac.update(&self.bytes);
        mac
    }

    fn proof(&self, secret: &[u8], label: &[u8]) -> [u8; PROOF_BYTES] {
        let mut out = [0u8; PROOF_BYTES];
        out.copy_from_slice(&self.keyed(secret, label).finalize().into_bytes());
        out
    }

    fn verify(&self, secret: &[u8], label: &[u8], proof: &[u8]) -> bool {
        self.keyed(secret, label).verify_slice(proof).is_ok()
    }

    /// One key per direction, so a frame cannot be reflected back to its sender.
    fn session_macs(&self, secret: &[u8]) -> (SessionMac, SessionMac) {
        let client_to_server = SessionMac::new(&self.proof(secret, b"session/c2s"));
        let server_to_client = SessionMac::new(&self.proof(secret, b"session/s2c"));
        (client_to_server, server_to_client)
    }
}

/// Why a handshake failed, for the log and the counters.
#[derive(Debug)]
enum HandshakeError {
    Io(io::Error),
    /// The other side refused us and said why.
    Refused(RejectReason),
    /// We refused the other side.
    Rejected(RejectReason, String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "I/O: {e}"),
            HandshakeError::Refused(r) => write!(f, "refused by peer: {}", r.describe()),
            HandshakeError::Rejected(r, detail) => {
                write!(f, "rejected: {} ({detail})", r.describe())
            }
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

fn send_reject(stream: &mut impl Write, reason: RejectReason) {
    let mut buf = Vec::with_capacity(8);
    if encode_frame(&mut buf, KIND_REJECT, None, |b| {
        b.push(reason as u8);
        Ok(())
    })
    .is_ok()
    {
        let _ = stream.write_all(&buf);
    }
}

fn reject<W: Write>(stream: &mut W, reason: RejectReason, detail: String) -> HandshakeError {
    send_reject(stream, reason);
    HandshakeError::Rejected(reason, detail)
}

/// Reads a handshake frame of the expected kind, turning a REJECT into `Refused`.
fn expect_frame<R: Read, W: Write>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    expected_kind: u8,
    expected_payload_bytes: usize,
) -> Result<(), HandshakeError> {
    let (version, kind) = reader.read_frame(HANDSHAKE_MAX_FRAME_BYTES)?;
    if kind == KIND_REJECT {
        let code = reader.payload().first().copied().unwrap_or(0);
        return Err(HandshakeError::Refused(
            RejectReason::from_code(code).unwrap_or(RejectReason::Protocol),
        ));
    }
    if version != PROTOCOL_VERSION {
        return Err(reject(
            writer,
            RejectReason::Version,
            format!("peer speaks version {version}, we speak {PROTOCOL_VERSION}"),
        ));
    }
    if kind != expected_kind || reader.payload().len() != expected_payload_bytes {
        return Err(reject(
            writer,
            RejectReason::Protocol,
            format!("expected kind {expected_kind} with {expected_payload_bytes} bytes, got kind {kind} with {}", reader.payload().len()),
        ));
    }
    Ok(())
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(slice) = bytes.get(at..at + 8) {
        word.copy_from_slice(slice);
    }
    u64::from_be_bytes(word)
}

/// The dialing side. Returns the MAC for frames we send.
fn client_handshake<R: Read, W: Write>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    shared: &Shared,
    server_id: u64,
    lane: Lane,
) -> Result<SessionMac, HandshakeError> {
    let mut client_nonce = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut client_nonce);
    let mut hello = Vec::with_capacity(6 + HELLO_PAYLOAD_BYTES);
    encode_frame(&mut hello, KIND_HELLO, None, |b| {
        b.extend_from_slice(&shared.cluster_id.to_be_bytes());
        b.extend_from_slice(&shared.node_id.to_be_bytes());
        b.extend_from_slice(&server_id.to_be_bytes());
        b.push(lane as u8);
        b.extend_from_slice(&client_nonce);
        Ok(())
    })?;
    writer.write_all(&hello)?;

    expect_frame(reader, writer, KIND_CHALLENGE, NONCE_BYTES + PROOF_BYTES)?;
    let payload = reader.payload();
    let mut server_nonce = [0u8; NONCE_BYTES];
    server_nonce.copy_from_slice(&payload[..NONCE_BYTES]);
    let transcript = Transcript::new(
        shared.cluster_id,
        shared.node_id,
        server_id,
        lane,
        &client_nonce,
        &server_nonce,
    );
    if !transcript.verify(&shared.secret, b"server", &payload[NONCE_BYTES..]) {
        return Err(reject(
            writer,
            RejectReason::Authentication,
            format!("node {server_id} could not prove it holds the cluster secret"),
        ));
    }
    let client_proof = transcript.proof(&shared.secret, b"client");
    let mut auth = Vec::with_capacity(6 + PROOF_BYTES);
    encode_frame(&mut auth, KIND_AUTH, None, |b| {
        b.extend_from_slice(&client_proof);
        Ok(())
    })?;
    writer.write_all(&auth)?;
    expect_frame(reader, writer, KIND_ACCEPT, 0)?;
    let (client_to_server, _) = transcript.session_macs(&shared.secret);
    Ok(client_to_server)
}

/// The accepting side. Returns the authenticated peer id, lane and the MAC
/// that checks the frames it sends.
fn server_handshake<R: Read, W: Write>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    shared: &Shared,
) -> Result<(u64, Lane, SessionMac), HandshakeError> {
    expect_frame(reader, writer, KIND_HELLO, HELLO_PAYLOAD_BYTES)?;
    let hello = reader.payload();
    let cluster_id = read_u64(hello, 0);
    let client_id = read_u64(hello, 8);
    let server_id = read_u64(hello, 16);
    let lane_code = hello[24];
    let mut client_nonce = [0u8; NONCE_BYTES];
    client_nonce.copy_from_slice(&hello[25..25 + NONCE_BYTES]);
    if cluster_id != shared.cluster_id {
        return Err(reject(
            writer,
            RejectReason::Cluster,
            format!(
                "peer claims cluster {cluster_id}, ours is {}",
                shared.cluster_id
            ),
        ));
    }
    if server_id != shared.node_id || client_id == shared.node_id {
        return Err(reject(
            writer,
            RejectReason::WrongNode,
            format!(
                "peer {client_id} dialed node {server_id}; we are node {}",
                shared.node_id
            ),
        ));
    }
    let Some(lane) = Lane::from_code(lane_code) else {
        return Err(reject(
            writer,
            RejectReason::Protocol,
            format!("unknown lane {lane_code}"),
        ));
    };
    let mut server_nonce = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut server_nonce);
    let transcript = Transcript::new(
        cluster_id,
        client_id,
        server_id,
        lane,
        &client_nonce,
        &server_nonce,
    );
    let mut challenge = Vec::with_capacity(6 + NONCE_BYTES + PROOF_BYTES);
    encode_frame(&mut challenge, KIND_CHALLENGE, None, |b| {
        b.extend_from_slice(&server_nonce);
        b.extend_from_slice(&transcript.proof(&shared.secret, b"server"));
        Ok(())
    })?;
    writer.write_all(&challenge)?;

    expect_frame(reader, writer, KIND_AUTH, PROOF_BYTES)?;
    if !transcript.verify(&shared.secret, b"client", reader.payload()) {
        return Err(reject(
            writer,
            RejectReason::Authentication,
            format!("node {client_id} could not prove it holds the cluster secret"),
        ));
    }
    let mut accept = Vec::with_capacity(6);
    encode_frame(&mut accept, KIND_ACCEPT, None, |_| Ok(()))?;
    writer.write_all(&accept)?;
    let (client_to_server, _) = transcript.session_macs(&shared.secret);
    Ok((client_id, lane, client_to_server))
}

// ---------------------------------------------------------------------------
// Outbound: one writer thread per (peer, lane)

/// Sleeps up to `total`, waking early on shutdown or removal of the peer, and
/// discards (and counts) whatever is queued meanwhile: stale raft messages to
/// an unreachable peer are worthless, and draining keeps the queue from
/// reporting "full" for the whole outage. Returns false when the writer must exit.
fn wait_disconnected(shared: &Shared, rx: &Receiver<Message>, total: Duration) -> bool {
    let deadline = Instant::now() + total;
    loop {
        loop {
            match rx.try_recv() {
                Ok(_) => Counters::bump(&shared.counters.dropped_disconnected),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        if shared.shutdown.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

fn backoff_delay(config: &TransportConfig, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling_ms = config
        .backoff_initial_ms
        .saturating_mul(1u64 << exponent)
        .min(config.backoff_max_ms)
        .max(1);
    // Full jitter over the upper half: peers that lost each other at the same
    // moment do not redial in lockstep.
    let ms = rand::thread_rng().gen_range(ceiling_ms / 2..=ceiling_ms);
    Duration::from_millis(ms)
}

fn dial(
    shared: &Shared,
    peer_id: u64,
    addr: SocketAddr,
    lane: Lane,
) -> Result<(TcpStream, SessionMac), HandshakeError> {
    let config = &shared.config;
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_millis(config.connect_timeout_ms))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(config.handshake_timeout_ms)))?;
    stream.set_write_timeout(Some(Duration::from_millis(config.handshake_timeout_ms)))?;
    let mut reader = FrameReader::new(stream.try_clone()?);
    let mut writer = stream.try_clone()?;
    let mac = client_handshake(&mut reader, &mut writer, shared, peer_id, lane)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(Some(Duration::from_millis(config.write_timeout_ms)))?;
    Ok((stream, mac))
}

fn writer_loop(
    shared: Arc<Shared>,
    peer_id: u64,
    addr: SocketAddr,
    lane: Lane,
    rx: Receiver<Message>,
) {
    let node_id = shared.node_id;
    let mut failures: u32 = 0;
    let mut ever_connected = false;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        if shared.shutdown.load(Ordering::Relaxed) {
            return;
        }
        let (mut stream, mut mac) = match dial(&shared, peer_id, addr, lane) {
            Ok(connected) => connected,
            Err(e) => {
                failures = failures.saturating_add(1);
                Counters::bump(&shared.counters.connect_failures);
                if matches!(e, HandshakeError::Refused(_) | HandshakeError::Rejected(..)) {
                    Counters::bump(&shared.counters.handshakes_rejected);
                }
                // A refusal names a misconfiguration: warn at once.
                // Otherwise the first failure after a loss and then every
                // 20th: an outage does not flood the log, and peers that are
                // simply not started yet stay quiet.
                let refused =
                    matches!(e, HandshakeError::Refused(_) | HandshakeError::Rejected(..));
                if (failures == 1 && (ever_connected || refused)) || failures % 20 == 0 {
                    tracing::warn!(node = node_id, peer = peer_id, %addr, ?lane, failures, "cannot connect to peer: {e}");
                } else {
                    tracing::debug!(node = node_id, peer = peer_id, %addr, ?lane, failures, "cannot connect to peer: {e}");
                }
                if !wait_disconnected(&shared, &rx, backoff_delay(&shared.config, failures)) {
                    return;
                }
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(
                node = node_id,
                peer = peer_id,
                ?lane,
                "connected to peer after {failures} failed attempts"
            );
        }
        Counters::bump(&shared.counters.connects);
        ever_connected = true;
        match pump(&shared, &mut stream, &mut mac, &rx, &mut buf) {
            PumpEnd::Exit => {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            PumpEnd::Broken(e) => {
                tracing::warn!(
                    node = node_id,
                    peer = peer_id,
                    ?lane,
                    "connection to peer lost: {e}"
                );
                let _ = stream.shutdown(Shutdown::Both);
                failures = 1;
                if !wait_disconnected(&shared, &rx, backoff_delay(&shared.config, failures)) {
                    return;
                }
            }
        }
    }
}

enum PumpEnd {
    Exit,
    Broken(io::Error),
}

/// Moves messages from the queue to the socket, batching whatever is already
/// queued into one write, until the connection breaks or the writer must exit.
fn pump(
    shared: &Shared,
    stream: &mut TcpStream,
    mac: &mut SessionMac,
    rx: &Receiver<Message>,
    buf: &mut Vec<u8>,
) -> PumpEnd {
    let ping_interval = Duration::from_millis(shared.config.ping_interval_ms.max(1));
    loop {
        if shared.shutdown.load(Ordering::Relaxed) {
            return PumpEnd::Exit;
        }
        buf.clear();
        let mut batch_messages: u64 = 0;
        match rx.recv_timeout(ping_interval) {
            Ok(msg) => {
                if let Err(e) = encode_message(buf, mac, &msg) {
                    tracing::error!("cannot encode raft message: {e}");
                    continue;
                }
                batch_messages += 1;
                while buf.len() < WRITE_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(msg) => {
                            if encode_message(buf, mac, &msg).is_ok() {
                                batch_messages += 1;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = encode_frame(buf, KIND_PING, Some(mac), |_| Ok(())) {
                    return PumpEnd::Broken(e);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return PumpEnd::Exit,
        }
        if let Err(e) = stream.write_all(buf) {
            return PumpEnd::Broken(e);
        }
        let counters = &shared.counters;
        counters
            .messages_sent
            .fetch_add(batch_messages, Ordering::Relaxed);
        counters
            .bytes_sent
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if buf.capacity() > RETAINED_BUFFER_BYTES {
            buf.clear();
            buf.shrink_to(RETAINED_BUFFER_BYTES);
        }
    }
}

fn encode_message(buf: &mut Vec<u8>, mac: &mut SessionMac, msg: &Message) -> io::Result<()> {
    encode_frame(buf, KIND_RAFT, Some(mac), |b| {
        msg.write_to_vec(b)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    })
}

// ---------------------------------------------------------------------------
// Inbound: the accept loop and one reader per accepted connection

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, inbound: Sender<Message>) {
    for incoming in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let stream = match incoming {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(node = shared.node_id, "accept failed: {e}");
                // Out of descriptors and the like: do not spin.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let open = shared.inbound_connections.fetch_add(1, Ordering::SeqCst);
        if open >= shared.config.max_inbound_connections {
            shared.inbound_connections.fetch_sub(1, Ordering::SeqCst);
            Counters::bump(&shared.counters.handshakes_rejected);
            let mut stream = stream;
            send_reject(&mut stream, RejectReason::Busy);
            continue;
        }
        let reader_shared = Arc::clone(&shared);
        let reader_inbound = inbound.clone();
        let spawned = thread::Builder::new()
            .name(format!("tern-recv-{}", shared.node_id))
            .spawn(move || {
                let connection_id = reader_shared
                    .next_connection_id
                    .fetch_add(1, Ordering::Relaxed);
                if let Ok(clone) = stream.try_clone() {
                    if let Ok(mut open) = reader_shared.open_inbound.lock() {
                        open.insert(connection_id, clone);
                    }
                }
                serve_connection(&reader_shared, stream, &reader_inbound);
                if let Ok(mut open) = reader_shared.open_inbound.lock() {
                    open.remove(&connection_id);
                }
                reader_shared
                    .inbound_connections
                    .fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            shared.inbound_connections.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(node = shared.node_id, "cannot spawn a reader thread: {e}");
        }
    }
}

fn serve_connection(shared: &Shared, stream: TcpStream, inbound: &Sender<Message>) {
    let node_id = shared.node_id;
    let remote = stream.peer_addr().ok();
    let config = &shared.config;
    let setup = (|| -> io::Result<(BufReader<TcpStream>, TcpStream)> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_millis(config.handshake_timeout_ms)))?;
        stream.set_write_timeout(Some(Duration::from_millis(config.handshake_timeout_ms)))?;
        Ok((
            BufReader::with_capacity(64 * 1024, stream.try_clone()?),
            stream.try_clone()?,
        ))
    })();
    let (buffered, mut writer) = match setup {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(
                node = node_id,
                ?remote,
                "cannot set up inbound connection: {e}"
            );
            return;
        }
    };
    let mut reader = FrameReader::new(buffered);
    let (peer_id, lane, mut mac) = match server_handshake(&mut reader, &mut writer, shared) {
        Ok(session) => session,
        Err(e) => {
            // Our own wake-up connection at shutdown is not worth a warning.
            if !shared.shutdown.load(Ordering::Relaxed) {
                Counters::bump(&shared.counters.handshakes_rejected);
                tracing::warn!(node = node_id, ?remote, "refused inbound connection: {e}");
            }
            return;
        }
    };
    if stream
        .set_read_timeout(Some(Duration::from_millis(config.idle_timeout_ms.max(1))))
        .is_err()
    {
        return;
    }
    tracing::debug!(
        node = node_id,
        peer = peer_id,
        ?lane,
        "accepted peer connection"
    );
    loop {
        if shared.shutdown.load(Ordering::Relaxed) {
            return;
        }
        let kind = match reader.read_frame(config.max_frame_bytes) {
            Ok((_, kind)) => kind,
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof
                    && !shared.shutdown.load(Ordering::Relaxed)
                {
                    Counters::bump(&shared.counters.protocol_errors);
                    tracing::warn!(
                        node = node_id,
                        peer = peer_id,
                        ?lane,
                        "closing peer connection: {e}"
                    );
                }
                return;
            }
        };
        let Some(payload) = reader.verify_tagged(&mut mac) else {
            Counters::bump(&shared.counters.protocol_errors);
            tracing::warn!(
                node = node_id,
                peer = peer_id,
                ?lane,
                "closing peer connection: frame authentication failed"
            );
            return;
        };
        match kind {
            KIND_PING => continue,
            KIND_RAFT => {}
            other => {
                Counters::bump(&shared.counters.protocol_errors);
                tracing::warn!(
                    node = node_id,
                    peer = peer_id,
                    "closing peer connection: unexpected frame kind {other}"
                );
                return;
            }
        }
        let msg = match Message::parse_from_bytes(payload) {
            Ok(msg) => msg,
            Err(e) => {
                Counters::bump(&shared.counters.protocol_errors);
                tracing::warn!(
                    node = node_id,
                    peer = peer_id,
                    "closing peer connection: undecodable raft message: {e}"
                );
                return;
            }
        };
        if msg.get_from() != peer_id || msg.get_to() != node_id {
            Counters::bump(&shared.counters.protocol_errors);
            tracing::warn!(
                node = node_id,
                peer = peer_id,
                from = msg.get_from(),
                to = msg.get_to(),
                "closing peer connection: message not from the authenticated peer to us"
            );
            return;
        }
        Counters::bump(&shared.counters.messages_received);
        match inbound.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => Counters::bump(&shared.counters.dropped_inbound_full),
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    fn config(node_id: u64, secret: &[u8]) -> TransportConfig {
        let mut config = TransportConfig::new(node_id, 7, loopback(), secret.to_vec());
        config.backoff_initial_ms = 10;
        config.backoff_max_ms = 100;
        config.handshake_timeout_ms = 500;
        config
    }

    fn message(from: u64, to: u64, term: u64) -> Message {
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgHeartbeat);
        msg.set_from(from);
        msg.set_to(to);
        msg.set_term(term);
        msg
    }

    fn recv(rx: &Receiver<Message>, timeout_ms: u64) -> Option<Message> {
        rx.recv_timeout(Duration::from_millis(timeout_ms)).ok()
    }

    /// Sends until one arrives: the first messages may be dropped while the
    /// connection is being made, which raft tolerates and so do these tests.
    fn send_until_received(sender: &Transport, rx: &Receiver<Message>, msg: Message) -> Message {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            sender.send(msg.clone());
            if let Some(got) = recv(rx, 50) {
                return got;
            }
        }
        panic!("message never arrived");
    }

    fn pair(
        secret_a: &[u8],
        secret_b: &[u8],
    ) -> (
        (Transport, Receiver<Message>),
        (Transport, Receiver<Message>),
    ) {
        let (mut a, a_rx) = Transport::start(config(1, secret_a)).unwrap();
        let (mut b, b_rx) = Transport::start(config(2, secret_b)).unwrap();
        a.set_peer(2, b.local_addr()).unwrap();
        b.set_peer(1, a.local_addr()).unwrap();
        ((a, a_rx), (b, b_rx))
    }

    #[test]
    fn two_transports_exchange_messages_both_ways_in_order() {
        let ((a, a_rx), (b, b_rx)) = pair(SECRET, SECRET);
        let first = send_until_received(&a, &b_rx, message(1, 2, 1));
        assert_eq!((first.get_from(), first.get_to()), (1, 2));
        for term in 10..110 {
            assert!(a.send(message(1, 2, term)));
        }
        let mut terms = Vec::new();
        while terms.len() < 100 {
            let got = recv(&b_rx, 5000).expect("message lost on a healthy connection");
            if got.get_term() >= 10 {
                terms.push(got.get_term());
            }
        }
        assert_eq!(terms, (10..110).collect::<Vec<_>>());
        let back = send_until_received(&b, &a_rx, message(2, 1, 5));
        assert_eq!((back.get_from(), back.get_to(), back.get_term()), (2, 1, 5));
        assert!(a.stats().messages_sent >= 101);
        assert_eq!(b.stats().protocol_errors, 0);
    }

    #[test]
    fn wrong_secret_is_refused_on_both_sides() {
        let ((a, _a_rx), (b, b_rx)) = pair(SECRET, b"another secret of enough length!");
        let deadline = Instant::now() + Duration::from_millis(800);
        while Instant::now() < deadline {
            a.send(message(1, 2, 1));
            assert!(
                recv(&b_rx, 20).is_none(),
                "a message crossed with a wrong secret"
            );
        }
        assert!(a.stats().handshakes_rejected > 0);
        assert!(b.stats().handshakes_rejected > 0);
        assert_eq!(a.stats().connects, 0);
    }

    #[test]
    fn wrong_cluster_is_refused() {
        let (mut a, _a_rx) = Transport::start(config(1, SECRET)).unwrap();
        let mut other = config(2, SECRET);
        other.cluster_id = 8;
        let (b, b_rx) = Transport::start(other).unwrap();
        a.set_peer(2, b.local_addr()).unwrap();
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            a.send(message(1, 2, 1));
            assert!(recv(&b_rx, 20).is_none());
        }
        assert!(b.stats().handshakes_rejected > 0);
    }

    #[test]
    fn short_secret_is_refused_at_start() {
        assert!(Transport::start(config(1, b"short")).is_err());
    }

    #[test]
    fn garbage_clients_are_dropped() {
        let (b, _b_rx) = Transport::start(config(2, SECRET)).unwrap();
        // A client claiming a 1 GiB handshake frame.
        let mut huge = TcpStream::connect(b.local_addr()).unwrap();
        huge.write_all(&[0x40, 0, 0, 0, 1, 1]).unwrap();
        // Random bytes.
        let mut noise = TcpStream::connect(b.local_addr()).unwrap();
        noise
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // A client that says nothing (dropped by the handshake timeout).
        let silent = TcpStream::connect(b.local_addr()).unwrap();
        for mut stream in [huge, noise, silent] {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut sink = Vec::new();
            // The server closes: read_to_end finishes (EOF or reset), it does not time out.
            match stream.read_to_end(&mut sink) {
                Ok(_) => {}
                Err(e) => assert_ne!(
                    e.kind(),
                    io::ErrorKind::WouldBlock,
                    "server kept a garbage client"
                ),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while b.stats().handshakes_rejected < 3 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(b.stats().handshakes_rejected >= 3);
    }

    /// What a recording proxy saw clients send, one buffer per connection.
    type Recordings = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

    /// A man in the middle that forwards every connection to `target` and
    /// records what each client sent.
    fn recording_proxy(target: SocketAddr, stop: Arc<AtomicBool>) -> (SocketAddr, Recordings) {
        let proxy = TcpListener::bind(loopback()).unwrap();
        proxy.set_nonblocking(true).unwrap();
        let addr = proxy.local_addr().unwrap();
        let recordings: Recordings = Arc::default();
        let all = Arc::clone(&recordings);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = proxy.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(target).unwrap();
                let recording = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(Arc::clone(&recording));
                let mut server_reader = server.try_clone().unwrap();
                let mut client_writer = client.try_clone().unwrap();
                thread::spawn(move || {
                    let _ = io::copy(&mut server_reader, &mut client_writer);
                    let _ = client_writer.shutdown(Shutdown::Both);
                });
                let (mut client_reader, mut server_writer) = (client, server);
                thread::spawn(move || {
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = client_reader.read(&mut chunk) {
                        if n == 0 {
                            break;
                        }
                        recording.lock().unwrap().extend_from_slice(&chunk[..n]);
                        if server_writer.write_all(&chunk[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = server_writer.shutdown(Shutdown::Both);
                });
            }
        });
        (addr, recordings)
    }

    #[test]
    fn recorded_sessions_do_not_replay() {
        let (b, b_rx) = Transport::start(config(2, SECRET)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (proxy_addr, recordings) = recording_proxy(b.local_addr(), Arc::clone(&stop));
        let mut a_config = config(1, SECRET);
        a_config.peers = vec![(2, proxy_addr)];
        let (a, _a_rx) = Transport::start(a_config).unwrap();
        send_until_received(&a, &b_rx, message(1, 2, 3));
        drop(a);
        stop.store(true, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(200));
        // The session that carried the message is among the recordings.
        let recorded: Vec<Vec<u8>> = recordings
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.lock().unwrap().clone())
            .collect();
        assert!(
            recorded.iter().any(|r| r.len() > 100),
            "the proxy saw no session"
        );
        // Replayed on fresh connections, each fails: the server's new nonce
        // makes the recorded proof worthless.
        for session in recorded.iter().filter(|r| !r.is_empty()) {
            let rejected_before = b.stats().handshakes_rejected;
            let mut replay = TcpStream::connect(b.local_addr()).unwrap();
            let _ = replay.write_all(session);
            replay
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut sink = Vec::new();
            let _ = replay.read_to_end(&mut sink);
            assert!(
                recv(&b_rx, 100).is_none(),
                "a replayed session delivered a message"
            );
            let deadline = Instant::now() + Duration::from_secs(2);
            while b.stats().handshakes_rejected == rejected_before && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            assert!(b.stats().handshakes_rejected > rejected_before);
        }
    }

    #[test]
    fn peer_restart_reconnects() {
        let ((a, _a_rx), (b, b_rx)) = pair(SECRET, SECRET);
        send_until_received(&a, &b_rx, message(1, 2, 1));
        let b_addr = b.local_addr();
        drop(b);
        drop(b_rx);
        let mut restarted = config(2, SECRET);
        restarted.listen_addr = b_addr;
        let (b2, b2_rx) = Transport::start(restarted).unwrap();
        let got = send_until_received(&a, &b2_rx, message(1, 2, 2));
        assert_eq!(got.get_term(), 2);
        assert!(a.stats().connects >= 2);
        drop(b2);
    }

    #[test]
    fn snapshot_does_not_delay_heartbeats() {
        let ((a, _a_rx), (_b, b_rx)) = pair(SECRET, SECRET);
        // Warm both lanes up so the race is only about bytes on the wire.
        let mut small_snapshot = message(1, 2, 1);
        small_snapshot.set_msg_type(MessageType::MsgSnapshot);
        send_until_received(&a, &b_rx, small_snapshot);
        send_until_received(&a, &b_rx, message(1, 2, 1));
        let mut big = message(1, 2, 2);
        big.set_msg_type(MessageType::MsgSnapshot);
        big.mut_snapshot()
            .set_data(vec![7u8; 64 * 1024 * 1024].into());
        assert!(a.send(big));
        assert!(a.send(message(1, 2, 3)));
        let first = recv(&b_rx, 10_000).expect("heartbeat lost");
        assert_eq!(
            first.get_msg_type(),
            MessageType::MsgHeartbeat,
            "heartbeat waited behind the snapshot"
        );
        let second = recv(&b_rx, 20_000).expect("snapshot lost");
        assert_eq!(second.get_snapshot().get_data().len(), 64 * 1024 * 1024);
    }

    /// An authenticated session of node 1 to `server` (node 2), driven by hand.
    fn handshake_as_node_1(server: SocketAddr) -> (TcpStream, SessionMac) {
        let client = Shared {
            node_id: 1,
            cluster_id: 7,
            secret: SECRET.to_vec(),
            config: config(1, SECRET),
            counters: Counters::default(),
            shutdown: AtomicBool::new(false),
            inbound_connections: AtomicUsize::new(0),
            open_inbound: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(0),
        };
        let stream = TcpStream::connect(server).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = FrameReader::new(stream.try_clone().unwrap());
        let mut writer = stream.try_clone().unwrap();
        let mac = client_handshake(&mut reader, &mut writer, &client, 2, Lane::Regular).unwrap();
        (stream, mac)
    }

    #[test]
    fn authenticated_peer_cannot_speak_for_another_node() {
        let (b, b_rx) = Transport::start(config(2, SECRET)).unwrap();
        let (mut stream, mut mac) = handshake_as_node_1(b.local_addr());
        let mut buf = Vec::new();
        encode_message(&mut buf, &mut mac, &message(1, 2, 4)).unwrap();
        stream.write_all(&buf).unwrap();
        assert_eq!(recv(&b_rx, 5000).map(|m| m.get_term()), Some(4));
        // Node 1 claims a message from node 3: the connection is closed.
        buf.clear();
        encode_message(&mut buf, &mut mac, &message(3, 2, 5)).unwrap();
        encode_message(&mut buf, &mut mac, &message(1, 2, 6)).unwrap();
        stream.write_all(&buf).unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        assert!(
            recv(&b_rx, 200).is_none(),
            "a spoofed or later message was delivered"
        );
        assert_eq!(b.stats().protocol_errors, 1);
    }

    #[test]
    fn oversized_authenticated_frame_closes_the_connection() {
        let mut b_config = config(2, SECRET);
        b_config.max_frame_bytes = 4096;
        let (b, b_rx) = Transport::start(b_config).unwrap();
        let (mut stream, _mac) = handshake_as_node_1(b.local_addr());
        // Claims 1 MiB: refused before anything is allocated or read.
        stream
            .write_all(&[0, 0x10, 0, 0, PROTOCOL_VERSION, KIND_RAFT])
            .unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        assert!(recv(&b_rx, 100).is_none());
        assert_eq!(b.stats().protocol_errors, 1);
    }

    #[test]
    fn tampered_frame_fails_authentication() {
        let transcript =
            Transcript::new(7, 1, 2, Lane::Regular, &[1; NONCE_BYTES], &[2; NONCE_BYTES]);
        let (mut send_mac, _) = transcript.session_macs(SECRET);
        let (mut recv_mac, _) = transcript.session_macs(SECRET);
        let mut buf = Vec::new();
        encode_message(&mut buf, &mut send_mac, &message(1, 2, 9)).unwrap();
        encode_message(&mut buf, &mut send_mac, &message(1, 2, 10)).unwrap();
        let mut reader = FrameReader::new(&buf[..]);
        reader.read_frame(1024).unwrap();
        // Replaying frame 0 where frame 1 is expected fails.
        let mut replay_mac = SessionMac {
            key: recv_mac.key.clone(),
            seq: 1,
        };
        assert!(reader.verify_tagged(&mut replay_mac).is_none());
        assert!(reader.verify_tagged(&mut recv_mac).is_some());
        reader.read_frame(1024).unwrap();
        reader.body[5] ^= 1;
        assert!(reader.verify_tagged(&mut recv_mac).is_none());
    }
}
