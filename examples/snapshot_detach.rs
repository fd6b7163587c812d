//! Measures what a durable state snapshot costs the store thread with a
//! backlog of unfinished messages (bench/README.md, section "Retention"):
//! encoding the whole state where the store thread used to do it, against
//! detaching it (`AppState::snapshot_source`, what the store thread does now)
//! and encoding the detached copy (what the snapshot thread does).
//! Usage: cargo run --release --example snapshot_detach -- [unfinished_messages]

use std::time::Instant;

// The appliance binary runs on mimalloc; measure with the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use tern::store::command::{Accept, Account, Address, Command, SegmentInfo};
use tern::store::id::MessageId;
use tern::store::state::AppState;
use tern::store::StateMachine;

fn accept(n: u64) -> Option<Command> {
    Some(Command::Accept(Accept {
        id: MessageId::from_parts(1, 1, 0, n)?,
        account: "acme".into(),
        source: Address {
            ton: 5,
            npi: 0,
            digits: "ACME".into(),
        },
        destination: Address {
            ton: 1,
            npi: 1,
            digits: format!("4477{n:08}"),
        },
        data_coding: 0,
        esm_class: 0,
        protocol_id: 0,
        priority: 0,
        registered_delivery: 1,
        payload: vec![b'x'; 160],
        segment: None::<SegmentInfo>,
        received_at_ms: 1_764_072_000_000 + n,
        validity_until_ms: None,
        owner_node: 1,
        client_ref: None,
        scheduled_at_ms: None,
    }))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let mut state = AppState::new();
    let account = Command::UpsertAccount(Account {
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
    .encode();
    state.apply(1, &[account.as_slice()]);
    let mut index = 1;
    let mut next = 0u64;
    while next < count {
        let mut chunk: Vec<Vec<u8>> = Vec::with_capacity(2_000);
        for n in next..count.min(next + 1_000) {
            let Some(Command::Accept(inner)) = accept(n) else {
                continue;
            };
            // Submitted: the operator took it, no receipt yet (unfinished).
            let submitted = Command::Submitted {
                id: inner.id,
                connector: "op1".into(),
                upstream_id: format!("UP{n:012}"),
                at_ms: inner.received_at_ms,
            };
            chunk.push(Command::Accept(inner).encode());
            chunk.push(submitted.encode());
        }
        let slices: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        index += 1;
        state.apply(index, &slices);
        next += 1_000;
    }
    println!("{} unfinished messages in the state", state.message_count());
    for round in 1..=3 {
        let started = Instant::now();
        let inline = state.snapshot();
        let inline_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let detached = state.snapshot_source();
        let detach_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let encoded = detached.encode();
        let encode_s = started.elapsed().as_secs_f64();
        assert!(
            encoded == inline,
            "a detached state encodes to the same bytes"
        );
        println!(
            "round {round}: {:.1} MB; encode in place {inline_s:.3} s | detach {detach_s:.3} s, then encode the detached copy {encode_s:.3} s",
            inline.len() as f64 / 1e6
        );
    }
    Ok(())
}
