//! Recovery of the applied state from durable snapshots plus log replay:
//! after any crash, the state is a snapshot of a prefix of the log and
//! replaying the rest gives byte-for-byte the state of a replica that never
//! stopped. Includes a writer killed with SIGKILL in the middle of snapshots.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use tern::store::command::{Accept, Account, Address, BindKind, Command, Receipt};
use tern::store::id::{IdGenerator, MessageId};
use tern::store::snapshot::{FsSnapshotDisk, PersistentState};
use tern::store::state::AppState;
use tern::store::StateMachine;

const CHILD_DIR_ENV: &str = "TERN_TEST_SNAPSHOT_CHILD_DIR";

/// A seeded log: entries of 1..=32 commands mixing the whole lifecycle.
fn build_log(seed: u64, entries: usize) -> Vec<Vec<Vec<u8>>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut generator = IdGenerator::new(1, 0, 1).expect("node 1 fits");
    let mut accepted: Vec<MessageId> = Vec::new();
    let mut log = vec![vec![
        Command::UpsertAccount(Account {
            name: "acme".into(),
            password_hash: String::new(),
            max_binds: 0,
            throughput_per_s: 0,
            allowed_ips: vec![],
            allowed_senders: vec![],
            retention_s: 0,
            enabled: true,
            webhook_url: None,
            api_key_hash: None,
            webhook_secret: None,
            window: 0,
        })
        .encode(),
        Command::NodeUp {
            node: 1,
            incarnation: 1,
        }
        .encode(),
        Command::NodeUp {
            node: 2,
            incarnation: 1,
        }
        .encode(),
    ]];
    for _ in 1..entries {
        let mut entry = Vec::new();
        for _ in 0..rng.gen_range(1..=32) {
            let command = match rng.gen_range(0..10) {
                0..=3 => {
                    let id = generator.next_id().expect("plenty of ids");
                    accepted.push(id);
                    Command::Accept(Accept {
                        id,
                        account: "acme".into(),
                        source: Address {
                            ton: 5,
                            npi: 0,
                            digits: "ACME".into(),
                        },
                        destination: Address {
                            ton: 1,
                            npi: 1,
                            digits: "447700900123".into(),
                        },
                        data_coding: 0,
                        esm_class: 0,
                        protocol_id: 0,
                        priority: 0,
                        registered_delivery: 1,
                        payload: vec![b'p'; rng.gen_range(0..160)],
                        segment: None,
                        received_at_ms: rng.gen_range(0..1_000),
                        validity_until_ms: None,
                        owner_node: rng.gen_range(1..=2),
                        client_ref: None,
                        scheduled_at_ms: None,
                    })
                }
                4..=5 if !accepted.is_empty() => {
                    let id = accepted[rng.gen_range(0..accepted.len())];
                    Command::Submitted {
                        id,
                        connector: "op1".into(),
                        upstream_id: format!("{:X}", id.counter()),
                        at_ms: 5,
                    }
                }
                6..=7 if !accepted.is_empty() => {
                    let id = accepted[rng.gen_range(0..accepted.len())];
                    Command::Receipt(Receipt {
                        connector: "op1".into(),
                        upstream_id: format!("{:X}", id.counter()),
                        state: rng.gen_range(1..=8),
                        err: 0,
                        done_at_ms: 9,
                        raw: None,
                    })
                }
                8 if !accepted.is_empty() => Command::DlrDelivered {
                    id: accepted[rng.gen_range(0..accepted.len())],
                },
                _ => Command::BindOpened {
                    node: rng.gen_range(1..=2),
                    session: rng.gen_range(0..4),
                    account: "acme".into(),
                    kind: BindKind::Transceiver,
                },
            };
            entry.push(command.encode());
        }
        log.push(entry);
    }
    log
}

fn apply_range(state: &mut AppState, log: &[Vec<Vec<u8>>], from_index: u64, to_index: u64) {
    for index in from_index..=to_index {
        let entry = &log[(index - 1) as usize];
        let slices: Vec<&[u8]> = entry.iter().map(Vec::as_slice).collect();
        state.apply(index, &slices);
    }
}

fn replica_at(log: &[Vec<Vec<u8>>], index: u64) -> AppState {
    let mut state = AppState::new();
    apply_range(&mut state, log, 1, index);
    state
}

#[test]
fn snapshot_plus_replay_equals_an_uninterrupted_replica() {
    let log = build_log(7, 400);
    let last = log.len() as u64;
    let reference = replica_at(&log, last);

    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = AppState::new();
    {
        let mut persistent = PersistentState::new(FsSnapshotDisk::open(dir.path()).expect("dir"));
        apply_range(&mut node, &log, 1, 150);
        persistent
            .save_snapshot(150, 2, b"conf", &node.snapshot())
            .expect("save");
        apply_range(&mut node, &log, 151, 260);
        persistent
            .save_snapshot(260, 2, b"conf", &node.snapshot())
            .expect("save");
        apply_range(&mut node, &log, 261, 300);
    }
    // Crash: the in-memory state is gone; a half-written newer snapshot is on disk.
    drop(node);
    let torn = std::fs::read(dir.path().join(format!("snap-{:020}.bin", 260))).expect("read");
    std::fs::write(
        dir.path().join(format!("snap-{:020}.bin", 300)),
        &torn[..torn.len() / 3],
    )
    .expect("write torn");

    let persistent = PersistentState::new(FsSnapshotDisk::open(dir.path()).expect("dir"));
    let loaded = persistent.load_latest().expect("load").expect("a snapshot");
    assert_eq!((loaded.index, loaded.term), (260, 2));
    let mut recovered = AppState::new();
    recovered
        .restore(loaded.index, &loaded.state)
        .expect("restore");
    assert_eq!(recovered.snapshot(), replica_at(&log, 260).snapshot());
    // Replaying an entry that is already in the snapshot changes nothing.
    apply_range(&mut recovered, &log, 255, 260);
    apply_range(&mut recovered, &log, 261, last);
    assert_eq!(recovered.snapshot(), reference.snapshot());
    assert!(recovered.indexes_consistent());
}

/// Helper process for `snapshot_survives_sigkill`: applies the log and saves
/// a snapshot after every entry until killed.
#[test]
#[ignore = "helper process started by snapshot_survives_sigkill"]
fn snapshot_writer_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        panic!("run only by snapshot_survives_sigkill");
    };
    let log = build_log(11, 3_000);
    let mut persistent =
        PersistentState::new(FsSnapshotDisk::open(std::path::Path::new(&dir)).expect("dir"));
    let mut state = AppState::new();
    for index in 1..=log.len() as u64 {
        apply_range(&mut state, &log, index, index);
        persistent
            .save_snapshot(index, 1, b"", &state.snapshot())
            .expect("save");
    }
}

#[test]
fn snapshot_survives_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "snapshot_writer_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    // Wait until the writer is well into its snapshots, then kill it mid-stream.
    let persistent = PersistentState::new(FsSnapshotDisk::open(dir.path()).expect("dir"));
    let mut waited_ms = 0;
    while persistent
        .load_latest()
        .ok()
        .flatten()
        .map_or(true, |s| s.index < 50)
    {
        assert!(waited_ms < 60_000, "the child wrote no snapshot");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("child exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(10));
        waited_ms += 10;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    let loaded = persistent.load_latest().expect("load").expect("a snapshot");
    let mut recovered = AppState::new();
    recovered
        .restore(loaded.index, &loaded.state)
        .expect("restore");
    let log = build_log(11, 3_000);
    assert_eq!(
        recovered.snapshot(),
        replica_at(&log, loaded.index).snapshot()
    );
}
