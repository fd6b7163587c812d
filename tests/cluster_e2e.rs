//! Three `tern serve` processes in one raft group on 127.0.0.1, a real
//! `tern sim` as the operator, HTTP customers: what happens when a node dies
//! or is cut off.
//!
//! - A node SIGKILLed with accepted, unsubmitted messages (its operator link
//!   was down): the leader declares it down after `node_down_after_s`, the
//!   live nodes take its messages over and deliver them once the operator is
//!   back; restarted, the dead node rejoins with a new incarnation and sees
//!   the same outcome.
//! - DLRs follow the customer's receiver bind from node to node: submitted
//!   on node 1, receipted by the operator through whichever node dispatched
//!   them, delivered on node 3's receiver; with node 3 killed, the receiver
//!   rebinds on node 2 and gets the rest.
//! - The leader SIGKILLed under HTTP load on all three nodes: every message
//!   a node answered 201 for is delivered, as the survivors report it.
//! - A node frozen (SIGSTOP) longer than `node_down_after_s`: declared down
//!   while alive, it learns so when it thaws, stops with an error saying why
//!   (exit status 1, for the service manager to restart it), and a restart
//!   serves again.

use std::collections::HashSet;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, read_pdu, temp_dir};

use serde_json::{json, Value};
use tern::smpp::pdu::{Bind, Body, DeliverSmResp, Password, Pdu, SystemId};

const TERN: &str = env!("CARGO_BIN_EXE_tern");
const API_KEY: &str = "cluster-key";
const ADMIN_TOKEN: &str = "cluster-admin";
/// Small, so the tests wait seconds; at least two election timeouts, and
/// wide enough that a loaded test machine does not look like a dead node.
const NODE_DOWN_AFTER_S: u64 = 5;
/// One cluster at a time: six nodes on two cores would starve heartbeats.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Ports {
    smpp: u16,
    http: u16,
    store: u16,
}

/// One node's configuration and, while it runs, its process.
struct Node {
    id: u64,
    config: PathBuf,
    log: PathBuf,
    http: u16,
    smpp: u16,
    child: Option<Child>,
    runs: u32,
}

impl Node {
    fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already runs", self.id);
        self.runs += 1;
        self.log = self
            .config
            .with_file_name(format!("serve-{}-{}.log", self.id, self.runs));
        let child = Command::new(TERN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).expect("serve log"))
            .spawn()
            .expect("start tern serve");
        self.child = Some(child);
    }

    fn wait_listening(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.http));
        let child = self.child.as_mut().expect("a running node");
        common::wait_listening(addr, &format!("node {}", self.id), child, &self.log);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        common::wait_closed(SocketAddr::from(([127, 0, 0, 1], self.http)));
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("a running node");
        // SAFETY: kill(2) on the pid of a child we started and still own.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn write_configs(dir: &Path, sim_port: u16) -> Vec<Node> {
    let ports: Vec<Ports> = (0..3)
        .map(|_| Ports {
            smpp: free_port(),
            http: free_port(),
            store: free_port(),
        })
        .collect();
    (1..=3u64)
        .map(|id| {
            let own = &ports[id as usize - 1];
            let mut peers = String::new();
            for (index, other) in ports.iter().enumerate() {
                let peer_id = index as u64 + 1;
                if peer_id != id {
                    peers.push_str(&format!(
                        "[[store.peers]]\nid = {peer_id}\naddr = \"127.0.0.1:{}\"\n",
                        other.store
                    ));
                }
            }
            let text = format!(
                "[node]\nid = {id}\ndata_dir = \"{data}\"\n\
                 [smpp]\nlisten = \"127.0.0.1:{smpp}\"\n\
                 [store]\nlisten = \"127.0.0.1:{store}\"\nsecret = \"cluster-e2e-secret\"\n\
                 node_down_after_s = {NODE_DOWN_AFTER_S}\n{peers}\
                 [http]\nlisten = \"127.0.0.1:{http}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
                 [[account]]\nsystem_id = \"acme\"\npassword = \"acme\"\napi_key = \"{API_KEY}\"\n\
                 [[connector]]\nname = \"op1\"\nhosts = [\"127.0.0.1:{sim_port}\"]\n\
                 system_id = \"tern\"\npassword = \"tern\"\n\
                 reconnect_min_ms = 50\nreconnect_max_ms = 300\n\
                 [[route]]\nname = \"all\"\nconnectors = [\"op1\"]\n",
                data = dir.join(format!("data-{id}")).display(),
                smpp = own.smpp,
                store = own.store,
                http = own.http,
            );
            let config = dir.join(format!("node-{id}.toml"));
            std::fs::write(&config, text).expect("write config");
            Node {
                id,
                config,
                log: PathBuf::new(),
                http: own.http,
                smpp: own.smpp,
                child: None,
                runs: 0,
            }
        })
        .collect()
}

/// Starts all three (each waits for a quorum before it listens).
fn start_cluster(nodes: &mut [Node]) {
    for node in nodes.iter_mut() {
        node.start();
    }
    for node in nodes.iter_mut() {
        node.wait_listening();
    }
}

/// The operator simulator, killed when dropped.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sim(dir: &Path, port: u16) -> Sim {
    let log = dir.join("sim.log");
    let mut child = Command::new(TERN)
        .args([
            "sim",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cores",
            "0",
        ])
        .args(["--receipt-delay-ms", "50"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("sim log"))
        .spawn()
        .expect("start tern sim");
    common::wait_listening(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "tern sim",
        &mut child,
        &log,
    );
    Sim(child)
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
}

/// POSTs one message to `node`; its id.
fn submit(node: &Node, to: &str) -> String {
    submit_with(node, to, false)
}

/// Retries a 503 (no leader for a moment after a node died: the API says
/// retry) with the same Idempotency-Key, as a client should.
fn submit_with(node: &Node, to: &str, dlr: bool) -> String {
    let body = json!({"from": "ACME", "to": to, "text": "cluster test", "dlr": dlr});
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        let answer = agent()
            .post(&format!("{}/v1/messages", node.base()))
            .set("Authorization", &format!("Bearer {API_KEY}"))
            .set("Idempotency-Key", &format!("cluster-test-{to}"))
            .send_json(body.clone());
        match answer {
            Ok(response) => break response,
            Err(ureq::Error::Status(503, _)) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("submit to node {}: {e}\n{}", node.id, node.log_text()),
        }
    };
    assert_eq!(response.status(), 201);
    let value: Value = response.into_json().expect("JSON answer");
    value["messages"][0]["id"]
        .as_str()
        .expect("a message id")
        .to_string()
}

/// The message's state as `node` reports it (None: not readable now).
fn state_of(node: &Node, id: &str) -> Option<String> {
    let response = agent()
        .get(&format!("{}/v1/messages/{id}", node.base()))
        .set("Authorization", &format!("Bearer {API_KEY}"))
        .call()
        .ok()?;
    let value: Value = response.into_json().ok()?;
    value["state"].as_str().map(str::to_string)
}

fn wait_all_delivered(node: &Node, ids: &[String], within: Duration, others: &[&Node]) {
    let deadline = Instant::now() + within;
    loop {
        let pending: Vec<&String> = ids
            .iter()
            .filter(|id| state_of(node, id).as_deref() != Some("delivered"))
            .collect();
        if pending.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = std::iter::once(node)
                .chain(others.iter().copied())
                .map(|n| format!("--- node {} ---\n{}", n.id, n.log_text()))
                .collect();
            panic!(
                "{} of {} messages not delivered according to node {}, e.g. {}: {:?}\n{}",
                pending.len(),
                ids.len(),
                node.id,
                pending[0],
                state_of(node, pending[0]),
                logs.join("\n")
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_dead_node_s_unsubmitted_messages_are_taken_over_and_delivered() {
    let _serial = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("cluster-handover");
    let sim_port = free_port();
    let mut nodes = write_configs(dir.path(), sim_port);
    start_cluster(&mut nodes);

    // The operator is down: every message stays accepted, owned by node 1.
    let ids: Vec<String> = (0..20)
        .map(|i| submit(&nodes[0], &format!("4479{i:08}")))
        .collect();
    thread::sleep(Duration::from_millis(300));
    for id in &ids {
        assert_eq!(state_of(&nodes[1], id).as_deref(), Some("accepted"), "{id}");
    }

    nodes[0].kill();
    let _sim = start_sim(dir.path(), sim_port);
    // Declared down after NODE_DOWN_AFTER_S (plus an election if node 1
    // led), then nodes 2 and 3 submit its messages.
    let (survivor, rest) = nodes.split_at(2);
    wait_all_delivered(
        &survivor[1],
        &ids,
        Duration::from_secs(60),
        &[&survivor[0], &rest[0]],
    );
    let declared = nodes[1..]
        .iter()
        .any(|n| n.log_text().contains("declaring it down"));
    assert!(declared, "no survivor logged the decision");
    assert_eq!(
        node_up_seen_by(&nodes[1], 1),
        Some(false),
        "node 1 is down in the status"
    );

    // Node 1 comes back with a new incarnation and agrees.
    nodes[0].start();
    nodes[0].wait_listening();
    wait_all_delivered(&nodes[0], &ids, Duration::from_secs(30), &[]);
    assert_eq!(
        node_up_seen_by(&nodes[2], 1),
        Some(true),
        "node 1 is up again in the status"
    );
    let new_id = submit(&nodes[0], "447900000999");
    wait_all_delivered(&nodes[2], &[new_id], Duration::from_secs(30), &[&nodes[0]]);
}

#[test]
fn a_node_declared_down_while_frozen_stops_and_a_restart_rejoins() {
    let _serial = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("cluster-fence");
    let sim_port = free_port();
    let _sim = start_sim(dir.path(), sim_port);
    let mut nodes = write_configs(dir.path(), sim_port);
    start_cluster(&mut nodes);
    let before = submit(&nodes[2], "447900000001");

    // Frozen for twice the detector's window: the others declare it down.
    nodes[2].signal(libc::SIGSTOP);
    thread::sleep(Duration::from_secs(NODE_DOWN_AFTER_S * 2 + 2));
    let during = submit(&nodes[0], "447900000002");
    nodes[2].signal(libc::SIGCONT);

    // Thawed, it applies the decision and stops with status 1.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let child = nodes[2].child.as_mut().expect("node 3 runs");
        if let Some(status) = child.try_wait().expect("wait for node 3") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 kept running after it was declared down:\n{}",
            nodes[2].log_text()
        );
        thread::sleep(Duration::from_millis(100));
    };
    nodes[2].child = None;
    assert_eq!(status.code(), Some(1), "{}", nodes[2].log_text());
    assert!(
        nodes[2].log_text().contains("declared this node down"),
        "{}",
        nodes[2].log_text()
    );

    // A restart (what the service manager does) rejoins and serves.
    nodes[2].start();
    nodes[2].wait_listening();
    let after = submit(&nodes[2], "447900000003");
    wait_all_delivered(
        &nodes[2],
        &[before, during, after],
        Duration::from_secs(30),
        &[&nodes[0], &nodes[1]],
    );
}

/// A customer's receiver bind on one node, answering every deliver_sm and
/// recording the receipted message ids.
struct Receiver {
    stream: TcpStream,
    dlrs: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Receiver {
    fn bind(node: &Node, dlrs: &Arc<Mutex<Vec<String>>>) -> Receiver {
        let mut stream =
            TcpStream::connect(("127.0.0.1", node.smpp)).expect("connect the receiver");
        let bind = Bind {
            system_id: SystemId::from_text("acme").expect("system_id"),
            password: Password::from_text("acme").expect("password"),
            interface_version: 0x34,
            ..Bind::default()
        };
        let bytes = Pdu::new(1, Body::BindReceiver(bind))
            .to_bytes()
            .expect("encode bind");
        stream.write_all(&bytes).expect("send bind");
        match read_pdu(&mut stream) {
            Ok(resp) if resp.command_status.is_ok() => {}
            other => panic!(
                "receiver bind on node {}: {other:?}\n{}",
                node.id,
                node.log_text()
            ),
        }
        let mut reader = stream.try_clone().expect("clone the socket");
        let mut writer = stream.try_clone().expect("clone the socket");
        let seen = Arc::clone(dlrs);
        let reader = thread::spawn(move || {
            while let Ok(pdu) = read_pdu(&mut reader) {
                let reply = match pdu.body {
                    Body::DeliverSm(sm) => {
                        if let Some(id) = sm.tlvs.receipted_message_id() {
                            let id = id.as_str().unwrap_or_default().to_string();
                            seen.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                        }
                        Body::DeliverSmResp(DeliverSmResp::default())
                    }
                    Body::EnquireLink => Body::EnquireLinkResp,
                    _ => continue,
                };
                let bytes = Pdu::new(pdu.sequence_number, reply)
                    .to_bytes()
                    .expect("encode a response");
                if writer.write_all(&bytes).is_err() {
                    return;
                }
            }
        });
        Receiver {
            stream,
            dlrs: Arc::clone(dlrs),
            reader: Some(reader),
        }
    }

    /// Waits until every id in `wanted` has had a DLR (on any receiver that
    /// shares this one's record).
    fn wait_for(&self, wanted: &[String], within: Duration, nodes: &[&Node]) {
        let deadline = Instant::now() + within;
        loop {
            let missing: Vec<String> = {
                let seen = self.dlrs.lock().unwrap_or_else(|e| e.into_inner());
                let got: HashSet<&String> = seen.iter().collect();
                wanted
                    .iter()
                    .filter(|id| !got.contains(id))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = nodes
                    .iter()
                    .map(|n| format!("--- node {} ---\n{}", n.id, n.log_text()))
                    .collect();
                panic!(
                    "{} of {} DLRs missing, e.g. {}\n{}",
                    missing.len(),
                    wanted.len(),
                    missing[0],
                    logs.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

#[test]
fn dlrs_follow_the_receiver_bind_from_node_to_node() {
    let _serial = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("cluster-dlr");
    let sim_port = free_port();
    let _sim = start_sim(dir.path(), sim_port);
    let mut nodes = write_configs(dir.path(), sim_port);
    start_cluster(&mut nodes);
    let dlrs: Arc<Mutex<Vec<String>>> = Arc::default();

    // Submitted on node 1, delivered on node 3's receiver.
    let on_node_3 = Receiver::bind(&nodes[2], &dlrs);
    let first: Vec<String> = (0..10)
        .map(|i| submit_with(&nodes[0], &format!("4478{i:08}"), true))
        .collect();
    on_node_3.wait_for(&first, Duration::from_secs(30), &[&nodes[0], &nodes[2]]);

    // Node 3 dies with the receiver while more DLRs come due, some aimed
    // at the dead bind (still registered until node 3 is declared down).
    // The receiver binds again on node 2 and gets them all.
    nodes[2].kill();
    drop(on_node_3);
    let second: Vec<String> = (10..30)
        .map(|i| submit_with(&nodes[0], &format!("4478{i:08}"), true))
        .collect();
    let on_node_2 = Receiver::bind(&nodes[1], &dlrs);
    on_node_2.wait_for(&second, Duration::from_secs(60), &[&nodes[0], &nodes[1]]);
}

/// Whether `node`'s admin status counts node `id` as up.
fn node_up_seen_by(node: &Node, id: u64) -> Option<bool> {
    let response = agent()
        .get(&format!("{}/admin/v1/status", node.base()))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .ok()?;
    let value: Value = response.into_json().ok()?;
    value["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"].as_u64() == Some(id))?["up"]
        .as_bool()
}

/// The leader's id as `node` sees it (0: none known or no answer).
fn leader_seen_by(node: &Node) -> u64 {
    let Ok(response) = agent()
        .get(&format!("{}/admin/v1/status", node.base()))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
    else {
        return 0;
    };
    let value: Value = response.into_json().unwrap_or_default();
    value["leader_id"].as_u64().unwrap_or(0)
}

#[test]
fn the_leader_killed_under_load_loses_no_acknowledged_message() {
    const CLIENTS: usize = 6;
    let _serial = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("cluster-load");
    let sim_port = free_port();
    let _sim = start_sim(dir.path(), sim_port);
    let mut nodes = write_configs(dir.path(), sim_port);
    start_cluster(&mut nodes);

    // Clients, two per node, submit until told to stop; a request that
    // fails (its node died, or no leader for a moment) is simply not acked.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let base = nodes[client % 3].base();
            let (stop, acked, refused) =
                (Arc::clone(&stop), Arc::clone(&acked), Arc::clone(&refused));
            thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build();
                let mut sequence = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    sequence += 1;
                    let to = format!("4477{client:02}{sequence:06}");
                    let body = json!({"from": "ACME", "to": to, "text": "load"});
                    let answer = agent
                        .post(&format!("{base}/v1/messages"))
                        .set("Authorization", &format!("Bearer {API_KEY}"))
                        .send_json(body);
                    let id = answer.ok().and_then(|r| {
                        let value: Value = r.into_json().ok()?;
                        value["messages"][0]["id"].as_str().map(str::to_string)
                    });
                    match id {
                        Some(id) => acked.lock().unwrap_or_else(|e| e.into_inner()).push(id),
                        None => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })
        })
        .collect();

    thread::sleep(Duration::from_secs(2));
    let leader = leader_seen_by(&nodes[0]);
    assert!((1..=3).contains(&leader), "no leader known to node 1");
    let acked_before_kill = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
    nodes[leader as usize - 1].kill();
    thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.join().expect("client thread");
    }
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    eprintln!(
        "killed node {leader}: acked {} ({acked_before_kill} before the kill), refused {}",
        acked.len(),
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        acked.len() > acked_before_kill,
        "nothing was acknowledged after the leader died"
    );
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.child.is_some()).collect();
    wait_all_delivered(
        survivors[0],
        &acked,
        Duration::from_secs(90),
        &survivors[1..],
    );
}
