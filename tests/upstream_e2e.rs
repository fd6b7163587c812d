//! Operator connectors end to end: real `tern serve` and `tern sim` processes
//! on 127.0.0.1, customers from Python smpplib (a client we did not write)
//! and `tern bench smpp`.
//!
//! Covered: submitted messages reach the simulator and end DELIVERED in
//! query_sm (Submitted and Receipt committed); a destination no route covers
//! ends failed; throttling by the operator is retried until everything got
//! through; the operator killed and restarted: the connector reconnects and
//! traffic resumes; the first connector down or rejecting: the next takes
//! the traffic; weights share it; an ended validity expires a message; and
//! messages accepted before a SIGKILL are submitted after the restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::free_port;

use serde_json::Value;

const TERN: &str = env!("CARGO_BIN_EXE_tern");

/// A `tern sim` on a given port; its report is read when stopped.
struct Sim {
    child: Child,
    report: PathBuf,
    log: PathBuf,
}

impl Sim {
    fn start(dir: &Path, port: u16, extra: &[&str]) -> Sim {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tag = free_port();
        let report = dir.join(format!("sim-{port}-{tag}.json"));
        let log = dir.join(format!("sim-{port}-{tag}.log"));
        let mut child = Command::new(TERN)
            .args(["sim", "--listen", &addr.to_string(), "--cores", "0"])
            .args(["--summary-every-ms", "100", "--report-json"])
            .arg(&report)
            .args(extra)
            .stderr(std::fs::File::create(&log).expect("sim log"))
            .spawn()
            .expect("start tern sim");
        common::wait_listening(addr, "tern sim", &mut child, &log);
        Sim { child, report, log }
    }

    /// Waits until the simulator's summary says `count` submits were taken
    /// (submits minus throttled), at most `timeout`.
    fn wait_taken(&self, count: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.taken() >= count {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn taken(&self) -> u64 {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let Some(line) = text.lines().rev().find(|l| l.contains(" submits=")) else {
            return 0;
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field("submits=").saturating_sub(field("throttled="))
    }

    /// SIGINT, then the report's totals.
    fn stop(mut self) -> Value {
        // SAFETY: kill(2) on the pid of a child we started and still own.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let status = self.child.wait().expect("wait for tern sim");
        assert!(status.success(), "tern sim exited with {status}");
        let text = std::fs::read_to_string(&self.report).expect("sim report");
        let report: Value = serde_json::from_str(&text).expect("sim report is JSON");
        report["totals"].clone()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `tern serve` with connectors `(name, sim port)` and routes written as
/// TOML; SIGKILLed when dropped.
struct Serve {
    child: Child,
    smpp: SocketAddr,
    log: PathBuf,
}

impl Serve {
    /// `routes` is TOML appended after the connectors (routes, [upstream]).
    fn start(dir: &Path, connectors: &[(&str, u16)], routes: &str) -> Serve {
        let smpp_port = free_port();
        let store_port = free_port();
        let mut text = format!(
            "[node]\ndata_dir = \"{data}\"\n\
             [smpp]\nlisten = \"127.0.0.1:{smpp_port}\"\n\
             [store]\nlisten = \"127.0.0.1:{store_port}\"\n\
             [[account]]\nsystem_id = \"trial\"\npassword = \"trial\"\n",
            data = dir.join("data").display()
        );
        for (name, port) in connectors {
            text.push_str(&format!(
                "[[connector]]\nname = \"{name}\"\nhosts = [\"127.0.0.1:{port}\"]\n\
                 system_id = \"tern\"\npassword = \"tern\"\nid_format = \"hex\"\n\
                 reconnect_min_ms = 50\nreconnect_max_ms = 500\n"
            ));
        }
        text.push_str(routes);
        let config = dir.join("tern.toml");
        std::fs::write(&config, text).expect("write config");
        let log = dir.join("serve.log");
        let mut child = Command::new(TERN)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start tern serve");
        let smpp = SocketAddr::from(([127, 0, 0, 1], smpp_port));
        common::wait_listening(smpp, "tern serve", &mut child, &log);
        Serve { child, smpp, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `binds` operator binds are up (as the log reports them).
    fn wait_bound(&self, binds: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.log_text();
            let bound = text
                .lines()
                .filter(|l| l.contains("upstream::bind") && l.contains(" bound "))
                .count();
            if bound >= binds {
                return;
            }
            assert!(Instant::now() < deadline, "binds not up:\n{text}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// smpplib customer: submits `count` messages to each destination, then
/// polls query_sm until every message is final or `wait_s` passed. Prints
/// {"acks": {dst: [ids]}, "errors": n, "states": {id: message_state}}.
const CUSTOMER: &str = r#"
import json, os, sys, time
import smpplib.client, smpplib.consts as c
extra = {"validity_period": os.environ["VALIDITY"]} if os.environ.get("VALIDITY") else {}
port, count, wait_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
dests = sys.argv[4:]
cl = smpplib.client.Client("127.0.0.1", port, timeout=10)
acks, errors, states, pending = {}, [0], {}, {}
def sent(pdu, **_):
    dst = pending.pop(pdu.sequence, None)
    if pdu.status == 0 and dst is not None:
        mid = pdu.message_id
        acks.setdefault(dst, []).append(mid.decode() if isinstance(mid, bytes) else mid)
def error(pdu):
    if pdu.command != "query_sm_resp":
        errors[0] += 1
def query(pdu, **_):
    mid = pdu.message_id
    states[mid.decode() if isinstance(mid, bytes) else mid] = int(pdu.message_state)
cl.set_message_sent_handler(sent)
cl.set_error_pdu_handler(error)
cl.set_query_resp_handler(query)
cl.set_message_received_handler(lambda pdu, **_: None)
cl.connect()
cl.bind_transceiver(system_id="trial", password="trial")
total = 0
for dst in dests:
    for i in range(count):
        pdu = cl.send_message(source_addr_ton=c.SMPP_TON_ALNUM, source_addr="TERN",
            dest_addr_ton=c.SMPP_TON_INTL, dest_addr_npi=c.SMPP_NPI_ISDN,
            destination_addr=dst, short_message=b"upstream test %d" % i, **extra)
        pending[pdu.sequence] = dst
        total += 1
while sum(len(v) for v in acks.values()) + errors[0] < total:
    cl.read_once()
deadline = time.time() + wait_s
while True:
    for ids in acks.values():
        for mid in ids:
            cl.query_message(message_id=mid, source_addr_ton=c.SMPP_TON_ALNUM, source_addr="TERN")
            cl.read_once()
    if all(states.get(m, 1) not in (1,) for ids in acks.values() for m in ids) or time.time() > deadline:
        break
    time.sleep(0.2)
print(json.dumps({"acks": acks, "errors": errors[0], "states": states}))
cl.unbind()
cl.disconnect()
"#;

fn customer(port: u16, count: usize, wait_s: u32, destinations: &[&str]) -> Value {
    customer_with_validity(port, count, wait_s, destinations, "")
}

/// `validity` is an SMPP time ("000000000002000R": two seconds from now).
fn customer_with_validity(
    port: u16,
    count: usize,
    wait_s: u32,
    destinations: &[&str],
    validity: &str,
) -> Value {
    let out = Command::new("python3")
        .env("VALIDITY", validity)
        .args(["-c", CUSTOMER])
        .arg(port.to_string())
        .arg(count.to_string())
        .arg(wait_s.to_string())
        .args(destinations)
        .stderr(Stdio::inherit())
        .output()
        .expect("run python3 with smpplib");
    assert!(out.status.success(), "customer failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("customer prints JSON")
}

fn bench(serve: &Serve, count: u64) -> Value {
    let out = Command::new(TERN)
        .args([
            "bench",
            "smpp",
            "--target",
            &serve.smpp.to_string(),
            "--json",
        ])
        .args([
            "--count",
            &count.to_string(),
            "--cores",
            "1",
            "--window",
            "20",
        ])
        .stderr(Stdio::null())
        .output()
        .expect("run tern bench smpp");
    assert!(out.status.success(), "bench failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("bench prints JSON")
}

fn states_of<'a>(out: &'a Value, destination: &str) -> Vec<(String, &'a Value)> {
    out["acks"][destination]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(|id| (id.to_string(), &out["states"][id]))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn messages_reach_the_operator_and_end_delivered_and_unrouted_ones_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim_port = free_port();
    let sim = Sim::start(dir.path(), sim_port, &[]);
    let serve = Serve::start(
        dir.path(),
        &[("op1", sim_port)],
        "[[route]]\nname = \"uk\"\nprefix = \"44\"\nconnectors = [\"op1\"]\n",
    );
    let out = customer(serve.smpp.port(), 5, 20, &["447700900001", "33612345678"]);
    assert_eq!(out["errors"], 0, "{out}");
    let delivered = states_of(&out, "447700900001");
    assert_eq!(delivered.len(), 5, "{out}");
    for (id, state) in &delivered {
        assert_eq!(
            **state,
            2,
            "{id} ends DELIVERED: {out}\n{}",
            serve.log_text()
        );
    }
    let unrouted = states_of(&out, "33612345678");
    assert_eq!(unrouted.len(), 5, "accepted before routing: {out}");
    for (id, state) in &unrouted {
        assert_eq!(**state, 5, "{id} without a route ends UNDELIVERABLE: {out}");
    }
    // The log masks the destination by default ([log] mask_personal_data).
    assert!(
        serve
            .log_text()
            .contains("no route for account trial to 336123*****"),
        "the failure says why:\n{}",
        serve.log_text()
    );
    let totals = sim.stop();
    assert_eq!(
        totals["submits_ok"], 5,
        "only routed messages reach it: {totals}"
    );
}

#[test]
fn operator_throttling_is_retried_until_everything_got_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim_port = free_port();
    let sim = Sim::start(dir.path(), sim_port, &["--throttle-every", "5"]);
    let serve = Serve::start(
        dir.path(),
        &[("op1", sim_port)],
        "[[route]]\nname = \"all\"\nconnectors = [\"op1\"]\n",
    );
    let report = bench(&serve, 200);
    assert_eq!(report["acknowledged"], 200, "{report}");
    sim.wait_taken(200, Duration::from_secs(30));
    let totals = sim.stop();
    assert_eq!(totals["submits_ok"], 200, "{totals}\n{}", serve.log_text());
    assert!(
        totals["throttled"].as_u64().unwrap_or(0) >= 40,
        "every 5th was throttled: {totals}"
    );
}

#[test]
fn the_connector_reconnects_after_the_operator_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim_port = free_port();
    let sim = Sim::start(dir.path(), sim_port, &[]);
    let serve = Serve::start(
        dir.path(),
        &[("op1", sim_port)],
        "[[route]]\nname = \"all\"\nconnectors = [\"op1\"]\n",
    );
    assert_eq!(bench(&serve, 50)["acknowledged"], 50);
    sim.wait_taken(50, Duration::from_secs(20));
    let first = sim.stop();
    assert_eq!(first["submits_ok"], 50, "{first}");
    // Accepted while the operator is down: they wait and go once it is back.
    assert_eq!(bench(&serve, 30)["acknowledged"], 30);
    thread::sleep(Duration::from_millis(500));
    let sim = Sim::start(dir.path(), sim_port, &[]);
    assert_eq!(bench(&serve, 20)["acknowledged"], 20);
    sim.wait_taken(50, Duration::from_secs(30));
    let second = sim.stop();
    assert_eq!(second["submits_ok"], 50, "{second}\n{}", serve.log_text());
}

#[test]
fn the_second_connector_takes_over_when_the_first_is_down_or_rejecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let down_port = free_port();
    let rejecting_port = free_port();
    let up_port = free_port();
    // Refuses our credentials: the connector never comes up.
    let rejecting = Sim::start(
        dir.path(),
        rejecting_port,
        &["--system-id", "other", "--password", "other"],
    );
    let sim = Sim::start(dir.path(), up_port, &[]);
    let serve = Serve::start(
        dir.path(),
        &[
            ("down", down_port),
            ("rejecting", rejecting_port),
            ("backup", up_port),
        ],
        "[[route]]\nname = \"all\"\nconnectors = [\"down\", \"rejecting\", \"backup\"]\n",
    );
    let out = customer(serve.smpp.port(), 10, 20, &["447700900002"]);
    let states = states_of(&out, "447700900002");
    assert_eq!(states.len(), 10, "{out}");
    for (id, state) in &states {
        assert_eq!(**state, 2, "{id} delivered through the backup: {out}");
    }
    let totals = sim.stop();
    assert_eq!(totals["submits_ok"], 10, "{totals}");
    let refused = rejecting.stop();
    assert_eq!(refused["submits"], 0, "{refused}");
    assert!(
        refused["binds_refused"].as_u64().unwrap_or(0) >= 1,
        "{refused}"
    );
}

#[test]
fn weights_share_the_traffic_between_connectors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port_a, port_b) = (free_port(), free_port());
    let sim_a = Sim::start(dir.path(), port_a, &[]);
    let sim_b = Sim::start(dir.path(), port_b, &[]);
    let serve = Serve::start(
        dir.path(),
        &[("a", port_a), ("b", port_b)],
        "[[route]]\nname = \"all\"\ntargets = [\n\
         { connector = \"a\", weight = 3 },\n\
         { connector = \"b\", weight = 1 },\n]\n",
    );
    // Both up first: while only one is, it rightly takes everything.
    serve.wait_bound(2);
    assert_eq!(bench(&serve, 400)["acknowledged"], 400);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim_a.taken() + sim_b.taken() < 400 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let a = sim_a.stop()["submits_ok"].as_u64().unwrap_or(0);
    let b = sim_b.stop()["submits_ok"].as_u64().unwrap_or(0);
    assert_eq!(a + b, 400, "a {a} b {b}");
    // 3:1 by a hash of the message id: about 300 and 100.
    assert!((240..=360).contains(&a), "a {a} b {b}");
}

#[test]
fn the_embedded_simulator_gives_receipts_with_nothing_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(dir.path(), &[], "[upstream]\nembedded_simulator = true\n");
    let out = customer(serve.smpp.port(), 3, 20, &["15551230000"]);
    let states = states_of(&out, "15551230000");
    assert_eq!(states.len(), 3, "{out}");
    for (id, state) in &states {
        assert_eq!(**state, 2, "{id} delivered by the embedded operator: {out}");
    }
}

#[test]
fn a_message_whose_validity_ends_before_any_operator_took_it_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let down_port = free_port();
    let serve = Serve::start(
        dir.path(),
        &[("down", down_port)],
        "[[route]]\nname = \"all\"\nconnectors = [\"down\"]\n",
    );
    let out = customer_with_validity(
        serve.smpp.port(),
        2,
        20,
        &["447700900003"],
        "000000000002000R",
    );
    let states = states_of(&out, "447700900003");
    assert_eq!(states.len(), 2, "{out}");
    for (id, state) in &states {
        assert_eq!(**state, 3, "{id} ends EXPIRED: {out}\n{}", serve.log_text());
    }
}

#[test]
fn messages_accepted_before_a_crash_are_submitted_after_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim_port = free_port();
    let routes = "[[route]]\nname = \"all\"\nconnectors = [\"op1\"]\n";
    // The operator is not there yet: everything stays accepted, unsubmitted.
    let mut serve = Serve::start(dir.path(), &[("op1", sim_port)], routes);
    assert_eq!(bench(&serve, 200)["acknowledged"], 200);
    // SIGKILL: no graceful anything.
    let _ = serve.child.kill();
    let _ = serve.child.wait();
    drop(serve);
    let sim = Sim::start(dir.path(), sim_port, &[]);
    let _serve = Serve::start(dir.path(), &[("op1", sim_port)], routes);
    sim.wait_taken(200, Duration::from_secs(30));
    let totals = sim.stop();
    assert_eq!(
        totals["submits_ok"], 200,
        "the restart rescan found them: {totals}"
    );
}
