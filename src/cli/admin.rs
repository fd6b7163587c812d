//! `tern account|connector|route|number-range|status`: the admin API's
//! command line client.
//!
//! Owns: the subcommands' arguments and help, turning flags into the JSON
//! bodies of `/admin/v1/...`, the HTTP calls (ureq, blocking) and the
//! output: tables for people, `--json` for scripts. Must not touch: the
//! store or the node's files; everything goes through the running node's
//! admin API, so a change is committed cluster-wide when the command returns.

use std::time::Duration;

use clap::{ArgAction, Args, Subcommand};
use serde_json::{json, Map, Value};

/// Where the admin API is and how to authenticate (every admin subcommand).
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Base URL of a node's admin API (any node of the cluster).
    #[arg(
        long = "api",
        env = "TERN_ADMIN_URL",
        default_value = "http://127.0.0.1:8080",
        global = true,
        value_name = "URL"
    )]
    pub api: String,
    /// The node's `http.admin_token`.
    #[arg(
        long,
        env = "TERN_ADMIN_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

const REMOTE_HELP: &str = "\
The node is found at --api URL or $TERN_ADMIN_URL (default http://127.0.0.1:8080) and
authenticated with --token TOKEN or $TERN_ADMIN_TOKEN (the node's http.admin_token;
the embedded default of `tern serve` uses `trial-admin`). Changes go through the
replicated log: when the command returns, every node has them.";

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON (an array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    pub name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tern account list
  tern account set acme --password s3cret --max-tps 50 --allowed-ip 10.0.0.0/8
  tern account set acme --api-key k-7f3a --webhook-url https://hooks.example/dlr
  tern account set acme --enabled false
  tern account show acme --json
  tern account delete acme

`set` creates the account or changes only the fields given. Passwords and API keys
are hashed by the node before they are stored and are never shown again.")]
pub struct AccountArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub action: AccountAction,
}

#[derive(Debug, Subcommand)]
pub enum AccountAction {
    /// All accounts.
    List(ListArgs),
    /// One account (secrets masked).
    Show(NameArgs),
    /// Create an account, or change the fields given.
    Set(Box<AccountSet>),
    /// Remove an account: new binds and HTTP requests with it fail at once.
    Delete(NameArgs),
}

#[derive(Debug, Args)]
pub struct AccountSet {
    /// The SMPP system_id (also the HTTP account name), 1..=15 characters.
    pub name: String,
    /// SMPP password (at most 8 characters).
    #[arg(long)]
    pub password: Option<String>,
    /// Key for the HTTP API (`Authorization: Bearer KEY`).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Where DLRs and MOs are POSTed (HTTP customers).
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Key of the HMAC-SHA256 signature on webhook bodies.
    #[arg(long)]
    pub webhook_secret: Option<String>,
    /// Submits per second; 0 = unlimited.
    #[arg(long)]
    pub max_tps: Option<u32>,
    /// Open binds across the cluster; 0 = unlimited.
    #[arg(long)]
    pub max_binds: Option<u32>,
    /// Requests a bind may have outstanding; 0 = the node's default.
    #[arg(long)]
    pub window: Option<u32>,
    /// Address or CIDR block allowed to bind (repeat; replaces the list).
    #[arg(long = "allowed-ip", value_name = "CIDR")]
    pub allowed_ips: Vec<String>,
    /// Source address the account may send from (repeat; replaces the list).
    #[arg(long = "allowed-sender", value_name = "ADDRESS")]
    pub allowed_senders: Vec<String>,
    /// `true` or `false`: a disabled account cannot bind or submit.
    #[arg(long, action = ArgAction::Set, value_name = "BOOL")]
    pub enabled: Option<bool>,
    /// How long finished messages are kept, in seconds; 0 = the cluster default.
    #[arg(long)]
    pub retention_s: Option<u64>,
    /// Read the fields from a JSON file (config-file keys); flags override it.
    #[arg(long = "json", value_name = "FILE")]
    pub json_file: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tern connector set op1 --host 10.1.0.10:2775 --host 10.1.0.11:2775 \\
      --system-id tern --password pw --binds 2 --window 100 --max-tps 200
  tern connector set op1 --enabled false
  tern connector list --json
  tern connector delete op1        (refused while a route sends to it)")]
pub struct ConnectorArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub action: ConnectorAction,
}

#[derive(Debug, Subcommand)]
pub enum ConnectorAction {
    /// All operator connectors.
    List(ListArgs),
    /// One connector (password masked).
    Show(NameArgs),
    /// Create a connector, or change the fields given.
    Set(Box<ConnectorSet>),
    /// Remove a connector (no route may name it).
    Delete(NameArgs),
}

#[derive(Debug, Args)]
pub struct ConnectorSet {
    pub name: String,
    /// IP:PORT of the SMSC (repeat for redundant hosts; replaces the list).
    #[arg(long = "host", value_name = "IP:PORT")]
    pub hosts: Vec<String>,
    #[arg(long)]
    pub system_id: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
    #[arg(long)]
    pub system_type: Option<String>,
    /// `transceiver` or `transmitter+receiver`.
    #[arg(long)]
    pub bind_type: Option<String>,
    /// Binds opened to the SMSC.
    #[arg(long)]
    pub binds: Option<u16>,
    /// submit_sm outstanding per bind.
    #[arg(long)]
    pub window: Option<u16>,
    /// submit_sm per second over all binds; 0 = unlimited.
    #[arg(long)]
    pub max_tps: Option<u32>,
    #[arg(long)]
    pub enquire_link_s: Option<u32>,
    #[arg(long)]
    pub submit_timeout_ms: Option<u64>,
    /// as-is, hex, decimal, strip-leading-zeros, hex-in-receipt-decimal-in-resp,
    /// decimal-in-receipt-hex-in-resp.
    #[arg(long)]
    pub id_format: Option<String>,
    /// What data_coding 0 means to the operator: gsm7, latin1 or ascii.
    #[arg(long)]
    pub default_alphabet: Option<String>,
    /// as-submitted, udh, sar or payload.
    #[arg(long)]
    pub long_messages: Option<String>,
    #[arg(long, action = ArgAction::Set, value_name = "BOOL")]
    pub enabled: Option<bool>,
    /// Read the fields from a JSON file (config-file keys); flags override it.
    #[arg(long = "json", value_name = "FILE")]
    pub json_file: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tern route set uk --prefix 44 --connector op1 --connector op2
        (op1 first, op2 when op1 is unusable)
  tern route set uk --prefix 44 --connector op1:0:3 --connector op2:0:1
        (traffic shared 3:1)
  tern route set acme-uk --account acme --prefix 447 --connector op2
  tern route delete uk")]
pub struct RouteArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub action: RouteAction,
}

#[derive(Debug, Subcommand)]
pub enum RouteAction {
    /// All routes.
    List(ListArgs),
    /// One route.
    Show(NameArgs),
    /// Create a route, or change the fields given.
    Set(RouteSet),
    /// Remove a route.
    Delete(NameArgs),
}

#[derive(Debug, Args)]
pub struct RouteSet {
    pub name: String,
    /// Only this account's messages (default: any account).
    #[arg(long)]
    pub account: Option<String>,
    /// Destination prefix; the longest matching prefix wins.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Source address prefix.
    #[arg(long)]
    pub source: Option<String>,
    /// Among equally long prefixes, the lower wins.
    #[arg(long)]
    pub priority: Option<u32>,
    /// NAME[:PRIORITY[:WEIGHT]] (repeat; replaces the list). Without PRIORITY,
    /// connectors are tried in the order given; WEIGHT shares traffic within
    /// one priority (default 1).
    #[arg(long = "connector", value_name = "NAME[:PRIORITY[:WEIGHT]]")]
    pub connectors: Vec<String>,
    /// Read the fields from a JSON file (config-file keys); flags override it.
    #[arg(long = "json", value_name = "FILE")]
    pub json_file: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tern number-range set acme-short --prefix 4477009 --account acme
        (MO messages to 4477009... go to acme)
  tern number-range list")]
pub struct NumberRangeArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(subcommand)]
    pub action: NumberRangeAction,
}

#[derive(Debug, Subcommand)]
pub enum NumberRangeAction {
    /// All number ranges.
    List(ListArgs),
    /// One number range.
    Show(NameArgs),
    /// Create a number range, or change the fields given.
    Set(NumberRangeSet),
    /// Remove a number range.
    Delete(NameArgs),
}

#[derive(Debug, Args)]
pub struct NumberRangeSet {
    pub name: String,
    /// Destination prefix of the MO messages.
    #[arg(long)]
    pub prefix: Option<String>,
    /// The account they belong to.
    #[arg(long)]
    pub account: Option<String>,
    /// Read the fields from a JSON file (config-file keys); flags override it.
    #[arg(long = "json", value_name = "FILE")]
    pub json_file: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tern status
  TERN_ADMIN_URL=http://10.0.0.2:8080 TERN_ADMIN_TOKEN=... tern status --json")]
pub struct StatusArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The help text shared by the admin subcommands' long descriptions.
pub fn remote_help() -> &'static str {
    REMOTE_HELP
}

/// Why a command failed, already worded for the operator.
#[derive(Debug)]
struct Failure(String);

type Outcome = Result<(), Failure>;

/// One admin API call: method, path under the base URL, optional body.
fn call(
    remote: &Remote,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), Failure> {
    let base = remote.api.trim_end_matches('/');
    let url = format!("{base}{path}");
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build();
    let mut request = agent.request(method, &url);
    if let Some(token) = &remote.token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let result = match body {
        Some(body) => request
            .set("Content-Type", "application/json")
            .send_string(&body.to_string()),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(e)) => {
            return Err(Failure(format!(
                "cannot reach the admin API at {base} ({e}).\n\
                 Is `tern serve` running there with HTTP on? Point to a node with \
                 --api URL or TERN_ADMIN_URL."
            )))
        }
    };
    let status = response.status();
    let text = response
        .into_string()
        .map_err(|e| Failure(format!("{url}: reading the answer: {e}")))?;
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|_| {
            Failure(format!(
                "{url} answered {status} with something that is not the admin API's JSON; \
                 is --api the node's HTTP address?"
            ))
        })?
    };
    if status == 401 {
        return Err(Failure(match &remote.token {
            None => "no admin token given: pass --token TOKEN or set TERN_ADMIN_TOKEN \
                     (the node's http.admin_token)"
                .into(),
            Some(_) => format!(
                "the admin token was refused by {base}: it is wrong for this node \
                 (compare with its http.admin_token)"
            ),
        }));
    }
    Ok((status, value))
}

/// The API's error, as one line (with the field at fault when named).
fn api_error(status: u16, body: &Value) -> Failure {
    let message = body["error"]["message"].as_str().map_or_else(
        || format!("the node answered {status}: {body}"),
        str::to_string,
    );
    Failure(format!("{message} (HTTP {status})"))
}

fn expect_ok(result: (u16, Value)) -> Result<Value, Failure> {
    let (status, body) = result;
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(api_error(status, &body))
    }
}

fn print_json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(_) => println!("{value}"),
    }
}

/// A value as a table cell: strings bare, lists joined, missing as `-`.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints rows under headers, columns padded to their widest cell.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, text) in widths.iter_mut().zip(row) {
            *width = (*width).max(text.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// One object as `key: value` lines.
fn print_object(value: &Value) {
    if let Some(map) = value.as_object() {
        let width = map.keys().map(String::len).max().unwrap_or(0);
        for (key, v) in map {
            let text = match v {
                Value::Array(items) if items.iter().any(Value::is_object) => items
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                other => cell(other),
            };
            println!("{key:<width$}  {text}");
        }
    } else {
        println!("{value}");
    }
}

/// Columns of each list: header and the JSON key it shows.
fn columns(collection: &str) -> &'static [(&'static str, &'static str)] {
    match collection {
        "accounts" => &[
            ("SYSTEM_ID", "system_id"),
            ("ENABLED", "enabled"),
            ("MAX_TPS", "max_tps"),
            ("MAX_BINDS", "max_binds"),
            ("WINDOW", "window"),
            ("API_KEY", "api_key"),
            ("WEBHOOK_URL", "webhook_url"),
            ("ALLOWED_IPS", "allowed_ips"),
        ],
        "connectors" => &[
            ("NAME", "name"),
            ("ENABLED", "enabled"),
            ("HOSTS", "hosts"),
            ("SYSTEM_ID", "system_id"),
            ("BIND_TYPE", "bind_type"),
            ("BINDS", "binds"),
            ("WINDOW", "window"),
            ("MAX_TPS", "max_tps"),
        ],
        "routes" => &[
            ("NAME", "name"),
            ("ACCOUNT", "account"),
            ("PREFIX", "prefix"),
            ("SOURCE", "source"),
            ("PRIORITY", "priority"),
        ],
        _ => &[
            ("NAME", "name"),
            ("PREFIX", "prefix"),
            ("ACCOUNT", "account"),
        ],
    }
}

fn targets_cell(route: &Value) -> String {
    route["targets"]
        .as_array()
        .map(|targets| {
            targets
                .iter()
                .map(|t| {
                    format!(
                        "{}:{}:{}",
                        cell(&t["connector"]),
                        t["priority"],
                        t["weight"]
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn list(remote: &Remote, collection: &str, json_out: bool) -> Outcome {
    let items = expect_ok(call(
        remote,
        "GET",
        &format!("/admin/v1/{collection}"),
        None,
    )?)?;
    if json_out {
        print_json(&items);
        return Ok(());
    }
    let items = items.as_array().cloned().unwrap_or_default();
    let cols = columns(collection);
    let mut headers: Vec<&str> = cols.iter().map(|(h, _)| *h).collect();
    if collection == "routes" {
        headers.push("TARGETS (CONNECTOR:PRIORITY:WEIGHT)");
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            let mut row: Vec<String> = cols.iter().map(|(_, key)| cell(&item[*key])).collect();
            if collection == "routes" {
                row.push(targets_cell(item));
            }
            row
        })
        .collect();
    print_table(&headers, &rows);
    Ok(())
}

fn show(remote: &Remote, collection: &str, args: &NameArgs) -> Outcome {
    let item = expect_ok(call(
        remote,
        "GET",
        &format!("/admin/v1/{collection}/{}", args.name),
        None,
    )?)?;
    if args.json {
        print_json(&item);
    } else {
        print_object(&item);
    }
    Ok(())
}

fn delete(remote: &Remote, collection: &str, noun: &str, args: &NameArgs) -> Outcome {
    let answer = expect_ok(call(
        remote,
        "DELETE",
        &format!("/admin/v1/{collection}/{}", args.name),
        None,
    )?)?;
    if args.json {
        print_json(&answer);
    } else {
        println!("{noun} {} deleted", args.name);
    }
    Ok(())
}

/// `set`: PATCH when the object exists (only the fields given change), PUT
/// when it does not (the API then says which required field is missing).
fn set(
    remote: &Remote,
    collection: &str,
    noun: &str,
    name: &str,
    fields: Map<String, Value>,
) -> Outcome {
    let path = format!("/admin/v1/{collection}/{name}");
    let (status, current) = call(remote, "GET", &path, None)?;
    let exists = match status {
        200 => true,
        404 if current["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no ")) =>
        {
            false
        }
        _ => return Err(api_error(status, &current)),
    };
    let method = if exists { "PATCH" } else { "PUT" };
    let stored = expect_ok(call(remote, method, &path, Some(&Value::Object(fields)))?)?;
    println!(
        "{noun} {name} {}",
        if exists { "changed" } else { "created" }
    );
    print_object(&stored);
    Ok(())
}

/// Fields from `--json FILE`, which flags then override.
fn base_fields(file: Option<&String>) -> Result<Map<String, Value>, Failure> {
    let Some(file) = file else {
        return Ok(Map::new());
    };
    let text = std::fs::read_to_string(file).map_err(|e| Failure(format!("{file}: {e}")))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Failure(format!("{file}: must hold one JSON object"))),
        Err(e) => Err(Failure(format!("{file}: not JSON: {e}"))),
    }
}

fn put_some<T: Into<Value>>(fields: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(value) = value {
        fields.insert(key.into(), value.into());
    }
}

fn put_list(fields: &mut Map<String, Value>, key: &str, values: &[String]) {
    if !values.is_empty() {
        fields.insert(key.into(), json!(values));
    }
}

fn account_fields(args: &AccountSet) -> Result<Map<String, Value>, Failure> {
    let mut f = base_fields(args.json_file.as_ref())?;
    put_some(&mut f, "password", args.password.clone());
    put_some(&mut f, "api_key", args.api_key.clone());
    put_some(&mut f, "webhook_url", args.webhook_url.clone());
    put_some(&mut f, "webhook_secret", args.webhook_secret.clone());
    put_some(&mut f, "max_tps", args.max_tps);
    put_some(&mut f, "max_binds", args.max_binds);
    put_some(&mut f, "window", args.window);
    put_list(&mut f, "allowed_ips", &args.allowed_ips);
    put_list(&mut f, "allowed_senders", &args.allowed_senders);
    put_some(&mut f, "enabled", args.enabled);
    put_some(&mut f, "retention_s", args.retention_s);
    Ok(f)
}

fn connector_fields(args: &ConnectorSet) -> Result<Map<String, Value>, Failure> {
    let mut f = base_fields(args.json_file.as_ref())?;
    put_list(&mut f, "hosts", &args.hosts);
    put_some(&mut f, "system_id", args.system_id.clone());
    put_some(&mut f, "password", args.password.clone());
    put_some(&mut f, "system_type", args.system_type.clone());
    put_some(&mut f, "bind_type", args.bind_type.clone());
    put_some(&mut f, "binds", args.binds);
    put_some(&mut f, "window", args.window);
    put_some(&mut f, "max_tps", args.max_tps);
    put_some(&mut f, "enquire_link_s", args.enquire_link_s);
    put_some(&mut f, "submit_timeout_ms", args.submit_timeout_ms);
    put_some(&mut f, "id_format", args.id_format.clone());
    put_some(&mut f, "default_alphabet", args.default_alphabet.clone());
    put_some(&mut f, "long_messages", args.long_messages.clone());
    put_some(&mut f, "enabled", args.enabled);
    Ok(f)
}

/// `NAME[:PRIORITY[:WEIGHT]]`; without a priority, the position in the list.
fn parse_target(text: &str, position: usize) -> Result<Value, Failure> {
    let mut parts = text.split(':');
    let name = parts.next().unwrap_or_default();
    let number = |part: Option<&str>, what: &str, default: u64| -> Result<u64, Failure> {
        match part {
            None => Ok(default),
            Some(p) => p.parse().map_err(|_| {
                Failure(format!(
                    "--connector {text}: {what} `{p}` is not a whole number \
                     (form NAME[:PRIORITY[:WEIGHT]])"
                ))
            }),
        }
    };
    let priority = number(parts.next(), "priority", position as u64)?;
    let weight = number(parts.next(), "weight", 1)?;
    if name.is_empty() || parts.next().is_some() {
        return Err(Failure(format!(
            "--connector {text}: expected NAME[:PRIORITY[:WEIGHT]]"
        )));
    }
    Ok(json!({"connector": name, "priority": priority, "weight": weight}))
}

fn route_fields(args: &RouteSet) -> Result<Map<String, Value>, Failure> {
    let mut f = base_fields(args.json_file.as_ref())?;
    put_some(&mut f, "account", args.account.clone());
    put_some(&mut f, "prefix", args.prefix.clone());
    put_some(&mut f, "source", args.source.clone());
    put_some(&mut f, "priority", args.priority);
    if !args.connectors.is_empty() {
        let targets = args
            .connectors
            .iter()
            .enumerate()
            .map(|(i, t)| parse_target(t, i))
            .collect::<Result<Vec<_>, _>>()?;
        f.remove("connectors");
        f.insert("targets".into(), Value::Array(targets));
    }
    Ok(f)
}

fn number_range_fields(args: &NumberRangeSet) -> Result<Map<String, Value>, Failure> {
    let mut f = base_fields(args.json_file.as_ref())?;
    put_some(&mut f, "prefix", args.prefix.clone());
    put_some(&mut f, "account", args.account.clone());
    Ok(f)
}

fn status(args: &StatusArgs) -> Outcome {
    let s = expect_ok(call(&args.remote, "GET", "/admin/v1/status", None)?)?;
    if args.json {
        print_json(&s);
        return Ok(());
    }
    println!(
        "node {}  leader {}  term {}  commit {}  applied {}  messages {}",
        s["node_id"],
        s["leader_id"],
        s["term"],
        s["commit_index"],
        s["applied_index"],
        s["messages_in_state"]
    );
    println!();
    let rows = |key: &str, cols: &[&str]| -> Vec<Vec<String>> {
        s[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| cols.iter().map(|c| cell(&item[*c])).collect())
                    .collect()
            })
            .unwrap_or_default()
    };
    print_table(
        &["MEMBER", "ROLE", "UP", "LEADER"],
        &rows("members", &["id", "role", "up", "leader"]),
    );
    println!();
    print_table(
        &["ACCOUNT", "TRANSMITTER", "RECEIVER", "TRANSCEIVER"],
        &rows(
            "binds",
            &["account", "transmitter", "receiver", "transceiver"],
        ),
    );
    println!();
    print_table(
        &[
            "CONNECTOR",
            "ENABLED",
            "BINDS",
            "UP",
            "STATE",
            "SUBMITTED",
            "FAILED",
            "LAST_ERROR",
        ],
        &rows(
            "connectors",
            &[
                "name",
                "enabled",
                "binds_configured",
                "binds_up",
                "state",
                "submitted",
                "failed",
                "last_error",
            ],
        ),
    );
    Ok(())
}

/// Prints the failure and gives the exit code.
fn finish(outcome: Outcome) -> i32 {
    match outcome {
        Ok(()) => 0,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            1
        }
    }
}

pub fn run_account(args: AccountArgs) -> i32 {
    let (remote, c, noun) = (&args.remote, "accounts", "account");
    finish(match &args.action {
        AccountAction::List(a) => list(remote, c, a.json),
        AccountAction::Show(a) => show(remote, c, a),
        AccountAction::Set(a) => account_fields(a).and_then(|f| set(remote, c, noun, &a.name, f)),
        AccountAction::Delete(a) => delete(remote, c, noun, a),
    })
}

pub fn run_connector(args: ConnectorArgs) -> i32 {
    let (remote, c, noun) = (&args.remote, "connectors", "connector");
    finish(match &args.action {
        ConnectorAction::List(a) => list(remote, c, a.json),
        ConnectorAction::Show(a) => show(remote, c, a),
        ConnectorAction::Set(a) => {
            connector_fields(a).and_then(|f| set(remote, c, noun, &a.name, f))
        }
        ConnectorAction::Delete(a) => delete(remote, c, noun, a),
    })
}

pub fn run_route(args: RouteArgs) -> i32 {
    let (remote, c, noun) = (&args.remote, "routes", "route");
    finish(match &args.action {
        RouteAction::List(a) => list(remote, c, a.json),
        RouteAction::Show(a) => show(remote, c, a),
        RouteAction::Set(a) => route_fields(a).and_then(|f| set(remote, c, noun, &a.name, f)),
        RouteAction::Delete(a) => delete(remote, c, noun, a),
    })
}

pub fn run_number_range(args: NumberRangeArgs) -> i32 {
    let (remote, c, noun) = (&args.remote, "number-ranges", "number range");
    finish(match &args.action {
        NumberRangeAction::List(a) => list(remote, c, a.json),
        NumberRangeAction::Show(a) => show(remote, c, a),
        NumberRangeAction::Set(a) => {
            number_range_fields(a).and_then(|f| set(remote, c, noun, &a.name, f))
        }
        NumberRangeAction::Delete(a) => delete(remote, c, noun, a),
    })
}

pub fn run_status(args: StatusArgs) -> i32 {
    finish(status(&args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_defaults_from_position() {
        assert_eq!(
            parse_target("op1", 2).ok(),
            Some(json!({"connector": "op1", "priority": 2, "weight": 1}))
        );
        assert_eq!(
            parse_target("op1:0:3", 2).ok(),
            Some(json!({"connector": "op1", "priority": 0, "weight": 3}))
        );
        assert!(parse_target("op1:x", 0).is_err());
        assert!(parse_target(":1", 0).is_err());
        assert!(parse_target("a:1:2:3", 0).is_err());
    }

    #[test]
    fn flags_override_the_file_and_only_given_fields_are_sent() {
        let args = AccountSet {
            name: "acme".into(),
            password: None,
            api_key: None,
            webhook_url: None,
            webhook_secret: None,
            max_tps: Some(5),
            max_binds: None,
            window: None,
            allowed_ips: Vec::new(),
            allowed_senders: vec!["ACME".into()],
            enabled: Some(false),
            retention_s: None,
            json_file: None,
        };
        let fields = account_fields(&args).ok().unwrap_or_default();
        assert_eq!(
            Value::Object(fields),
            json!({"max_tps": 5, "allowed_senders": ["ACME"], "enabled": false})
        );
    }

    #[test]
    fn cells_read_well() {
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
        assert_eq!(cell(&json!(7)), "7");
    }

    #[test]
    fn unreachable_node_names_the_address_and_the_setting() {
        let remote = Remote {
            api: "http://127.0.0.1:1".into(),
            token: None,
        };
        let Err(Failure(message)) = call(&remote, "GET", "/admin/v1/status", None) else {
            panic!("nothing listens on port 1");
        };
        assert!(message.contains("http://127.0.0.1:1"), "{message}");
        assert!(message.contains("TERN_ADMIN_URL"), "{message}");
    }
}
