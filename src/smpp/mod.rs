//! The SMPP 3.4 protocol layer: everything about the bytes on an SMPP link and
//! the rules that govern them, with no I/O.
//!
//! Owns: PDU encoding and decoding, framing, validation and the command_status a
//! violation earns, text encodings and segmentation, delivery-receipt texts,
//! SMPP times, and the session rules (bind states, sequence numbers, windows).
//! Must not touch: sockets, clocks (callers pass `now`), the store or routing.
//! Both the server side (customers binding to us) and the client side (our
//! connectors binding to operators) are built on this module.

pub mod command;
pub mod frame;
pub mod pdu;
pub mod receipt;
pub mod segment;
pub mod session;
pub mod status;
pub mod text;
pub mod time;
pub mod tlv;
pub mod wire;

pub use command::CommandId;
pub use status::CommandStatus;
