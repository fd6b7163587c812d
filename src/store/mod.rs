//! The replicated store: one Raft log, applied in order on every node to the
//! same deterministic state machine.
//!
//! Owns: consensus (raft-rs `RawNode`), the durable raft log, the state machine
//! and its embedded store, snapshots, peer transport, and the drivers that run
//! them (production and simulated). Must not touch: SMPP or HTTP sessions; they
//! reach the store only by proposing commands and reading applied state.

pub mod command;
pub mod driver;
pub mod id;
pub mod kv;
pub mod liveness;
pub mod node;
pub mod retention;
pub mod sim;
pub mod snapshot;
pub mod state;
pub mod transport;
pub mod wal;

use std::fmt;

/// A deterministic state machine replicated by the log.
///
/// Invariant (every replica ends byte-for-byte equal): `apply` reads nothing but
/// its arguments and the machine's own state: no clock, no randomness, no
/// node-local configuration. Timestamps and ids travel inside the commands.
pub trait StateMachine {
    /// What a proposer learns about its own command once it is applied.
    type Output: Clone + Send + 'static;

    /// Applies the commands carried by the committed log entry at `index`, in
    /// order, atomically with `index` becoming the applied index. Returns one
    /// output per command. A command that does not decode is answered with an
    /// output saying so; it must never panic or stop the replica.
    fn apply(&mut self, index: u64, commands: &[&[u8]]) -> Vec<Self::Output>;

    /// The index of the last entry whose effects this machine holds.
    fn applied_index(&self) -> u64;

    /// The whole state as bytes, as of `applied_index()`.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with a snapshot taken at `index`.
    fn restore(&mut self, index: u64, snapshot: &[u8]) -> Result<(), StoreError>;
}

/// Errors of the store layer that a caller can act on.
#[derive(Debug)]
pub enum StoreError {
    Io(std::io::Error),
    /// Bytes on disk or on the wire that do not decode (checksum, version, shape).
    Corrupt(String),
    /// raft-rs refused an operation.
    Raft(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "I/O error: {e}"),
            StoreError::Corrupt(m) => write!(f, "corrupt data: {m}"),
            StoreError::Raft(m) => write!(f, "raft: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}
