//! A small asynchronous SMPP connection over a glommio `TcpStream`, shared by
//! the simulator, the load generator and (later) the engine.
//!
//! Owns: the read buffer and the framing of a byte stream into PDUs, the
//! write buffer PDUs are encoded into and its flushing, and the bounds on
//! both. Must not touch: session rules, windows, timers or what a PDU means;
//! callers decide what to send and when.
//!
//! Why one object with a combined wait (`next_event`) rather than split
//! halves: glommio's non-buffered stream copies data out synchronously inside
//! `poll_read` / `poll_write`, so a read or a flush abandoned half-way loses
//! nothing. One task per connection can therefore wait for "a frame arrived,
//! or my own wake-up fired" while writes drain in the background of the same
//! poll, without locks, a second task or a channel per connection.

pub mod notify;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::smpp::frame::{Frame, FrameDecoder, FramingError, DEFAULT_MAX_COMMAND_LENGTH};
use crate::smpp::pdu::{EncodeError, Pdu, HEADER_LEN};

pub use notify::LocalNotify;

/// Sizes that bound one connection's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    /// Largest PDU accepted from the peer.
    pub max_command_length: u32,
    /// Octets asked of the socket per read.
    pub read_chunk_bytes: usize,
    /// While more than this waits to be written, `next_event` stops reading,
    /// so a peer that does not read cannot make us queue without limit.
    pub write_high_water_bytes: usize,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            max_command_length: DEFAULT_MAX_COMMAND_LENGTH,
            read_chunk_bytes: 64 * 1024,
            write_high_water_bytes: 1024 * 1024,
        }
    }
}

/// Why a connection can no longer be used (or a PDU could not be queued).
#[derive(Debug)]
pub enum PeerError {
    Io(io::Error),
    /// The stream cannot be framed any more; `FramingError::nack` is the
    /// generic_nack to send before closing.
    Framing(FramingError),
    /// A PDU could not be encoded; nothing was queued.
    Encode(EncodeError),
    /// The peer closed the connection in the middle of a PDU.
    TruncatedAtClose {
        buffered_bytes: usize,
    },
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Io(e) => write!(f, "socket error: {e}"),
            PeerError::Framing(e) => write!(f, "{e}"),
            PeerError::Encode(e) => write!(f, "cannot encode PDU: {e}"),
            PeerError::TruncatedAtClose { buffered_bytes } => write!(
                f,
                "peer closed the connection with {buffered_bytes} octet(s) of an incomplete PDU"
            ),
        }
    }
}

impl std::error::Error for PeerError {}

impl From<io::Error> for PeerError {
    fn from(e: io::Error) -> Self {
        PeerError::Io(e)
    }
}

/// What `next_event` returns.
// Boxing the frame would cost an allocation per PDU; the event is moved once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event<W> {
    /// A frame (a PDU, or a rejected frame with the reply to send).
    Frame(Frame),
    /// The peer closed the connection cleanly, at a PDU boundary.
    Closed,
    /// The caller's wake-up future completed first.
    Woken(W),
}

/// One SMPP connection: framed reads, buffered writes.
pub struct PduConnection {
    stream: TcpStream,
    decoder: FrameDecoder,
    config: PeerConfig,
    read_buf: BytesMut,
    /// Fixed landing area for socket reads (`read_chunk_bytes`).
    scratch: Box<[u8]>,
    write_buf: BytesMut,
    peer_closed: bool,
}

impl PduConnection {
    pub fn new(stream: TcpStream, config: PeerConfig) -> PduConnection {
        // Small request/response PDUs: waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        PduConnection {
            stream,
            decoder: FrameDecoder::new(config.max_command_length),
            read_buf: BytesMut::with_capacity(config.read_chunk_bytes),
            scratch: vec![0u8; config.read_chunk_bytes.max(HEADER_LEN)].into_boxed_slice(),
            write_buf: BytesMut::with_capacity(config.read_chunk_bytes),
            config,
            peer_closed: false,
        }
    }

    pub async fn connect(addr: SocketAddr, config: PeerConfig) -> io::Result<PduConnection> {
        let stream = TcpStream::connect(addr).await?;
        Ok(PduConnection::new(stream, config))
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// Encodes `pdu` into the write buffer; nothing is written until a flush
    /// or `next_event`. Allocates only when the buffer must grow.
    pub fn send(&mut self, pdu: &Pdu) -> Result<(), PeerError> {
        pdu.encode(&mut self.write_buf).map_err(PeerError::Encode)
    }

    /// Octets encoded but not yet accepted by the socket.
    pub fn pending_write_bytes(&self) -> usize {
        self.write_buf.len()
    }

    /// True when the write buffer is over its high-water mark: producers
    /// should hold back until a flush drains it.
    pub fn is_write_congested(&self) -> bool {
        self.write_buf.len() > self.config.write_high_water_bytes
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), PeerError> {
        std::future::poll_fn(|cx| self.poll_write_some(cx)).await?;
        Ok(())
    }

    /// The next frame; `Ok(None)` when the peer closed at a PDU boundary.
    /// Queued writes are flushed meanwhile. Cancel-safe.
    pub async fn read_pdu(&mut self) -> Result<Option<Frame>, PeerError> {
        match self.next_event(std::future::pending::<()>()).await? {
            Event::Frame(frame) => Ok(Some(frame)),
            Event::Closed => Ok(None),
            Event::Woken(()) => unreachable!("a pending future never completes"),
        }
    }

    /// A frame already in the read buffer, without touching the socket.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, PeerError> {
        self.decoder
            .decode(&mut self.read_buf)
            .map_err(PeerError::Framing)
    }

    /// Waits for the first of: a frame from the peer, the peer closing, or
    /// `wake` completing. Queued writes drain all the while; reading pauses
    /// while the write buffer is congested. Cancel-safe: dropping the future
    /// loses neither read nor written octets.
    pub async fn next_event<W>(
        &mut self,
        wake: impl Future<Output = W>,
    ) -> Result<Event<W>, PeerError> {
        let mut wake = pin!(wake);
        std::future::poll_fn(|cx| self.poll_event(cx, wake.as_mut())).await
    }

    fn poll_event<W>(
        &mut self,
        cx: &mut Context<'_>,
        wake: Pin<&mut impl Future<Output = W>>,
    ) -> Poll<Result<Event<W>, PeerError>> {
        if let Poll::Ready(Err(e)) = self.poll_write_some(cx) {
            return Poll::Ready(Err(e));
        }
        if !self.is_write_congested() {
            // Read until a whole frame is in, the socket has nothing more
            // (which arms the waker), or the peer closed.
            loop {
                if let Some(frame) = self.buffered_frame()? {
                    return Poll::Ready(Ok(Event::Frame(frame)));
                }
                if self.peer_closed {
                    return Poll::Ready(self.closed_outcome());
                }
                match self.poll_fill(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                    Poll::Pending => break,
                }
            }
        }
        match wake.poll(cx) {
            Poll::Ready(w) => Poll::Ready(Ok(Event::Woken(w))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn closed_outcome<W>(&self) -> Result<Event<W>, PeerError> {
        if self.read_buf.is_empty() {
            Ok(Event::Closed)
        } else {
            Err(PeerError::TruncatedAtClose {
                buffered_bytes: self.read_buf.len(),
            })
        }
    }

    /// One read into the scratch buffer, appended to the read buffer: the
    /// copy costs what was read, where zeroing spare room in the read buffer
    /// before each read would cost the whole chunk every time.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PeerError>> {
        match Pin::new(&mut self.stream).poll_read(cx, &mut self.scratch) {
            Poll::Ready(Ok(0)) => {
                self.peer_closed = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(n)) => {
                self.read_buf
                    .extend_from_slice(self.scratch.get(..n).unwrap_or_default());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(PeerError::Io(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes until the buffer is empty (Ready) or the socket is full (Pending).
    fn poll_write_some(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PeerError>> {
        while !self.write_buf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.write_buf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(PeerError::Io(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => self.write_buf.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PeerError::Io(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Flushes what is queued (best effort) and closes the socket.
    pub async fn close(mut self) {
        let _ = self.flush().await;
        let _ = futures_lite::io::AsyncWriteExt::close(&mut self.stream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::pdu::Body;
    use std::io::{Read, Write};

    /// Runs `serve` on an executor against one accepted connection while
    /// `client` talks to it from a plain thread; returns both results.
    fn with_client<S, C>(
        serve: impl FnOnce(PduConnection) -> S + Send + 'static,
        client: impl FnOnce(std::net::TcpStream) -> C + Send + 'static,
    ) -> (S::Output, C)
    where
        S: Future + 'static,
        S::Output: Send + 'static,
        C: Send + 'static,
    {
        let handle = crate::runtime::spawn_pinned("peer-test", 0, move || async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let client = std::thread::spawn(move || {
                client(std::net::TcpStream::connect(addr).expect("connect"))
            });
            let stream = listener.accept().await.expect("accept");
            let served = serve(PduConnection::new(stream, PeerConfig::default())).await;
            (served, client)
        })
        .expect("spawn");
        let (served, client) = handle.join().expect("join");
        (served, client.join().expect("client thread"))
    }

    #[test]
    fn frames_split_across_reads_and_pipelined_replies() {
        let (served, back) = with_client(
            |mut conn| async move {
                let mut seen = Vec::new();
                while let Some(frame) = conn.read_pdu().await.expect("read") {
                    let Frame::Pdu(pdu) = frame else {
                        panic!("well-formed input")
                    };
                    seen.push(pdu.sequence_number);
                    conn.send(&Pdu::new(pdu.sequence_number, Body::EnquireLinkResp))
                        .expect("queue");
                    if seen.len() == 3 {
                        conn.flush().await.expect("flush");
                        break;
                    }
                }
                seen
            },
            |mut s| {
                let mut wire = Vec::new();
                for seq in 1..=3u32 {
                    let pdu = Pdu::new(seq, Body::EnquireLink);
                    wire.extend_from_slice(&pdu.to_bytes().expect("encode"));
                }
                // Cut inside the second PDU's header.
                s.write_all(&wire[..20]).expect("write");
                std::thread::sleep(std::time::Duration::from_millis(20));
                s.write_all(&wire[20..]).expect("write");
                let mut back = vec![0u8; 48];
                s.read_exact(&mut back).expect("read replies");
                back
            },
        );
        assert_eq!(served, vec![1, 2, 3]);
        for (i, chunk) in back.chunks(16).enumerate() {
            let pdu = Pdu::decode_slice(chunk).expect("reply decodes");
            assert_eq!(pdu.body, Body::EnquireLinkResp);
            assert_eq!(pdu.sequence_number, i as u32 + 1);
        }
    }

    #[test]
    fn an_unframeable_length_is_an_error_not_a_panic() {
        let (nack_sequence, ()) = with_client(
            |mut conn| async move {
                match conn.read_pdu().await {
                    Err(PeerError::Framing(e)) => e.nack().sequence_number,
                    other => panic!("expected a framing error, got {other:?}"),
                }
            },
            |mut s| {
                s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 9])
                    .expect("write");
                std::thread::sleep(std::time::Duration::from_millis(50));
            },
        );
        assert_eq!(nack_sequence, 9, "the nack echoes the sequence number");
    }

    #[test]
    fn the_wake_future_wins_when_the_peer_is_quiet() {
        let (events, ()) = with_client(
            |mut conn| async move {
                let first = conn.next_event(async { 5 }).await.expect("event");
                let second = conn
                    .next_event(glommio::timer::sleep(std::time::Duration::from_secs(5)))
                    .await
                    .expect("event");
                let third = conn.next_event(std::future::pending::<()>()).await;
                (
                    matches!(first, Event::Woken(5)),
                    matches!(second, Event::Frame(Frame::Pdu(_))),
                    matches!(third, Ok(Event::Closed)),
                )
            },
            |mut s| {
                std::thread::sleep(std::time::Duration::from_millis(30));
                let pdu = Pdu::new(1, Body::EnquireLink);
                s.write_all(&pdu.to_bytes().expect("encode"))
                    .expect("write");
            },
        );
        assert_eq!(events, (true, true, true));
    }

    #[test]
    fn a_pdu_cut_by_the_close_is_reported() {
        let (outcome, ()) = with_client(
            |mut conn| async move { conn.read_pdu().await },
            |mut s| {
                s.write_all(&[0, 0, 0, 16, 0, 0, 0, 0x15]).expect("write");
            },
        );
        assert!(
            matches!(
                outcome,
                Err(PeerError::TruncatedAtClose { buffered_bytes: 8 })
            ),
            "{outcome:?}"
        );
    }
}
