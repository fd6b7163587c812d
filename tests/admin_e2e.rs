//! The admin API and CLI end to end: a real `tern serve` with an admin token,
//! the real `tern` binary as the CLI (a child process, as an operator runs
//! it), and Python smpplib as the customer (tests/interop/smpp_client.py).
//!
//! Covered: a connector, an account and a route created through the CLI are
//! listed by `--json`; the new account binds and submits at once (no
//! restart); the admin API shows that message's full record; `tern status`
//! reports the node as leader; a wrong or missing token, an unreachable
//! address and a bad field each end the CLI non-zero with a message that
//! says what to fix; deleting the account makes a new bind fail.
//!
//! Account lifecycle, with a customer written here (blocking sockets over
//! `tern::smpp`, so it sees the unbind): deleting an account unbinds its open
//! binds within seconds and leaves other accounts' binds alone; a rotated or
//! removed API key is refused on the very next request, on every core; an
//! account window above the node's configured window is honoured in full,
//! and one above the hard ceiling is refused by the admin API.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, read_pdu, temp_dir};

use bytes::Bytes;
use serde_json::{json, Value};
use tern::smpp::command::CommandId;
use tern::smpp::pdu::{Address, Bind, Body, Password, Pdu, SubmitSm, SystemId};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/smpp_client.py");
const TOKEN: &str = "admin-e2e-token";

/// A running `tern serve`; killed when dropped.
struct Node {
    child: Child,
    log: PathBuf,
    smpp_port: u16,
    http_port: u16,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        Node::start_with("")
    }

    /// A node whose config file adds `extra` (TOML tables) after `[http]`.
    fn start_with(extra: &str) -> Node {
        let mut node = Node::spawn(1, free_port(), "", extra);
        node.wait_listening();
        node
    }

    /// Three nodes in one raft group, each listening.
    fn start_cluster() -> Vec<Node> {
        let store_ports = [free_port(), free_port(), free_port()];
        let mut nodes: Vec<Node> = (1..=3u64)
            .map(|id| {
                let peers: Vec<String> = (1..=3u64)
                    .zip(store_ports)
                    .filter(|(peer, _)| *peer != id)
                    .map(|(peer, port)| format!("{{ id = {peer}, addr = \"127.0.0.1:{port}\" }}"))
                    .collect();
                let store = format!(
                    "peers = [{}]\nsecret = \"admin-e2e-cluster-secret\"\n",
                    peers.join(", ")
                );
                Node::spawn(id, store_ports[(id - 1) as usize], &store, "")
            })
            .collect();
        // Each node waits for a quorum before it listens: all run first.
        for node in &mut nodes {
            node.wait_listening();
        }
        nodes
    }

    /// Starts `tern serve` as node `id`; `store` adds keys to `[store]`.
    fn spawn(id: u64, store_port: u16, store: &str, extra: &str) -> Node {
        let dir = temp_dir("admin");
        let (smpp_port, http_port) = (free_port(), free_port());
        let config = dir.path().join("tern.toml");
        let text = format!(
            "[node]\nid = {id}\ndata_dir = \"{data}\"\n\
             [smpp]\nlisten = \"127.0.0.1:{smpp_port}\"\n\
             [store]\nlisten = \"127.0.0.1:{store_port}\"\n{store}\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\nadmin_token = \"{TOKEN}\"\n{extra}",
            data = dir.path().join("data").display()
        );
        std::fs::write(&config, text).expect("write config");
        let log = dir.path().join("serve.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start tern serve");
        Node {
            child,
            log,
            smpp_port,
            http_port,
            _dir: dir,
        }
    }

    fn wait_listening(&mut self) {
        for port in [self.smpp_port, self.http_port] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            common::wait_listening(addr, "tern serve", &mut self.child, &self.log);
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One HTTP request on a fresh connection (so requests spread over the
    /// node's cores); the status and the body, whatever the status.
    fn http(&self, method: &str, path: &str, bearer: &str, body: Option<&Value>) -> (u16, String) {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(20))
            .build();
        let request = agent
            .request(method, &format!("{}{path}", self.url()))
            .set("Authorization", &format!("Bearer {bearer}"));
        let result = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
            None => request.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("{method} {path}: {e}\n{}", self.log_text()),
        };
        let status = response.status();
        (status, response.into_string().unwrap_or_default())
    }

    /// An admin call that must succeed.
    fn admin_ok(&self, method: &str, path: &str, body: Option<&Value>) {
        let (status, text) = self.http(method, path, TOKEN, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {text}\n{}",
            self.log_text()
        );
    }

    /// The value of one unlabelled or fully labelled sample in /metrics.
    fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.http("GET", "/metrics", "", None);
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    }

    /// The CLI with this node's address and token in the environment.
    fn cli(&self, args: &[&str]) -> Output {
        cli_with(&self.url(), Some(TOKEN), args)
    }

    /// The CLI, which must succeed; its stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tern {args:?} failed:\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli_with(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tern"));
    command
        .args(args)
        .env("TERN_ADMIN_URL", url)
        .env_remove("TERN_ADMIN_TOKEN");
    if let Some(token) = token {
        command.env("TERN_ADMIN_TOKEN", token);
    }
    command.output().expect("run the tern CLI")
}

/// smpplib: bind as `system_id` and submit `count` GSM messages.
fn smpp_session(port: u16, system_id: &str, password: &str, count: u32) -> Value {
    let out = Command::new("python3")
        .arg(CLIENT)
        .args(["session", "--port", &port.to_string()])
        .args(["--system-id", system_id, "--password", password])
        .args(["--gsm", &count.to_string()])
        .output()
        .expect(
            "python3 must be installed with smpplib (`pip install smpplib==2.2.4`, or run .ci/run)",
        );
    assert!(
        out.status.success(),
        "smpplib client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client prints JSON")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cli_provisions_a_customer_that_binds_at_once_and_loses_it_on_delete() {
    let node = Node::start();
    let operator_port = free_port().to_string();
    node.cli_ok(&[
        "connector",
        "set",
        "op1",
        "--host",
        &format!("127.0.0.1:{operator_port}"),
        "--system-id",
        "tern",
        "--password",
        "oppw",
    ]);
    node.cli_ok(&[
        "account",
        "set",
        "acme",
        "--password",
        "pw1",
        "--max-tps",
        "500",
    ]);
    node.cli_ok(&[
        "route",
        "set",
        "uk",
        "--prefix",
        "44",
        "--connector",
        "op1:0:3",
    ]);

    let accounts: Value =
        serde_json::from_str(&node.cli_ok(&["account", "list", "--json"])).expect("JSON list");
    let acme = accounts
        .as_array()
        .and_then(|list| list.iter().find(|a| a["system_id"] == "acme"))
        .unwrap_or_else(|| panic!("acme is listed: {accounts}"));
    assert_eq!(acme["max_tps"], 500, "{acme}");
    assert_eq!(acme["api_key"], Value::Null, "no API key was given: {acme}");
    assert_eq!(acme["password"], "********", "secrets are masked: {acme}");
    assert!(!accounts.to_string().contains("hmac-sha256"), "{accounts}");
    let routes: Value =
        serde_json::from_str(&node.cli_ok(&["route", "list", "--json"])).expect("JSON list");
    assert_eq!(routes[0]["name"], "uk", "{routes}");
    assert_eq!(routes[0]["targets"][0]["weight"], 3, "{routes}");
    let connectors = node.cli_ok(&["connector", "show", "op1", "--json"]);
    assert!(
        !connectors.contains("oppw"),
        "connector password masked: {connectors}"
    );
    let table = node.cli_ok(&["account", "list"]);
    assert!(
        table.starts_with("SYSTEM_ID") && table.contains("acme"),
        "{table}"
    );

    // `set` on an existing account changes only what it names: the password
    // given at creation still binds below.
    let changed = node.cli_ok(&["account", "set", "acme", "--max-tps", "700"]);
    assert!(changed.starts_with("account acme changed"), "{changed}");
    let shown: Value =
        serde_json::from_str(&node.cli_ok(&["account", "show", "acme", "--json"])).expect("JSON");
    assert_eq!(shown["max_tps"], 700, "{shown}");

    // The new account binds and submits with no restart.
    let session = smpp_session(node.smpp_port, "acme", "pw1", 2);
    assert_eq!(session["bind"], 0, "acme binds: {session}");
    let acks = session["acks"].as_array().cloned().unwrap_or_default();
    assert_eq!(acks.len(), 2, "both submits acknowledged: {session}");

    // Any account's message, full record, through the admin API.
    let id = acks[0].as_str().expect("message id");
    let text = ureq::get(&format!("{}/admin/v1/messages/{id}", node.url()))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .expect("message lookup")
        .into_string()
        .expect("a body");
    let record: Value = serde_json::from_str(&text).expect("JSON record");
    assert_eq!(record["account"], "acme", "{record}");
    assert_eq!(record["destination"]["digits"], "447700900123", "{record}");

    let status: Value =
        serde_json::from_str(&node.cli_ok(&["status", "--json"])).expect("JSON status");
    assert_eq!(status["node_id"], 1, "{status}");
    assert_eq!(status["leader_id"], 1, "{status}");
    assert_eq!(status["members"][0]["role"], "voter", "{status}");
    assert_eq!(status["connectors"][0]["name"], "op1", "{status}");

    // A bad field: refused, the field named, non-zero exit.
    let bad = node.cli(&["account", "set", "other", "--password", "much-too-long"]);
    assert!(!bad.status.success());
    assert!(stderr_of(&bad).contains("password"), "{}", stderr_of(&bad));
    // A connector a route uses cannot go.
    let in_use = node.cli(&["connector", "delete", "op1"]);
    assert!(!in_use.status.success());
    assert!(stderr_of(&in_use).contains("uk"), "{}", stderr_of(&in_use));

    node.cli_ok(&["account", "delete", "acme"]);
    let refused = smpp_session(node.smpp_port, "acme", "pw1", 0);
    assert_ne!(
        refused["bind"], 0,
        "a deleted account cannot bind: {refused}"
    );
    let gone = node.cli(&["account", "show", "acme"]);
    assert!(!gone.status.success());
    assert!(
        stderr_of(&gone).contains("no account"),
        "{}",
        stderr_of(&gone)
    );
}

#[test]
fn cli_says_what_to_fix_when_token_or_address_is_wrong() {
    let node = Node::start();
    let wrong = cli_with(&node.url(), Some("not-the-token"), &["account", "list"]);
    assert!(!wrong.status.success());
    assert!(
        stderr_of(&wrong).contains("token was refused"),
        "{}",
        stderr_of(&wrong)
    );
    let missing = cli_with(&node.url(), None, &["status"]);
    assert!(!missing.status.success());
    assert!(
        stderr_of(&missing).contains("TERN_ADMIN_TOKEN"),
        "{}",
        stderr_of(&missing)
    );
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let unreachable = cli_with(&nowhere, Some(TOKEN), &["account", "list"]);
    assert!(!unreachable.status.success());
    let text = stderr_of(&unreachable);
    assert!(
        text.contains(&nowhere) && text.contains("--api"),
        "names the address and how to set it: {text}"
    );
    // Nothing was changed by the refused calls.
    let accounts: Value =
        serde_json::from_str(&node.cli_ok(&["account", "list", "--json"])).expect("JSON list");
    assert_eq!(accounts, Value::Array(Vec::new()), "{accounts}");
}

// ---------------------------------------------------------------- lifecycle

fn send_pdu(stream: &mut TcpStream, pdu: &Pdu) {
    let bytes = pdu.to_bytes().expect("encode");
    stream.write_all(&bytes).expect("send");
}

/// A transceiver bind as `system_id`; the bind_resp's status.
fn bind(port: u16, system_id: &str, password: &str) -> (TcpStream, u32) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let bind = Bind {
        system_id: SystemId::from_text(system_id).expect("system_id"),
        password: Password::from_text(password).expect("password"),
        interface_version: 0x34,
        ..Bind::default()
    };
    send_pdu(&mut stream, &Pdu::new(1, Body::BindTransceiver(bind)));
    let resp = read_pdu(&mut stream).expect("bind_resp");
    assert_eq!(resp.command_id(), CommandId::BindTransceiverResp);
    (stream, resp.command_status.0)
}

fn submit_pdu(sequence_number: u32) -> Pdu {
    let sm = SubmitSm {
        source_addr_ton: 5,
        source_addr: Address::from_text("TERN").expect("source"),
        dest_addr_ton: 1,
        dest_addr_npi: 1,
        destination_addr: Address::from_text("447700900123").expect("destination"),
        short_message: Bytes::from_static(b"window test"),
        ..SubmitSm::default()
    };
    Pdu::new(sequence_number, Body::SubmitSm(sm))
}

#[test]
fn deleting_an_account_unbinds_its_open_binds_and_only_those() {
    let node = Node::start();
    for name in ["leaving", "staying"] {
        node.admin_ok(
            "PUT",
            &format!("/admin/v1/accounts/{name}"),
            Some(&json!({"password": "pw"})),
        );
    }
    let (mut leaving, status) = bind(node.smpp_port, "leaving", "pw");
    assert_eq!(status, 0, "leaving binds");
    let (mut staying, status) = bind(node.smpp_port, "staying", "pw");
    assert_eq!(status, 0, "staying binds");

    node.admin_ok("DELETE", "/admin/v1/accounts/leaving", None);
    let deleted_at = Instant::now();
    // The server unbinds (the client answers) and closes; skip anything else
    // it may send first (an enquire_link).
    let mut unbound = false;
    loop {
        match read_pdu(&mut leaving) {
            Ok(pdu) if pdu.command_id() == CommandId::Unbind => {
                send_pdu(
                    &mut leaving,
                    &Pdu::new(pdu.sequence_number, Body::UnbindResp),
                );
                unbound = true;
            }
            Ok(pdu) if pdu.command_id() == CommandId::EnquireLink => {
                send_pdu(
                    &mut leaving,
                    &Pdu::new(pdu.sequence_number, Body::EnquireLinkResp),
                );
            }
            Ok(other) => panic!("unexpected {other:?}"),
            // Closed (or timed out: the elapsed check below tells).
            Err(_) => break,
        }
    }
    let elapsed = deleted_at.elapsed();
    assert!(unbound, "the bind of a deleted account got an unbind");
    assert!(
        elapsed < Duration::from_secs(5),
        "closed {elapsed:?} after the delete\n{}",
        node.log_text()
    );
    let (_refused, status) = bind(node.smpp_port, "leaving", "pw");
    assert_ne!(status, 0, "a deleted account cannot bind again");

    // Another account's bind is untouched.
    send_pdu(&mut staying, &Pdu::new(7, Body::EnquireLink));
    let answer = read_pdu(&mut staying).expect("staying still answers");
    assert_eq!(answer.command_id(), CommandId::EnquireLinkResp);
    assert_eq!(node.metric("tern_binds_revoked_total"), 1.0);
    assert!(
        node.log_text().contains("account removed"),
        "the log says why:\n{}",
        node.log_text()
    );

    // A changed password closes the bind too: the customer binds again.
    node.admin_ok(
        "PATCH",
        "/admin/v1/accounts/staying",
        Some(&json!({"password": "new"})),
    );
    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match read_pdu(&mut staying) {
            Ok(pdu) if pdu.command_id() == CommandId::Unbind => {
                send_pdu(
                    &mut staying,
                    &Pdu::new(pdu.sequence_number, Body::UnbindResp),
                );
            }
            Ok(_) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "a bind with the old password is closed");
    let (_again, status) = bind(node.smpp_port, "staying", "new");
    assert_eq!(status, 0, "the new password binds");
}

#[test]
fn a_rotated_or_removed_api_key_is_refused_on_the_next_request() {
    let node = Node::start_with("[upstream]\nembedded_simulator = true\n");
    node.admin_ok(
        "PUT",
        "/admin/v1/accounts/keyed",
        Some(&json!({"password": "pw", "api_key": "key-one"})),
    );
    let message = json!({"from": "Acme", "to": "447700900123", "text": "hello"});
    // Fresh connections spread over the cores: each core caches the key.
    for _ in 0..8 {
        let (status, text) = node.http("POST", "/v1/messages", "key-one", Some(&message));
        assert_eq!(status, 201, "{text}");
    }
    node.admin_ok(
        "PATCH",
        "/admin/v1/accounts/keyed",
        Some(&json!({"api_key": "key-two"})),
    );
    for _ in 0..8 {
        let (status, text) = node.http("POST", "/v1/messages", "key-one", Some(&message));
        assert_eq!(status, 401, "the old key is refused at once: {text}");
    }
    let (status, text) = node.http("POST", "/v1/messages", "key-two", Some(&message));
    assert_eq!(status, 201, "{text}");

    node.admin_ok("DELETE", "/admin/v1/accounts/keyed", None);
    for _ in 0..8 {
        let (status, text) = node.http("POST", "/v1/messages", "key-two", Some(&message));
        assert_eq!(status, 401, "a removed account's key is refused: {text}");
    }
}

#[test]
fn an_account_window_above_the_configured_one_is_honoured() {
    const WINDOW: u32 = 400;
    let node = Node::start_with("[upstream]\nembedded_simulator = true\n");
    // The node's own window is the default (100); the account asks for more.
    let (status, text) = node.http(
        "PUT",
        "/admin/v1/accounts/wide",
        TOKEN,
        Some(&json!({"password": "pw", "window": 70_000})),
    );
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("window") && text.contains("65535"), "{text}");
    node.admin_ok(
        "PUT",
        "/admin/v1/accounts/wide",
        Some(&json!({"password": "pw", "window": WINDOW})),
    );
    let (mut stream, status) = bind(node.smpp_port, "wide", "pw");
    assert_eq!(status, 0, "wide binds");
    // Every submit in one write: the server reads them before any commits,
    // so all WINDOW are outstanding at once.
    let mut burst = Vec::new();
    for sequence_number in 1..=WINDOW {
        burst.extend_from_slice(&submit_pdu(sequence_number + 1).to_bytes().expect("encode"));
    }
    stream.write_all(&burst).expect("send the burst");
    let mut answered = 0;
    while answered < WINDOW {
        let pdu = read_pdu(&mut stream)
            .unwrap_or_else(|e| panic!("after {answered} answers: {e}\n{}", node.log_text()));
        if pdu.command_id() == CommandId::EnquireLink {
            send_pdu(
                &mut stream,
                &Pdu::new(pdu.sequence_number, Body::EnquireLinkResp),
            );
            continue;
        }
        assert_eq!(pdu.command_id(), CommandId::SubmitSmResp, "{pdu:?}");
        assert_eq!(
            pdu.command_status.0, 0,
            "submit {} refused within the window: {pdu:?}",
            pdu.sequence_number
        );
        answered += 1;
    }
}

/// Waits for the server to unbind `stream` (answering it) and close it;
/// true when that happened within `within`.
fn unbound_and_closed(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut unbound = false;
    while Instant::now() < deadline {
        match read_pdu(stream) {
            Ok(pdu) if pdu.command_id() == CommandId::Unbind => {
                send_pdu(stream, &Pdu::new(pdu.sequence_number, Body::UnbindResp));
                unbound = true;
            }
            Ok(pdu) if pdu.command_id() == CommandId::EnquireLink => {
                send_pdu(
                    stream,
                    &Pdu::new(pdu.sequence_number, Body::EnquireLinkResp),
                );
            }
            Ok(_) => {}
            Err(_) => return unbound && Instant::now() < deadline,
        }
    }
    false
}

#[test]
fn an_account_deleted_through_one_node_is_unbound_on_the_others() {
    let nodes = Node::start_cluster();
    let (first, others) = nodes.split_first().expect("three nodes");
    first.admin_ok(
        "PUT",
        "/admin/v1/accounts/roaming",
        Some(&json!({"password": "pw"})),
    );
    // The admin call returned after commit on the first node; the others
    // apply it a moment later.
    let mut binds = Vec::new();
    for node in others {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            let (stream, status) = bind(node.smpp_port, "roaming", "pw");
            if status == 0 {
                break stream;
            }
            assert!(
                Instant::now() < deadline,
                "the account never reached a follower\n{}",
                node.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        binds.push(stream);
    }
    first.admin_ok("DELETE", "/admin/v1/accounts/roaming", None);
    for (stream, node) in binds.iter_mut().zip(others) {
        assert!(
            unbound_and_closed(stream, Duration::from_secs(5)),
            "the bind on another node was not unbound\n{}",
            node.log_text()
        );
    }
}
