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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

mod common;
use common::{free_port, temp_dir};

use serde_json::Value;

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
        let dir = temp_dir("admin");
        let (smpp_port, store_port, http_port) = (free_port(), free_port(), free_port());
        let config = dir.path().join("tern.toml");
        let text = format!(
            "[node]\ndata_dir = \"{data}\"\n\
             [smpp]\nlisten = \"127.0.0.1:{smpp_port}\"\n\
             [store]\nlisten = \"127.0.0.1:{store_port}\"\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\nadmin_token = \"{TOKEN}\"\n",
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
        let mut node = Node {
            child,
            log,
            smpp_port,
            http_port,
            _dir: dir,
        };
        for port in [smpp_port, http_port] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            common::wait_listening(addr, "tern serve", &mut node.child, &node.log);
        }
        node
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
