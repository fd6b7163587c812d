//! The node's configuration: one TOML file, or the embedded default.
//!
//! Owns: the file's shape (every key, its type and default), loading with
//! unknown keys refused, and the checks that turn a bad value into an error
//! naming the key and the file. Must not touch: sockets, the store or any
//! runtime state; callers turn a `Config` into listeners and proposals.
//!
//! `tern.example.toml` at the repository root documents every key; the
//! embedded default (`Config::embedded_default`) is what `tern serve` runs
//! with no `--config`: one node, loopback only, a `trial` account.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file as written. Sections may be omitted; keys inside them default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub smpp: SmppConfig,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default, rename = "account")]
    pub accounts: Vec<AccountConfig>,
    #[serde(default, rename = "connector")]
    pub connectors: Vec<ConnectorConfig>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(default, rename = "number_range")]
    pub number_ranges: Vec<NumberRangeConfig>,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub webhook: WebhookSection,
    #[serde(default)]
    pub log: LogSection,
}

/// MO routing: messages from operators to destinations starting with
/// `prefix` belong to `account`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberRangeConfig {
    pub name: String,
    pub prefix: String,
    pub account: String,
}

/// The HTTP face of the node: customer API, admin API, metrics and health.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Customer API, /metrics, /health and /ready; "" = no HTTP at all.
    pub listen: String,
    /// A separate address for /admin/...; "" = the admin API shares `listen`.
    pub admin_listen: String,
    /// Bearer token of the admin API; "" = the admin API is off.
    pub admin_token: String,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: u32,
}

impl Default for HttpSection {
    fn default() -> HttpSection {
        HttpSection {
            listen: "127.0.0.1:8080".into(),
            admin_listen: String::new(),
            admin_token: String::new(),
            max_body_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Raft node id, 1..=65535 (it is also part of every message id).
    pub id: u64,
    pub data_dir: PathBuf,
    /// CPU cores that run connection executors; empty = every core this
    /// process may use.
    pub cores: Vec<usize>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            data_dir: PathBuf::from("./tern-data"),
            cores: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmppConfig {
    pub listen: String,
    /// Largest PDU accepted; a bigger command_length closes the connection.
    pub max_command_length: u32,
    /// enquire_link sent after this long without a PDU from the customer.
    pub enquire_link_interval_s: u64,
    /// A customer silent this long is dropped.
    pub dead_after_s: u64,
    /// A connection that has not bound after this long is closed.
    pub bind_timeout_s: u64,
    /// Default per-bind window (requests awaiting our response); an
    /// account's own `window` overrides it.
    pub window: u32,
    /// Proposals awaiting commit per core; beyond it submits get ESME_RMSGQFUL.
    pub max_in_flight_per_core: u32,
    /// Bounds the graceful shutdown: how long to wait for in-flight
    /// proposals and unbind responses.
    pub shutdown_grace_ms: u64,
    /// Open connections per core; more are closed as soon as accepted.
    pub max_connections_per_core: u32,
}

impl Default for SmppConfig {
    fn default() -> Self {
        SmppConfig {
            listen: "127.0.0.1:2775".into(),
            max_command_length: crate::smpp::frame::DEFAULT_MAX_COMMAND_LENGTH,
            enquire_link_interval_s: 30,
            dead_after_s: 90,
            bind_timeout_s: 10,
            window: 100,
            max_in_flight_per_core: 65_536,
            shutdown_grace_ms: 5_000,
            max_connections_per_core: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Raft peer transport address of this node.
    pub listen: String,
    /// Other voters; empty for a single appliance.
    pub peers: Vec<PeerConfig>,
    /// Shared secret authenticating peers (same on every node).
    pub secret: String,
    pub tick_ms: u64,
    /// How long a finished message (its DLR delivered or not asked for)
    /// stays in the replicated in-memory state before it moves to the archive.
    pub hot_window_s: u64,
    /// How long anything else finished stays at most: undelivered DLRs and
    /// MOs are dropped (counted and logged) after this.
    pub retention_s: u64,
    /// How long each node keeps archived messages for lookups.
    pub archive_retention_days: u64,
    /// The leader declares a voter down after this long without a word from
    /// it; live nodes then take over its messages. 0 = never.
    pub node_down_after_s: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            listen: "127.0.0.1:2790".into(),
            peers: Vec::new(),
            secret: "tern-single-node".into(),
            tick_ms: 100,
            hot_window_s: 60,
            retention_s: 3 * 24 * 3600,
            archive_retention_days: 7,
            node_down_after_s: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub system_id: String,
    /// Plain password (hashed before it reaches the log) ...
    #[serde(default)]
    pub password: Option<String>,
    /// ... or an already hashed one (`tern$hmac-sha256$SALT$HASH`, hex).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Key for the HTTP API (hashed before it reaches the log) ...
    #[serde(default)]
    pub api_key: Option<String>,
    /// ... or an already hashed one (same form as `password_hash`).
    #[serde(default)]
    pub api_key_hash: Option<String>,
    /// Where DLRs and MOs are POSTed (HTTP customers); none = SMPP binds.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Key of the HMAC-SHA256 signature on webhook bodies.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Open binds across the cluster; 0 = unlimited.
    #[serde(default)]
    pub max_binds: u32,
    /// Addresses or CIDR blocks allowed to bind; empty = any.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Source addresses this account may send from; empty = any.
    #[serde(default)]
    pub allowed_senders: Vec<String>,
    /// Submits per second across the node; 0 = unlimited.
    #[serde(default)]
    pub max_tps: u32,
    /// Per-bind window; 0 = `smpp.window`.
    #[serde(default)]
    pub window: u32,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// An operator SMSC this node binds to as a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Referenced by routes and by the store's (connector, operator id) index.
    pub name: String,
    /// `IP:PORT` of the SMSC; several for redundant hosts, tried in turn.
    pub hosts: Vec<String>,
    pub system_id: String,
    pub password: String,
    #[serde(default)]
    pub system_type: String,
    /// `transceiver` (receipts come back on the same bind) or `transmitter`
    /// plus as many `receiver` binds (`bind_type = "transmitter+receiver"`).
    #[serde(default = "default_bind_type")]
    pub bind_type: String,
    /// Binds opened to the SMSC (spread over the cores).
    #[serde(default = "default_one")]
    pub binds: u16,
    /// submit_sm outstanding per bind.
    #[serde(default = "default_connector_window")]
    pub window: u16,
    /// submit_sm per second over all binds; 0 = unlimited.
    #[serde(default)]
    pub max_tps: u32,
    #[serde(default = "default_enquire_link_s")]
    pub enquire_link_s: u32,
    /// Reconnect backoff: first wait, doubled per failure up to the max.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// A submit_sm without a response this long counts as a temporary failure.
    #[serde(default = "default_submit_timeout_ms")]
    pub submit_timeout_ms: u64,
    /// How the operator writes message ids: `as-is`, `hex`, `decimal`,
    /// `strip-leading-zeros`, `hex-in-receipt-decimal-in-resp`,
    /// `decimal-in-receipt-hex-in-resp`.
    #[serde(default = "default_id_format")]
    pub id_format: String,
    /// What data_coding 0 means to this operator: `gsm7`, `latin1` or
    /// `ascii`. Messages are re-labelled (never re-encoded) to keep their
    /// meaning: GSM text to a Latin-1 operator goes out as 0xF1.
    #[serde(default = "default_alphabet_name")]
    pub default_alphabet: String,
    /// How messages longer than one short_message go out: `as-submitted`
    /// (as the customer sent them), `udh` (segments with concatenation UDH),
    /// `sar` (segments with SAR TLVs) or `payload` (one submit_sm with
    /// message_payload).
    #[serde(default = "default_long_messages")]
    pub long_messages: String,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn default_long_messages() -> String {
    "as-submitted".into()
}

/// The values `long_messages` may take.
pub const LONG_MESSAGE_MODES: [&str; 4] = ["as-submitted", "udh", "sar", "payload"];

fn default_alphabet_name() -> String {
    "gsm7".into()
}

fn default_bind_type() -> String {
    "transceiver".into()
}
fn default_one() -> u16 {
    1
}
fn default_connector_window() -> u16 {
    100
}
fn default_enquire_link_s() -> u32 {
    30
}
fn default_reconnect_min_ms() -> u64 {
    200
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}
fn default_submit_timeout_ms() -> u64 {
    10_000
}
fn default_id_format() -> String {
    "as-is".into()
}

/// One connector of a route: lower `priority` is tried first (failover);
/// among equal priorities, traffic is shared by `weight`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTargetConfig {
    pub connector: String,
    #[serde(default)]
    pub priority: u32,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A routing rule: messages of `account` (any when absent) to destinations
/// starting with `prefix` (and from sources starting with `source`) go to
/// its connectors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default)]
    pub account: Option<String>,
    /// Destination prefix; the longest matching prefix wins. "" = any.
    #[serde(default)]
    pub prefix: String,
    /// Source address prefix; "" = any.
    #[serde(default)]
    pub source: String,
    /// Among equally long prefixes (and equally specific accounts) the
    /// lower wins.
    #[serde(default)]
    pub priority: u32,
    /// Shorthand for pure failover: tried in this order.
    #[serde(default)]
    pub connectors: Vec<String>,
    /// Priorities and weights per connector (instead of `connectors`).
    #[serde(default)]
    pub targets: Vec<RouteTargetConfig>,
}

impl RouteConfig {
    /// The route's targets whichever way they were written.
    pub fn resolved_targets(&self) -> Vec<RouteTargetConfig> {
        if !self.targets.is_empty() {
            return self.targets.clone();
        }
        self.connectors
            .iter()
            .zip(0u32..)
            .map(|(name, priority)| RouteTargetConfig {
                connector: name.clone(),
                priority,
                weight: 1,
            })
            .collect()
    }
}

/// How this node submits upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    /// Without any `[[connector]]`, start a simulated operator on loopback
    /// and route everything to it (what the embedded default does).
    pub embedded_simulator: bool,
    /// Submit failures (temporary errors) before a message is failed.
    pub max_attempts: u32,
    /// Retry backoff after a temporary error: first wait, doubled up to max.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Messages this node has in flight upstream at most; more wait in the
    /// store and are picked up as these finish.
    pub max_in_flight: u32,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            embedded_simulator: false,
            max_attempts: 10,
            retry_min_ms: 100,
            retry_max_ms: 10_000,
            max_in_flight: 100_000,
        }
    }
}

/// How this node sends webhooks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSection {
    /// A PEM bundle of CA certificates trusted for `https://` webhooks on
    /// top of the built-in web roots (receivers under a private CA); "" =
    /// the web roots only. Read once at start.
    pub ca_file: String,
}

/// What log lines may show.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Mask phone numbers (all but a prefix) and message text (its length
    /// only) in log output. Off only where logs are as protected as the
    /// messages themselves.
    pub mask_personal_data: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            mask_personal_data: true,
        }
    }
}

/// A configuration that cannot be used; the text names the file and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{key}`: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

const EMBEDDED_NAME: &str = "<embedded default>";

/// The keys a [`Config`] resolves to once checked: addresses parsed, ranges
/// filled in.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    pub smpp_listen: SocketAddr,
    pub store_listen: SocketAddr,
    pub peers: Vec<(u64, SocketAddr)>,
    /// Where the HTTP API listens; `None` when `http.listen` is "".
    pub http_listen: Option<SocketAddr>,
    /// Where the admin API listens when apart from `http_listen`.
    pub http_admin_listen: Option<SocketAddr>,
    /// TLS client settings of `https://` webhooks: the web roots plus
    /// `webhook.ca_file`, read when the configuration was checked.
    pub webhook_tls: std::sync::Arc<rustls::ClientConfig>,
}

impl Config {
    /// What `tern serve` runs without `--config`: one node under
    /// `./tern-data`, SMPP on 127.0.0.1:2775, account `trial`/`trial`
    /// allowed from loopback only.
    pub fn embedded_default() -> Config {
        Config {
            node: NodeConfig::default(),
            smpp: SmppConfig::default(),
            store: StoreSection::default(),
            accounts: vec![AccountConfig {
                system_id: "trial".into(),
                password: Some("trial".into()),
                password_hash: None,
                api_key: Some("trial".into()),
                api_key_hash: None,
                webhook_url: None,
                webhook_secret: None,
                max_binds: 0,
                allowed_ips: vec!["127.0.0.0/8".into(), "::1/128".into()],
                allowed_senders: Vec::new(),
                max_tps: 0,
                window: 0,
                enabled: true,
            }],
            connectors: Vec::new(),
            routes: Vec::new(),
            number_ranges: Vec::new(),
            upstream: UpstreamSection {
                embedded_simulator: true,
                ..UpstreamSection::default()
            },
            http: HttpSection {
                admin_token: "trial-admin".into(),
                ..HttpSection::default()
            },
            webhook: WebhookSection::default(),
            log: LogSection::default(),
        }
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Resolved, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses `text` (named `file` in errors) and checks it.
    pub fn parse(text: &str, file: &str) -> Result<Resolved, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_string(),
            key: key_of_toml_error(text, &e),
            message: e.message().to_string(),
        })?;
        config.resolve(file)
    }

    pub fn resolve_embedded(self) -> Result<Resolved, ConfigError> {
        self.resolve(EMBEDDED_NAME)
    }

    fn resolve(self, file: &str) -> Result<Resolved, ConfigError> {
        let error = |key: &str, message: String| ConfigError {
            file: file.to_string(),
            key: Some(key.to_string()),
            message,
        };
        if self.node.id == 0 || self.node.id > u64::from(u16::MAX) {
            return Err(error("node.id", "must be 1..=65535".into()));
        }
        let smpp_listen = parse_addr(&self.smpp.listen).map_err(|m| error("smpp.listen", m))?;
        let store_listen = parse_addr(&self.store.listen).map_err(|m| error("store.listen", m))?;
        let mut peers = Vec::with_capacity(self.store.peers.len());
        for (i, peer) in self.store.peers.iter().enumerate() {
            let addr =
                parse_addr(&peer.addr).map_err(|m| error(&format!("store.peers[{i}].addr"), m))?;
            if peer.id == 0 || peer.id == self.node.id {
                return Err(error(
                    &format!("store.peers[{i}].id"),
                    "must be non-zero and differ from node.id".into(),
                ));
            }
            peers.push((peer.id, addr));
        }
        if self.store.secret.len() < crate::store::transport::MIN_SECRET_BYTES {
            return Err(error(
                "store.secret",
                format!(
                    "is {} bytes; at least {} are required (the nodes authenticate each \
                     other with it)",
                    self.store.secret.len(),
                    crate::store::transport::MIN_SECRET_BYTES
                ),
            ));
        }
        if self.store.tick_ms == 0 {
            return Err(error("store.tick_ms", "must be at least 1".into()));
        }
        // Two election timeouts (10 ticks each): a leader change alone must
        // never look like a dead node.
        let min_down_after_ms = self.store.tick_ms.saturating_mul(20);
        if self.store.node_down_after_s != 0
            && self.store.node_down_after_s.saturating_mul(1000) < min_down_after_ms
        {
            return Err(error(
                "store.node_down_after_s",
                format!(
                    "must be 0 (never) or at least {} s (two election timeouts of 10 ticks \
                     of store.tick_ms)",
                    min_down_after_ms.div_ceil(1000)
                ),
            ));
        }
        // Bounded so that the millisecond forms cannot overflow.
        const MAX_WINDOW_S: u64 = 10 * 365 * 24 * 3600;
        if self.store.hot_window_s == 0 || self.store.hot_window_s > MAX_WINDOW_S {
            return Err(error(
                "store.hot_window_s",
                format!("must be 1..={MAX_WINDOW_S}"),
            ));
        }
        if self.store.retention_s < self.store.hot_window_s || self.store.retention_s > MAX_WINDOW_S
        {
            return Err(error(
                "store.retention_s",
                format!("must be at least store.hot_window_s and at most {MAX_WINDOW_S}"),
            ));
        }
        if self.store.archive_retention_days == 0 || self.store.archive_retention_days > 3650 {
            return Err(error(
                "store.archive_retention_days",
                "must be 1..=3650".into(),
            ));
        }
        if self.smpp.max_command_length < 16 {
            return Err(error(
                "smpp.max_command_length",
                "must be at least 16 (the header)".into(),
            ));
        }
        for (key, value) in [
            (
                "smpp.enquire_link_interval_s",
                self.smpp.enquire_link_interval_s,
            ),
            ("smpp.dead_after_s", self.smpp.dead_after_s),
            ("smpp.bind_timeout_s", self.smpp.bind_timeout_s),
            ("smpp.window", u64::from(self.smpp.window)),
            (
                "smpp.max_in_flight_per_core",
                u64::from(self.smpp.max_in_flight_per_core),
            ),
            (
                "smpp.max_connections_per_core",
                u64::from(self.smpp.max_connections_per_core),
            ),
        ] {
            if value == 0 {
                return Err(error(key, "must be at least 1".into()));
            }
        }
        let max_window = crate::engine::MAX_WINDOW;
        if usize::try_from(self.smpp.window).map_or(true, |w| w > max_window) {
            return Err(error(
                "smpp.window",
                format!("must be at most {max_window}"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, account) in self.accounts.iter().enumerate() {
            let key = |field: &str| format!("account[{i}].{field}");
            if usize::try_from(account.window).map_or(true, |w| w > max_window) {
                return Err(error(
                    &key("window"),
                    format!("must be at most {max_window} (0 = smpp.window)"),
                ));
            }
            if account.system_id.is_empty() || account.system_id.len() > 15 {
                return Err(error(&key("system_id"), "must be 1..=15 characters".into()));
            }
            if !seen.insert(account.system_id.as_str()) {
                return Err(error(
                    &key("system_id"),
                    format!("`{}` appears twice", account.system_id),
                ));
            }
            match (&account.password, &account.password_hash) {
                (Some(p), None) if p.len() <= 8 => {}
                (Some(_), None) => {
                    return Err(error(
                        &key("password"),
                        "SMPP passwords are at most 8 characters".into(),
                    ))
                }
                (None, Some(h)) if crate::engine::auth::is_password_hash(h) => {}
                (None, Some(_)) => {
                    return Err(error(
                        &key("password_hash"),
                        "not of the form tern$hmac-sha256$SALT$HASH".into(),
                    ))
                }
                _ => {
                    return Err(error(
                        &key("password"),
                        "give exactly one of `password` and `password_hash`".into(),
                    ))
                }
            }
            if account.api_key.is_some() && account.api_key_hash.is_some() {
                return Err(error(
                    &key("api_key"),
                    "give at most one of `api_key` and `api_key_hash`".into(),
                ));
            }
            if let Some(k) = &account.api_key {
                if k.is_empty() || k.len() > 256 {
                    return Err(error(&key("api_key"), "must be 1..=256 characters".into()));
                }
            }
            if let Some(h) = &account.api_key_hash {
                if !crate::engine::auth::is_password_hash(h) {
                    return Err(error(
                        &key("api_key_hash"),
                        "not of the form tern$hmac-sha256$SALT$HASH".into(),
                    ));
                }
            }
            if let Some(url) = &account.webhook_url {
                if let Err(why) = crate::engine::webhook::check_url(url) {
                    return Err(error(&key("webhook_url"), format!("`{url}`: {why}")));
                }
            }
            for (j, cidr) in account.allowed_ips.iter().enumerate() {
                if crate::engine::auth::Cidr::parse(cidr).is_none() {
                    return Err(error(
                        &key(&format!("allowed_ips[{j}]")),
                        format!("`{cidr}` is not an address or CIDR block"),
                    ));
                }
            }
        }
        self.check_upstream(&error)?;
        let mut range_names = std::collections::BTreeSet::new();
        for (i, range) in self.number_ranges.iter().enumerate() {
            let key = |field: &str| format!("number_range[{i}].{field}");
            if range.name.is_empty() || range.name.len() > 64 {
                return Err(error(&key("name"), "must be 1..=64 characters".into()));
            }
            if !range_names.insert(range.name.as_str()) {
                return Err(error(
                    &key("name"),
                    format!("`{}` appears twice", range.name),
                ));
            }
            if range.prefix.is_empty()
                || range.prefix.len() > 21
                || !range
                    .prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+')
            {
                return Err(error(
                    &key("prefix"),
                    "must be 1..=21 digits (or letters, for alphanumeric addresses)".into(),
                ));
            }
            if range.account.is_empty() {
                return Err(error(&key("account"), "names no account".into()));
            }
        }
        let http_listen = if self.http.listen.is_empty() {
            None
        } else {
            Some(parse_addr(&self.http.listen).map_err(|m| error("http.listen", m))?)
        };
        let http_admin_listen = if self.http.admin_listen.is_empty() {
            None
        } else {
            Some(parse_addr(&self.http.admin_listen).map_err(|m| error("http.admin_listen", m))?)
        };
        if self.http.max_body_bytes < 1024 {
            return Err(error("http.max_body_bytes", "must be at least 1024".into()));
        }
        let ca_file = (!self.webhook.ca_file.is_empty()).then(|| Path::new(&self.webhook.ca_file));
        let webhook_tls =
            crate::engine::webhook::tls_config(ca_file).map_err(|m| error("webhook.ca_file", m))?;
        Ok(Resolved {
            http_listen,
            http_admin_listen,
            webhook_tls,
            config: self,
            smpp_listen,
            store_listen,
            peers,
        })
    }
}

/// How a connector binds to its SMSC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamBindType {
    Transceiver,
    /// Submits on transmitter binds; receipts on as many receiver binds.
    TransmitterReceiver,
}

/// How a connector sends a message longer than one SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongMessages {
    /// As the customer sent it: parts as parts, a long payload in
    /// message_payload when it does not fit short_message.
    AsSubmitted,
    /// A long unsegmented message is split into parts with a concatenation UDH.
    Udh,
    /// A long unsegmented message is split into parts with the SAR TLVs.
    Sar,
    /// A long unsegmented message goes whole in message_payload.
    Payload,
}

// The connector's text fields are parsed here once for both readers: the
// configuration check (a bad value names its key) and the upstream side,
// which parses the replicated `store::command::Connector` records (a bad
// value there is logged and the connector skipped).

/// `bind_type`: `transceiver` or `transmitter+receiver`.
pub fn parse_bind_type(text: &str) -> Option<UpstreamBindType> {
    match text {
        "transceiver" => Some(UpstreamBindType::Transceiver),
        "transmitter+receiver" => Some(UpstreamBindType::TransmitterReceiver),
        _ => None,
    }
}

/// `id_format`: how the operator writes message ids.
pub fn parse_id_format(text: &str) -> Option<crate::smpp::receipt::IdFormat> {
    use crate::smpp::receipt::IdFormat;
    match text {
        "as-is" => Some(IdFormat::AsIs),
        "hex" => Some(IdFormat::HexCaseInsensitive),
        "decimal" => Some(IdFormat::Decimal),
        "strip-leading-zeros" => Some(IdFormat::StripLeadingZeros),
        "hex-in-receipt-decimal-in-resp" => Some(IdFormat::HexInReceiptDecimalInResp),
        "decimal-in-receipt-hex-in-resp" => Some(IdFormat::DecimalInReceiptHexInResp),
        _ => None,
    }
}

/// `default_alphabet`: what data_coding 0 means to the operator.
pub fn parse_default_alphabet(text: &str) -> Option<crate::smpp::text::DefaultAlphabet> {
    use crate::smpp::text::DefaultAlphabet;
    match text {
        "gsm7" => Some(DefaultAlphabet::Gsm7),
        "latin1" => Some(DefaultAlphabet::Latin1),
        "ascii" => Some(DefaultAlphabet::Ascii),
        _ => None,
    }
}

/// `long_messages`: one of `LONG_MESSAGE_MODES`.
pub fn parse_long_messages(text: &str) -> Option<LongMessages> {
    match text {
        "as-submitted" => Some(LongMessages::AsSubmitted),
        "udh" => Some(LongMessages::Udh),
        "sar" => Some(LongMessages::Sar),
        "payload" => Some(LongMessages::Payload),
        _ => None,
    }
}

/// A connector host, `IP:PORT` (or `localhost:PORT`).
pub fn parse_host(text: &str) -> Result<SocketAddr, String> {
    parse_addr(text)
}

impl ConnectorConfig {
    pub fn parsed_bind_type(&self) -> Option<UpstreamBindType> {
        parse_bind_type(&self.bind_type)
    }

    pub fn parsed_id_format(&self) -> Option<crate::smpp::receipt::IdFormat> {
        parse_id_format(&self.id_format)
    }

    pub fn parsed_default_alphabet(&self) -> Option<crate::smpp::text::DefaultAlphabet> {
        parse_default_alphabet(&self.default_alphabet)
    }

    pub fn parsed_long_messages(&self) -> Option<LongMessages> {
        parse_long_messages(&self.long_messages)
    }
}

impl Config {
    fn check_upstream(
        &self,
        error: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.connectors.iter().enumerate() {
            let key = |field: &str| format!("connector[{i}].{field}");
            if c.name.is_empty() || c.name.len() > 64 {
                return Err(error(&key("name"), "must be 1..=64 characters".into()));
            }
            if !names.insert(c.name.as_str()) {
                return Err(error(&key("name"), format!("`{}` appears twice", c.name)));
            }
            if c.hosts.is_empty() {
                return Err(error(&key("hosts"), "needs at least one IP:PORT".into()));
            }
            for (j, host) in c.hosts.iter().enumerate() {
                parse_addr(host).map_err(|m| error(&key(&format!("hosts[{j}]")), m))?;
            }
            if c.system_id.len() > 15 {
                return Err(error(&key("system_id"), "at most 15 characters".into()));
            }
            if c.password.len() > 8 {
                return Err(error(&key("password"), "at most 8 characters".into()));
            }
            if c.system_type.len() > 12 {
                return Err(error(&key("system_type"), "at most 12 characters".into()));
            }
            if c.parsed_bind_type().is_none() {
                return Err(error(
                    &key("bind_type"),
                    "must be `transceiver` or `transmitter+receiver`".into(),
                ));
            }
            if c.parsed_id_format().is_none() {
                return Err(error(
                    &key("id_format"),
                    "must be as-is, hex, decimal, strip-leading-zeros, \
                     hex-in-receipt-decimal-in-resp or decimal-in-receipt-hex-in-resp"
                        .into(),
                ));
            }
            if c.parsed_default_alphabet().is_none() {
                return Err(error(
                    &key("default_alphabet"),
                    "must be `gsm7`, `latin1` or `ascii`".into(),
                ));
            }
            if c.parsed_long_messages().is_none() {
                return Err(error(
                    &key("long_messages"),
                    "must be `as-submitted`, `udh`, `sar` or `payload`".into(),
                ));
            }
            if c.binds == 0 || c.binds > 256 {
                return Err(error(&key("binds"), "must be 1..=256".into()));
            }
            for (field, value) in [
                ("window", u64::from(c.window)),
                ("enquire_link_s", u64::from(c.enquire_link_s)),
                ("reconnect_min_ms", c.reconnect_min_ms),
                ("submit_timeout_ms", c.submit_timeout_ms),
            ] {
                if value == 0 {
                    return Err(error(&key(field), "must be at least 1".into()));
                }
            }
            if c.reconnect_max_ms < c.reconnect_min_ms {
                return Err(error(
                    &key("reconnect_max_ms"),
                    "must be at least reconnect_min_ms".into(),
                ));
            }
        }
        let mut route_names = std::collections::BTreeSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            if r.name.is_empty() || r.name.len() > 64 {
                return Err(error(&key("name"), "must be 1..=64 characters".into()));
            }
            if !route_names.insert(r.name.as_str()) {
                return Err(error(&key("name"), format!("`{}` appears twice", r.name)));
            }
            if r.connectors.is_empty() == r.targets.is_empty() {
                return Err(error(
                    &key("connectors"),
                    "give exactly one of `connectors` and `targets`, not empty".into(),
                ));
            }
            let field = if r.targets.is_empty() {
                "connectors"
            } else {
                "targets"
            };
            for (j, target) in r.resolved_targets().iter().enumerate() {
                if !names.contains(target.connector.as_str()) {
                    return Err(error(
                        &key(&format!("{field}[{j}]")),
                        format!("no [[connector]] is named `{}`", target.connector),
                    ));
                }
                if target.weight == 0 {
                    return Err(error(
                        &key(&format!("{field}[{j}].weight")),
                        "must be at least 1".into(),
                    ));
                }
            }
        }
        let up = &self.upstream;
        for (field, value) in [
            ("upstream.max_attempts", u64::from(up.max_attempts)),
            ("upstream.retry_min_ms", up.retry_min_ms),
            ("upstream.max_in_flight", u64::from(up.max_in_flight)),
        ] {
            if value == 0 {
                return Err(error(field, "must be at least 1".into()));
            }
        }
        if up.retry_max_ms < up.retry_min_ms {
            return Err(error(
                "upstream.retry_max_ms",
                "must be at least retry_min_ms".into(),
            ));
        }
        Ok(())
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // "localhost:2775" and similar: resolve, but only to one address.
    if let Some((host, port)) = text.rsplit_once(':') {
        if host == "localhost" {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port));
            }
        }
    }
    Err(format!("`{text}` is not an address of the form IP:PORT"))
}

/// The dotted key a toml error points at: the message names unknown fields;
/// otherwise the key on the line the error's span starts in.
fn key_of_toml_error(text: &str, error: &toml::de::Error) -> Option<String> {
    let message = error.message();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            return rest.get(..end).map(str::to_string);
        }
    }
    let span = error.span()?;
    let line_start = text.get(..span.start)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty()).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_resolves() {
        let resolved = Config::embedded_default().resolve_embedded().unwrap();
        assert_eq!(resolved.smpp_listen, "127.0.0.1:2775".parse().unwrap());
        assert_eq!(resolved.config.accounts[0].system_id, "trial");
    }

    #[test]
    fn out_of_range_store_and_window_keys_are_named() {
        for (text, key) in [
            ("[store]\nhot_window_s = 0\n", "store.hot_window_s"),
            (
                "[store]\nhot_window_s = 600\nretention_s = 60\n",
                "store.retention_s",
            ),
            (
                "[store]\narchive_retention_days = 0\n",
                "store.archive_retention_days",
            ),
            ("[smpp]\nwindow = 70000\n", "smpp.window"),
            (
                "[[account]]\nsystem_id = \"a\"\npassword = \"a\"\nwindow = 65536\n",
                "account[0].window",
            ),
            // One second is less than two election timeouts of 100 ms ticks.
            (
                "[store]\nnode_down_after_s = 1\n",
                "store.node_down_after_s",
            ),
        ] {
            let e = Config::parse(text, "r.toml").unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
        }
        let ok = Config::parse("[store]\nhot_window_s = 2\nretention_s = 2\n", "r.toml").unwrap();
        assert_eq!(
            (
                ok.config.store.hot_window_s,
                ok.config.store.archive_retention_days
            ),
            (2, 7)
        );
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../tern.example.toml");
        let resolved = Config::parse(text, "tern.example.toml").unwrap();
        assert!(!resolved.config.accounts.is_empty());
    }

    #[test]
    fn log_masking_defaults_on_and_is_checked() {
        let resolved = Config::parse("", "x.toml").unwrap();
        assert!(resolved.config.log.mask_personal_data);
        let off = Config::parse("[log]\nmask_personal_data = false\n", "x.toml").unwrap();
        assert!(!off.config.log.mask_personal_data);
        let e = Config::parse("[log]\nmask_personal_data = \"no\"\n", "x.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("mask_personal_data"), "{e}");
        let e = Config::parse("[log]\nmask_phone = true\n", "x.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("mask_phone"), "{e}");
    }

    #[test]
    fn webhook_ca_file_is_read_at_check_and_a_bad_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let text = format!("[webhook]\nca_file = \"{}\"\n", missing.display());
        let e = Config::parse(&text, "w.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("webhook.ca_file"), "{e}");
        let shown = e.to_string();
        assert!(
            shown.contains("w.toml") && shown.contains("nope.pem"),
            "{shown}"
        );
        let e = Config::parse("[webhook]\nca_path = \"x\"\n", "w.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("ca_path"), "{e}");

        let ca = rcgen::generate_simple_self_signed(vec!["tern-test-ca".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        let text = format!("[webhook]\nca_file = \"{}\"\n", good.display());
        let ok = Config::parse(&text, "w.toml").unwrap();
        assert_eq!(ok.config.webhook.ca_file, good.display().to_string());
        let https = "[[account]]\nsystem_id = \"a\"\npassword = \"p\"\n\
                     webhook_url = \"https://hooks.example/dlr\"\n";
        assert!(Config::parse(https, "w.toml").is_ok(), "https:// accepted");
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let e =
            Config::parse("[smpp]\nlisten = \"127.0.0.1:1\"\nwindw = 3\n", "x.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("windw"));
        assert!(e.to_string().starts_with("x.toml: key `windw`"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = Config::parse("[smpp]\nwindow = \"ten\"\n", "y.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("window"), "{e}");
    }

    #[test]
    fn bad_address_is_named() {
        let e = Config::parse("[smpp]\nlisten = \"nowhere\"\n", "z.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("smpp.listen"));
        let e =
            Config::parse("[[store.peers]]\nid = 2\naddr = \"1.2.3.4\"\n", "z.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.peers[0].addr"));
    }

    #[test]
    fn short_cluster_secret_is_named_at_load() {
        // Checked here rather than when the transport starts, where it used
        // to surface as "store: corrupt data" after the log was opened.
        let e = Config::parse("[store]\nsecret = \"c3secret\"\n", "s.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("store.secret"), "{e}");
        assert!(e.to_string().contains("at least 16"), "{e}");
        Config::parse("[store]\nsecret = \"sixteen-bytes-ok\"\n", "s.toml").unwrap();
    }

    #[test]
    fn account_checks() {
        let base = "[[account]]\nsystem_id = \"a\"\n";
        let e = Config::parse(base, "f").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("account[0].password"));
        let e = Config::parse(
            &format!("{base}password = \"p\"\nallowed_ips = [\"10.0.0.0/33\"]\n"),
            "f",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("account[0].allowed_ips[0]"));
        let ok = Config::parse(&format!("{base}password = \"p\"\nmax_tps = 5\n"), "f").unwrap();
        assert_eq!(ok.config.accounts[0].max_tps, 5);
        assert!(ok.config.accounts[0].enabled);
    }

    #[test]
    fn connector_and_route_checks() {
        let connector = "[[connector]]\nname = \"op\"\nhosts = [\"127.0.0.1:1\"]\n\
                         system_id = \"s\"\npassword = \"p\"\n";
        let ok = Config::parse(
            &format!("{connector}[[route]]\nname = \"r\"\nconnectors = [\"op\"]\n"),
            "f",
        )
        .unwrap();
        assert_eq!(ok.config.connectors[0].binds, 1);
        assert!(!ok.config.upstream.embedded_simulator);
        let e = Config::parse(
            &format!("{connector}[[route]]\nname = \"r\"\nconnectors = [\"nope\"]\n"),
            "f",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("route[0].connectors[0]"), "{e}");
        let e = Config::parse(&format!("{connector}bind_type = \"receiver\"\n"), "f").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("connector[0].bind_type"), "{e}");
        let e = Config::parse(&format!("{connector}id_format = \"hexx\"\n"), "f").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("connector[0].id_format"), "{e}");
        let e = Config::parse(
            "[[connector]]\nname = \"op\"\nhosts = [\"nowhere\"]\nsystem_id = \"s\"\npassword = \"p\"\n",
            "f",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("connector[0].hosts[0]"), "{e}");
        let e = Config::parse(
            &format!(
                "{connector}[[route]]\nname = \"r\"\ntargets = [{{ connector = \"op\", weight = 0 }}]\n"
            ),
            "f",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("route[0].targets[0].weight"), "{e}");
        assert!(Config::embedded_default().upstream.embedded_simulator);
    }
}
