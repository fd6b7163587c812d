//! The HTTP face of a node. Owns: the admin API module until the server
//! lands here. Must not touch: the SMPP path or the store's internals.

pub mod admin;
