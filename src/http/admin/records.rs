//! The admin API's records as JSON: what a request body may say about an
//! account, connector, route or number range, how it is checked, and what a
//! response shows.
//!
//! Owns: the JSON shapes (the same keys as the config file's `[[account]]`,
//! `[[connector]]`, `[[route]]` and `[[number_range]]` tables, so an operator
//! learns one vocabulary), masking of secrets in responses, PATCH merging, and
//! the conversion to replicated records. Must not touch: the store, sockets or
//! HTTP; the handler in `admin.rs` reads state and proposes.
//!
//! Checking goes through the config file's own checks: the body is written
//! out as a one-object TOML document and parsed by `Config::parse`, so a value
//! the file would refuse is refused here with the same words, and the error
//! names the field (`max_tps`, `targets[0].weight`).

use serde_json::{json, Map, Value};

use crate::config::{AccountConfig, Config, ConfigError};
use crate::engine::auth;
use crate::store::command::{Account, Connector, NumberRange, Route};

/// What responses show instead of a secret. Sent back in a PUT or PATCH body
/// it means "keep the stored value", so GET → edit → PUT round-trips.
pub const MASK: &str = "********";

/// The four kinds of provisioned objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Account,
    Connector,
    Route,
    NumberRange,
}

impl Kind {
    /// The path segment under `/admin/v1/`.
    pub fn from_collection(segment: &str) -> Option<Kind> {
        match segment {
            "accounts" => Some(Kind::Account),
            "connectors" => Some(Kind::Connector),
            "routes" => Some(Kind::Route),
            "number-ranges" => Some(Kind::NumberRange),
            _ => None,
        }
    }

    /// The config file's table name, which the checks' keys start with.
    fn table(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::Connector => "connector",
            Kind::Route => "route",
            Kind::NumberRange => "number_range",
        }
    }

    /// The key holding the object's name (accounts are named by system_id).
    pub fn name_key(self) -> &'static str {
        match self {
            Kind::Account => "system_id",
            _ => "name",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::Connector => "connector",
            Kind::Route => "route",
            Kind::NumberRange => "number range",
        }
    }
}

/// A stored object of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Account(Account),
    Connector(Connector),
    Route(Route),
    NumberRange(NumberRange),
}

/// A refused body: the field at fault (if one is) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    fn new(field: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// "field: message", or the message alone.
    pub fn text(&self) -> String {
        match &self.field {
            Some(field) => format!("{field}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

/// What a check of a route or number range needs from the state.
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub connectors: Vec<String>,
    pub accounts: Vec<String>,
}

/// The response form of a record: config keys, secrets masked.
pub fn view(record: &Record) -> Value {
    let masked = |present: bool| if present { json!(MASK) } else { Value::Null };
    match record {
        Record::Account(a) => json!({
            "system_id": a.name,
            "password": MASK,
            "api_key": masked(a.api_key_hash.is_some()),
            "webhook_url": a.webhook_url,
            "webhook_secret": masked(a.webhook_secret.is_some()),
            "max_binds": a.max_binds,
            "allowed_ips": a.allowed_ips,
            "allowed_senders": a.allowed_senders,
            "max_tps": a.throughput_per_s,
            "window": a.window,
            "retention_s": a.retention_s,
            "enabled": a.enabled,
        }),
        Record::Connector(c) => json!({
            "name": c.name,
            "hosts": c.hosts,
            "system_id": c.system_id,
            "password": MASK,
            "system_type": c.system_type,
            "bind_type": c.bind_type,
            "binds": c.bind_count,
            "window": c.window,
            "max_tps": c.throughput_per_s,
            "enquire_link_s": c.enquire_link_s,
            "reconnect_min_ms": c.reconnect_min_ms,
            "reconnect_max_ms": c.reconnect_max_ms,
            "submit_timeout_ms": c.submit_timeout_ms,
            "id_format": c.id_format,
            "default_alphabet": c.default_alphabet,
            "long_messages": c.long_messages,
            "enabled": c.enabled,
        }),
        Record::Route(r) => json!({
            "name": r.name,
            "account": r.account,
            "prefix": r.destination_prefix,
            "source": r.source_prefix,
            "priority": r.priority,
            "targets": r.targets.iter().map(|t| json!({
                "connector": t.connector,
                "priority": t.priority,
                "weight": t.weight,
            })).collect::<Vec<_>>(),
        }),
        Record::NumberRange(n) => json!({
            "name": n.name,
            "prefix": n.prefix,
            "account": n.account,
        }),
    }
}

/// The stored record as a complete request body, secrets included (as
/// hashes for accounts): the base a PATCH is laid over. Never sent out.
fn input_form(record: &Record) -> Map<String, Value> {
    let mut form = match view(record) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    match record {
        Record::Account(a) => {
            form.remove("password");
            form.remove("api_key");
            form.insert("password_hash".into(), json!(a.password_hash));
            form.insert("api_key_hash".into(), json!(a.api_key_hash));
            form.insert("webhook_secret".into(), json!(a.webhook_secret));
        }
        Record::Connector(c) => {
            form.insert("password".into(), json!(c.password));
        }
        Record::Route(_) | Record::NumberRange(_) => {}
    }
    form
}

/// Keys that say the same thing another way: giving one drops the other.
fn alternatives(kind: Kind, key: &str) -> Option<&'static str> {
    match (kind, key) {
        (Kind::Account, "password") => Some("password_hash"),
        (Kind::Account, "password_hash") => Some("password"),
        (Kind::Account, "api_key") => Some("api_key_hash"),
        (Kind::Account, "api_key_hash") => Some("api_key"),
        (Kind::Route, "connectors") => Some("targets"),
        (Kind::Route, "targets") => Some("connectors"),
        _ => None,
    }
}

/// PATCH: `changes` laid over the stored record (a key set to null goes back
/// to its default), then checked as a whole like a PUT.
pub fn merge(existing: &Record, changes: &Map<String, Value>) -> Map<String, Value> {
    let kind = kind_of(existing);
    let mut form = input_form(existing);
    for (key, value) in changes {
        if let Some(other) = alternatives(kind, key) {
            form.remove(other);
        }
        form.insert(key.clone(), value.clone());
    }
    form
}

pub fn kind_of(record: &Record) -> Kind {
    match record {
        Record::Account(_) => Kind::Account,
        Record::Connector(_) => Kind::Connector,
        Record::Route(_) => Kind::Route,
        Record::NumberRange(_) => Kind::NumberRange,
    }
}

/// Checks a complete body for the object `name` and builds the record to
/// propose. `existing` is the stored one (for masked secrets and what the
/// API does not set, like an account's retention).
pub fn build(
    kind: Kind,
    name: &str,
    body: Map<String, Value>,
    existing: Option<&Record>,
    known: &Known,
) -> Result<Record, FieldError> {
    let mut body = body;
    // Nulls mean "the default": the key is left out, as in the file.
    body.retain(|_, v| !v.is_null());
    let name_key = kind.name_key();
    for key in ["name", name_key] {
        if let Some(given) = body.remove(key) {
            if given.as_str() != Some(name) {
                return Err(FieldError::new(
                    key,
                    format!("says {given}, but the path names `{name}`"),
                ));
            }
        }
    }
    body.insert(name_key.into(), json!(name));
    let retention_s = match kind {
        Kind::Account => take_retention(&mut body, existing)?,
        _ => 0,
    };
    unmask(kind, &mut body, existing)?;
    let mut document = Map::new();
    if kind == Kind::Route {
        // Routes may only name connectors that exist; the file checks that
        // against its own [[connector]] tables, so stand-ins are written.
        let stand_ins: Vec<Value> = known
            .connectors
            .iter()
            .map(|c| json!({"name": c, "hosts": ["127.0.0.1:1"], "system_id": "", "password": ""}))
            .collect();
        document.insert("connector".into(), Value::Array(stand_ins));
    }
    if kind == Kind::NumberRange {
        if let Some(account) = body.get("account").and_then(Value::as_str) {
            if !account.is_empty() && !known.accounts.iter().any(|a| a == account) {
                return Err(FieldError::new(
                    "account",
                    format!("no account is named `{account}`"),
                ));
            }
        }
    }
    document.insert(kind.table().into(), json!([Value::Object(body)]));
    let text = toml::to_string(&Value::Object(document)).map_err(|e| FieldError {
        field: None,
        message: format!("not expressible as a configuration value: {e}"),
    })?;
    let resolved = Config::parse(&text, "request body").map_err(|e| field_error(kind, &e))?;
    let config = resolved.config;
    if let Some(account) = config.accounts.first() {
        if usize::try_from(account.window).map_or(true, |w| w > crate::engine::MAX_WINDOW) {
            return Err(FieldError::new(
                "window",
                format!(
                    "must be at most {} (requests one bind may have awaiting an answer)",
                    crate::engine::MAX_WINDOW
                ),
            ));
        }
    }
    let record = match kind {
        Kind::Account => config
            .accounts
            .first()
            .map(|a| Record::Account(account_record(a, retention_s))),
        Kind::Connector => config.connectors.first().map(|c| {
            let mut record = crate::upstream::connector_record(c);
            if let Some(Record::Connector(old)) = existing {
                // The file cannot say `tls`; the API keeps what is stored.
                record.tls = old.tls;
            }
            Record::Connector(record)
        }),
        Kind::Route => config
            .routes
            .first()
            .map(|r| Record::Route(crate::upstream::route_record(r))),
        Kind::NumberRange => config.number_ranges.first().map(|n| {
            Record::NumberRange(NumberRange {
                name: n.name.clone(),
                prefix: n.prefix.clone(),
                account: n.account.clone(),
            })
        }),
    };
    record.ok_or_else(|| FieldError {
        field: None,
        message: "the body did not describe an object".into(),
    })
}

fn take_retention(
    body: &mut Map<String, Value>,
    existing: Option<&Record>,
) -> Result<u64, FieldError> {
    match body.remove("retention_s") {
        Some(value) => value
            .as_u64()
            .ok_or_else(|| FieldError::new("retention_s", "must be a whole number of seconds")),
        None => Ok(match existing {
            Some(Record::Account(a)) => a.retention_s,
            _ => 0,
        }),
    }
}

/// Replaces masked secrets by the stored values (hashes for accounts).
fn unmask(
    kind: Kind,
    body: &mut Map<String, Value>,
    existing: Option<&Record>,
) -> Result<(), FieldError> {
    let is_mask =
        |body: &Map<String, Value>, key: &str| body.get(key).and_then(Value::as_str) == Some(MASK);
    let no_stored = |key: &str| {
        FieldError::new(
            key,
            format!("`{MASK}` keeps the stored value, and nothing is stored; give the value"),
        )
    };
    match kind {
        Kind::Account => {
            let stored = match existing {
                Some(Record::Account(a)) => Some(a),
                _ => None,
            };
            if is_mask(body, "password") {
                let hash = stored.map(|a| a.password_hash.clone());
                let hash = hash.ok_or_else(|| no_stored("password"))?;
                body.remove("password");
                body.insert("password_hash".into(), json!(hash));
            }
            if is_mask(body, "api_key") {
                let hash = stored.and_then(|a| a.api_key_hash.clone());
                let hash = hash.ok_or_else(|| no_stored("api_key"))?;
                body.remove("api_key");
                body.insert("api_key_hash".into(), json!(hash));
            }
            if is_mask(body, "webhook_secret") {
                let secret = stored.and_then(|a| a.webhook_secret.clone());
                let secret = secret.ok_or_else(|| no_stored("webhook_secret"))?;
                body.insert("webhook_secret".into(), json!(secret));
            }
        }
        Kind::Connector => {
            if is_mask(body, "password") {
                let password = match existing {
                    Some(Record::Connector(c)) => Some(c.password.clone()),
                    _ => None,
                };
                let password = password.ok_or_else(|| no_stored("password"))?;
                body.insert("password".into(), json!(password));
            }
        }
        Kind::Route | Kind::NumberRange => {}
    }
    Ok(())
}

/// The config check's error, with the key made relative to the object
/// (`account[0].max_tps` → `max_tps`).
fn field_error(kind: Kind, error: &ConfigError) -> FieldError {
    let prefix = format!("{}[0].", kind.table());
    // A route's stand-in connectors are ours, never the caller's fault, and
    // are valid by construction; any other key belongs to the object.
    let field = error
        .key
        .as_deref()
        .map(|key| key.strip_prefix(prefix.as_str()).unwrap_or(key).to_string());
    FieldError {
        field,
        message: error.message.clone(),
    }
}

/// The replicated account for a checked config table (plain secrets hashed
/// here, before anything reaches the log).
fn account_record(wanted: &AccountConfig, retention_s: u64) -> Account {
    let password_hash = match (&wanted.password, &wanted.password_hash) {
        (_, Some(hash)) => hash.clone(),
        (Some(password), None) => auth::hash_password(password),
        (None, None) => String::new(),
    };
    let api_key_hash = match (&wanted.api_key, &wanted.api_key_hash) {
        (_, Some(hash)) => Some(hash.clone()),
        (Some(key), None) => Some(auth::hash_password(key)),
        (None, None) => None,
    };
    Account {
        name: wanted.system_id.clone(),
        password_hash,
        max_binds: wanted.max_binds,
        throughput_per_s: wanted.max_tps,
        allowed_ips: wanted.allowed_ips.clone(),
        allowed_senders: wanted.allowed_senders.clone(),
        retention_s,
        enabled: wanted.enabled,
        webhook_url: wanted.webhook_url.clone(),
        api_key_hash,
        webhook_secret: wanted.webhook_secret.clone(),
        window: wanted.window,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("test body must be an object, not {other}"),
        }
    }

    fn account(body: Value) -> Result<Record, FieldError> {
        build(Kind::Account, "acme", object(body), None, &Known::default())
    }

    #[test]
    fn account_secrets_are_hashed_and_never_shown() {
        let record = account(json!({"password": "pw", "api_key": "k-123", "max_tps": 7})).unwrap();
        let Record::Account(a) = &record else {
            panic!("an account body builds an account");
        };
        assert!(auth::verify_password(b"pw", &a.password_hash));
        assert!(auth::verify_password(
            b"k-123",
            a.api_key_hash.as_deref().unwrap_or("")
        ));
        assert_eq!(a.throughput_per_s, 7);
        let shown = view(&record).to_string();
        assert!(!shown.contains("hmac-sha256"), "{shown}");
        assert!(!shown.contains("k-123"), "{shown}");
        assert_eq!(view(&record)["api_key"], MASK);
    }

    #[test]
    fn errors_name_the_field_like_the_config_file() {
        let e = account(json!({"password": "too-long-for-smpp"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("password"), "{e:?}");
        let e = account(json!({"password": "pw", "max_tps": "ten"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("max_tps"), "{e:?}");
        let e = account(json!({"password": "pw", "max_tsp": 1})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("max_tsp"), "{e:?}");
        let e = account(json!({"password": "pw", "allowed_ips": ["10.0.0.0/33"]})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("allowed_ips[0]"), "{e:?}");
        let e = account(json!({"system_id": "other", "password": "pw"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("system_id"), "{e:?}");
        let e = account(json!({"password": MASK})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("password"), "{e:?}");
    }

    #[test]
    fn patch_keeps_what_it_does_not_name() {
        let stored = account(json!({"password": "pw", "api_key": "key", "max_tps": 3})).unwrap();
        let merged = merge(&stored, &object(json!({"max_tps": 9, "password": "new"})));
        let Record::Account(a) = build(
            Kind::Account,
            "acme",
            merged,
            Some(&stored),
            &Known::default(),
        )
        .unwrap() else {
            panic!("still an account");
        };
        assert_eq!(a.throughput_per_s, 9);
        assert!(auth::verify_password(b"new", &a.password_hash));
        assert!(auth::verify_password(
            b"key",
            a.api_key_hash.as_deref().unwrap_or("")
        ));
        // A null key returns to its default: here, no HTTP access.
        let merged = merge(&stored, &object(json!({"api_key": null})));
        let Record::Account(a) = build(
            Kind::Account,
            "acme",
            merged,
            Some(&stored),
            &Known::default(),
        )
        .unwrap() else {
            panic!("still an account");
        };
        assert_eq!(a.api_key_hash, None);
        // The masked view sent back unchanged is the same record.
        let round_trip = object(view(&stored));
        let again = build(
            Kind::Account,
            "acme",
            round_trip,
            Some(&stored),
            &Known::default(),
        )
        .unwrap();
        assert_eq!(again, stored);
    }

    #[test]
    fn routes_name_existing_connectors_and_weights_are_checked() {
        let known = Known {
            connectors: vec!["op1".into(), "op2".into()],
            accounts: Vec::new(),
        };
        let body = json!({"prefix": "44", "targets": [
            {"connector": "op1", "priority": 0, "weight": 3},
            {"connector": "op2", "priority": 1}]});
        let Record::Route(r) = build(Kind::Route, "uk", object(body), None, &known).unwrap() else {
            panic!("a route body builds a route");
        };
        assert_eq!(r.destination_prefix, "44");
        assert_eq!(r.targets.len(), 2);
        assert_eq!(r.targets[1].weight, 1);
        let e = build(
            Kind::Route,
            "uk",
            object(json!({"connectors": ["nope"]})),
            None,
            &known,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("connectors[0]"), "{e:?}");
        let e = build(
            Kind::Route,
            "uk",
            object(json!({"targets": [{"connector": "op1", "weight": 0}]})),
            None,
            &known,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("targets[0].weight"), "{e:?}");
        // PATCH with the shorthand replaces the targets.
        let stored = Record::Route(r);
        let merged = merge(&stored, &object(json!({"connectors": ["op2"]})));
        let Record::Route(r) = build(Kind::Route, "uk", merged, Some(&stored), &known).unwrap()
        else {
            panic!("still a route");
        };
        assert_eq!(r.targets.len(), 1);
        assert_eq!(r.targets[0].connector, "op2");
    }

    #[test]
    fn connector_password_is_masked_and_kept() {
        let body = json!({"hosts": ["127.0.0.1:2775"], "system_id": "tern", "password": "secret"});
        let stored = build(
            Kind::Connector,
            "op1",
            object(body),
            None,
            &Known::default(),
        )
        .unwrap();
        assert!(!view(&stored).to_string().contains("secret"));
        let again = build(
            Kind::Connector,
            "op1",
            object(view(&stored)),
            Some(&stored),
            &Known::default(),
        )
        .unwrap();
        assert_eq!(again, stored);
        let e = build(
            Kind::Connector,
            "op1",
            object(json!({"hosts": ["nowhere"], "system_id": "s", "password": "p"})),
            None,
            &Known::default(),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("hosts[0]"), "{e:?}");
    }

    #[test]
    fn number_ranges_belong_to_existing_accounts() {
        let known = Known {
            connectors: Vec::new(),
            accounts: vec!["acme".into()],
        };
        let ok = build(
            Kind::NumberRange,
            "short",
            object(json!({"prefix": "4477009", "account": "acme"})),
            None,
            &known,
        );
        assert!(ok.is_ok(), "{ok:?}");
        let e = build(
            Kind::NumberRange,
            "short",
            object(json!({"prefix": "4477009", "account": "ghost"})),
            None,
            &known,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("account"));
        let e = build(
            Kind::NumberRange,
            "short",
            object(json!({"prefix": "44-77", "account": "acme"})),
            None,
            &known,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("prefix"));
    }
}
