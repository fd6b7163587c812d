//! Hot-path cost of SMPP text handling: encoding and decoding a full single
//! part, and splitting a long message.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tern::smpp::segment::{segment, Carriage, ConcatReference};
use tern::smpp::text::{self, gsm, Encoding};

fn text_benches(c: &mut Criterion) {
    let gsm_text = "Your code is 483920. Valid 10 min. Price 5€ {ref: A-77}. ".repeat(3);
    let gsm_text: String = gsm_text.chars().take(150).collect();
    let ucs2_text: String = "Ваш код 483920, действует 10 минут 😀 "
        .repeat(3)
        .chars()
        .take(68)
        .collect();

    let mut bytes = Vec::with_capacity(400);
    let mut decoded = String::with_capacity(400);

    c.bench_function("gsm_encode_160", |b| {
        b.iter(|| {
            bytes.clear();
            text::encode_into(Encoding::Gsm7, black_box(&gsm_text), &mut bytes).is_ok()
        })
    });
    bytes.clear();
    let _ = text::encode_into(Encoding::Gsm7, &gsm_text, &mut bytes);
    let septets = bytes.clone();
    c.bench_function("gsm_decode_160", |b| {
        b.iter(|| {
            decoded.clear();
            text::decode_into(Encoding::Gsm7, black_box(&septets), &mut decoded).is_ok()
        })
    });
    c.bench_function("gsm_pack_160", |b| {
        b.iter(|| {
            bytes.clear();
            gsm::pack_septets(black_box(&septets), 0, &mut bytes);
            bytes.len()
        })
    });
    c.bench_function("smallest_encoding_160", |b| {
        b.iter(|| text::smallest_encoding(black_box(&gsm_text), false))
    });
    c.bench_function("ucs2_encode_70", |b| {
        b.iter(|| {
            bytes.clear();
            text::encode_into(Encoding::Ucs2, black_box(&ucs2_text), &mut bytes).is_ok()
        })
    });
    bytes.clear();
    let _ = text::encode_into(Encoding::Ucs2, &ucs2_text, &mut bytes);
    let units = bytes.clone();
    c.bench_function("ucs2_decode_70", |b| {
        b.iter(|| {
            decoded.clear();
            text::decode_into(Encoding::Ucs2, black_box(&units), &mut decoded).is_ok()
        })
    });
    let long: Vec<u8> = septets.iter().copied().cycle().take(1000).collect();
    let carriage = Carriage::Udh(ConcatReference::Eight(1));
    c.bench_function("segment_gsm_1000_septets", |b| {
        b.iter(|| segment(Encoding::Gsm7, black_box(&long), carriage).map(|s| s.len()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1))
        .sample_size(20);
    targets = text_benches
}
criterion_main!(benches);
