//! What the end-to-end tests share: loopback ports and scratch directories.
//! Each test binary uses part of it.
#![allow(dead_code)]

use std::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago (the kernel's ephemeral
/// pick; the test binds it again right after).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A scratch directory, removed when dropped.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tern-{name}-"))
        .tempdir()
        .expect("create a scratch directory")
}
