//! Real-process tests of the replicated store: every node is a `tern
//! store-node` child process talking authenticated TCP on 127.0.0.1, with its
//! own data directory and real fdatasync. Nodes are killed with SIGKILL (no
//! clean shutdown), restarted from their directories, and checked for agreement.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, temp_dir};

use crossbeam_channel::{Receiver, RecvTimeoutError};

const SECRET_HEX: &str = "746573742d636c75737465722d7365637265742d30313233343536373839";
const PAYLOAD_BYTES: usize = 200;

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[derive(Clone)]
struct NodeSpec {
    id: u64,
    addr: SocketAddr,
    peers: Vec<(u64, SocketAddr)>,
    voters: Vec<u64>,
    data_dir: PathBuf,
    extra: Vec<String>,
}

/// A running child node. Answers to proposals go to `acks`, all other
/// answers to `answers`.
struct Node {
    spec: NodeSpec,
    child: Child,
    stdin: ChildStdin,
    acks: Receiver<(String, bool)>,
    answers: Receiver<Vec<String>>,
    next_tag: u64,
}

impl Node {
    fn start(spec: &NodeSpec) -> Node {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tern"));
        command
            .arg("store-node")
            .arg("--id")
            .arg(spec.id.to_string())
            .arg("--listen")
            .arg(spec.addr.to_string())
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--secret-hex")
            .arg(SECRET_HEX)
            .arg("--tick-ms")
            .arg("20");
        if !spec.voters.is_empty() {
            let voters: Vec<String> = spec.voters.iter().map(u64::to_string).collect();
            command.arg("--voters").arg(voters.join(","));
        }
        for (id, addr) in &spec.peers {
            command.arg("--peer").arg(format!("{id}={addr}"));
        }
        command.args(&spec.extra);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tern store-node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ack_tx, acks) = crossbeam_channel::unbounded();
        let (answer_tx, answers) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
                let is_proposal_answer = words.get(1).is_some_and(|tag| tag.starts_with('p'))
                    && matches!(words.first().map(String::as_str), Some("ok" | "err"));
                if is_proposal_answer {
                    let _ = ack_tx.send((words[1].clone(), words[0] == "ok"));
                } else {
                    let _ = answer_tx.send(words);
                }
            }
        });
        let node = Node {
            spec: spec.clone(),
            child,
            stdin,
            acks,
            answers,
            next_tag: 0,
        };
        let ready = node.answer(Duration::from_secs(20));
        assert_eq!(
            ready.first().map(String::as_str),
            Some("ready"),
            "node {} did not start: {ready:?}",
            spec.id
        );
        node
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("node stdin");
    }

    fn answer(&self, timeout: Duration) -> Vec<String> {
        match self.answers.recv_timeout(timeout) {
            Ok(words) => words,
            Err(RecvTimeoutError::Timeout) => {
                panic!("node {} did not answer in {timeout:?}", self.spec.id)
            }
            Err(RecvTimeoutError::Disconnected) => panic!("node {} exited", self.spec.id),
        }
    }

    fn request(&mut self, verb: &str, args: &str) -> Vec<String> {
        self.next_tag += 1;
        let tag = format!("q{}", self.next_tag);
        self.send(&format!("{verb} {tag} {args}"));
        let words = self.answer(Duration::from_secs(20));
        assert_eq!(words.get(1), Some(&tag), "answers out of order: {words:?}");
        words
    }

    /// (leader, term, applied, voters)
    fn status(&mut self) -> (u64, u64, u64, Vec<u64>) {
        let words = self.request("status", "");
        let voters = words
            .get(5)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        (
            words[2].parse().unwrap(),
            words[3].parse().unwrap(),
            words[4].parse().unwrap(),
            voters,
        )
    }

    /// (applied, message count, state crc)
    fn digest(&mut self) -> (u64, u64, String) {
        let words = self.request("digest", "");
        (
            words[2].parse().unwrap(),
            words[3].parse().unwrap(),
            words[4].clone(),
        )
    }

    fn missing(&mut self, ids: &[(u64, u64)]) -> usize {
        let mut missing = 0;
        for chunk in ids.chunks(500) {
            let list: Vec<String> = chunk.iter().map(|(w, s)| format!("{w}:{s}")).collect();
            let words = self.request("has", &list.join(" "));
            missing += words[2].parse::<usize>().unwrap();
        }
        missing
    }

    fn kill(mut self) -> NodeSpec {
        self.child.kill().unwrap();
        let _ = self.child.wait();
        self.spec.clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster_specs(dir: &Path, ids: &[u64], voters: &[u64], extra: &[&str]) -> Vec<NodeSpec> {
    let addrs: Vec<(u64, SocketAddr)> = ids.iter().map(|id| (*id, free_addr())).collect();
    addrs
        .iter()
        .map(|(id, addr)| NodeSpec {
            id: *id,
            addr: *addr,
            peers: addrs.iter().filter(|(p, _)| p != id).copied().collect(),
            voters: voters.to_vec(),
            data_dir: dir.join(format!("node-{id}")),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        })
        .collect()
}

/// Waits until some live node reports itself leader; returns its position.
fn wait_for_leader(nodes: &mut [Option<Node>], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for (position, slot) in nodes.iter_mut().enumerate() {
            if let Some(node) = slot.as_mut() {
                let (leader, _, _, _) = node.status();
                if leader == node.spec.id {
                    return position;
                }
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("no leader within {timeout:?}");
}

/// Proposes `count` messages of `worker` from `first_seq` on `node`, keeping
/// up to `window` in flight; returns the (worker, seq) pairs acknowledged.
/// With `kill_after`, stops reading once that many are acknowledged and
/// returns what was acknowledged by then (the caller kills the node).
fn propose_stream(
    node: &mut Node,
    worker: u64,
    first_seq: u64,
    count: u64,
    window: u64,
    stop_after_acks: Option<usize>,
) -> Streamed {
    let mut acked = Vec::new();
    let mut in_flight: HashMap<String, u64> = HashMap::new();
    let mut next = first_seq;
    let end = first_seq + count;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (next < end || !in_flight.is_empty()) && Instant::now() < deadline {
        while next < end && (in_flight.len() as u64) < window {
            let tag = format!("p{worker}-{next}");
            node.send(&format!("propose {tag} {worker} {next} {PAYLOAD_BYTES}"));
            in_flight.insert(tag, next);
            next += 1;
        }
        match node.acks.recv_timeout(Duration::from_secs(10)) {
            Ok((tag, ok)) => {
                if let Some(seq) = in_flight.remove(&tag) {
                    if ok {
                        acked.push((worker, seq));
                    }
                }
            }
            Err(_) => break,
        }
        if stop_after_acks.is_some_and(|n| acked.len() >= n) {
            break;
        }
    }
    Streamed {
        acked,
        sent: (first_seq..next).map(|seq| (worker, seq)).collect(),
    }
}

/// What a proposal stream achieved: (worker, seq) pairs acknowledged, and
/// every pair handed to the node (acknowledged or not).
struct Streamed {
    acked: Vec<(u64, u64)>,
    sent: Vec<(u64, u64)>,
}

/// Waits until a single-voter node leads itself.
fn wait_until_self_leader(node: &mut Node) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.status().0 != node.spec.id {
        assert!(
            Instant::now() < deadline,
            "node {} never became leader",
            node.spec.id
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn propose_account(node: &mut Node) {
    node.send("account pa");
    let (tag, ok) = node
        .acks
        .recv_timeout(Duration::from_secs(20))
        .expect("account answer");
    assert_eq!(tag, "pa");
    assert!(ok, "account proposal failed");
}

/// Waits until every node reports the same applied index and state digest.
fn wait_for_agreement(nodes: &mut [&mut Node], timeout: Duration) -> (u64, u64, String) {
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = nodes.iter_mut().map(|n| n.digest()).collect::<Vec<_>>();
        if last.windows(2).all(|w| w[0] == w[1]) {
            return last[0].clone();
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("nodes did not agree within {timeout:?}: {last:?}");
}

#[test]
fn leader_killed_under_load_then_old_leader_rejoins_and_agrees() {
    let dir = temp_dir("failover");
    // Frequent state snapshots and a short log tail, so the restarted node
    // catches up through a snapshot when it fell far behind.
    let specs = cluster_specs(
        dir.path(),
        &[1, 2, 3],
        &[1, 2, 3],
        &[
            "--snapshot-log-bytes",
            "65536",
            "--compact-keep-entries",
            "4",
            "--compact-min-entries",
            "4",
        ],
    );
    let mut nodes: Vec<Option<Node>> = specs.iter().map(|s| Some(Node::start(s))).collect();
    let leader = wait_for_leader(&mut nodes, Duration::from_secs(20));
    propose_account(nodes[leader].as_mut().unwrap());

    // A stream of proposals; the leader is SIGKILLed in the middle of it.
    let mut acked = propose_stream(
        nodes[leader].as_mut().unwrap(),
        1,
        0,
        100_000,
        64,
        Some(1500),
    )
    .acked;
    assert!(
        acked.len() >= 1500,
        "only {} acknowledged before the kill",
        acked.len()
    );
    let old_spec = nodes[leader].take().unwrap().kill();

    let new_leader = wait_for_leader(&mut nodes, Duration::from_secs(20));
    assert_ne!(new_leader, leader);
    // The new leader takes proposals: enough to push the log past the killed
    // node's position and through several snapshots.
    acked.extend(propose_stream(nodes[new_leader].as_mut().unwrap(), 2, 0, 3000, 64, None).acked);
    // A follower takes proposals too: raft forwards them to the leader and
    // the follower answers once it applied them.
    let follower = (0..nodes.len())
        .find(|&p| p != leader && p != new_leader)
        .unwrap();
    let from_follower =
        propose_stream(nodes[follower].as_mut().unwrap(), 5, 0, 300, 32, None).acked;
    assert_eq!(
        from_follower.len(),
        300,
        "proposals through a follower were not all acknowledged"
    );
    acked.extend(from_follower);
    for node in nodes.iter_mut().flatten() {
        assert_eq!(
            node.missing(&acked),
            0,
            "node {} lost acknowledged proposals",
            node.spec.id
        );
    }

    nodes[leader] = Some(Node::start(&old_spec));
    let mut live: Vec<&mut Node> = nodes.iter_mut().flatten().collect();
    let (_, count, _) = wait_for_agreement(&mut live, Duration::from_secs(30));
    assert!(count as usize >= acked.len());
    let restarted = nodes[leader].as_mut().unwrap();
    assert_eq!(
        restarted.missing(&acked),
        0,
        "the restarted node misses acknowledged proposals"
    );
    let status = restarted.request("status", "");
    assert!(
        status[7].parse::<u64>().unwrap() >= 1,
        "the restarted node caught up without a snapshot: {status:?}"
    );
}

#[test]
fn single_node_sigkilled_mid_batches_keeps_everything_acknowledged() {
    let dir = temp_dir("crash");
    let specs = cluster_specs(dir.path(), &[1], &[1], &[]);
    let mut node = Node::start(&specs[0]);
    wait_until_self_leader(&mut node);
    propose_account(&mut node);
    let mut acked = Vec::new();
    let mut sent = Vec::new();
    for round in 0..3u64 {
        // Many proposals in flight, so the kill lands inside a batch.
        let streamed = propose_stream(&mut node, 1, round * 1_000_000, 1_000_000, 512, Some(2000));
        acked.extend(streamed.acked);
        sent.extend(streamed.sent);
        let spec = node.kill();
        node = Node::start(&spec);
        wait_until_self_leader(&mut node);
        assert_eq!(
            node.missing(&acked),
            0,
            "acknowledged proposals lost after SIGKILL {round}"
        );
        // Nothing else came back: every message in the state is one that was
        // sent (a torn batch would be cut by the log's checksums, never
        // applied in part or as garbage).
        let (_, count, _) = node.digest();
        let sent_present = sent.len() - node.missing(&sent);
        assert_eq!(
            count as usize, sent_present,
            "messages that were never proposed"
        );
        assert!(sent_present >= acked.len());
    }
}

#[test]
fn membership_grows_one_to_three_then_removes_and_replaces_a_wiped_voter() {
    let dir = temp_dir("grow");
    let mut specs = cluster_specs(dir.path(), &[1, 2, 3], &[], &[]);
    specs[0].voters = vec![1];
    let mut first = Node::start(&specs[0]);
    wait_until_self_leader(&mut first);
    propose_account(&mut first);
    let mut acked = propose_stream(&mut first, 1, 0, 2000, 128, None).acked;
    assert_eq!(acked.len(), 2000);

    let mut second = Node::start(&specs[1]);
    let mut third = Node::start(&specs[2]);
    for (id, addr) in [(2u64, specs[1].addr), (3, specs[2].addr)] {
        let words = first.request("add-voter", &format!("{id} {addr}"));
        assert_eq!(words[0], "ok", "add-voter {id}: {words:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, _, _, voters) = first.status();
            if voters.contains(&id) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} never became a voter: {voters:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    let (_, _, _, voters) = first.status();
    assert_eq!(voters, vec![1, 2, 3]);
    acked.extend(propose_stream(&mut first, 2, 0, 500, 64, None).acked);
    assert_eq!(acked.len(), 2500);
    let (_, count, _) = wait_for_agreement(
        &mut [&mut first, &mut second, &mut third],
        Duration::from_secs(30),
    );
    assert_eq!(count, 2500);
    for node in [&mut first, &mut second, &mut third] {
        assert_eq!(node.missing(&acked), 0);
    }

    // Remove a voter: the other two keep committing without it.
    let words = first.request("remove", "3");
    assert_eq!(words[0], "ok", "remove 3: {words:?}");
    wait_for_voters(&mut first, &[1, 2]);
    drop(third);
    acked.extend(propose_stream(&mut first, 3, 0, 300, 64, None).acked);
    assert_eq!(acked.len(), 2800);
    let (_, count, _) = wait_for_agreement(&mut [&mut first, &mut second], Duration::from_secs(30));
    assert_eq!(count, 2800);

    // Replace it with a node whose disk was wiped: same id, empty data
    // directory, caught up from the others.
    std::fs::remove_dir_all(&specs[2].data_dir).unwrap();
    let mut replacement = Node::start(&specs[2]);
    let words = first.request("add-voter", &format!("3 {}", specs[2].addr));
    assert_eq!(words[0], "ok", "re-add 3: {words:?}");
    wait_for_voters(&mut first, &[1, 2, 3]);
    acked.extend(propose_stream(&mut first, 4, 0, 200, 64, None).acked);
    let (_, count, _) = wait_for_agreement(
        &mut [&mut first, &mut second, &mut replacement],
        Duration::from_secs(30),
    );
    assert_eq!(count, 3000);
    assert_eq!(replacement.missing(&acked), 0);
}

fn wait_for_voters(node: &mut Node, expected: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, _, voters) = node.status();
        if voters == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "voters stayed {voters:?}, expected {expected:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
