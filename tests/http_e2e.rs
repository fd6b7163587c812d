//! The HTTP API end to end: the real `tern serve` binary on 127.0.0.1 with
//! its embedded operator simulator, driven by a blocking HTTP client.
//!
//! Covered: submit reaches the operator (lookup shows the connector and the
//! operator's id), idempotent retry gives one message, the same key with
//! another body is refused, wrong key 401, another account's message 404,
//! malformed JSON 400, oversized body 413, a long UCS-2 text gives one id per
//! segment, throttling 429 with Retry-After, /health, /ready, /metrics; and
//! the OpenAPI document validates and its every request example is accepted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, temp_dir};

use serde_json::{json, Value};

const OPENAPI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/openapi.json");
const MAX_BODY_BYTES: usize = 4096;

/// A running `tern serve` with two API-key accounts; killed when dropped.
struct Node {
    _dir: tempfile::TempDir,
    child: Child,
    log: PathBuf,
    base: String,
    agent: ureq::Agent,
}

impl Node {
    fn start(name: &str) -> Node {
        let dir = temp_dir(name);
        let (smpp_port, store_port, http_port) = (free_port(), free_port(), free_port());
        let config = dir.path().join("tern.toml");
        let text = format!(
            "[node]\ndata_dir = \"{data}\"\n\
             [smpp]\nlisten = \"127.0.0.1:{smpp_port}\"\n\
             [store]\nlisten = \"127.0.0.1:{store_port}\"\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\nmax_body_bytes = {MAX_BODY_BYTES}\n\
             [upstream]\nembedded_simulator = true\n\
             [[account]]\nsystem_id = \"trial\"\npassword = \"trial\"\napi_key = \"trial\"\n\
             [[account]]\nsystem_id = \"other\"\npassword = \"other\"\napi_key = \"other-key\"\n\
             [[account]]\nsystem_id = \"slow\"\npassword = \"slow\"\napi_key = \"slow-key\"\nmax_tps = 1\n",
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
            _dir: dir,
            child,
            log,
            base: format!("http://127.0.0.1:{http_port}"),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(20))
                .build(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
        common::wait_listening(addr, "tern serve", &mut node.child, &node.log);
        node
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Status, headers of interest and body of a request (any status).
    fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut request = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let result = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(body),
            None => request.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("{method} {path}: {e}\n{}", self.log_text()),
        };
        let status = response.status();
        let retry_after = response.header("retry-after").map(str::to_string);
        let content_type = response.header("content-type").map(str::to_string);
        let text = response.into_string().expect("a readable body");
        Reply {
            status,
            retry_after,
            content_type,
            text,
        }
    }

    fn submit(&self, key: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        self.call(
            "POST",
            "/v1/messages",
            Some(key),
            headers,
            Some(&body.to_string()),
        )
    }

    /// Looks the message up until `done` says it is far enough.
    fn wait_for(&self, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reply = self.call("GET", &format!("/v1/messages/{id}"), Some(key), &[], None);
            assert_eq!(reply.status, 200, "lookup of {id}: {}", reply.text);
            let view = reply.json();
            if done(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "message {id} stuck at {view}\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn accepted_total(&self, account: &str) -> u64 {
        let metrics = self.call("GET", "/metrics", None, &[], None);
        let label = format!("account=\"{account}\"");
        metrics
            .text
            .lines()
            .filter(|l| l.starts_with("tern_messages_accepted_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    retry_after: Option<String>,
    content_type: Option<String>,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    fn error_code(&self) -> String {
        let body = self.json();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "an error carries a message: {body}"
        );
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn ids(&self) -> Vec<String> {
        self.json()["messages"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A probe of a free ephemeral port can connect to itself; that does not count.
#[test]
fn http_api_end_to_end() {
    let node = Node::start("http-e2e");

    let health = node.call("GET", "/health", None, &[], None);
    assert_eq!(health.status, 200);
    let ready = node.call("GET", "/ready", None, &[], None);
    assert_eq!(ready.status, 200, "{}", ready.text);

    // A submit reaches the operator simulator.
    let reply = node.submit(
        "trial",
        &[],
        &json!({"from": "Acme", "to": "+4915112345678", "text": "hello", "dlr": true, "client_ref": "r-1"}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text);
    let ids = reply.ids();
    assert_eq!(ids.len(), 1);
    let view = node.wait_for("trial", &ids[0], |v| v["connector"].is_string());
    assert_eq!(view["connector"], "embedded-sim");
    assert!(view["operator_id"].is_string(), "{view}");
    assert_eq!(view["client_ref"], "r-1");
    assert_eq!(view["to"], "4915112345678");

    // Another account's message is as unknown as an id that never existed.
    let foreign = node.call(
        "GET",
        &format!("/v1/messages/{}", ids[0]),
        Some("other-key"),
        &[],
        None,
    );
    assert_eq!(foreign.status, 404, "{}", foreign.text);
    assert_eq!(foreign.error_code(), "not_found");
    let unknown = node.call(
        "GET",
        "/v1/messages/00000000000000000000",
        Some("trial"),
        &[],
        None,
    );
    assert_eq!(unknown.status, 404);

    // Wrong or missing key.
    let wrong = node.submit(
        "not-a-key",
        &[],
        &json!({"from": "Acme", "to": "4915", "text": "x"}),
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.error_code(), "unauthorized");
    let missing = node.call("POST", "/v1/messages", None, &[], Some("{}"));
    assert_eq!(missing.status, 401);

    // Idempotent retry: one message, the first answer twice.
    let before = node.accepted_total("trial");
    let body = json!({"from": "Acme", "to": "4915112345678", "text": "once"});
    let first = node.submit("trial", &[("Idempotency-Key", "order-1")], &body);
    let second = node.submit("trial", &[("Idempotency-Key", "order-1")], &body);
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(second.status, 201, "{}", second.text);
    assert_eq!(first.ids(), second.ids());
    assert_eq!(
        node.accepted_total("trial") - before,
        1,
        "one message accepted"
    );
    let reused = node.submit(
        "trial",
        &[("Idempotency-Key", "order-1")],
        &json!({"from": "Acme", "to": "4915112345678", "text": "another"}),
    );
    assert_eq!(reused.status, 422);
    assert_eq!(reused.error_code(), "idempotency_key_reused");

    // Malformed JSON: 400 saying where.
    let malformed = node.call(
        "POST",
        "/v1/messages",
        Some("trial"),
        &[],
        Some("{\"from\": "),
    );
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.error_code(), "invalid_json");
    assert!(malformed.text.contains("line 1"), "{}", malformed.text);
    let invalid = node.submit(
        "trial",
        &[],
        &json!({"from": "Acme", "to": "12ab", "text": "x"}),
    );
    assert_eq!(invalid.status, 422);
    assert_eq!(invalid.error_code(), "validation_failed");

    // Oversized body.
    let huge = format!(
        "{{\"from\":\"Acme\",\"to\":\"4915\",\"text\":\"{}\"}}",
        "a".repeat(MAX_BODY_BYTES)
    );
    let too_large = node.call("POST", "/v1/messages", Some("trial"), &[], Some(&huge));
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.error_code(), "body_too_large");

    // A long UCS-2 text to two recipients: one id per recipient per segment.
    let long = "Привет, мир! ".repeat(14);
    let reply = node.submit(
        "trial",
        &[],
        &json!({"from": "12345", "to": ["4915112345678", "4915112345679"], "text": long}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text);
    let answer = reply.json();
    assert_eq!(answer["encoding"], "ucs2");
    assert_eq!(answer["segments"], 3, "182 UTF-16 units at 67 a part");
    let ids = reply.ids();
    assert_eq!(ids.len(), 6);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 6, "distinct ids");
    let part = node.wait_for("trial", &ids[4], |v| v["segment"].is_object());
    assert_eq!(part["segment"]["total"], 3);
    assert_eq!(part["segment"]["sequence"], 2);
    assert_eq!(part["to"], "4915112345679");

    // Throttling: an account limited to one message a second.
    let statuses: Vec<Reply> = (0..4)
        .map(|i| {
            node.submit(
                "slow-key",
                &[],
                &json!({"from": "Acme", "to": "4915", "text": format!("t{i}")}),
            )
        })
        .collect();
    let throttled = statuses
        .iter()
        .find(|r| r.status == 429)
        .unwrap_or_else(|| {
            panic!(
                "no 429 among {:?}",
                statuses.iter().map(|r| r.status).collect::<Vec<_>>()
            )
        });
    assert_eq!(throttled.retry_after.as_deref(), Some("1"));
    assert_eq!(throttled.error_code(), "throttled");

    // Operations.
    let metrics = node.call("GET", "/metrics", None, &[], None);
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.content_type.as_deref(),
        Some("text/plain; version=0.0.4")
    );
    assert!(metrics.text.contains("tern_messages_accepted_total"));
    let wrong_method = node.call("DELETE", "/v1/messages", Some("trial"), &[], None);
    assert_eq!(wrong_method.status, 405);
    let unknown = node.call("GET", "/no/such/path/12345", None, &[], None);
    assert_eq!(unknown.status, 404);

    // Every request above is counted by its route and status, never its path.
    let metrics = node.call("GET", "/metrics", None, &[], None).text;
    let count = |route: &str, code: &str| -> f64 {
        let prefix = format!("tern_http_requests_total{{route=\"{route}\",code=\"{code}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(count("submit", "201") >= 1.0, "{metrics}");
    assert!(count("submit", "401") >= 1.0, "{metrics}");
    assert!(count("submit", "429") >= 1.0, "{metrics}");
    assert!(count("lookup", "200") >= 1.0, "{metrics}");
    assert!(count("metrics", "200") >= 1.0, "{metrics}");
    assert_eq!(count("method_not_allowed", "405"), 1.0, "{metrics}");
    assert_eq!(count("not_found", "404"), 1.0, "{metrics}");
    assert!(!metrics.contains("/no/such/path"), "paths are never labels");
    let submit_durations = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("tern_http_request_duration_seconds_count{route=\"submit\"} ")
        })
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(submit_durations >= 3.0, "{metrics}");
}

#[test]
fn openapi_document_validates_and_its_examples_are_accepted() {
    let validation = Command::new("python3")
        .args(["-m", "openapi_spec_validator", OPENAPI])
        .output()
        .expect("python3 must be installed");
    assert!(
        validation.status.success(),
        "the OpenAPI document does not validate (needs `pip install openapi-spec-validator`, \
         see .ci/run):\n{}{}",
        String::from_utf8_lossy(&validation.stdout),
        String::from_utf8_lossy(&validation.stderr)
    );

    let node = Node::start("http-openapi");
    let served = node.call("GET", "/v1/openapi.json", None, &[], None);
    assert_eq!(served.status, 200);
    let document = served.json();
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(OPENAPI).expect("read openapi.json"))
            .expect("openapi.json is JSON");
    assert_eq!(
        document, on_disk,
        "the server serves the document in the repository"
    );

    let examples = document["paths"]["/v1/messages"]["post"]["requestBody"]["content"]
        ["application/json"]["examples"]
        .as_object()
        .expect("submit examples");
    assert!(examples.len() >= 3, "examples for text, Unicode and binary");
    for (name, example) in examples {
        let reply = node.submit("trial", &[], &example["value"]);
        assert_eq!(reply.status, 201, "example {name}: {}", reply.text);
        assert!(!reply.ids().is_empty(), "example {name}");
    }
}
