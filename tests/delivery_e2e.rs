//! DLR delivery end to end: the `tern serve` engine (through the library's
//! `engine::run_with_store`, so the test can commit an operator's `Submitted`
//! and `Receipt` without an operator) on 127.0.0.1, and Python smpplib
//! (tests/interop/delivery_client.py), a client we did not write, as the
//! customer.
//!
//! Covered: a DLR reaches a bound transceiver with our id in the text and in
//! receipted_message_id; with no receiver bound it waits and goes out when
//! the customer binds; once answered it is not sent again on a rebind; a
//! deliver_sm_resp with an error, or none within the timeout, is retried;
//! 300 DLRs each arrive exactly once; a pending DLR survives a
//! restart of the node; an MO for the account's number range goes out as
//! received.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, temp_dir};

use serde_json::Value;
use tern::config::Config;
use tern::engine::{self, EngineError};
use tern::store::command::{Address, Command, MoReceived, NumberRange, Receipt};
use tern::store::driver::StoreHandle;
use tern::store::id::MessageId;
use tern::store::state::ApplyOutcome;

const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/delivery_client.py"
);
const CONNECTOR: &str = "test-op";

/// One node at a time: every test pins its executor to the same core.
static ONE_NODE: Mutex<()> = Mutex::new(());

/// A node's configuration: kept across restarts (same data, same ports).
struct Setup {
    dir: tempfile::TempDir,
    smpp_port: u16,
    store_port: u16,
}

impl Setup {
    fn new(name: &str) -> Setup {
        Setup {
            dir: temp_dir(name),
            smpp_port: free_port(),
            store_port: free_port(),
        }
    }

    fn start(&self) -> Node {
        let text = format!(
            "[node]\ndata_dir = \"{data}\"\ncores = [0]\n\
             [smpp]\nlisten = \"127.0.0.1:{smpp}\"\n\
             [store]\nlisten = \"127.0.0.1:{store}\"\n\
             [[account]]\nsystem_id = \"trial\"\npassword = \"trial\"\n",
            data = self.dir.path().join("data").display(),
            smpp = self.smpp_port,
            store = self.store_port,
        );
        let resolved = Config::parse(&text, "delivery-test.toml").expect("valid config");
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            engine::run_with_store(resolved, thread_stop, move |addr, store| {
                let _ = ready_tx.send((addr, store));
            })
        });
        let (addr, store): (SocketAddr, StoreHandle) =
            match ready_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(ready) => ready,
                Err(_) => {
                    stop.store(true, Ordering::Relaxed);
                    panic!("node did not start: {:?}", thread.join());
                }
            };
        Node {
            stop,
            thread: Some(thread),
            store,
            port: addr.port(),
        }
    }
}

/// A running node; stopped gracefully (and waited for) when dropped.
struct Node {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), EngineError>>>,
    store: StoreHandle,
    port: u16,
}

impl Node {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let result = thread.join().expect("engine thread");
            assert!(result.is_ok(), "engine stopped with {result:?}");
        }
    }

    /// Commits what an operator connector would: the submission and a
    /// DELIVRD receipt for it.
    fn commit_receipt(&self, id: MessageId, upstream_id: &str) {
        let submitted = Command::Submitted {
            id,
            connector: CONNECTOR.into(),
            upstream_id: upstream_id.into(),
            at_ms: unix_ms(),
        };
        let outcome = self.store.propose_blocking(submitted.encode());
        assert_eq!(outcome, Ok(ApplyOutcome::Applied), "Submitted for {id}");
        let receipt = Command::Receipt(Receipt {
            connector: CONNECTOR.into(),
            upstream_id: upstream_id.into(),
            state: 2,
            err: 0,
            done_at_ms: unix_ms(),
            raw: None,
        });
        let outcome = self.store.propose_blocking(receipt.encode());
        assert_eq!(outcome, Ok(ApplyOutcome::Applied), "Receipt for {id}");
    }

    /// `Some(target)` while the DLR is pending, `None` once delivered.
    fn pending_target(&self, id: MessageId) -> Option<Option<u64>> {
        self.store
            .query_blocking(move |state| state.pending_delivery(&id).map(|p| p.target))
            .expect("store query")
    }

    fn wait_delivered(&self, id: MessageId) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pending_target(id).is_some() {
            assert!(
                Instant::now() < deadline,
                "the DLR for {id} was answered but is still pending"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn python(mode: &str, port: u16, args: &[&str]) -> Process {
    let mut command = Process::new("python3");
    command
        .arg(CLIENT)
        .arg(mode)
        .arg("--port")
        .arg(port.to_string())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn client(mode: &str, port: u16, args: &[&str]) -> Value {
    let out = python(mode, port, args).output().expect(
        "python3 must be installed with smpplib (`pip install smpplib==2.2.4`, or run .ci/run)",
    );
    assert!(
        out.status.success(),
        "smpplib client `{mode}` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client prints JSON")
}

/// Submits one message with registered_delivery=1 and returns its id.
fn submit_one(port: u16) -> MessageId {
    let out = client("submit", port, &["--count", "1"]);
    let id = out["ids"][0].as_str().unwrap_or_else(|| panic!("{out}"));
    MessageId::parse(id).expect("our message id")
}

fn deliveries(out: &Value) -> &Vec<Value> {
    out["deliveries"].as_array().expect("deliveries")
}

/// The deliver_sm is our DLR for `id`: receipt type, our id in the text and
/// in receipted_message_id, DELIVRD, addresses swapped, data_coding 0.
fn assert_dlr_for(delivery: &Value, id: MessageId) {
    let id_text = id.to_string();
    assert_eq!(delivery["esm_class"], 0x04, "{delivery}");
    assert_eq!(delivery["data_coding"], 0, "{delivery}");
    assert_eq!(
        delivery["receipted_message_id"],
        id_text.as_str(),
        "{delivery}"
    );
    assert_eq!(delivery["message_state"], 2, "{delivery}");
    assert_eq!(delivery["source_addr"], "447700900123", "{delivery}");
    assert_eq!(delivery["destination_addr"], "TERN", "{delivery}");
    let text = delivery["short_message"].as_str().expect("text");
    assert!(
        text.starts_with(&format!("id:{id_text} sub:001 dlvrd:001 ")),
        "{text}"
    );
    assert!(
        text.contains("stat:DELIVRD err:000 text:receipt wanted 0"),
        "{text}"
    );
}

#[test]
fn dlr_reaches_a_bound_transceiver_with_our_id() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new("live");
    let node = setup.start();
    let mut child = python("live", node.port, &["--expect", "1"])
        .spawn()
        .expect("python3 with smpplib");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first: Value =
        serde_json::from_str(&lines.next().expect("id line").expect("read")).expect("JSON id line");
    let id = MessageId::parse(first["id"].as_str().unwrap_or_else(|| panic!("{first}")))
        .expect("our id");
    assert_eq!(
        node.pending_target(id),
        None,
        "no receipt yet, so no DLR pending"
    );
    node.commit_receipt(id, "live-1");
    let second: Value =
        serde_json::from_str(&lines.next().expect("deliveries line").expect("read"))
            .expect("JSON deliveries line");
    assert!(child.wait().expect("client exit").success());
    let got = deliveries(&second);
    assert_eq!(got.len(), 1, "exactly one DLR: {second}");
    assert_dlr_for(&got[0], id);
    node.wait_delivered(id);
}

#[test]
fn dlr_waits_for_a_receiver_and_is_not_resent_after_its_resp() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new("wait");
    let node = setup.start();
    let id = submit_one(node.port);
    node.commit_receipt(id, "wait-1");
    assert_eq!(
        node.pending_target(id),
        Some(None),
        "no receiving bind: the DLR waits in the store"
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = client(
        "receive",
        node.port,
        &["--bind", "receiver", "--expect", "1"],
    );
    let got = deliveries(&out);
    assert_eq!(got.len(), 1, "the waiting DLR arrives on bind: {out}");
    assert_dlr_for(&got[0], id);
    node.wait_delivered(id);

    let again = client(
        "receive",
        node.port,
        &["--expect", "1", "--wait", "1.5", "--linger", "0"],
    );
    assert_eq!(deliveries(&again).len(), 0, "answered DLR resent: {again}");
}

#[test]
fn refused_deliver_sm_is_retried() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new("refuse");
    let node = setup.start();
    let id = submit_one(node.port);
    node.commit_receipt(id, "refuse-1");
    let out = client(
        "receive",
        node.port,
        &["--refuse-first", "1", "--expect", "2", "--wait", "10"],
    );
    let got = deliveries(&out);
    assert_eq!(got.len(), 2, "refused once, then sent again: {out}");
    assert_eq!(got[0]["refused"], true, "{out}");
    assert_dlr_for(&got[0], id);
    assert_dlr_for(&got[1], id);
    node.wait_delivered(id);
}

#[test]
fn pending_dlr_survives_a_restart() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new("restart");
    let mut node = setup.start();
    let id = submit_one(node.port);
    node.commit_receipt(id, "restart-1");
    node.stop();
    drop(node);

    let node = setup.start();
    assert_eq!(
        node.pending_target(id),
        Some(None),
        "still pending after the restart"
    );
    let out = client("receive", node.port, &["--expect", "1"]);
    let got = deliveries(&out);
    assert_eq!(got.len(), 1, "the DLR from before the restart: {out}");
    assert_dlr_for(&got[0], id);
    node.wait_delivered(id);
}

#[test]
fn mo_waits_then_goes_out_as_received() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new("mo");
    let node = setup.start();
    let range = Command::UpsertNumberRange(NumberRange {
        name: "trial-shortcodes".into(),
        prefix: "44800".into(),
        account: "trial".into(),
    });
    assert_eq!(
        node.store.propose_blocking(range.encode()),
        Ok(ApplyOutcome::Applied)
    );
    let id = MessageId::from_parts(900, 1, 200, 1).expect("an MO id");
    let mo = Command::MoReceived(MoReceived {
        id,
        connector: CONNECTOR.into(),
        source: Address {
            ton: 1,
            npi: 1,
            digits: "447700900999".into(),
        },
        destination: Address {
            ton: 1,
            npi: 1,
            digits: "44800123".into(),
        },
        data_coding: 0,
        esm_class: 0,
        payload: b"STOP please".to_vec(),
        segment: None,
        received_at_ms: unix_ms(),
    });
    assert_eq!(
        node.store.propose_blocking(mo.encode()),
        Ok(ApplyOutcome::Accepted(id))
    );
    assert_eq!(
        node.pending_target(id),
        Some(None),
        "the MO waits for a bind"
    );
    let out = client("receive", node.port, &["--expect", "1"]);
    let got = deliveries(&out);
    assert_eq!(got.len(), 1, "{out}");
    let mo = &got[0];
    assert_eq!(mo["esm_class"], 0, "{out}");
    assert_eq!(mo["data_coding"], 0, "{out}");
    assert_eq!(mo["source_addr"], "447700900999", "{out}");
    assert_eq!(mo["destination_addr"], "44800123", "{out}");
    assert_eq!(mo["short_message"], "STOP please", "{out}");
    assert_eq!(mo["receipted_message_id"], Value::Null, "{out}");
    node.wait_delivered(id);
}

#[test]
fn unanswered_deliver_sm_is_sent_again_after_the_timeout() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new("unanswered");
    let node = setup.start();
    let id = submit_one(node.port);
    node.commit_receipt(id, "unanswered-1");
    let out = client(
        "receive",
        node.port,
        &["--ignore-first", "1", "--expect", "2", "--wait", "30"],
    );
    let got = deliveries(&out);
    assert_eq!(got.len(), 2, "unanswered once, then sent again: {out}");
    assert_eq!(got[0]["ignored"], true, "{out}");
    assert_dlr_for(&got[1], id);
    let seconds = out["seconds"].as_f64().expect("seconds");
    assert!(
        seconds >= 9.0,
        "resent only after the response timeout, not after {seconds} s"
    );
    node.wait_delivered(id);
}

#[test]
fn many_dlrs_each_arrive_once() {
    const COUNT: usize = 300;
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new("many");
    let node = setup.start();
    let out = client("submit", node.port, &["--count", &COUNT.to_string()]);
    let ids: Vec<MessageId> = out["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_str)
        .map(|text| MessageId::parse(text).expect("our id"))
        .collect();
    assert_eq!(ids.len(), COUNT, "every submit acknowledged: {out}");
    for (n, id) in ids.iter().enumerate() {
        node.commit_receipt(*id, &format!("many-{n}"));
    }
    let out = client(
        "receive",
        node.port,
        &[
            "--brief",
            "--expect",
            &COUNT.to_string(),
            "--wait",
            "60",
            "--linger",
            "1",
        ],
    );
    let mut got: Vec<&str> = deliveries(&out).iter().filter_map(Value::as_str).collect();
    assert_eq!(got.len(), COUNT, "{} deliveries", got.len());
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), COUNT, "a DLR arrived twice");
    let mut wanted: Vec<String> = ids.iter().map(MessageId::to_string).collect();
    wanted.sort_unstable();
    assert_eq!(got, wanted, "the DLRs are those of the submitted messages");
    eprintln!(
        "{COUNT} waiting DLRs delivered to one smpplib receiver in {:.3} s",
        out["seconds"].as_f64().unwrap_or(f64::NAN)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = node
            .store
            .query_blocking(|state| state.pending_for_account("trial").count())
            .expect("store query");
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} DLRs still pending");
        std::thread::sleep(Duration::from_millis(50));
    }
}
