//! Message ids: unique cluster-wide without coordination per message, printable,
//! fixed-width, 20 characters.
//!
//! Owns: the `MessageId` value type, its text form and the per-shard generator.
//! Must not touch: clocks, randomness or any global state; the caller hands the
//! generator everything it needs (node, shard, boot epoch).
//!
//! Layout (100 bits, most significant first, so numeric order = text order):
//!
//! | epoch (32) | node (16) | shard (8) | counter (44) |
//!
//! Why this never repeats, even after a restart with the clock stepped back:
//! time is not part of uniqueness at all. The `epoch` is the node's boot
//! incarnation, which must be strictly greater than every epoch the node used
//! before. The appliance takes it from the replicated registry
//! (`AppState::next_incarnation(node)`, committed through `NodeUp` before the
//! node accepts anything), so it survives even a wiped disk as long as the
//! cluster remembers the node. Within one boot, each (node, shard) pair counts
//! up from zero; 2^44 ids per shard per boot (about 200 days at one million
//! per second) and the generator refuses to wrap, asking for a new epoch.
//!
//! The text form is Crockford base32 (digits and upper-case letters without
//! I, L, O, U), always 20 characters, so it fits submit_sm_resp's 65-byte
//! message_id, HTTP paths and log lines unchanged. Parsing accepts lower case
//! and the usual Crockford look-alikes (I/L → 1, O → 0).

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Number of characters in the text form of every id.
pub const MESSAGE_ID_TEXT_LEN: usize = 20;

const COUNTER_BITS: u32 = 44;
const SHARD_BITS: u32 = 8;
const NODE_BITS: u32 = 16;
const EPOCH_BITS: u32 = 32;
const TOTAL_BITS: u32 = COUNTER_BITS + SHARD_BITS + NODE_BITS + EPOCH_BITS;
const COUNTER_LIMIT: u64 = 1 << COUNTER_BITS;
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A cluster-wide unique message id. Ordered by (epoch, node, shard, counter).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(u128);

impl MessageId {
    /// Builds an id from its parts; `None` if the node or counter exceeds its field.
    pub fn from_parts(epoch: u32, node: u64, shard: u8, counter: u64) -> Option<MessageId> {
        if node >= 1 << NODE_BITS || counter >= COUNTER_LIMIT {
            return None;
        }
        let value = (u128::from(epoch) << (NODE_BITS + SHARD_BITS + COUNTER_BITS))
            | (u128::from(node) << (SHARD_BITS + COUNTER_BITS))
            | (u128::from(shard) << COUNTER_BITS)
            | u128::from(counter);
        Some(MessageId(value))
    }

    /// The raw 100-bit value (upper 28 bits are always zero).
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// Rebuilds an id from `as_u128`; `None` if bits above the layout are set.
    pub fn from_u128(value: u128) -> Option<MessageId> {
        (value >> TOTAL_BITS == 0).then_some(MessageId(value))
    }

    pub fn epoch(self) -> u32 {
        // The shift leaves exactly EPOCH_BITS bits because of the from_* checks.
        (self.0 >> (NODE_BITS + SHARD_BITS + COUNTER_BITS)) as u32
    }

    pub fn node(self) -> u64 {
        ((self.0 >> (SHARD_BITS + COUNTER_BITS)) as u64) & ((1 << NODE_BITS) - 1)
    }

    pub fn shard(self) -> u8 {
        ((self.0 >> COUNTER_BITS) as u64 & ((1 << SHARD_BITS) - 1)) as u8
    }

    pub fn counter(self) -> u64 {
        self.0 as u64 & (COUNTER_LIMIT - 1)
    }

    /// A well-mixed 64-bit hash of the id, identical on every platform and
    /// Rust version (std's hasher makes no such promise), for deterministic
    /// picks inside apply.
    pub fn stable_hash(self) -> u64 {
        let folded = (self.0 as u64) ^ ((self.0 >> 64) as u64).rotate_left(29);
        splitmix64(folded)
    }

    /// Writes the 20-character text form into `out` without allocating.
    pub fn encode_text(self, out: &mut [u8; MESSAGE_ID_TEXT_LEN]) {
        let mut value = self.0;
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(value & 31) as usize];
            value >>= 5;
        }
    }

    /// Parses the text form (exactly 20 characters, case-insensitive).
    pub fn parse(text: &str) -> Result<MessageId, ParseIdError> {
        let bytes = text.as_bytes();
        if bytes.len() != MESSAGE_ID_TEXT_LEN {
            return Err(ParseIdError::Length(bytes.len()));
        }
        let mut value: u128 = 0;
        for &byte in bytes {
            let digit = decode_digit(byte).ok_or(ParseIdError::Character(byte))?;
            value = (value << 5) | u128::from(digit);
        }
        // 20 chars carry exactly TOTAL_BITS bits, so no overflow check is needed.
        debug_assert!(
            value >> TOTAL_BITS == 0,
            "20 base32 digits exceed the layout"
        );
        Ok(MessageId(value))
    }
}

fn decode_digit(byte: u8) -> Option<u8> {
    let upper = byte.to_ascii_uppercase();
    let canonical = match upper {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        other => other,
    };
    ALPHABET
        .iter()
        .position(|&c| c == canonical)
        .and_then(|p| u8::try_from(p).ok())
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; MESSAGE_ID_TEXT_LEN];
        self.encode_text(&mut buf);
        // The alphabet is ASCII, so this never fails; fall back to an error, not a panic.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Bytes of the binary form: the 100 bits big-endian in 13 bytes (a fixed
/// tuple, so bincode writes no length and no varint marker).
const BINARY_LEN: usize = 13;

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wide = self.0.to_be_bytes();
        let mut tuple = serializer.serialize_tuple(BINARY_LEN)?;
        for byte in wide.iter().skip(wide.len() - BINARY_LEN) {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl<'de> Visitor<'de> for IdVisitor {
            type Value = MessageId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{BINARY_LEN} bytes of a message id")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MessageId, A::Error> {
                let mut value: u128 = 0;
                for position in 0..BINARY_LEN {
                    let byte: u8 = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(position, &self))?;
                    value = (value << 8) | u128::from(byte);
                }
                MessageId::from_u128(value)
                    .ok_or_else(|| A::Error::custom("message id has bits above its 100-bit layout"))
            }
        }
        deserializer.deserialize_tuple(BINARY_LEN, IdVisitor)
    }
}

impl FromStr for MessageId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageId::parse(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    #[error("a message id has {MESSAGE_ID_TEXT_LEN} characters, got {0}")]
    Length(usize),
    #[error("byte {0:#04x} is not a base32 digit")]
    Character(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("node id {0} does not fit the 16-bit node field")]
    NodeOutOfRange(u64),
    #[error("the id space of this boot epoch is exhausted; restart with a new epoch")]
    Exhausted,
}

/// Hands out ids for one (node, shard) during one boot epoch. Owned by one
/// shard; no locks, no allocation.
#[derive(Debug)]
pub struct IdGenerator {
    epoch: u32,
    node: u64,
    shard: u8,
    next_counter: u64,
}

impl IdGenerator {
    /// `epoch` must be strictly greater than every epoch this node used before
    /// (see the module header for where it comes from).
    pub fn new(node: u64, shard: u8, epoch: u32) -> Result<IdGenerator, IdError> {
        if node >= 1 << NODE_BITS {
            return Err(IdError::NodeOutOfRange(node));
        }
        Ok(IdGenerator {
            epoch,
            node,
            shard,
            next_counter: 0,
        })
    }

    pub fn next_id(&mut self) -> Result<MessageId, IdError> {
        let id = MessageId::from_parts(self.epoch, self.node, self.shard, self.next_counter)
            .ok_or(IdError::Exhausted)?;
        self.next_counter += 1;
        Ok(id)
    }

    /// How many ids this generator can still hand out.
    pub fn remaining(&self) -> u64 {
        COUNTER_LIMIT - self.next_counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn text_round_trip_is_fixed_width_and_ordered() {
        let a = MessageId::from_parts(7, 3, 1, 41).unwrap();
        let b = MessageId::from_parts(7, 3, 1, 42).unwrap();
        let c = MessageId::from_parts(8, 0, 0, 0).unwrap();
        for id in [a, b, c] {
            let text = id.to_string();
            assert_eq!(text.len(), MESSAGE_ID_TEXT_LEN);
            assert_eq!(MessageId::parse(&text), Ok(id));
            assert_eq!(MessageId::parse(&text.to_lowercase()), Ok(id));
        }
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
    }

    #[test]
    fn parts_survive_packing() {
        let id = MessageId::from_parts(u32::MAX, 0xFFFF, 0xFF, COUNTER_LIMIT - 1).unwrap();
        assert_eq!(id.epoch(), u32::MAX);
        assert_eq!(id.node(), 0xFFFF);
        assert_eq!(id.shard(), 0xFF);
        assert_eq!(id.counter(), COUNTER_LIMIT - 1);
        assert_eq!(id.to_string(), "ZZZZZZZZZZZZZZZZZZZZ");
        assert!(MessageId::from_parts(0, 1 << 16, 0, 0).is_none());
        assert!(MessageId::from_parts(0, 0, 0, COUNTER_LIMIT).is_none());
        assert!(MessageId::from_u128(1 << 100).is_none());
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert_eq!(MessageId::parse(""), Err(ParseIdError::Length(0)));
        assert_eq!(
            MessageId::parse("0000000000000000000U"),
            Err(ParseIdError::Character(b'U'))
        );
        assert!(MessageId::parse("00000000000000000000é").is_err());
        assert_eq!(
            MessageId::parse("0000000000000000000O"),
            MessageId::parse("00000000000000000000")
        );
    }

    #[test]
    fn restarts_with_a_new_epoch_never_repeat() {
        // Three "boots" of the same node and shard: each boot restarts the
        // counter at zero (as after a crash), only the epoch grows.
        let mut seen = HashSet::new();
        for epoch in [1u32, 2, 3] {
            for shard in 0..2u8 {
                let mut generator = IdGenerator::new(5, shard, epoch).unwrap();
                for _ in 0..10_000 {
                    assert!(seen.insert(generator.next_id().unwrap()), "id repeated");
                }
            }
        }
        // Another node in the same epoch shares nothing either.
        let mut other = IdGenerator::new(6, 0, 1).unwrap();
        for _ in 0..10_000 {
            assert!(seen.insert(other.next_id().unwrap()));
        }
    }

    #[test]
    fn generator_refuses_to_wrap() {
        let mut generator = IdGenerator::new(1, 0, 1).unwrap();
        generator.next_counter = COUNTER_LIMIT - 1;
        assert!(generator.next_id().is_ok());
        assert_eq!(generator.remaining(), 0);
        assert_eq!(generator.next_id(), Err(IdError::Exhausted));
        assert_eq!(
            IdGenerator::new(1 << 16, 0, 1).unwrap_err(),
            IdError::NodeOutOfRange(1 << 16)
        );
    }

    #[test]
    fn binary_form_is_thirteen_bytes_and_checked() {
        let id = MessageId::from_parts(u32::MAX, 0xFFFF, 0xFF, COUNTER_LIMIT - 1).unwrap();
        let bytes = bincode::serialize(&id).unwrap();
        assert_eq!(bytes.len(), BINARY_LEN);
        assert_eq!(bincode::deserialize::<MessageId>(&bytes).unwrap(), id);
        let mut too_wide = bytes.clone();
        too_wide[0] = 0xFF;
        assert!(bincode::deserialize::<MessageId>(&too_wide).is_err());
        assert!(bincode::deserialize::<MessageId>(&bytes[..5]).is_err());
    }

    proptest! {
        #[test]
        fn any_text_either_parses_and_round_trips_or_errors(text in "\\PC{0,24}") {
            if let Ok(id) = MessageId::parse(&text) {
                let again = MessageId::parse(&id.to_string()).unwrap();
                prop_assert_eq!(again, id);
            }
        }

        #[test]
        fn numeric_order_matches_text_order(a in 0u128..(1 << 100), b in 0u128..(1 << 100)) {
            let (x, y) = (MessageId::from_u128(a).unwrap(), MessageId::from_u128(b).unwrap());
            prop_assert_eq!(x.cmp(&y), x.to_string().cmp(&y.to_string()));
        }
    }
}
