//! What the end-to-end tests share: loopback ports and scratch directories.
//! Each test binary uses part of it.
#![allow(dead_code)]

use std::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago, for a server the test
/// starts right after.
///
/// Picked below the kernel's ephemeral range (32768-60999 by default), never
/// in it: a port the kernel hands out can be taken, between this pick and
/// the server's bind, by any outgoing connection of a test running in
/// parallel ("Address already in use"). Below it only servers bind, and this
/// counter never gives one port twice in a test binary; the start depends on
/// the process id, so binaries run one after another do not reuse ports a
/// moment ago in TIME_WAIT.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = *START.get_or_init(|| std::process::id().wrapping_mul(7_919) % COUNT);
    for _ in 0..COUNT {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT;
        let port = u16::try_from(FIRST + offset).expect("ports below 32,000 fit");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{FIRST}..{}", FIRST + COUNT);
}

/// A scratch directory, removed when dropped.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tern-{name}-"))
        .tempdir()
        .expect("create a scratch directory")
}

/// Whether something accepts connections at `addr`. A probe of a free port
/// in the ephemeral range can connect to itself; that is no server.
pub fn accepts(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
        .is_ok_and(|s| s.local_addr().ok() != Some(addr))
}

/// Waits (60 s at most) until `child` accepts at `addr`; panics with its log
/// if it exits first or never listens.
pub fn wait_listening(
    addr: std::net::SocketAddr,
    what: &str,
    child: &mut std::process::Child,
    log: &std::path::Path,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !accepts(addr) {
        let log_text = || std::fs::read_to_string(log).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status}:\n{}", log_text());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not listen on {addr} in time:\n{}",
            log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until nothing accepts at `addr` any more. A SIGKILLed glommio
/// process is reaped before the kernel has torn down its io_uring, and the
/// listening socket the ring still references keeps accepting (then
/// resetting) connections for a moment; a restart on the same port must not
/// start while it does, or the first client lands in the dead socket.
pub fn wait_closed(addr: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while accepts(addr) {
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} still accepts after the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Reads one whole SMPP PDU from a blocking socket; an error on EOF, a
/// timeout, a reset or a frame the tests cannot use (over 64 KiB).
pub fn read_pdu(stream: &mut std::net::TcpStream) -> Result<tern::smpp::pdu::Pdu, String> {
    use std::io::Read;
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).map_err(|e| e.to_string())?;
    let command_length = u32::from_be_bytes(length) as usize;
    if !(16..=64 * 1024).contains(&command_length) {
        return Err(format!("command_length {command_length}"));
    }
    let mut frame = vec![0u8; command_length];
    frame[..4].copy_from_slice(&length);
    stream
        .read_exact(&mut frame[4..])
        .map_err(|e| e.to_string())?;
    tern::smpp::pdu::Pdu::decode_slice(&frame).map_err(|e| format!("{e:?}"))
}
