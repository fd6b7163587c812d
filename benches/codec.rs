//! Codec throughput: decode and encode of a typical submit_sm (160 GSM
//! characters, two TLVs) and of a deliver_sm delivery receipt, plus the frame
//! decoder cutting submit_sm out of a read buffer.
//!
//! Run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`.
//! It first prints operations per CPU-second (thread CPU time, immune to
//! other load on the machine), then criterion's wall-clock figures.
//! Figures are recorded in bench/README.md ("SMPP codec").

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use tern::smpp::frame::{Frame, FrameDecoder};
use tern::smpp::pdu::{Address, Body, DeliverSm, MessageId, Pdu, SubmitSm};
use tern::smpp::tlv::Tlvs;

fn typical_submit_sm() -> Pdu {
    let mut tlvs = Tlvs::new();
    tlvs.set_user_message_reference(42).expect("valid TLV");
    tlvs.set_source_port(9200).expect("valid TLV");
    // 160 characters of GSM 03.38 text, one septet per octet as SMPP carries it.
    let text: Vec<u8> = b"Your verification code is 482913. It expires in 10 minutes. \
Do not share it with anyone, our staff will never ask for it. Reply STOP to opt out now!"
        .iter()
        .copied()
        .cycle()
        .take(160)
        .collect();
    Pdu::new(
        1,
        Body::SubmitSm(SubmitSm {
            service_type: Default::default(),
            source_addr_ton: 5,
            source_addr_npi: 0,
            source_addr: Address::from_text("TernBank").expect("fits"),
            dest_addr_ton: 1,
            dest_addr_npi: 1,
            destination_addr: Address::from_text("447700900123").expect("fits"),
            registered_delivery: 1,
            short_message: Bytes::from(text),
            tlvs,
            ..SubmitSm::default()
        }),
    )
}

fn receipt_deliver_sm() -> Pdu {
    let mut tlvs = Tlvs::new();
    tlvs.set_receipted_message_id(&MessageId::from_text("7f3a9c12").expect("fits"))
        .expect("valid TLV");
    tlvs.set_message_state(2).expect("valid TLV");
    Pdu::new(
        2,
        Body::DeliverSm(DeliverSm {
            esm_class: 0x04,
            source_addr_ton: 1,
            source_addr_npi: 1,
            source_addr: Address::from_text("447700900123").expect("fits"),
            destination_addr: Address::from_text("TernBank").expect("fits"),
            short_message: Bytes::from_static(
                b"id:7f3a9c12 sub:001 dlvrd:001 submit date:2511251200 done date:2511251201 stat:DELIVRD err:000 text:Your verification",
            ),
            tlvs,
            ..DeliverSm::default()
        }),
    )
}

/// The frame as a decoder hands it out. The first clone turns it into a
/// shared buffer, so cloning it in the loop costs a refcount, as in service.
fn frame_of(pdu: &Pdu) -> Bytes {
    let frame = pdu.to_bytes().expect("encodable");
    drop(frame.clone());
    frame
}

/// CPU time of this thread, in nanoseconds. On a machine shared with other
/// work, wall-clock figures measure the scheduler; CPU time measures the code.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is available on Linux");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Operations per CPU-second of one core, best of five runs of `n`.
fn per_cpu_second(n: u32, mut op: impl FnMut()) -> f64 {
    let mut best_ns = u128::MAX;
    for _ in 0..5 {
        let start = thread_cpu_ns();
        for _ in 0..n {
            op();
        }
        best_ns = best_ns.min(thread_cpu_ns() - start);
    }
    f64::from(n) * 1e9 / best_ns.max(1) as f64
}

fn print_cpu_rates() {
    const N: u32 = 1_000_000;
    let submit = typical_submit_sm();
    let receipt = receipt_deliver_sm();
    let submit_frame = frame_of(&submit);
    let receipt_frame = frame_of(&receipt);
    let mut out = BytesMut::with_capacity(1024);
    let rates = [
        (
            "decode submit_sm",
            per_cpu_second(N, || {
                black_box(Pdu::decode(black_box(submit_frame.clone())).expect("valid"));
            }),
        ),
        (
            "encode submit_sm",
            per_cpu_second(N, || {
                out.clear();
                black_box(&submit).encode(&mut out).expect("encodable");
            }),
        ),
        (
            "decode deliver_sm receipt",
            per_cpu_second(N, || {
                black_box(Pdu::decode(black_box(receipt_frame.clone())).expect("valid"));
            }),
        ),
        (
            "encode deliver_sm receipt",
            per_cpu_second(N, || {
                out.clear();
                black_box(&receipt).encode(&mut out).expect("encodable");
            }),
        ),
    ];
    println!("PDUs per CPU-second, one core (thread CPU time, best of 5 x {N}):");
    for (name, rate) in rates {
        println!("  {name:<28} {:>6.2} M/s", rate / 1e6);
    }
}

fn codec(c: &mut Criterion) {
    // `cargo test --all-targets` runs benches once as a smoke test, without
    // `--bench`: skip the long CPU-time runs then.
    if std::env::args().any(|a| a == "--bench") {
        print_cpu_rates();
    }
    let mut group = c.benchmark_group("smpp_codec");
    group.throughput(Throughput::Elements(1));
    for (name, pdu) in [
        ("submit_sm", typical_submit_sm()),
        ("deliver_sm_receipt", receipt_deliver_sm()),
    ] {
        let frame = frame_of(&pdu);
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| Pdu::decode(black_box(frame.clone())).expect("valid"))
        });
        let mut out = BytesMut::with_capacity(1024);
        group.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&pdu).encode(&mut out).expect("encodable");
                black_box(out.len())
            })
        });
    }

    // Framing plus decoding, 1024 submit_sm per read buffer.
    const BATCH: usize = 1024;
    let one = frame_of(&typical_submit_sm());
    let mut stream = BytesMut::with_capacity(one.len() * BATCH);
    for _ in 0..BATCH {
        stream.extend_from_slice(&one);
    }
    let stream = stream.freeze();
    let decoder = FrameDecoder::default();
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("frame_and_decode/submit_sm_x1024", |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut buf| {
                let mut n = 0;
                while let Ok(Some(Frame::Pdu(p))) = decoder.decode(&mut buf) {
                    black_box(&p);
                    n += 1;
                }
                assert_eq!(n, BATCH);
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
