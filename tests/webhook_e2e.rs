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
//!
//! HTTPS: a receiver on rustls (a CA and a leaf certificate for
//! localhost/127.0.0.1 made at test time with rcgen) gets the signed receipt
//! over TLS when the node trusts the CA through `webhook.ca_file`; a node
//! without that CA fails the handshake, sends no request, and keeps the
//! receipt owed: restarted with the CA, it delivers it.
//!
//! MO: `tern sim` originates MO messages towards a number range of a
//! webhook account; each arrives as a signed `type: "mo"` body with the
//! sender, the number and the text.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
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
class Server(http.server.ThreadingHTTPServer):
    # tern killed at the end of a test resets its keep-alive connections.
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)
server = Server(("127.0.0.1", int(sys.argv[1])), Hook)
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

    fn collect(&self, enough: usize, within: Duration) -> Vec<(Instant, Value)> {
        collect(&self.requests, enough, within)
    }
}

/// Requests received within `within`, stopping early once `enough` came.
fn collect(
    requests: &Receiver<(Instant, Value)>,
    enough: usize,
    within: Duration,
) -> Vec<(Instant, Value)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < enough {
        let left = deadline.saturating_duration_since(Instant::now());
        match requests.recv_timeout(left) {
            Ok(request) => got.push(request),
            Err(_) => break,
        }
    }
    got
}

/// A test CA and the PEM of its certificate.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for localhost and 127.0.0.1, and its key.
    fn leaf(
        &self,
    ) -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf signed by the CA");
        let private = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        (cert.der().clone(), private.into())
    }
}

/// An HTTPS receiver on rustls over blocking std sockets: answers every
/// POST 200 and reports it as the Python receiver does; counts handshakes
/// that failed. Listens until the test process ends.
struct TlsReceiver {
    port: u16,
    requests: Receiver<(Instant, Value)>,
    failed_handshakes: Arc<AtomicUsize>,
}

impl TlsReceiver {
    fn start(ca: &TestCa) -> TlsReceiver {
        let (cert, key) = ca.leaf();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server certificate");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let port = listener.local_addr().expect("local address").port();
        let (tx, requests) = mpsc::channel();
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let failed = Arc::clone(&failed_handshakes);
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let config = Arc::clone(&config);
                let tx = tx.clone();
                let failed = Arc::clone(&failed);
                thread::spawn(move || serve_tls(stream, config, tx, &failed));
            }
        });
        TlsReceiver {
            port,
            requests,
            failed_handshakes,
        }
    }

    fn collect(&self, enough: usize, within: Duration) -> Vec<(Instant, Value)> {
        collect(&self.requests, enough, within)
    }
}

/// One TLS connection: HTTP/1.1 requests in turn (keep-alive) until closed.
fn serve_tls(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    tx: Sender<(Instant, Value)>,
    failed: &AtomicUsize,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let connection = rustls::ServerConnection::new(config).expect("server connection");
    let mut tls = rustls::StreamOwned::new(connection, stream);
    // The handshake happens on first use; finish it here to count failures.
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
    let mut reader = BufReader::new(tls);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut headers = serde_json::Map::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim().to_ascii_lowercase();
                let value = value.trim().to_string();
                if name == "content-length" {
                    content_length = value.parse().expect("a Content-Length");
                }
                headers.insert(name, Value::String(value));
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request = serde_json::json!({
            "path": path,
            "status": 200,
            "headers": headers,
            "body": String::from_utf8(body).expect("a UTF-8 body"),
        });
        let _ = tx.send((Instant::now(), request));
        let reply =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let writer = reader.get_mut();
        if writer
            .write_all(reply)
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
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
    config: PathBuf,
    smpp_port: u16,
    store_port: u16,
    http_port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    /// A node with the embedded simulator whose `trial` account sends its
    /// webhooks to `http://127.0.0.1:{hook_port}/hooks/dlr?src=tern`.
    fn start(name: &str, hook_port: u16) -> Server {
        Server::start_with(
            name,
            &format!("http://127.0.0.1:{hook_port}/hooks/dlr?src=tern"),
            "",
            "[upstream]\nembedded_simulator = true\n",
        )
    }

    /// A node whose `trial` account has `webhook_url`; `ca_file` is
    /// `webhook.ca_file` ("" = none), `extra` more TOML (upstream, ranges).
    fn start_with(name: &str, webhook_url: &str, ca_file: &str, extra: &str) -> Server {
        let dir = temp_dir(name);
        let config = dir.path().join("tern.toml");
        let log = dir.path().join("serve.log");
        let mut server = Server {
            // Replaced at once by `run`.
            child: Command::new("true").spawn().expect("spawn true"),
            log,
            config,
            smpp_port: free_port(),
            store_port: free_port(),
            http_port: free_port(),
            dir,
        };
        server.run(webhook_url, ca_file, extra);
        server
    }

    /// Writes the configuration and starts `tern serve` on it.
    fn run(&mut self, webhook_url: &str, ca_file: &str, extra: &str) {
        let text = format!(
            "[node]\ndata_dir = \"{data}\"\n\
             [smpp]\nlisten = \"127.0.0.1:{smpp_port}\"\n\
             [store]\nlisten = \"127.0.0.1:{store}\"\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [webhook]\nca_file = \"{ca_file}\"\n\
             {extra}\
             [[account]]\nsystem_id = \"trial\"\npassword = \"trial\"\n\
             webhook_url = \"{webhook_url}\"\n\
             webhook_secret = \"{SECRET}\"\n",
            data = self.dir.path().join("data").display(),
            smpp_port = self.smpp_port,
            store = self.store_port,
            http_port = self.http_port,
        );
        std::fs::write(&self.config, text).expect("write config");
        let _ = self.child.wait();
        self.child = start_serve(&self.config, &self.log);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.smpp_port));
        common::wait_listening(addr, "tern serve", &mut self.child, &self.log);
    }

    /// Stops the node (SIGKILL) and starts it again on the same data with
    /// another configuration.
    fn restart(&mut self, webhook_url: &str, ca_file: &str, extra: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        common::wait_closed(SocketAddr::from(([127, 0, 0, 1], self.smpp_port)));
        common::wait_closed(SocketAddr::from(([127, 0, 0, 1], self.store_port)));
        common::wait_closed(SocketAddr::from(([127, 0, 0, 1], self.http_port)));
        self.run(webhook_url, ca_file, extra);
    }

    /// A counter of the node's /metrics, 0 when absent.
    fn counter(&self, name: &str) -> u64 {
        let text = ureq::get(&format!("http://127.0.0.1:{}/metrics", self.http_port))
            .call()
            .expect("GET /metrics")
            .into_string()
            .expect("metrics text");
        text.lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|value| value.trim().parse::<f64>().ok())
            .map_or(0, |value| value as u64)
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

/// Asserts what every DLR webhook of `id` carries, signature included.
fn assert_signed_dlr(request: &Value, id: &str) {
    assert!(signature_verifies(request), "bad signature: {request}");
    let body = body_of(request);
    assert_eq!(body["type"], "dlr", "{body}");
    assert_eq!(body["message_id"], id, "{body}");
    assert_eq!(body["status"], "DELIVRD", "{body}");
}

#[test]
fn https_dlr_arrives_over_tls_with_the_operators_ca() {
    let ca = TestCa::new("tern webhook test CA");
    let receiver = TlsReceiver::start(&ca);
    let dir = temp_dir("webhook-ca");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA");
    let server = Server::start_with(
        "webhook-https",
        &format!("https://localhost:{}/hooks/tls", receiver.port),
        &ca_file.display().to_string(),
        "[upstream]\nembedded_simulator = true\n",
    );
    let id = server.submit_one();
    let got = receiver.collect(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "no webhook came:\n{}", server.log_text());
    let request = &got[0].1;
    assert_eq!(request["path"], "/hooks/tls");
    assert_eq!(
        request["headers"]["host"],
        format!("localhost:{}", receiver.port)
    );
    assert_signed_dlr(request, &id);
    assert_eq!(receiver.failed_handshakes.load(Ordering::SeqCst), 0);
    // Acknowledged and committed: not sent again.
    assert!(receiver.collect(1, Duration::from_secs(3)).is_empty());
}

#[test]
fn https_without_the_ca_is_refused_and_the_receipt_stays_owed() {
    let ca = TestCa::new("tern webhook test CA");
    let receiver = TlsReceiver::start(&ca);
    let url = format!("https://127.0.0.1:{}/hooks/tls", receiver.port);
    // Another CA than the receiver's: the certificate does not verify.
    let other = TestCa::new("some other CA");
    let dir = temp_dir("webhook-ca");
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, other.pem()).expect("write the other CA");
    let upstream = "[upstream]\nembedded_simulator = true\n";
    let mut server = Server::start_with(
        "webhook-https-refused",
        &url,
        &other_file.display().to_string(),
        upstream,
    );
    let id = server.submit_one();
    // The first attempt and at least one retry fail in the handshake.
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.failed_handshakes.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        receiver.failed_handshakes.load(Ordering::SeqCst) >= 2,
        "tern did not try (and retry) the TLS handshake:\n{}",
        server.log_text()
    );
    let leaked = receiver.collect(1, Duration::from_millis(500));
    assert!(
        server.counter("tern_webhook_failures_total") >= 2,
        "failed attempts are counted"
    );
    assert_eq!(server.counter("tern_webhook_successes_total"), 0);
    assert!(
        leaked.is_empty(),
        "a request without a verified certificate: {leaked:?}"
    );

    // The receipt is still owed: with the right CA it goes out after a restart.
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA");
    server.restart(&url, &ca_file.display().to_string(), upstream);
    let got = receiver.collect(1, Duration::from_secs(30));
    assert_eq!(
        got.len(),
        1,
        "the owed receipt never came:\n{}",
        server.log_text()
    );
    assert_signed_dlr(&got[0].1, &id);
}

#[test]
fn a_bad_ca_file_stops_the_start_naming_the_key() {
    let dir = temp_dir("webhook-bad-ca");
    let ca_file = dir.path().join("not-a-ca.pem");
    std::fs::write(&ca_file, "hello\n").expect("write");
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = \"{}\"\n[webhook]\nca_file = \"{}\"\n",
            dir.path().join("data").display(),
            ca_file.display()
        ),
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run tern serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("webhook.ca_file") && stderr.contains("not-a-ca.pem"),
        "{stderr}"
    );
}

/// `tern sim` originating MO messages; killed when dropped.
struct MoSim {
    child: Child,
    port: u16,
}

impl MoSim {
    fn start(dir: &Path, mo_to: &str) -> MoSim {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join("sim.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["sim", "--listen", &addr.to_string(), "--cores", "0"])
            .args(["--mo-rate", "2", "--mo-to", mo_to])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sim log"))
            .spawn()
            .expect("start tern sim");
        common::wait_listening(addr, "tern sim", &mut child, &log);
        MoSim { child, port }
    }
}

impl Drop for MoSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mo_from_the_operator_arrives_as_signed_json() {
    let receiver = HookReceiver::start("");
    let sim_dir = temp_dir("webhook-mo-sim");
    let sim = MoSim::start(sim_dir.path(), "44800123");
    let upstream = format!(
        "[[connector]]\nname = \"op1\"\nhosts = [\"127.0.0.1:{}\"]\n\
         system_id = \"tern\"\npassword = \"tern\"\nid_format = \"hex\"\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 500\n\
         [[route]]\nname = \"all\"\nconnectors = [\"op1\"]\n\
         [[number_range]]\nname = \"shortcode\"\nprefix = \"448001\"\naccount = \"trial\"\n",
        sim.port
    );
    let server = Server::start_with(
        "webhook-mo",
        &format!("http://127.0.0.1:{}/hooks/mo", receiver.port),
        "",
        &upstream,
    );
    let got = receiver.collect(2, Duration::from_secs(30));
    assert_eq!(got.len(), 2, "no MO webhooks came:\n{}", server.log_text());
    let mut ids = Vec::new();
    for (_, request) in &got {
        assert_eq!(request["path"], "/hooks/mo");
        assert!(signature_verifies(request), "bad signature: {request}");
        let body = body_of(request);
        assert_eq!(body["type"], "mo", "{body}");
        assert_eq!(body["account"], "trial", "{body}");
        assert_eq!(body["to"], "44800123", "{body}");
        assert_eq!(body["connector"], "op1", "{body}");
        let from = body["from"].as_str().expect("from");
        assert!(from.starts_with("4479") && from.len() == 12, "{body}");
        let text = body["text"].as_str().expect("a text");
        assert!(text.starts_with("MO test message "), "{body}");
        assert!(body["payload_hex"].is_null(), "{body}");
        ids.push(body["message_id"].as_str().expect("an id").to_string());
    }
    assert_ne!(ids[0], ids[1], "two MOs, two ids");
}
