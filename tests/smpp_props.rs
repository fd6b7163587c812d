//! Properties of the SMPP codec and framing: encode/decode is the identity
//! for every PDU type, no byte string makes decoding panic, the frame decoder
//! never consumes past a frame whatever the read boundaries, and the
//! submit_sm / submit_sm_resp / deliver_sm paths allocate nothing per PDU.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;

use tern::smpp::frame::{Frame, FrameDecoder};
use tern::smpp::pdu::*;
use tern::smpp::tlv::Tlvs;
use tern::smpp::{CommandId, CommandStatus};

// ---- allocation counting (per thread, only while a test asks for it) ----

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if counting {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

// ---- strategies ----

fn c_string<const N: usize>() -> impl Strategy<Value = COctetString<N>> {
    vec(1u8..=255, 0..N).prop_map(|v| COctetString::new(&v).expect("no NUL and short enough"))
}

fn octets(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// A valid TLV area: typed tags with right lengths, and vendor tags with
/// arbitrary values, duplicates allowed, in any order.
fn tlvs() -> impl Strategy<Value = Tlvs> {
    let one = prop_oneof![
        any::<u8>().prop_map(|v| (0x0427u16, vec![v])),
        any::<u16>().prop_map(|v| (0x020Cu16, v.to_be_bytes().to_vec())),
        any::<u8>().prop_map(|v| (0x020Eu16, vec![v])),
        (any::<u8>(), any::<u16>()).prop_map(|(t, c)| {
            let [a, b] = c.to_be_bytes();
            (0x0423u16, vec![t, a, b])
        }),
        vec(1u8..=255, 0..64).prop_map(|mut v| {
            v.push(0);
            (0x001Eu16, v)
        }),
        vec(any::<u8>(), 0..300).prop_map(|v| (0x0424u16, v)),
        (0x1400u16..0x14FF, vec(any::<u8>(), 0..16)),
    ];
    vec(one, 0..4).prop_map(|items| {
        let mut raw = BytesMut::new();
        for (tag, value) in items {
            raw.put_u16(tag);
            raw.put_u16(value.len() as u16);
            raw.put_slice(&value);
        }
        Tlvs::parse(raw.freeze(), 0).expect("strategy builds valid TLVs")
    })
}

fn bind() -> impl Strategy<Value = Bind> {
    (
        c_string(),
        c_string(),
        c_string(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        c_string(),
    )
        .prop_map(
            |(system_id, password, system_type, v, ton, npi, range)| Bind {
                system_id,
                password,
                system_type,
                interface_version: v,
                addr_ton: ton,
                addr_npi: npi,
                address_range: range,
            },
        )
}

fn bind_resp() -> impl Strategy<Value = BindResp> {
    (c_string(), tlvs()).prop_map(|(system_id, tlvs)| BindResp { system_id, tlvs })
}

fn submit_sm() -> impl Strategy<Value = SubmitSm> {
    (
        (
            c_string(),
            any::<[u8; 2]>(),
            c_string(),
            any::<[u8; 2]>(),
            c_string(),
        ),
        (any::<[u8; 3]>(), c_string(), c_string(), any::<[u8; 4]>()),
        (octets(MAX_SHORT_MESSAGE_LEN), tlvs()),
    )
        .prop_map(
            |(
                (service_type, s, source_addr, d, destination_addr),
                (f, sched, valid, g),
                (sm, tlvs),
            )| {
                SubmitSm {
                    service_type,
                    source_addr_ton: s[0],
                    source_addr_npi: s[1],
                    source_addr,
                    dest_addr_ton: d[0],
                    dest_addr_npi: d[1],
                    destination_addr,
                    esm_class: f[0],
                    protocol_id: f[1],
                    priority_flag: f[2],
                    schedule_delivery_time: sched,
                    validity_period: valid,
                    registered_delivery: g[0],
                    replace_if_present_flag: g[1],
                    data_coding: g[2],
                    sm_default_msg_id: g[3],
                    short_message: sm,
                    tlvs,
                }
            },
        )
}

fn submit_multi() -> impl Strategy<Value = SubmitMulti> {
    let dest = prop_oneof![
        (any::<u8>(), any::<u8>(), c_string()).prop_map(|(t, n, a)| DestAddress::SmeAddress {
            dest_addr_ton: t,
            dest_addr_npi: n,
            destination_addr: a
        }),
        c_string().prop_map(|dl_name| DestAddress::DistributionList { dl_name }),
    ];
    (submit_sm(), vec(dest, 0..6)).prop_map(|(m, dest_addresses)| SubmitMulti {
        service_type: m.service_type,
        source_addr_ton: m.source_addr_ton,
        source_addr_npi: m.source_addr_npi,
        source_addr: m.source_addr,
        dest_addresses,
        esm_class: m.esm_class,
        protocol_id: m.protocol_id,
        priority_flag: m.priority_flag,
        schedule_delivery_time: m.schedule_delivery_time,
        validity_period: m.validity_period,
        registered_delivery: m.registered_delivery,
        replace_if_present_flag: m.replace_if_present_flag,
        data_coding: m.data_coding,
        sm_default_msg_id: m.sm_default_msg_id,
        short_message: m.short_message,
        tlvs: m.tlvs,
    })
}

fn body() -> impl Strategy<Value = Body> {
    let unsuccess =
        (any::<u8>(), any::<u8>(), c_string(), any::<u32>()).prop_map(|(t, n, a, s)| {
            UnsuccessSme {
                dest_addr_ton: t,
                dest_addr_npi: n,
                destination_addr: a,
                error_status_code: CommandStatus(s),
            }
        });
    let data_sm = (
        c_string(),
        any::<[u8; 4]>(),
        c_string(),
        c_string(),
        any::<[u8; 3]>(),
        tlvs(),
    )
        .prop_map(
            |(service_type, a, source_addr, destination_addr, b, tlvs)| DataSm {
                service_type,
                source_addr_ton: a[0],
                source_addr_npi: a[1],
                source_addr,
                dest_addr_ton: a[2],
                dest_addr_npi: a[3],
                destination_addr,
                esm_class: b[0],
                registered_delivery: b[1],
                data_coding: b[2],
                tlvs,
            },
        );
    let cancel = (
        c_string(),
        c_string(),
        any::<[u8; 4]>(),
        c_string(),
        c_string(),
    )
        .prop_map(
            |(service_type, message_id, a, source_addr, destination_addr)| CancelSm {
                service_type,
                message_id,
                source_addr_ton: a[0],
                source_addr_npi: a[1],
                source_addr,
                dest_addr_ton: a[2],
                dest_addr_npi: a[3],
                destination_addr,
            },
        );
    let replace = (
        c_string(),
        any::<[u8; 4]>(),
        c_string(),
        c_string(),
        c_string(),
        octets(MAX_SHORT_MESSAGE_LEN),
    )
        .prop_map(|(message_id, a, source_addr, sched, valid, sm)| ReplaceSm {
            message_id,
            source_addr_ton: a[0],
            source_addr_npi: a[1],
            source_addr,
            schedule_delivery_time: sched,
            validity_period: valid,
            registered_delivery: a[2],
            sm_default_msg_id: a[3],
            short_message: sm,
        });
    let alert = (any::<[u8; 4]>(), c_string(), c_string(), tlvs()).prop_map(|(a, s, e, tlvs)| {
        AlertNotification {
            source_addr_ton: a[0],
            source_addr_npi: a[1],
            source_addr: s,
            esme_addr_ton: a[2],
            esme_addr_npi: a[3],
            esme_addr: e,
            tlvs,
        }
    });
    Union::new(vec![
        Just(Body::GenericNack).boxed(),
        Just(Body::Unbind).boxed(),
        Just(Body::UnbindResp).boxed(),
        Just(Body::EnquireLink).boxed(),
        Just(Body::EnquireLinkResp).boxed(),
        Just(Body::CancelSmResp).boxed(),
        Just(Body::ReplaceSmResp).boxed(),
        bind().prop_map(Body::BindReceiver).boxed(),
        bind().prop_map(Body::BindTransmitter).boxed(),
        bind().prop_map(Body::BindTransceiver).boxed(),
        bind_resp().prop_map(Body::BindReceiverResp).boxed(),
        bind_resp().prop_map(Body::BindTransmitterResp).boxed(),
        bind_resp().prop_map(Body::BindTransceiverResp).boxed(),
        (c_string(), c_string())
            .prop_map(|(system_id, password)| {
                Body::Outbind(Outbind {
                    system_id,
                    password,
                })
            })
            .boxed(),
        submit_sm().prop_map(Body::SubmitSm).boxed(),
        submit_sm().prop_map(Body::DeliverSm).boxed(),
        c_string()
            .prop_map(|message_id| Body::SubmitSmResp(SubmitSmResp { message_id }))
            .boxed(),
        c_string()
            .prop_map(|message_id| Body::DeliverSmResp(DeliverSmResp { message_id }))
            .boxed(),
        data_sm.prop_map(Body::DataSm).boxed(),
        (c_string(), tlvs())
            .prop_map(|(message_id, tlvs)| Body::DataSmResp(DataSmResp { message_id, tlvs }))
            .boxed(),
        (c_string(), any::<[u8; 2]>(), c_string())
            .prop_map(|(message_id, a, source_addr)| {
                Body::QuerySm(QuerySm {
                    message_id,
                    source_addr_ton: a[0],
                    source_addr_npi: a[1],
                    source_addr,
                })
            })
            .boxed(),
        (c_string(), c_string(), any::<[u8; 2]>())
            .prop_map(|(message_id, final_date, a)| {
                Body::QuerySmResp(QuerySmResp {
                    message_id,
                    final_date,
                    message_state: a[0],
                    error_code: a[1],
                })
            })
            .boxed(),
        cancel.prop_map(Body::CancelSm).boxed(),
        replace.prop_map(Body::ReplaceSm).boxed(),
        submit_multi().prop_map(Body::SubmitMulti).boxed(),
        (c_string(), vec(unsuccess, 0..5))
            .prop_map(|(message_id, unsuccess_smes)| {
                Body::SubmitMultiResp(SubmitMultiResp {
                    message_id,
                    unsuccess_smes,
                })
            })
            .boxed(),
        alert.prop_map(Body::AlertNotification).boxed(),
    ])
}

/// Any PDU the encoder must reproduce exactly. An error response goes on the
/// wire without body (data_sm_resp with TLVs excepted), so its body is empty.
fn pdu() -> impl Strategy<Value = Pdu> {
    (
        body(),
        prop_oneof![3 => Just(0u32), 1 => any::<u32>()],
        any::<u32>(),
    )
        .prop_map(|(body, status, sequence_number)| {
            let id = body.command_id();
            let keeps_body = matches!(&body, Body::DataSmResp(r) if !r.tlvs.is_empty());
            let body = if status != 0 && id.is_response() && !keeps_body {
                Body::empty(id)
            } else {
                body
            };
            Pdu {
                body,
                command_status: CommandStatus(status),
                sequence_number,
            }
        })
}

/// A frame with a correct command_length, a known or random command_id and
/// an arbitrary body: reaches deep into the body decoders.
fn framed_garbage() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            proptest::sample::select(CommandId::ALL.to_vec()).prop_map(CommandId::as_u32),
            any::<u32>()
        ],
        any::<u32>(),
        any::<u32>(),
        vec(any::<u8>(), 0..200),
    )
        .prop_map(|(id, status, seq, body)| {
            let mut f = Vec::with_capacity(16 + body.len());
            f.extend_from_slice(&((16 + body.len()) as u32).to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(&status.to_be_bytes());
            f.extend_from_slice(&seq.to_be_bytes());
            f.extend_from_slice(&body);
            f
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_is_the_identity(pdu in pdu()) {
        let wire = pdu.to_bytes().expect("generated PDUs are encodable");
        prop_assert_eq!(Header::parse(&wire).map(|h| h.command_length as usize), Some(wire.len()));
        let back = Pdu::decode(wire.clone()).expect("what we encode decodes");
        prop_assert_eq!(&back, &pdu);
        // And through JSON, as the CLI does.
        let json = serde_json::to_string(&pdu).expect("serializes");
        let from_json: Pdu = serde_json::from_str(&json).expect("deserializes");
        prop_assert_eq!(from_json, pdu);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..300)) {
        let _ = Pdu::decode_slice(&bytes);
    }

    #[test]
    fn decoded_garbage_re_encodes_to_a_fixed_point(frame in framed_garbage()) {
        if let Ok(pdu) = Pdu::decode_slice(&frame) {
            let wire = pdu.to_bytes().expect("a decoded PDU is encodable");
            let again = Pdu::decode(wire.clone()).expect("re-encoded PDU decodes");
            prop_assert_eq!(again.to_bytes().expect("encodable"), wire);
        }
    }

    #[test]
    fn frames_survive_any_read_boundaries(
        pdus in vec(pdu(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream: Vec<u8> = pdus
            .iter()
            .flat_map(|p| p.to_bytes().expect("encodable").to_vec())
            .collect();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut seen = Vec::new();
        for point in points {
            buf.extend_from_slice(&stream[fed..point]);
            fed = point;
            loop {
                let before = buf.len();
                match decoder.decode(&mut buf).expect("valid stream frames") {
                    Some(Frame::Pdu(p)) => {
                        let expected = pdus.get(seen.len()).expect("no extra PDU");
                        let expected_len = expected.to_bytes().expect("encodable").len();
                        prop_assert_eq!(before - buf.len(), expected_len, "consumed one frame exactly");
                        seen.push(p);
                    }
                    Some(Frame::Rejected { error, .. }) => {
                        return Err(TestCaseError::fail(format!("valid frame rejected: {error}")));
                    }
                    None => {
                        prop_assert_eq!(buf.len(), before, "nothing consumed while waiting");
                        break;
                    }
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(seen, pdus);
    }

    #[test]
    fn frame_decoder_never_consumes_past_a_frame(
        stream in vec(any::<u8>(), 0..400),
        chunk in 1usize..64,
        max in 16u32..512,
    ) {
        let decoder = FrameDecoder::new(max);
        let mut buf = BytesMut::new();
        'feed: for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                let before = buf.len();
                let declared = Header::parse(&buf).map(|h| h.command_length as usize);
                match decoder.decode(&mut buf) {
                    Ok(Some(_)) => {
                        let declared = declared.expect("a frame has a header");
                        prop_assert_eq!(before - buf.len(), declared);
                        prop_assert!(declared <= max as usize);
                    }
                    Ok(None) => {
                        prop_assert_eq!(buf.len(), before);
                        break;
                    }
                    Err(e) => {
                        prop_assert_eq!(buf.len(), before, "nothing consumed on a framing error");
                        prop_assert_eq!(e.nack().command_status, CommandStatus::ESME_RINVCMDLEN);
                        break 'feed;
                    }
                }
            }
        }
    }
}

// ---- allocation ----

fn typical_submit_sm(seq: u32) -> Pdu {
    let mut tlvs = Tlvs::new();
    tlvs.set_user_message_reference(42).expect("valid");
    tlvs.set_source_port(9200).expect("valid");
    Pdu::new(
        seq,
        Body::SubmitSm(SubmitSm {
            source_addr_ton: 5,
            source_addr: Address::from_text("TernBank").expect("fits"),
            dest_addr_ton: 1,
            dest_addr_npi: 1,
            destination_addr: Address::from_text("447700900123").expect("fits"),
            registered_delivery: 1,
            short_message: Bytes::from(vec![b'x'; 160]),
            tlvs,
            ..SubmitSm::default()
        }),
    )
}

fn receipt_deliver_sm(seq: u32) -> Pdu {
    let mut tlvs = Tlvs::new();
    tlvs.set_receipted_message_id(&MessageId::from_text("7f3a9c12").expect("fits"))
        .expect("valid");
    tlvs.set_message_state(2).expect("valid");
    Pdu::new(
        seq,
        Body::DeliverSm(DeliverSm {
            esm_class: 0x04,
            source_addr: Address::from_text("447700900123").expect("fits"),
            destination_addr: Address::from_text("TernBank").expect("fits"),
            short_message: Bytes::from_static(
                b"id:7f3a9c12 sub:001 dlvrd:001 submit date:2511251200 done date:2511251201 stat:DELIVRD err:000 text:hello",
            ),
            tlvs,
            ..DeliverSm::default()
        }),
    )
}

fn submit_sm_resp(seq: u32) -> Pdu {
    Pdu::new(
        seq,
        Body::SubmitSmResp(SubmitSmResp {
            message_id: MessageId::from_text("0f1e2d3c4b5a69788796a5b4c3d2e1f0").expect("fits"),
        }),
    )
}

#[test]
fn hot_paths_allocate_nothing_per_pdu() {
    const ROUNDS: u32 = 200;
    let mut stream = BytesMut::new();
    for seq in 0..=ROUNDS {
        for pdu in [
            typical_submit_sm(seq),
            receipt_deliver_sm(seq),
            submit_sm_resp(seq),
        ] {
            pdu.encode(&mut stream).expect("encodable");
        }
    }
    let decoder = FrameDecoder::default();
    // The first split turns the read buffer into a shared one: one allocation
    // per buffer, not per PDU. Take it outside the measurement.
    for _ in 0..3 {
        let _ = decoder.decode(&mut stream).expect("valid");
    }
    let mut decoded = 0u32;
    let mut message_octets = 0usize;
    let decode_allocations = allocations_in(|| {
        while let Ok(Some(Frame::Pdu(pdu))) = decoder.decode(&mut stream) {
            if let Body::SubmitSm(m) | Body::DeliverSm(m) = &pdu.body {
                message_octets += m.message().len();
                assert!(
                    m.tlvs.user_message_reference().is_some() || m.tlvs.message_state().is_some()
                );
            }
            decoded += 1;
        }
    });
    assert_eq!(decoded, ROUNDS * 3);
    assert!(message_octets > 0);
    assert_eq!(decode_allocations, 0, "decode allocated");

    let pdus = [
        typical_submit_sm(1),
        receipt_deliver_sm(2),
        submit_sm_resp(3),
    ];
    let mut out = BytesMut::with_capacity(4096);
    let encode_allocations = allocations_in(|| {
        for _ in 0..ROUNDS {
            for pdu in &pdus {
                pdu.encode(&mut out).expect("encodable");
            }
            out.clear();
        }
    });
    assert_eq!(encode_allocations, 0, "encode allocated");

    // The counter does see allocations (the test can fail).
    assert!(allocations_in(|| drop(submit_sm_resp(1).to_bytes())) > 0);
}
