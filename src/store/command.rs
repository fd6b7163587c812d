//! The typed commands carried by the raft log, and their versioned encoding.
//!
//! Owns: `Command` and the plain data types it carries (accounts, connectors,
//! routes, number ranges, addresses), and the byte format of a command in a
//! log entry. Must not touch: SMPP types (everything here is plain integers and
//! strings, so the store does not depend on the protocol layer), clocks or
//! node-local state.
//!
//! Encoding: one version byte, then bincode 1 (varint integers, little endian)
//! of the version's enum. A version is frozen once logs exist: new commands are
//! appended as new variants at the end (bincode numbers variants by position),
//! existing variants never change shape. A change of shape means a new version
//! byte and a `decode` arm converting the old shape, so a newer binary always
//! reads an older log.
//!
//! Version 2 (this binary writes it) replicated what version 1 left to each
//! node's configuration: a connector's every setting, a route's source prefix
//! and weighted targets, an account's API key hash, webhook secret and window,
//! a message's client reference and schedule, and `AcceptBatch` (one HTTP
//! request, atomic and idempotent). Version 1 entries decode through
//! [`v1`] and convert with the defaults version 1 behaved with.

use crate::store::id::MessageId;
use bincode::Options;
use serde::{Deserialize, Serialize};

/// Raft node id (raft-rs uses u64).
pub type NodeId = u64;

/// The version byte written in front of every command this binary encodes.
pub const COMMAND_VERSION: u8 = 2;

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
    /// The customer's own reference (HTTP `client_ref`), echoed in lookups and
    /// webhooks; at most [`MAX_CLIENT_REF_BYTES`].
    pub client_ref: Option<String>,
    /// Not to be submitted upstream before this time (SMPP
    /// schedule_delivery_time, HTTP `scheduled_at`).
    pub scheduled_at_ms: Option<u64>,
}

/// Longest client reference kept with a message.
pub const MAX_CLIENT_REF_BYTES: usize = 64;

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
    /// Hash of the HTTP API key (same format as `password_hash`); `None` = no
    /// HTTP access.
    pub api_key_hash: Option<String>,
    /// Key of the HMAC-SHA256 signature on webhook bodies. Kept as given: the
    /// sender needs it, and the receiver holds the same secret.
    pub webhook_secret: Option<String>,
    /// Requests an SMPP bind may have outstanding; 0 = the node's default.
    pub window: u32,
}

/// An operator SMSC the appliance submits to. Every node runs the binds of
/// every enabled connector, so everything a bind needs is here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connector {
    pub name: String,
    /// "IP:PORT" of each SMSC host, tried in turn on every reconnect.
    pub hosts: Vec<String>,
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    /// "transceiver" or "transmitter+receiver".
    pub bind_type: String,
    pub bind_count: u16,
    pub window: u16,
    pub throughput_per_s: u32,
    pub enquire_link_s: u32,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub submit_timeout_ms: u64,
    /// How the operator writes message ids (`smpp::receipt::IdFormat` names).
    pub id_format: String,
    /// What data_coding 0 means to the operator: "gsm7", "latin1", "ascii".
    pub default_alphabet: String,
    /// How long messages go out: "as-submitted", "udh", "sar", "payload".
    pub long_messages: String,
    pub tls: bool,
    pub enabled: bool,
}

/// One connector of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTarget {
    pub connector: String,
    /// Lower is tried first; a higher group only when the lower is unusable.
    pub priority: u32,
    /// Share of traffic within its priority group (0 counts as 1).
    pub weight: u32,
}

/// Where messages go: for `account` (or any account when `None`), sources
/// starting with `source_prefix` and destinations starting with
/// `destination_prefix`, try `targets` by priority, weighted within one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    pub account: Option<String>,
    pub destination_prefix: String,
    pub source_prefix: String,
    /// Lower wins among equally long prefixes.
    pub priority: u32,
    pub targets: Vec<RouteTarget>,
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
    /// The messages of one HTTP request, all or none. With an idempotency
    /// key, a second batch under the same (account, key) changes nothing and
    /// the proposer reads the first batch's ids (`AppState::idempotent`).
    AcceptBatch(AcceptBatch),
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

/// One request's messages (every recipient and segment), accepted atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptBatch {
    pub account: String,
    pub idempotency_key: Option<String>,
    /// A hash of the request body: the same key with another body is refused
    /// instead of answered with the first request's ids.
    pub request_hash: u64,
    pub accepts: Vec<Accept>,
    pub at_ms: u64,
}

/// Longest idempotency key kept.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

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
                .deserialize::<v1::Command>(body)
                .map(Command::from)
                .map_err(|e| DecodeError::Malformed(e.to_string())),
            2 => codec()
                .deserialize(body)
                .map_err(|e| DecodeError::Malformed(e.to_string())),
            other => Err(DecodeError::UnknownVersion(other)),
        }
    }
}

/// Version 1 of the command format, frozen: decoded only, then converted.
pub mod v1 {
    use super::{
        Address, BindKind, MoReceived, NodeId, NumberRange, Receipt, RouteTarget, SegmentInfo,
    };
    use crate::store::id::MessageId;
    use serde::{Deserialize, Serialize};

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
        pub registered_delivery: u8,
        #[serde(with = "serde_bytes")]
        pub payload: Vec<u8>,
        pub segment: Option<SegmentInfo>,
        pub received_at_ms: u64,
        pub validity_until_ms: Option<u64>,
        pub owner_node: NodeId,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Account {
        pub name: String,
        pub password_hash: String,
        pub max_binds: u32,
        pub throughput_per_s: u32,
        pub allowed_ips: Vec<String>,
        pub allowed_senders: Vec<String>,
        pub retention_s: u64,
        pub enabled: bool,
        pub webhook_url: Option<String>,
    }

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

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Route {
        pub name: String,
        pub account: Option<String>,
        pub destination_prefix: String,
        pub priority: u32,
        pub connectors: Vec<String>,
    }

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
        Purge {
            before_ms: u64,
            account: Option<String>,
        },
    }

    impl From<Accept> for super::Accept {
        fn from(a: Accept) -> super::Accept {
            super::Accept {
                id: a.id,
                account: a.account,
                source: a.source,
                destination: a.destination,
                data_coding: a.data_coding,
                esm_class: a.esm_class,
                protocol_id: a.protocol_id,
                priority: a.priority,
                registered_delivery: a.registered_delivery,
                payload: a.payload,
                segment: a.segment,
                received_at_ms: a.received_at_ms,
                validity_until_ms: a.validity_until_ms,
                owner_node: a.owner_node,
                client_ref: None,
                scheduled_at_ms: None,
            }
        }
    }

    impl From<Account> for super::Account {
        fn from(a: Account) -> super::Account {
            super::Account {
                name: a.name,
                password_hash: a.password_hash,
                max_binds: a.max_binds,
                throughput_per_s: a.throughput_per_s,
                allowed_ips: a.allowed_ips,
                allowed_senders: a.allowed_senders,
                retention_s: a.retention_s,
                enabled: a.enabled,
                webhook_url: a.webhook_url,
                api_key_hash: None,
                webhook_secret: None,
                window: 0,
            }
        }
    }

    impl From<Connector> for super::Connector {
        /// Version 1 kept the other settings in each node's configuration;
        /// these are the defaults that configuration had.
        fn from(c: Connector) -> super::Connector {
            let host = if c.host.contains(':') {
                format!("[{}]:{}", c.host, c.port)
            } else {
                format!("{}:{}", c.host, c.port)
            };
            super::Connector {
                name: c.name,
                hosts: vec![host],
                system_id: c.system_id,
                password: c.password,
                system_type: c.system_type,
                bind_type: "transceiver".into(),
                bind_count: c.bind_count,
                window: c.window,
                throughput_per_s: c.throughput_per_s,
                enquire_link_s: c.enquire_link_s,
                reconnect_min_ms: 200,
                reconnect_max_ms: 30_000,
                submit_timeout_ms: 10_000,
                id_format: "as-is".into(),
                default_alphabet: "gsm7".into(),
                long_messages: "as-submitted".into(),
                tls: c.tls,
                enabled: c.enabled,
            }
        }
    }

    impl From<Route> for super::Route {
        /// The version 1 list was the failover order: one priority each.
        fn from(r: Route) -> super::Route {
            super::Route {
                name: r.name,
                account: r.account,
                destination_prefix: r.destination_prefix,
                source_prefix: String::new(),
                priority: r.priority,
                targets: r
                    .connectors
                    .into_iter()
                    .zip(0u32..)
                    .map(|(connector, priority)| RouteTarget {
                        connector,
                        priority,
                        weight: 1,
                    })
                    .collect(),
            }
        }
    }

    impl From<Command> for super::Command {
        fn from(command: Command) -> super::Command {
            use super::Command as C;
            match command {
                Command::Accept(a) => C::Accept(a.into()),
                Command::Submitted {
                    id,
                    connector,
                    upstream_id,
                    at_ms,
                } => C::Submitted {
                    id,
                    connector,
                    upstream_id,
                    at_ms,
                },
                Command::SubmitFailed {
                    id,
                    status,
                    permanent,
                    at_ms,
                    retry_at_ms,
                } => C::SubmitFailed {
                    id,
                    status,
                    permanent,
                    at_ms,
                    retry_at_ms,
                },
                Command::Receipt(r) => C::Receipt(r),
                Command::DlrDelivered { id } => C::DlrDelivered { id },
                Command::MoReceived(mo) => C::MoReceived(mo),
                Command::MoDelivered { id } => C::MoDelivered { id },
                Command::Expire { id, at_ms } => C::Expire { id, at_ms },
                Command::BindOpened {
                    node,
                    session,
                    account,
                    kind,
                } => C::BindOpened {
                    node,
                    session,
                    account,
                    kind,
                },
                Command::BindClosed { node, session } => C::BindClosed { node, session },
                Command::NodeUp { node, incarnation } => C::NodeUp { node, incarnation },
                Command::NodeDown { node } => C::NodeDown { node },
                Command::UpsertAccount(a) => C::UpsertAccount(a.into()),
                Command::RemoveAccount { name } => C::RemoveAccount { name },
                Command::UpsertConnector(c) => C::UpsertConnector(c.into()),
                Command::RemoveConnector { name } => C::RemoveConnector { name },
                Command::UpsertRoute(r) => C::UpsertRoute(r.into()),
                Command::RemoveRoute { name } => C::RemoveRoute { name },
                Command::UpsertNumberRange(r) => C::UpsertNumberRange(r),
                Command::RemoveNumberRange { name } => C::RemoveNumberRange { name },
                Command::Purge { before_ms, account } => C::Purge { before_ms, account },
            }
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
            client_ref: None,
            scheduled_at_ms: None,
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

    /// Commands whose shape is new in version 2.
    fn fixture_commands_v2() -> Vec<Command> {
        let mut accept = sample_accept();
        accept.client_ref = Some("order-17".into());
        accept.scheduled_at_ms = Some(1_764_072_060_000);
        vec![
            Command::AcceptBatch(AcceptBatch {
                account: "acme".into(),
                idempotency_key: Some("k1".into()),
                request_hash: 0xDEAD_BEEF,
                accepts: vec![accept],
                at_ms: 1_764_072_000_000,
            }),
            Command::UpsertAccount(Account {
                name: "acme".into(),
                password_hash: "h".into(),
                max_binds: 2,
                throughput_per_s: 100,
                allowed_ips: vec!["10.0.0.0/8".into()],
                allowed_senders: Vec::new(),
                retention_s: 0,
                enabled: true,
                webhook_url: Some("https://hooks.example/dlr".into()),
                api_key_hash: Some("k".into()),
                webhook_secret: Some("s".into()),
                window: 50,
            }),
            Command::UpsertConnector(Connector {
                name: "op1".into(),
                hosts: vec!["10.1.0.10:2775".into(), "[::1]:2775".into()],
                system_id: "tern".into(),
                password: "pw".into(),
                system_type: String::new(),
                bind_type: "transmitter+receiver".into(),
                bind_count: 2,
                window: 100,
                throughput_per_s: 0,
                enquire_link_s: 30,
                reconnect_min_ms: 200,
                reconnect_max_ms: 30_000,
                submit_timeout_ms: 10_000,
                id_format: "hex".into(),
                default_alphabet: "latin1".into(),
                long_messages: "udh".into(),
                tls: false,
                enabled: true,
            }),
            Command::UpsertRoute(Route {
                name: "uk".into(),
                account: None,
                destination_prefix: "44".into(),
                source_prefix: "ACME".into(),
                priority: 1,
                targets: vec![
                    RouteTarget {
                        connector: "op1".into(),
                        priority: 0,
                        weight: 3,
                    },
                    RouteTarget {
                        connector: "op2".into(),
                        priority: 1,
                        weight: 1,
                    },
                ],
            }),
        ]
    }

    /// Version-2 bytes as first committed; never regenerate them.
    const V2_FIXTURE_HEX: [&str; 4] = [
        "02150461636d6501026b31fcefbeadde01000000001000203000000000040461636d650500044143\
         4d4501010c34343737303039303031323300000000010568656c6c6f01090201fd008ae2ba9a0100\
         0001fd00e608c09a0100000201086f726465722d313701fd6074e3ba9a010000fd008ae2ba9a0100\
         00",
        "020c0461636d6501680264010a31302e302e302e302f38000001011968747470733a2f2f686f6f6b\
         732e6578616d706c652f646c7201016b01017332",
        "020e036f7031020e31302e312e302e31303a323737350a5b3a3a315d3a32373735047465726e0270\
         7700147472616e736d69747465722b72656365697665720264001ec8fb3075fb102703686578066c\
         6174696e31037564680001",
        "021002756b000234340441434d450102036f70310003036f70320101",
    ];

    #[test]
    fn committed_v2_fixture_still_decodes() {
        for (hex_text, expected) in V2_FIXTURE_HEX.iter().zip(fixture_commands_v2()) {
            let bytes = hex::decode(hex_text).expect("fixture is valid hex");
            assert_eq!(Command::decode(&bytes).unwrap(), expected);
            assert_eq!(expected.encode(), bytes, "v2 encoding changed shape");
        }
    }

    #[test]
    fn v1_records_convert_with_their_old_defaults() {
        let v1_route = v1::Command::UpsertRoute(v1::Route {
            name: "r".into(),
            account: None,
            destination_prefix: "44".into(),
            priority: 0,
            connectors: vec!["a".into(), "b".into()],
        });
        let mut bytes = vec![1u8];
        codec().serialize_into(&mut bytes, &v1_route).unwrap();
        let Command::UpsertRoute(route) = Command::decode(&bytes).unwrap() else {
            panic!("a route decodes as a route");
        };
        assert_eq!(route.source_prefix, "");
        let order: Vec<_> = route
            .targets
            .iter()
            .map(|t| (t.connector.as_str(), t.priority, t.weight))
            .collect();
        assert_eq!(order, [("a", 0, 1), ("b", 1, 1)]);
        let v1_connector = v1::Command::UpsertConnector(v1::Connector {
            name: "op".into(),
            host: "::1".into(),
            port: 2775,
            system_id: "s".into(),
            password: "p".into(),
            system_type: String::new(),
            bind_count: 1,
            window: 10,
            throughput_per_s: 0,
            enquire_link_s: 30,
            tls: false,
            enabled: true,
        });
        let mut bytes = vec![1u8];
        codec().serialize_into(&mut bytes, &v1_connector).unwrap();
        let Command::UpsertConnector(connector) = Command::decode(&bytes).unwrap() else {
            panic!("a connector decodes as a connector");
        };
        assert_eq!(connector.hosts, ["[::1]:2775"]);
        assert_eq!(connector.bind_type, "transceiver");
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
