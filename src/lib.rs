//! tern: a single-binary, Raft-replicated A2P SMS appliance.
//!
//! The library holds every part of the appliance; `src/main.rs` is only the
//! command line. See ARCHITECTURE.md for the module map and the flow of a
//! message.

pub mod bench;
pub mod cli;
pub mod config;
pub mod engine;
pub mod http;
pub mod mask;
pub mod metrics;
pub mod peer;
pub mod rng;
pub mod routing;
pub mod runtime;
pub mod sim;
pub mod smpp;
pub mod store;
pub mod upstream;
