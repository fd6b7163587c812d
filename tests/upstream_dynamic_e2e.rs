//! Connectors follow the replicated records while a node runs: a node (in
//! this process through `engine::run_with_store`, for its `StoreHandle`)
//! starts with no connector at all; two `tern sim` operators run as
//! processes. Committing `UpsertConnector` + `UpsertRoute` makes messages
//! flow through the new connector without a restart (a long one split into
//! UDH parts, one submit_sm each, every part's id matched to the message);
//! disabling the primary moves traffic to the failover connector; and the
//! operator status shows each step.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern::config::Config;
use tern::store::command::{Accept, Address, Command, Connector, Route, RouteTarget};
use tern::store::driver::StoreHandle;
use tern::store::id::MessageId;
use tern::store::state::{ApplyOutcome, MessageState};
use tern::upstream::{self, ConnectorStatus};

const TERN: &str = env!("CARGO_BIN_EXE_tern");
const WAIT: Duration = Duration::from_secs(30);
const LONG_DESTINATION: &str = "447000009999";

/// A simulated operator; stopped with SIGTERM so that it writes its report.
struct Operator {
    child: Child,
    report: PathBuf,
    port: u16,
}

impl Operator {
    fn start(port: u16, report: PathBuf) -> Operator {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut operator = Operator {
            child: Process::new(TERN)
                .args(["sim", "--listen", &addr.to_string(), "--cores", "0"])
                .arg("--report-json")
                .arg(&report)
                .args(["--summary-every-ms", "600000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start tern sim"),
            report,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = operator.child.try_wait() {
                panic!("tern sim exited with {status}");
            }
            assert!(Instant::now() < deadline, "tern sim did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        operator
    }

    /// Stops it and returns its report (submit_sm taken, by destination).
    fn finish(mut self) -> serde_json::Value {
        let pid = self.child.id().to_string();
        let killed = Process::new("kill").args(["-TERM", &pid]).status();
        assert!(killed.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "tern sim did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        read_report(&self.report)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_report(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).expect("the sim wrote its report");
    serde_json::from_slice(&bytes).expect("report JSON")
}

fn connector(name: &str, port: u16) -> Connector {
    Connector {
        name: name.into(),
        hosts: vec![format!("127.0.0.1:{port}")],
        system_id: "tern".into(),
        password: "tern".into(),
        system_type: String::new(),
        bind_type: "transceiver".into(),
        bind_count: 1,
        window: 10,
        throughput_per_s: 0,
        enquire_link_s: 30,
        reconnect_min_ms: 100,
        reconnect_max_ms: 1000,
        submit_timeout_ms: 5000,
        id_format: "hex".into(),
        default_alphabet: "gsm7".into(),
        long_messages: "udh".into(),
        tls: false,
        enabled: true,
    }
}

fn propose(store: &StoreHandle, command: &Command) -> ApplyOutcome {
    store
        .propose_blocking(command.encode())
        .unwrap_or_else(|e| panic!("{command:?} not committed: {e}"))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Accepts a message directly through the log, as a customer session would.
fn accept(store: &StoreHandle, counter: u64, destination: &str, payload: Vec<u8>) -> MessageId {
    // A shard no engine core uses: ids never collide with the node's own.
    let id = MessageId::from_parts(1, 1, 250, counter).expect("id");
    let accept = Accept {
        id,
        account: "trial".into(),
        source: Address {
            ton: 5,
            npi: 0,
            digits: "TERN".into(),
        },
        destination: Address {
            ton: 1,
            npi: 1,
            digits: destination.into(),
        },
        data_coding: 0,
        esm_class: 0,
        protocol_id: 0,
        priority: 0,
        registered_delivery: 0,
        payload,
        segment: None,
        received_at_ms: unix_ms(),
        validity_until_ms: None,
        owner_node: 1,
        client_ref: None,
        scheduled_at_ms: None,
    };
    let outcome = propose(store, &Command::Accept(accept));
    assert_eq!(outcome, ApplyOutcome::Accepted(id));
    id
}

/// (state, connector names of its submissions) once every message is final.
fn wait_final(store: &StoreHandle, ids: &[MessageId]) -> Vec<(MessageState, Vec<String>)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let ids_owned = ids.to_vec();
        let states = store
            .query_blocking(move |state| {
                ids_owned
                    .iter()
                    .map(|id| {
                        state.message(id).map(|m| {
                            let connectors = m.upstreams.iter().map(|u| u.connector.clone());
                            (m.state, connectors.collect::<Vec<_>>())
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .expect("query");
        if states
            .iter()
            .all(|s| s.as_ref().is_some_and(|(state, _)| state.is_final()))
        {
            return states.into_iter().flatten().collect();
        }
        assert!(Instant::now() < deadline, "not all final: {states:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_status(what: &str, ok: impl Fn(&[ConnectorStatus]) -> bool) -> Vec<ConnectorStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = upstream::status();
        if ok(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn find<'a>(status: &'a [ConnectorStatus], name: &str) -> Option<&'a ConnectorStatus> {
    status.iter().find(|s| s.name == name)
}

#[test]
fn connectors_added_and_disabled_at_run_time_carry_traffic_without_restart() {
    let dir = common::temp_dir("upstream-dynamic");
    let primary = Operator::start(common::free_port(), dir.path().join("primary.json"));
    let primary_port = primary.port;
    let failover = Operator::start(common::free_port(), dir.path().join("failover.json"));
    let failover_port = failover.port;
    let text = format!(
        "[node]\ndata_dir = \"{data}\"\ncores = [0]\n\
         [smpp]\nlisten = \"127.0.0.1:{smpp}\"\n\
         [store]\nlisten = \"127.0.0.1:{store}\"\n\
         [[account]]\nsystem_id = \"trial\"\npassword = \"trial\"\n",
        data = dir.path().join("data").display(),
        smpp = common::free_port(),
        store = common::free_port(),
    );
    let resolved = Config::parse(&text, "upstream-dynamic.toml").expect("config");
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let engine = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            tern::engine::run_with_store(resolved, stop, move |_, store| {
                let _ = ready_tx.send(store);
            })
        })
    };
    let store: StoreHandle = ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("node started");
    assert!(upstream::status().is_empty(), "no connector configured");

    // Added while running: the primary, its failover, and a route to both.
    for c in [
        connector("dyn-a", primary_port),
        connector("dyn-b", failover_port),
    ] {
        assert_eq!(
            propose(&store, &Command::UpsertConnector(c)),
            ApplyOutcome::Applied
        );
    }
    let route = Route {
        name: "all".into(),
        account: None,
        destination_prefix: String::new(),
        source_prefix: String::new(),
        priority: 0,
        targets: vec![
            RouteTarget {
                connector: "dyn-a".into(),
                priority: 0,
                weight: 1,
            },
            RouteTarget {
                connector: "dyn-b".into(),
                priority: 1,
                weight: 1,
            },
        ],
    };
    assert_eq!(
        propose(&store, &Command::UpsertRoute(route)),
        ApplyOutcome::Applied
    );
    wait_status("both connectors bound", |s| {
        ["dyn-a", "dyn-b"]
            .iter()
            .all(|n| find(s, n).is_some_and(|c| c.binds_up == 1 && c.binds_configured == 1))
    });

    // Through the primary: short messages, and a long one in UDH parts.
    let mut counter = 0u64;
    let mut ids = Vec::new();
    for i in 0..20 {
        counter += 1;
        let destination = format!("4470000001{i:02}");
        ids.push(accept(&store, counter, &destination, b"hello".to_vec()));
    }
    counter += 1;
    let long_text: Vec<u8> = (0..400).map(|i| b'a' + (i % 26) as u8).collect();
    let long_id = accept(&store, counter, LONG_DESTINATION, long_text);
    ids.push(long_id);
    let finals = wait_final(&store, &ids);
    for (state, connectors) in &finals[..20] {
        assert_eq!(*state, MessageState::Delivered);
        assert_eq!(connectors, &["dyn-a"], "the primary carries the traffic");
    }
    let (long_state, long_parts) = finals.last().expect("long message");
    assert_eq!(*long_state, MessageState::Delivered);
    assert_eq!(
        long_parts,
        &["dyn-a", "dyn-a", "dyn-a"],
        "three parts, each its own Submitted on the message"
    );
    let status = upstream::status();
    let a = find(&status, "dyn-a").expect("dyn-a in the status");
    assert_eq!(a.submitted, 23, "20 short messages + 3 parts");
    assert_eq!(a.failed, 0);

    // Disabled: its binds unbind, traffic moves to the failover.
    let mut disabled = connector("dyn-a", primary_port);
    disabled.enabled = false;
    assert_eq!(
        propose(&store, &Command::UpsertConnector(disabled)),
        ApplyOutcome::Applied
    );
    wait_status("the primary unbound", |s| {
        find(s, "dyn-a").is_some_and(|c| !c.enabled && c.binds_up == 0)
    });
    let mut moved = Vec::new();
    for i in 0..20 {
        counter += 1;
        let destination = format!("4470000002{i:02}");
        moved.push(accept(&store, counter, &destination, b"hello".to_vec()));
    }
    for (state, connectors) in wait_final(&store, &moved) {
        assert_eq!(state, MessageState::Delivered);
        assert_eq!(connectors, ["dyn-b"], "the failover carries the traffic");
    }
    let status = upstream::status();
    assert_eq!(find(&status, "dyn-a").map(|c| c.submitted), Some(23));
    assert_eq!(find(&status, "dyn-b").map(|c| c.submitted), Some(20));

    stop.store(true, Ordering::Relaxed);
    let result = engine.join().expect("engine thread");
    assert!(result.is_ok(), "engine stopped with {result:?}");

    // What the operators saw: one submit_sm per part, none for the failover
    // before the switch.
    let primary_report = primary.finish();
    let failover_report = failover.finish();
    assert_eq!(
        primary_report["per_destination"][LONG_DESTINATION].as_u64(),
        Some(3),
        "{primary_report}"
    );
    let taken = |report: &serde_json::Value| {
        report["per_destination"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum::<u64>())
    };
    assert_eq!(taken(&primary_report), 23, "{primary_report}");
    assert_eq!(taken(&failover_report), 20, "{failover_report}");
}
