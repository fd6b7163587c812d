//! Measures the two ways of persisting the applied state (bench/README.md,
//! section "State machine"):
//!   (a) every applied entry written through to sled (records, indexes and the
//!       applied index in one batch per entry);
//!   (b) hot state in memory, made durable by a periodic full snapshot file
//!       (fsync + rename), finished messages archived to sled.
//! Usage: cargo run --release --example state_store -- [lifecycles] [commands_per_entry] [a|b|both]

use std::time::Instant;

// The appliance binary runs on mimalloc; measure with the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use tern::store::command::{Accept, Account, Address, BindKind, Command, Receipt};
use tern::store::id::IdGenerator;
use tern::store::kv::{ArchivedMessage, KvBatch, KvStore, MessageArchive, SledStore, Tree};
use tern::store::snapshot::{FsSnapshotDisk, PersistentState};
use tern::store::state::AppState;
use tern::store::StateMachine;

fn setup_commands() -> Vec<Vec<u8>> {
    vec![
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
        Command::BindOpened {
            node: 1,
            session: 1,
            account: "acme".into(),
            kind: BindKind::Transceiver,
        }
        .encode(),
    ]
}

/// The log of `lifecycles` messages, in windows of 1,000 so that accepts,
/// submissions, receipts and DLR acks interleave as they would live.
fn lifecycle_commands(lifecycles: u64) -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let mut generator = IdGenerator::new(1, 0, 1)?;
    let mut ids = Vec::with_capacity(lifecycles as usize);
    for _ in 0..lifecycles {
        ids.push(generator.next_id()?);
    }
    let mut log = Vec::with_capacity(lifecycles as usize * 4);
    for window in ids.chunks(1_000) {
        for (n, id) in window.iter().enumerate() {
            log.push(
                Command::Accept(Accept {
                    id: *id,
                    account: "acme".into(),
                    source: Address {
                        ton: 5,
                        npi: 0,
                        digits: "ACME".into(),
                    },
                    destination: Address {
                        ton: 1,
                        npi: 1,
                        digits: format!("4477009{n:05}"),
                    },
                    data_coding: 0,
                    esm_class: 0,
                    protocol_id: 0,
                    priority: 0,
                    registered_delivery: 1,
                    payload: vec![b'x'; 160],
                    segment: None,
                    received_at_ms: 1_764_072_000_000 + n as u64,
                    validity_until_ms: None,
                    owner_node: 1,
                    client_ref: None,
                    scheduled_at_ms: None,
                })
                .encode(),
            );
        }
        for id in window {
            log.push(
                Command::Submitted {
                    id: *id,
                    connector: "op1".into(),
                    upstream_id: format!("{:016X}", id.counter()),
                    at_ms: 1_764_072_001_000,
                }
                .encode(),
            );
        }
        for id in window {
            log.push(
                Command::Receipt(Receipt {
                    connector: "op1".into(),
                    upstream_id: format!("{:016X}", id.counter()),
                    state: 2,
                    err: 0,
                    done_at_ms: 1_764_072_002_000,
                    raw: None,
                })
                .encode(),
            );
        }
        for id in window {
            log.push(Command::DlrDelivered { id: *id }.encode());
        }
    }
    Ok(log)
}

fn apply_entries(
    state: &mut AppState,
    log: &[Vec<u8>],
    per_entry: usize,
    mut after: impl FnMut(&AppState, u64, &[Vec<u8>]),
) {
    for chunk in log.chunks(per_entry) {
        let slices: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let index = state.applied_index() + 1;
        state.apply(index, &slices);
        after(state, index, chunk);
    }
}

/// The write-through batch for one applied entry (variant a).
fn write_through(kv: &SledStore, state: &AppState, index: u64, chunk: &[Vec<u8>]) {
    let mut batch = KvBatch::new();
    for bytes in chunk {
        let Ok(command) = Command::decode(bytes) else {
            continue;
        };
        match command {
            Command::Accept(a) => put_message(&mut batch, state, a.id),
            Command::Submitted {
                id,
                connector,
                upstream_id,
                ..
            } => {
                put_message(&mut batch, state, id);
                let key = format!("{connector}\0{upstream_id}");
                batch.put(
                    Tree::Upstream,
                    key.as_bytes(),
                    id.as_u128().to_be_bytes().to_vec(),
                );
            }
            Command::Receipt(r) => {
                if let Some(message) = state.by_upstream(&r.connector, &r.upstream_id) {
                    let id = message.id();
                    put_message(&mut batch, state, id);
                    batch.put(Tree::Pending, &id.as_u128().to_be_bytes(), b"acme".to_vec());
                }
            }
            Command::DlrDelivered { id } => {
                batch.delete(Tree::Pending, &id.as_u128().to_be_bytes())
            }
            _ => {}
        }
    }
    batch.put(Tree::Meta, b"applied_index", index.to_le_bytes().to_vec());
    if let Err(e) = kv.write(batch) {
        eprintln!("sled write failed: {e}");
        std::process::exit(1);
    }
}

fn put_message(batch: &mut KvBatch, state: &AppState, id: tern::store::id::MessageId) {
    if let Some(message) = state.message(&id) {
        if let Ok(bytes) = bincode::serialize(message) {
            batch.put(Tree::Messages, &id.as_u128().to_be_bytes(), bytes);
        }
    }
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let lifecycles: u64 = args
        .get(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let per_entry: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(64);
    let mode = args.get(3).map_or("both", String::as_str);
    let base = std::env::var_os("TERN_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::tempdir_in(base)?;
    let mut log = setup_commands();
    log.extend(lifecycle_commands(lifecycles)?);
    println!(
        "{lifecycles} lifecycles = {} commands, {per_entry} commands per entry",
        log.len()
    );

    if mode != "a" {
        measure_memory(&log, lifecycles, per_entry, work.path())?;
    }
    if mode != "b" {
        measure_write_through(&log, lifecycles, per_entry, work.path())?;
    }
    Ok(())
}

fn measure_memory(
    log: &[Vec<u8>],
    lifecycles: u64,
    per_entry: usize,
    work: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let commands = log.len() as f64;
    // (b) in memory, then one durable snapshot and the archive.
    let mut state = AppState::new();
    let started = Instant::now();
    apply_entries(&mut state, log, per_entry, |_, _, _| {});
    let apply_s = started.elapsed().as_secs_f64();
    println!(
        "(b) apply in memory: {apply_s:.3} s, {:.0} commands/s, {:.0} lifecycles/s",
        commands / apply_s,
        lifecycles as f64 / apply_s
    );
    let started = Instant::now();
    let snapshot = state.snapshot();
    let encode_s = started.elapsed().as_secs_f64();
    let mut persistent = PersistentState::new(FsSnapshotDisk::open(&work.join("snapshots"))?);
    let started = Instant::now();
    persistent.save_snapshot(state.applied_index(), 1, b"", &snapshot)?;
    let save_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let loaded = persistent.load_latest()?.ok_or("snapshot vanished")?;
    let mut restored = AppState::new();
    restored.restore(loaded.index, &loaded.state)?;
    let restore_s = started.elapsed().as_secs_f64();
    println!(
        "(b) snapshot: {:.1} MB, encode {encode_s:.3} s, write+fsync {save_s:.3} s, load+restore {restore_s:.3} s",
        snapshot.len() as f64 / 1e6
    );
    let archive = MessageArchive::new(SledStore::open(&work.join("archive"))?);
    let started = Instant::now();
    let finished: Vec<_> = state.finished_before(u64::MAX).collect();
    let mut archived = 0;
    for chunk in finished.chunks(10_000) {
        let records: Vec<ArchivedMessage> = chunk
            .iter()
            .map(|m| ArchivedMessage::from_message(m))
            .collect();
        archived += archive.archive(&records, 0)?;
        archive.store().sync()?;
    }
    let archive_s = started.elapsed().as_secs_f64();
    println!("(b) archive {archived} finished messages to sled (+fsync per 10k): {archive_s:.3} s, {:.0} messages/s", archived as f64 / archive_s);
    Ok(())
}

fn measure_write_through(
    log: &[Vec<u8>],
    lifecycles: u64,
    per_entry: usize,
    work: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let commands = log.len() as f64;
    // (a) write-through to sled, one batch per entry; a real sync at the end.
    let kv = SledStore::open(&work.join("write-through"))?;
    let mut state = AppState::new();
    let started = Instant::now();
    apply_entries(&mut state, log, per_entry, |s, index, chunk| {
        write_through(&kv, s, index, chunk)
    });
    let write_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    kv.sync()?;
    let sync_s = started.elapsed().as_secs_f64();
    let total = write_s + sync_s;
    println!(
        "(a) apply + sled write-through: {write_s:.3} s, final flush+fsync {sync_s:.3} s; {:.0} commands/s, {:.0} lifecycles/s; sled dir {:.1} MB",
        commands / total,
        lifecycles as f64 / total,
        dir_bytes(&work.join("write-through")) as f64 / 1e6
    );
    Ok(())
}
