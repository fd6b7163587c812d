//! Crash in the middle of the whole life of a message: real `tern sim` and
//! `tern serve` processes on 127.0.0.1 and a customer written here (blocking
//! sockets over `tern::smpp`, so it sees every submit_sm_resp and every
//! deliver_sm, and keeps them across the crash).
//!
//! The customer submits with registered_delivery, each message to its own
//! destination, so the simulator's per-destination report says which
//! messages reached the operator and how often. `tern serve` is SIGKILLed
//! while the load runs, restarted on the same data directory, and a receiver
//! bind collects the receipts. Asserted: every message that got
//! submit_sm_resp OK reached the operator and its DLR (receipted_message_id =
//! the id we were given) reached the customer, before or after the crash.
//! Duplicates (the same message submitted upstream twice, the same DLR
//! delivered twice) are allowed by the at-least-once contract and reported
//! on stderr; losses fail the test.
//!
//! Also here, since they share the processes: the operator's own
//! enquire_link (`tern sim --enquire-link-ms`) is answered by the connector
//! under load, and the simulator closes a bind that ignores it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, read_pdu, temp_dir};

use bytes::Bytes;
use serde_json::Value;
use tern::smpp::pdu::{Address, Bind, Body, DeliverSmResp, Password, Pdu, SubmitSm, SystemId};

const TERN: &str = env!("CARGO_BIN_EXE_tern");
/// Submits the customer attempts; the crash comes well before the last.
const MESSAGES: usize = 30_000;
/// Acknowledged submits after which `tern serve` is killed.
const KILL_AFTER_ACKED: usize = 4_000;
/// submit_sm outstanding on the customer's bind.
const WINDOW: usize = 64;
/// Each message goes to its own number: the prefix plus its index.
const DESTINATION_PREFIX: &str = "4479";

fn destination(index: usize) -> String {
    format!("{DESTINATION_PREFIX}{index:08}")
}

fn index_of(destination: &str) -> Option<usize> {
    destination.strip_prefix(DESTINATION_PREFIX)?.parse().ok()
}

/// A child process killed (SIGKILL) when dropped.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_sim(dir: &Path, port: u16, report: &Path, extra: &[&str]) -> Process {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = dir.join("sim.log");
    let mut child = Command::new(TERN)
        .args(["sim", "--listen", &addr.to_string(), "--cores", "0"])
        .args(["--receipt-delay-ms", "100", "--receipt-jitter-ms", "100"])
        .arg("--report-json")
        .arg(report)
        .args(extra)
        .stderr(std::fs::File::create(&log).expect("sim log"))
        .spawn()
        .expect("start tern sim");
    common::wait_listening(addr, "tern sim", &mut child, &log);
    Process { child, log }
}

/// SIGINT, then the report the simulator wrote on its way out.
fn stop_sim(mut sim: Process, report: &Path) -> Value {
    // SAFETY: kill(2) on the pid of a child we started and still own.
    unsafe {
        libc::kill(sim.child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = sim.child.wait().expect("wait for tern sim");
    assert!(status.success(), "tern sim exited with {status}");
    let text = std::fs::read_to_string(report).expect("sim report");
    serde_json::from_str(&text).expect("sim report is JSON")
}

fn write_serve_config(dir: &Path, sim_port: u16, smpp_port: u16) -> PathBuf {
    let text = format!(
        "[node]\ndata_dir = \"{data}\"\n\
         [smpp]\nlisten = \"127.0.0.1:{smpp_port}\"\n\
         [store]\nlisten = \"127.0.0.1:{store_port}\"\n\
         [[account]]\nsystem_id = \"trial\"\npassword = \"trial\"\n\
         [[connector]]\nname = \"op1\"\nhosts = [\"127.0.0.1:{sim_port}\"]\n\
         system_id = \"tern\"\npassword = \"tern\"\nid_format = \"hex\"\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 500\n\
         [[route]]\nname = \"all\"\nconnectors = [\"op1\"]\n",
        data = dir.join("data").display(),
        store_port = free_port(),
    );
    let config = dir.join("tern.toml");
    std::fs::write(&config, text).expect("write config");
    config
}

fn start_serve(dir: &Path, config: &Path, smpp_port: u16, run: u32) -> Process {
    let log = dir.join(format!("serve-{run}.log"));
    let mut child = Command::new(TERN)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("serve log"))
        .spawn()
        .expect("start tern serve");
    let addr = SocketAddr::from(([127, 0, 0, 1], smpp_port));
    common::wait_listening(addr, "tern serve", &mut child, &log);
    Process { child, log }
}

/// Waits until the serve log says `binds` operator binds came up.
fn wait_bound(serve: &Process, binds: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = serve.log_text();
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

fn send(stream: &Mutex<TcpStream>, pdu: &Pdu) -> std::io::Result<()> {
    let bytes = pdu
        .to_bytes()
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, format!("{e:?}")))?;
    let mut stream = stream.lock().unwrap_or_else(|e| e.into_inner());
    stream.write_all(&bytes)
}

fn bind(stream: &mut TcpStream, receiver_only: bool) -> Result<(), String> {
    let bind = Bind {
        system_id: SystemId::from_text("trial").expect("system_id"),
        password: Password::from_text("trial").expect("password"),
        interface_version: 0x34,
        ..Bind::default()
    };
    let body = if receiver_only {
        Body::BindReceiver(bind)
    } else {
        Body::BindTransceiver(bind)
    };
    let bytes = Pdu::new(1, body).to_bytes().expect("encode bind");
    stream.write_all(&bytes).expect("send bind");
    match read_pdu(stream) {
        Ok(resp) if resp.command_status.is_ok() => Ok(()),
        Ok(resp) => Err(format!("bind refused: {:?}", resp.command_status)),
        Err(e) => Err(format!("no bind_resp: {e}")),
    }
}

fn submit_pdu(sequence_number: u32, index: usize) -> Pdu {
    let sm = SubmitSm {
        source_addr_ton: 5,
        source_addr: Address::from_text("TERN").expect("source"),
        dest_addr_ton: 1,
        dest_addr_npi: 1,
        destination_addr: Address::from_text(&destination(index)).expect("destination"),
        registered_delivery: 1,
        short_message: Bytes::from(format!("crash test {index}").into_bytes()),
        ..SubmitSm::default()
    };
    Pdu::new(sequence_number, Body::SubmitSm(sm))
}

/// What the customer saw on one connection.
#[derive(Default)]
struct Seen {
    /// Message index -> the id submit_sm_resp OK gave it.
    acked: BTreeMap<usize, String>,
    /// receipted_message_id of every DLR answered, in arrival order.
    dlrs: Vec<String>,
    /// submit_sm_resp with an error status.
    refused: usize,
}

/// Answers the server (deliver_sm_resp, enquire_link_resp) and records what
/// it gets until the connection ends or `done` says enough. Each
/// submit_sm_resp frees one slot of the window.
fn read_loop(
    mut reader: TcpStream,
    writer: &Mutex<TcpStream>,
    submitted: &Mutex<HashMap<u32, usize>>,
    slots: Option<Receiver<()>>,
    seen: &Mutex<Seen>,
) {
    while let Ok(pdu) = read_pdu(&mut reader) {
        let seq = pdu.sequence_number;
        let reply = match pdu.body {
            Body::SubmitSmResp(resp) => {
                let index = submitted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&seq);
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                match index {
                    Some(index) if pdu.command_status.is_ok() => {
                        let id = resp.message_id.as_str().unwrap_or_default().to_string();
                        seen.acked.insert(index, id);
                    }
                    _ => seen.refused += 1,
                }
                drop(seen);
                if let Some(slots) = &slots {
                    let _ = slots.try_recv();
                }
                None
            }
            Body::DeliverSm(sm) => {
                if let Some(id) = sm.tlvs.receipted_message_id() {
                    let id = id.as_str().unwrap_or_default().to_string();
                    seen.lock().unwrap_or_else(|e| e.into_inner()).dlrs.push(id);
                }
                Some(Body::DeliverSmResp(DeliverSmResp::default()))
            }
            Body::EnquireLink => Some(Body::EnquireLinkResp),
            Body::Unbind => {
                let _ = send(writer, &Pdu::new(seq, Body::UnbindResp));
                return;
            }
            _ => None,
        };
        if let Some(body) = reply {
            if send(writer, &Pdu::new(seq, body)).is_err() {
                return;
            }
        }
    }
}

/// Phase one: a transceiver submits `MESSAGES` with a window of `WINDOW`
/// until the connection breaks (the server is killed under it) or all are
/// sent; receipts that arrive meanwhile are answered and recorded.
struct Customer {
    seen: Arc<Mutex<Seen>>,
    reader: thread::JoinHandle<()>,
    writer: thread::JoinHandle<()>,
}

impl Customer {
    fn start(addr: SocketAddr, serve: &Process) -> Customer {
        let mut stream = TcpStream::connect(addr).expect("connect customer");
        if let Err(e) = bind(&mut stream, false) {
            panic!("customer bind: {e}\n{}", serve.log_text());
        }
        let writer_stream = Arc::new(Mutex::new(stream.try_clone().expect("clone socket")));
        let submitted: Arc<Mutex<HashMap<u32, usize>>> = Arc::default();
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (slot_tx, slot_rx): (SyncSender<()>, Receiver<()>) = sync_channel(WINDOW);
        let reader = {
            let writer = Arc::clone(&writer_stream);
            let submitted = Arc::clone(&submitted);
            let seen = Arc::clone(&seen);
            thread::spawn(move || {
                read_loop(stream, &writer, &submitted, Some(slot_rx), &seen);
            })
        };
        let writer = thread::spawn(move || {
            for index in 0..MESSAGES {
                // Blocks while WINDOW submits are unanswered; fails once the
                // reader is gone (the connection broke).
                if slot_tx.send(()).is_err() {
                    return;
                }
                let seq = u32::try_from(index + 2).expect("sequence fits");
                submitted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seq, index);
                if send(&writer_stream, &submit_pdu(seq, index)).is_err() {
                    return;
                }
            }
        });
        Customer {
            seen,
            reader,
            writer,
        }
    }

    fn acked(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .acked
            .len()
    }

    /// Waits for both threads (the server is gone, so both end) and returns
    /// what the connection saw.
    fn finish(self) -> Seen {
        self.reader.join().expect("reader thread");
        self.writer.join().expect("writer thread");
        Arc::try_unwrap(self.seen)
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
            .unwrap_or_else(|_| panic!("customer threads ended"))
    }
}

/// Phase two: a receiver bind collects DLRs until every id in `wanted` got
/// one (or `timeout`), then unbinds. Returns the receipted ids in order.
fn collect_dlrs(
    addr: SocketAddr,
    serve: &Process,
    wanted: &HashSet<String>,
    timeout: Duration,
) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).expect("connect receiver");
    if let Err(e) = bind(&mut stream, true) {
        panic!("receiver bind after the restart: {e}\n{}", serve.log_text());
    }
    let writer = Arc::new(Mutex::new(stream.try_clone().expect("clone socket")));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let reader = {
        let writer = Arc::clone(&writer);
        let seen = Arc::clone(&seen);
        thread::spawn(move || {
            read_loop(stream, &writer, &Mutex::default(), None, &seen);
        })
    };
    let deadline = Instant::now() + timeout;
    loop {
        let complete = {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            let got: HashSet<&String> = seen.dlrs.iter().collect();
            wanted.iter().all(|id| got.contains(id))
        };
        if complete || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    // Stragglers already on the wire (duplicates) get a moment to arrive.
    thread::sleep(Duration::from_millis(500));
    let _ = writer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .shutdown(Shutdown::Both);
    reader.join().expect("receiver thread");
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.dlrs.clone()
}

#[test]
fn sigkill_mid_load_loses_no_acknowledged_message_nor_its_dlr() {
    let started = Instant::now();
    let dir = temp_dir("crash-e2e");
    let sim_port = free_port();
    let smpp_port = free_port();
    let smpp = SocketAddr::from(([127, 0, 0, 1], smpp_port));
    let report = dir.path().join("sim-report.json");
    let sim = start_sim(dir.path(), sim_port, &report, &[]);
    let config = write_serve_config(dir.path(), sim_port, smpp_port);
    let mut serve = start_serve(dir.path(), &config, smpp_port, 1);

    let customer = Customer::start(smpp, &serve);
    let deadline = Instant::now() + Duration::from_secs(30);
    while customer.acked() < KILL_AFTER_ACKED {
        assert!(
            Instant::now() < deadline,
            "load made too little progress ({} acked):\n{}",
            customer.acked(),
            serve.log_text()
        );
        thread::sleep(Duration::from_millis(10));
    }
    serve.kill();
    common::wait_closed(smpp);
    let before = customer.finish();
    assert!(
        before.acked.len() < MESSAGES,
        "the crash came after the whole load; nothing was tested mid-stream"
    );

    let serve = start_serve(dir.path(), &config, smpp_port, 2);
    let wanted: HashSet<String> = before.acked.values().cloned().collect();
    assert_eq!(wanted.len(), before.acked.len(), "ids are unique");
    let early: HashSet<String> = before.dlrs.iter().cloned().collect();
    let missing_before: HashSet<String> = wanted.difference(&early).cloned().collect();
    let after = collect_dlrs(smpp, &serve, &missing_before, Duration::from_secs(30));
    let serve_log = serve.log_text();
    drop(serve);
    let sim_report = stop_sim(sim, &report);

    // Upstream: every acknowledged message reached the operator.
    let per_destination = sim_report["per_destination"]
        .as_object()
        .expect("per_destination in the sim report");
    assert_eq!(
        sim_report["per_destination_overflow"], 0,
        "every destination tracked"
    );
    let mut upstream: HashMap<usize, u64> = HashMap::new();
    for (dest, count) in per_destination {
        if let Some(index) = index_of(dest) {
            upstream.insert(index, count.as_u64().unwrap_or(0));
        }
    }
    let never_submitted: Vec<usize> = before
        .acked
        .keys()
        .copied()
        .filter(|index| upstream.get(index).copied().unwrap_or(0) == 0)
        .collect();
    let upstream_duplicates: u64 = upstream.values().map(|n| n.saturating_sub(1)).sum();
    let unacked_but_submitted = upstream
        .keys()
        .filter(|index| !before.acked.contains_key(index))
        .count();

    // Downstream: every acknowledged message got its DLR.
    let mut dlr_count: HashMap<&str, usize> = HashMap::new();
    for id in before.dlrs.iter().chain(after.iter()) {
        *dlr_count.entry(id.as_str()).or_insert(0) += 1;
    }
    let no_dlr: Vec<&String> = wanted
        .iter()
        .filter(|id| !dlr_count.contains_key(id.as_str()))
        .collect();
    let dlr_duplicates: usize = dlr_count.values().map(|n| n - 1).sum();
    let dlrs_for_unacked = dlr_count.keys().filter(|id| !wanted.contains(**id)).count();

    eprintln!(
        "crash summary: acked={} refused={} dlrs_before_crash={} dlrs_after_restart={} \
         upstream_duplicates={} dlr_duplicates={} unacked_but_submitted={} \
         dlrs_for_unacked={} lost_upstream={} lost_dlrs={} wall={:.1}s",
        before.acked.len(),
        before.refused,
        before.dlrs.len(),
        after.len(),
        upstream_duplicates,
        dlr_duplicates,
        unacked_but_submitted,
        dlrs_for_unacked,
        never_submitted.len(),
        no_dlr.len(),
        started.elapsed().as_secs_f64(),
    );
    assert!(
        never_submitted.is_empty(),
        "{} acknowledged messages never reached the operator (first: {:?})\n{serve_log}",
        never_submitted.len(),
        never_submitted.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        no_dlr.is_empty(),
        "{} acknowledged messages got no DLR (first: {:?})\n{serve_log}",
        no_dlr.len(),
        no_dlr.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        sim_report["totals"]["receipts_dropped"], 0,
        "the simulator gave up on no receipt: {sim_report}"
    );
}

/// A real SMSC checks its binds with enquire_link; `tern sim
/// --enquire-link-ms` does too. The connector must answer every one (the
/// simulator closes a bind that leaves one unanswered for a period), while
/// the bind keeps carrying traffic.
#[test]
fn the_connector_answers_the_operators_enquire_link() {
    let dir = temp_dir("sim-enquire");
    let sim_port = free_port();
    let smpp_port = free_port();
    let report = dir.path().join("sim-report.json");
    let sim = start_sim(dir.path(), sim_port, &report, &["--enquire-link-ms", "100"]);
    let config = write_serve_config(dir.path(), sim_port, smpp_port);
    let serve = start_serve(dir.path(), &config, smpp_port, 1);
    wait_bound(&serve, 1);
    let smpp = SocketAddr::from(([127, 0, 0, 1], smpp_port));
    let customer = Customer::start(smpp, &serve);
    // About fifteen periods of the operator's enquire_link while the load
    // (whichever part of it fits in the time) goes through the same bind.
    thread::sleep(Duration::from_millis(1_500));
    let acked = customer.acked();
    drop(serve);
    let _ = customer.finish();
    let totals = stop_sim(sim, &report)["totals"].clone();
    eprintln!("enquire_link summary: acked={acked} sim={totals}");
    let sent = totals["enquire_links_sent"].as_u64().unwrap_or(0);
    let answered = totals["enquire_link_resps"].as_u64().unwrap_or(0);
    assert!(sent >= 5, "the simulator probed the bind: {totals}");
    assert!(
        answered + 1 >= sent,
        "every enquire_link but one in flight at the end was answered: {totals}"
    );
    assert_eq!(totals["enquire_links_unanswered"], 0, "{totals}");
    assert_eq!(totals["connections_dropped"], 0, "{totals}");
    assert!(acked > 0, "submits went through meanwhile");
    assert!(totals["submits_ok"].as_u64().unwrap_or(0) > 0, "{totals}");
}

/// The negative case of the simulator's keep-alive: a bind that never
/// answers enquire_link is closed after one unanswered period.
#[test]
fn the_simulator_drops_a_bind_that_ignores_enquire_link() {
    let dir = temp_dir("sim-enquire-deaf");
    let sim_port = free_port();
    let report = dir.path().join("sim-report.json");
    let sim = start_sim(dir.path(), sim_port, &report, &["--enquire-link-ms", "100"]);
    let mut stream =
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], sim_port))).expect("connect sim");
    if let Err(e) = bind(&mut stream, false) {
        panic!("bind to the simulator: {e}");
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let started = Instant::now();
    let mut probes = 0;
    let closed_after = loop {
        match read_pdu(&mut stream) {
            Ok(pdu) if pdu.body == Body::EnquireLink => probes += 1,
            Ok(pdu) => panic!("unexpected {pdu}"),
            Err(_) => break started.elapsed(),
        }
    };
    let totals = stop_sim(sim, &report)["totals"].clone();
    assert_eq!(probes, 1, "one probe, unanswered, then the close");
    assert!(
        closed_after < Duration::from_secs(2),
        "closed within a period or two, not by the read timeout: {closed_after:?}"
    );
    assert_eq!(totals["enquire_links_unanswered"], 1, "{totals}");
    assert_eq!(totals["connections_dropped"], 1, "{totals}");
}
