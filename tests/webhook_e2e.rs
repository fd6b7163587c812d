//! DLR webhooks end to end: the real `tern serve` binary on 127.0.0.1 with
//! its embedded simulated operator (every message DELIVRD at once), an
//! account with a `webhook_url` and a `webhook_secret`, Python smpplib
//! (tests/interop/smpp_client.py) submitting with registered_delivery, and a
//! receiver written with Python's `http.server` (a server we did not write)
//! that logs every request and answers with the statuses it is told.
//!
//! Covered: the receipt arrives as signed JSON whose signature verifies with
//! the account's secret over "<timestamp>.<body>", with the message id the
//! customer got; a receiver that answers 500 twice then 200 gets the same
//! receipt exactly three times, with growing gaps, and then no more.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, temp_dir};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/smpp_client.py");
const SECRET: &str = "webhook-test-secret";

/// The receiver: answers each POST with the next status of argv[2] (a
/// comma-separated list; 200 once it runs out) and prints one JSON line per
/// request. HTTP/1.1, so tern may keep the connection alive.
const RECEIVER: &str = r#"
import http.server, json, sys, threading
statuses = [int(s) for s in sys.argv[2].split(",") if s]
lock = threading.Lock()
class Hook(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            status = statuses.pop(0) if statuses else 200
            print(json.dumps({"path": self.path, "status": status,
                              "headers": {k.lower(): v for k, v in self.headers.items()},
                              "body": body.decode("utf-8")}), flush=True)
        reply = b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hook)
print(json.dumps({"listening": server.server_address[1]}), flush=True)
server.serve_forever()
"#;

/// The Python receiver; killed when dropped.
struct HookReceiver {
    child: Child,
    port: u16,
    requests: Receiver<(Instant, Value)>,
}

impl HookReceiver {
    fn start(statuses: &str) -> HookReceiver {
        let mut child = Command::new("python3")
            .args(["-c", RECEIVER, "0", statuses])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 must be installed");
        let stdout: ChildStdout = child.stdout.take().expect("receiver stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .expect("the receiver says where it listens");
        let port = serde_json::from_str::<Value>(&first).expect("JSON")["listening"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("a port");
        let (tx, requests) = mpsc::channel();
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line).expect("receiver prints JSON");
                if tx.send((Instant::now(), value)).is_err() {
                    break;
                }
            }
        });
        HookReceiver {
            child,
            port,
            requests,
        }
    }

    /// Requests received until `deadline`, stopping early once `enough` came.
    fn collect(&self, enough: usize, within: Duration) -> Vec<(Instant, Value)> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < enough {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.requests.recv_timeout(left) {
                Ok(request) => got.push(request),
                Err(_) => break,
            }
        }
        got
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `tern serve`; killed when dropped.
struct Server {
    child: Child,
    log: PathBuf,
    smpp_port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(name: &str, hook_port: u16) -> Server {
        let dir = temp_dir(name);
        let smpp_port = free_port();
        let config = dir.path().join("tern.toml");
        let text = format!(
            "[node]\ndata_dir = \"{data}\"\n\
             [smpp]\nlisten = \"127.0.0.1:{smpp_port}\"\n\
             [store]\nlisten = \"127.0.0.1:{store}\"\n\
             [http]\nlisten = \"\"\n\
             [upstream]\nembedded_simulator = true\n\
             [[account]]\nsystem_id = \"trial\"\npassword = \"trial\"\n\
             webhook_url = \"http://127.0.0.1:{hook_port}/hooks/dlr?src=tern\"\n\
             webhook_secret = \"{SECRET}\"\n",
            data = dir.path().join("data").display(),
            store = free_port(),
        );
        std::fs::write(&config, text).expect("write config");
        let log = dir.path().join("serve.log");
        let child = start_serve(&config, &log);
        let mut server = Server {
            child,
            log,
            smpp_port,
            _dir: dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], smpp_port));
        common::wait_listening(addr, "tern serve", &mut server.child, &server.log);
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Submits one message with registered_delivery; its id.
    fn submit_one(&self) -> String {
        let out = Command::new("python3")
            .arg(CLIENT)
            .args([
                "session",
                "--port",
                &self.smpp_port.to_string(),
                "--gsm",
                "1",
            ])
            .output()
            .expect("python3 with smpplib (`pip install smpplib==2.2.4`, or run .ci/run)");
        assert!(
            out.status.success(),
            "smpplib client failed:\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        let value: Value = serde_json::from_slice(&out.stdout).expect("client prints JSON");
        assert_eq!(value["bind"], 0, "{value}");
        value["acks"][0]
            .as_str()
            .unwrap_or_else(|| panic!("one message acknowledged: {value}"))
            .to_string()
    }
}

fn start_serve(config: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start tern serve")
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a receiver does: recompute the signature over "<timestamp>.<body>".
fn signature_verifies(request: &Value) -> bool {
    let headers = &request["headers"];
    let (Some(timestamp), Some(signature), Some(body)) = (
        headers["x-tern-timestamp"].as_str(),
        headers["x-tern-signature"].as_str(),
        request["body"].as_str(),
    ) else {
        return false;
    };
    let Some(hex_mac) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(mac_bytes) = hex::decode(hex_mac) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.verify_slice(&mac_bytes).is_ok()
}

fn body_of(request: &Value) -> Value {
    serde_json::from_str(request["body"].as_str().expect("a body")).expect("a JSON body")
}

#[test]
fn dlr_arrives_as_signed_json() {
    let receiver = HookReceiver::start("");
    let server = Server::start("webhook-signed", receiver.port);
    let id = server.submit_one();
    let got = receiver.collect(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "no webhook came:\n{}", server.log_text());
    let request = &got[0].1;
    assert_eq!(request["path"], "/hooks/dlr?src=tern");
    assert_eq!(request["headers"]["content-type"], "application/json");
    let timestamp: u64 = request["headers"]["x-tern-timestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("a unix timestamp");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert!(now_s.abs_diff(timestamp) < 60, "{timestamp} vs {now_s}");
    assert!(signature_verifies(request), "bad signature: {request}");
    // A tampered body no longer verifies: the check above is a real one.
    let mut tampered = request.clone();
    tampered["body"] = Value::String(
        request["body"]
            .as_str()
            .expect("a body")
            .replace("DELIVRD", "UNDELIV"),
    );
    assert!(!signature_verifies(&tampered));

    let body = body_of(request);
    assert_eq!(body["type"], "dlr");
    assert_eq!(body["message_id"], id.as_str());
    assert_eq!(body["account"], "trial");
    assert_eq!(body["status"], "DELIVRD");
    assert_eq!(body["message_state"], 2);
    assert_eq!(body["error_code"], 0);
    assert!(body["operator_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(body["connector"].as_str().is_some());
    assert!(body["done_at_ms"].as_u64().is_some());
    assert!(body["submitted_at_ms"].as_u64().is_some());
    assert!(body["to"].as_str().is_some() && body["from"].as_str().is_some());
    // Acknowledged and committed: not sent again.
    assert!(receiver.collect(1, Duration::from_secs(3)).is_empty());
}

#[test]
fn failed_posts_are_retried_until_a_2xx_then_stop() {
    let receiver = HookReceiver::start("500,500");
    let server = Server::start("webhook-retry", receiver.port);
    let id = server.submit_one();
    let got = receiver.collect(3, Duration::from_secs(30));
    assert_eq!(
        got.len(),
        3,
        "expected three attempts:\n{}",
        server.log_text()
    );
    let statuses: Vec<u64> = got
        .iter()
        .map(|(_, r)| r["status"].as_u64().expect("status"))
        .collect();
    assert_eq!(statuses, [500, 500, 200]);
    for (_, request) in &got {
        assert!(signature_verifies(request), "bad signature: {request}");
        let body = body_of(request);
        assert_eq!(body["message_id"], id.as_str());
        assert_eq!(body["type"], "dlr");
    }
    // Backoff with jitter: the first retry waits 0.5..=1 s, the second 1..=2 s.
    let first_gap = got[1].0 - got[0].0;
    let second_gap = got[2].0 - got[1].0;
    assert!(first_gap >= Duration::from_millis(400), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(900), "{second_gap:?}");
    // The 200 committed DlrDelivered: nothing more comes.
    let more = receiver.collect(1, Duration::from_secs(5));
    assert!(more.is_empty(), "sent again after a 2xx: {more:?}");
}
