//! What one metrics call costs on the hot path, alone and with threads
//! recording at the same time (the per-thread shards should keep the cost
//! flat), and what a scrape costs.
//!
//! Run: `cargo run --release --example metrics_cost [-- THREADS]`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tern::metrics::{AccountCounter, Histogram, Registry};

const CALLS_PER_THREAD: u64 = 5_000_000;

fn per_call_ns(threads: usize, registry: &Registry) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let account = format!("account-{}", t % 4);
                for i in 0..CALLS_PER_THREAD {
                    registry.inc_account(AccountCounter::Accepted, black_box(&account));
                    registry.observe_duration(
                        Histogram::SubmitLatency,
                        Duration::from_nanos(black_box(i & 0xFFFFF)),
                    );
                }
            });
        }
    });
    // Two calls per iteration; wall time per call per thread.
    started.elapsed().as_nanos() as f64 / (CALLS_PER_THREAD * 2) as f64
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4);
    let registry = Registry::new();
    println!("1 thread:   {:.1} ns per call", per_call_ns(1, &registry));
    println!(
        "{threads} threads: {:.1} ns per call (wall time, each thread)",
        per_call_ns(threads, &registry)
    );
    for i in 0..1000 {
        registry.inc_account(AccountCounter::Accepted, &format!("filler-{i}"));
    }
    let mut out = String::new();
    let started = Instant::now();
    registry.render_prometheus(&mut out);
    println!(
        "scrape with 1,000 accounts: {:.2} ms, {} bytes",
        started.elapsed().as_secs_f64() * 1e3,
        out.len()
    );
}
