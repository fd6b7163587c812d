//! The typed commands carried by the raft log, and their versioned encoding.
//!
//! Owns: `Command` and the plain data types it carries (accounts, connectors,
//! routes, number ranges, addresses), and the byte format of a command in a
//! log entry. Must not touch: SMPP types (everything here is plain integers and
//! strings, so the store does not depend on the protocol layer), clocks or
//! node-local state.
//!
//! Encoding: one version byte, then bincode 1 (varint integers, little endian)
//! of the version's enum. Version 1 is frozen once logs exist: new commands are
//! appended as new variants at the end (bincode numbers variants by position),
//! existing variants never change shape. A change of shape means a new version
//! byte and a `decode` arm converting the old shape, so a newer binary always
//! reads an older log.

use crate::store::id::MessageId;
use bincode::Options;
use serde::{Deserialize, Serialize};

/// Raft node id (raft-rs uses u64).
pub type NodeId = u64;

/// The version byte written in front of every command this binary encodes.
pub const COMMAND_VERSION: u8 = 1;

/// Upper bound on one encoded command; keeps a corrupt length prefix from
/// asking the decoder for gigabytes.
pub const MAX_COMMAND_BYTES: u64 = 1 << 20;

/// A type-of-number / numbering-plan / digits triple (SMPP-independent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub ton: u8,
    pub npi: u8,
    pub digits: String,
}

/// Position of one part of a concatenated message (from UDH or SAR TLVs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub reference: u16,
    pub total: u8,
    pub sequence: u8,
}

/// A customer's message, accepted by `owner_node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    pub id: MessageId,
    pub account: String,
    pub source: Address,
    pub destination: Address,
    pub data_coding: u8,
    pub esm_class: u8,
    pub protocol_id: u8,
    pub priority: u8,
    /// SMPP registered_delivery bits: low two bits 1 = receipt on any final
    /// state, 2 = receipt on failure only.
    pub registered_delivery: u8,
    /// The short message as submitted (with its UDH when esm_class says so).
    /// As bytes, not a sequence of u8: the same encoding on disk, decoded with
    /// one copy instead of one call per octet on the store thread.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub segment: Option<SegmentInfo>,
    pub received_at_ms: u64,
    pub validity_until_ms: Option<u64>,
    pub owner_node: NodeId,
}

/// An operator's delivery receipt, keyed by what the operator knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub connector: String,
    /// The operator's message id, normalised by the receipt parser exactly as
    /// the `Submitted` proposer normalised it (the store compares bytes).
    pub upstream_id: String,
    /// SMPP message_state code (1 ENROUTE … 8 REJECTED).
    pub state: u8,
    pub err: u16,
    pub done_at_ms: u64,
    /// The receipt text as received, for troubleshooting.
    #[serde(with = "serde_bytes")]
    pub raw: Option<Vec<u8>>,
}

/// A mobile-originated message from an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoReceived {
    pub id: MessageId,
    pub connector: String,
    pub source: Address,
    pub destination: Address,
    pub data_coding: u8,
    pub esm_class: u8,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub segment: Option<SegmentInfo>,
    pub received_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BindKind {
    Transmitter,
    Receiver,
    Transceiver,
}

impl BindKind {
    /// Whether deliveries (DLR, MO) can go out over a bind of this kind.
    pub fn receives(self) -> bool {
        matches!(self, BindKind::Receiver | BindKind::Transceiver)
    }
}

/// A customer account (an ESME system_id or an HTTP user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    /// A password hash in PHC string form; never the password.
    pub password_hash: String,
    /// Cluster-wide limit on open binds; 0 = unlimited.
    pub max_binds: u32,
    /// Submits per second; 0 = unlimited.
    pub throughput_per_s: u32,
    /// Addresses or CIDR blocks allowed to bind; empty = any.
    pub allowed_ips: Vec<String>,
    /// Source addresses the account may use; empty = any.
    pub allowed_senders: Vec<String>,
    /// How long finished messages are kept; 0 = the cluster default.
    pub retention_s: u64,
    pub enabled: bool,
    /// Where DLRs and MOs go for an HTTP customer; with it, deliveries do not
    /// wait for an SMPP receiver bind.
    pub webhook_url: Option<String>,
}

/// An operator SMSC the appliance submits to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connector {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    pub bind_count: u16,
    pub window: u16,
    pub throughput_per_s: u32,
    pub enquire_link_s: u32,
    pub tls: bool,
    pub enabled: bool,
}

/// Where messages go: for `account` (or any account when `None`) and
/// destinations starting with `destination_prefix`, try `connectors` in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    pub account: Option<String>,
    pub destination_prefix: String,
    /// Lower wins among equally long prefixes.
    pub priority: u32,
    pub connectors: Vec<String>,
}

/// MO routing: destinations starting with `prefix` belong to `account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberRange {
    pub name: String,
    pub prefix: String,
    pub account: String,
}

/// Every change to the replicated state. Append new variants at the end only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Accept(Accept),
    Submitted {
        id: MessageId,
        connector: String,
        upstream_id: String,
        at_ms: u64,
    },
    SubmitFailed {
        id: MessageId,
        /// The upstream command_status (or a local code for transport errors).
        status: u32,
        permanent: bool,
        at_ms: u64,
        retry_at_ms: Option<u64>,
    },
    Receipt(Receipt),
    DlrDelivered {
        id: MessageId,
    },
    MoReceived(MoReceived),
    MoDelivered {
        id: MessageId,
    },
    Expire {
        id: MessageId,
        at_ms: u64,
    },
    BindOpened {
        node: NodeId,
        session: u64,
        account: String,
        kind: BindKind,
    },
    BindClosed {
        node: NodeId,
        session: u64,
    },
    NodeUp {
        node: NodeId,
        incarnation: u32,
    },
    NodeDown {
        node: NodeId,
    },
    UpsertAccount(Account),
    RemoveAccount {
        name: String,
    },
    UpsertConnector(Connector),
    RemoveConnector {
        name: String,
    },
    UpsertRoute(Route),
    RemoveRoute {
        name: String,
    },
    UpsertNumberRange(NumberRange),
    RemoveNumberRange {
        name: String,
    },
    /// Retention: drop finished messages and MOs received before `before_ms`
    /// (of one account, or of all when `None`; their undelivered DLRs/MOs go
    /// too), and, when `account` is `None`, orphan receipts done before it.
    /// Unfinished messages stay until `Expire` finishes them.
    Purge {
        before_ms: u64,
        account: Option<String>,
    },
    /// Hot window: drop from the replicated state at most `max` records that
    /// are over, oldest first: finished messages that finished before
    /// `finished_before_ms` and owe no DLR, then delivered MOs received before
    /// it. Never an unfinished message or an undelivered DLR/MO. Applying it
    /// twice is harmless (the second finds fewer).
    Evict {
        finished_before_ms: u64,
        max: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty command")]
    Empty,
    #[error("unknown command version {0}")]
    UnknownVersion(u8),
    #[error("malformed command: {0}")]
    Malformed(String),
}

fn codec() -> impl Options {
    // Pinned here once: changing any option changes the log format.
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(MAX_COMMAND_BYTES)
}

impl Command {
    /// Appends the versioned encoding to `out` (lets a batcher reuse a buffer).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(COMMAND_VERSION);
        // Serialising into a Vec cannot fail for these plain types unless the
        // size limit is exceeded; a payload that large is rejected upstream.
        if let Err(e) = codec().serialize_into(&mut *out, self) {
            debug_assert!(false, "command failed to encode: {e}");
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        match version {
            1 => codec()
                .deserialize(body)
                .map_err(|e| DecodeError::Malformed(e.to_string())),
            other => Err(DecodeError::UnknownVersion(other)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_accept() -> Accept {
        Accept {
            id: MessageId::from_parts(1, 2, 3, 4).unwrap(),
            account: "acme".into(),
            source: Address {
                ton: 5,
                npi: 0,
                digits: "ACME".into(),
            },
            destination: Address {
                ton: 1,
                npi: 1,
                digits: "447700900123".into(),
            },
            data_coding: 0,
            esm_class: 0,
            protocol_id: 0,
            priority: 0,
            registered_delivery: 1,
            payload: b"hello".to_vec(),
            segment: Some(SegmentInfo {
                reference: 9,
                total: 2,
                sequence: 1,
            }),
            received_at_ms: 1_764_072_000_000,
            validity_until_ms: Some(1_764_158_400_000),
            owner_node: 2,
        }
    }

    fn fixture_commands() -> Vec<Command> {
        vec![
            Command::Accept(sample_accept()),
            Command::Submitted {
                id: MessageId::from_parts(1, 2, 3, 4).unwrap(),
                connector: "op1".into(),
                upstream_id: "7F3A9C12".into(),
                at_ms: 1_764_072_000_100,
            },
            Command::Receipt(Receipt {
                connector: "op1".into(),
                upstream_id: "7F3A9C12".into(),
                state: 2,
                err: 0,
                done_at_ms: 1_764_072_001_000,
                raw: None,
            }),
            Command::NodeUp {
                node: 3,
                incarnation: 7,
            },
        ]
    }

    /// Version-1 bytes as first committed. They must decode forever: a newer
    /// binary replays logs written by this one. Never regenerate them.
    const V1_FIXTURE_HEX: [&str; 4] = [
        "0100000000001000203000000000040461636d6505000441434d4501010c343437373030393030313233\
         00000000010568656c6c6f01090201fd008ae2ba9a01000001fd00e608c09a01000002",
        "010100000000100020300000000004036f7031083746334139433132fd648ae2ba9a010000",
        "0103036f70310837463341394331320200fde88de2ba9a01000000",
        "010a0307",
    ];

    #[test]
    fn round_trip() {
        for command in fixture_commands() {
            let bytes = command.encode();
            assert_eq!(bytes[0], COMMAND_VERSION);
            assert_eq!(Command::decode(&bytes).unwrap(), command);
        }
    }

    #[test]
    fn committed_v1_fixture_still_decodes() {
        for (hex_text, expected) in V1_FIXTURE_HEX.iter().zip(fixture_commands()) {
            let bytes = hex::decode(hex_text).expect("fixture is valid hex");
            assert_eq!(Command::decode(&bytes).unwrap(), expected);
        }
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(matches!(Command::decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            Command::decode(&[9, 0]),
            Err(DecodeError::UnknownVersion(9))
        ));
        // A huge length prefix must not allocate its claim.
        let mut huge = vec![1u8, 0];
        huge.extend_from_slice(&[0xFF; 16]);
        assert!(Command::decode(&huge).is_err());
        let mut trailing = Command::NodeDown { node: 1 }.encode();
        trailing.push(0);
        assert!(Command::decode(&trailing).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = Command::decode(&bytes);
        }
    }
}
