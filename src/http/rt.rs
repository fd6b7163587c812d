//! hyper 1.x on glommio: the IO adapter, executor and timer hyper needs.
//!
//! Owns: [`HyperIo`] (hyper's `Read`/`Write` over any futures-lite
//! `AsyncRead + AsyncWrite`, so glommio's `TcpStream` and a TLS stream over
//! it both fit), [`LocalExecutor`] (hyper's `Executor`, spawning on the
//! current glommio executor) and [`LocalTimer`] (hyper's `Timer` over glommio
//! timers, for the header read timeout and keep-alive). Must not touch: HTTP
//! itself (hyper parses and writes every byte), routing, or anything shared
//! across cores.
//!
//! Why the unsafe blocks: hyper hands reads an uninitialised buffer and wants
//! timer futures `Send + Sync` (it also serves multi-threaded runtimes), while
//! glommio timers are thread-local. Everything here runs on the one executor
//! thread that created it; [`LocalSleep`] checks that on every poll and drop.

use std::future::Future;
use std::io;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use hyper::rt::{Executor, ReadBufCursor, Sleep, Timer};

/// Largest read handed to the stream at once: bounds the part of hyper's
/// buffer we zero before each read.
const MAX_READ_BYTES: usize = 64 * 1024;

/// hyper's IO traits over a futures-lite stream.
#[derive(Debug)]
pub struct HyperIo<T> {
    inner: T,
}

impl<T> HyperIo<T> {
    pub fn new(inner: T) -> HyperIo<T> {
        HyperIo { inner }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: we only write to the slice (zeroing it first, so it may be
        // viewed as initialised bytes) and advance by what the stream says it
        // filled, which is at most the length we handed it.
        let uninit: &mut [MaybeUninit<u8>] = unsafe { buf.as_mut() };
        let len = uninit.len().min(MAX_READ_BYTES);
        let uninit = &mut uninit[..len];
        for byte in uninit.iter_mut() {
            byte.write(0);
        }
        // SAFETY: every element was initialised just above; MaybeUninit<u8>
        // and u8 have the same layout.
        let init: &mut [u8] = unsafe { &mut *(uninit as *mut [MaybeUninit<u8>] as *mut [u8]) };
        match Pin::new(&mut self.inner).poll_read(cx, init) {
            Poll::Ready(Ok(filled)) => {
                assert!(
                    filled <= len,
                    "the stream claims more bytes than it was given"
                );
                // SAFETY: `filled` bytes were written into the initialised prefix.
                unsafe { buf.advance(filled) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// hyper's executor: runs futures on the current glommio executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalExecutor;

impl<F> Executor<F> for LocalExecutor
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, future: F) {
        glommio::spawn_local(future).detach();
    }
}

/// hyper's timer over glommio timers of the current executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalTimer;

impl Timer for LocalTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(LocalSleep::new(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(LocalSleep::new(
            deadline.saturating_duration_since(Instant::now()),
        ))
    }
}

/// A glommio timer that hyper may treat as `Send + Sync`.
pub struct LocalSleep {
    timer: ManuallyDrop<glommio::timer::Timer>,
    owner: ThreadId,
}

impl LocalSleep {
    fn new(duration: Duration) -> LocalSleep {
        LocalSleep {
            timer: ManuallyDrop::new(glommio::timer::Timer::new(duration)),
            owner: std::thread::current().id(),
        }
    }
}

// SAFETY: the glommio timer inside is only ever touched (polled or dropped)
// on its owner thread: `poll` asserts it, and `drop` leaks the timer rather
// than touch it elsewhere. `&LocalSleep` exposes nothing of the timer.
unsafe impl Send for LocalSleep {}
// SAFETY: as above; no method reads the timer through a shared reference.
unsafe impl Sync for LocalSleep {}

impl Future for LocalSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        assert_eq!(
            self.owner,
            std::thread::current().id(),
            "a glommio timer was polled off its executor thread"
        );
        let timer: &mut glommio::timer::Timer = &mut self.timer;
        Pin::new(timer).poll(cx).map(|_| ())
    }
}

impl Sleep for LocalSleep {}

impl Drop for LocalSleep {
    fn drop(&mut self) {
        if self.owner == std::thread::current().id() {
            // SAFETY: dropped once, here, on the thread that created it.
            unsafe { ManuallyDrop::drop(&mut self.timer) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use glommio::net::{TcpListener, TcpStream};
    use glommio::LocalExecutorBuilder;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::{Request, Response};

    fn on_executor<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        LocalExecutorBuilder::default()
            .spawn(f)
            .expect("test executor starts")
            .join()
            .expect("test executor finishes");
    }

    #[test]
    fn serves_and_fetches_over_loopback() {
        on_executor(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            let addr = listener.local_addr().expect("local addr");
            let server = glommio::spawn_local(async move {
                let stream = listener.accept().await.expect("accept");
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let path = request.uri().path().to_string();
                    let body = request.into_body().collect().await?.to_bytes();
                    let answer = format!("{path}:{}", body.len());
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
                });
                hyper::server::conn::http1::Builder::new()
                    .timer(LocalTimer)
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(HyperIo::new(stream), service)
                    .await
                    .expect("server connection");
            });
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(HyperIo::new(stream))
                    .await
                    .expect("handshake");
            LocalExecutor.execute(async move {
                let _ = connection.await;
            });
            for round in 0..3 {
                let request = Request::post(format!("/echo/{round}"))
                    .body(Full::new(Bytes::from(vec![b'x'; 100_000 * round + 1])))
                    .expect("request");
                let response = sender.send_request(request).await.expect("response");
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.expect("body");
                assert_eq!(
                    body.to_bytes(),
                    Bytes::from(format!("/echo/{round}:{}", 100_000 * round + 1))
                );
            }
            drop(sender);
            server.await;
        });
    }

    #[test]
    fn timer_sleeps_at_least_the_duration() {
        on_executor(|| async {
            let started = Instant::now();
            LocalTimer.sleep(Duration::from_millis(30)).await;
            assert!(started.elapsed() >= Duration::from_millis(30));
            let deadline = Instant::now() + Duration::from_millis(20);
            LocalTimer.sleep_until(deadline).await;
            assert!(Instant::now() >= deadline);
        });
    }
}
