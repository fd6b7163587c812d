//! Customer authentication: password hashes, source-address ranges and the
//! slow-down of repeated failed binds.
//!
//! Owns: the password hash format stored in `Account::password_hash`, its
//! constant-time check, CIDR matching, and the per-core table of failed binds
//! per source address. Must not touch: sockets, the store or session state;
//! the session asks and acts on the answer.
//!
//! Hash format: `tern$hmac-sha256$SALT$HASH` (hex), HASH = HMAC-SHA-256 keyed
//! with the salt over the password. A fresh random salt per hash means two
//! accounts with one password store different strings; SMPP passwords are at
//! most 8 characters, so the hash guards a leaked state snapshot, not a weak
//! password.

use std::collections::HashMap;
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const HASH_PREFIX: &str = "tern$hmac-sha256$";
const SALT_BYTES: usize = 16;
const DIGEST_BYTES: usize = 32;

/// Hashes `password` with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; SALT_BYTES] = rand::random();
    hash_with_salt(password, &salt)
}

fn hash_with_salt(password: &str, salt: &[u8]) -> String {
    format!(
        "{HASH_PREFIX}{}${}",
        hex::encode(salt),
        hex::encode(digest(password.as_bytes(), salt))
    )
}

fn digest(password: &[u8], salt: &[u8]) -> [u8; DIGEST_BYTES] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(salt) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(password);
    mac.finalize().into_bytes().into()
}

fn split_hash(stored: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let rest = stored.strip_prefix(HASH_PREFIX)?;
    let (salt_hex, hash_hex) = rest.split_once('$')?;
    let salt = hex::decode(salt_hex).ok()?;
    let hash = hex::decode(hash_hex).ok()?;
    (!salt.is_empty() && hash.len() == DIGEST_BYTES).then_some((salt, hash))
}

/// Whether `text` has the stored hash format.
pub fn is_password_hash(text: &str) -> bool {
    split_hash(text).is_some()
}

/// Checks `password` against a stored hash in constant time (in the
/// password's content; a malformed stored hash never matches).
pub fn verify_password(password: &[u8], stored: &str) -> bool {
    let Some((salt, expected)) = split_hash(stored) else {
        return false;
    };
    let actual = digest(password, &salt);
    let mut difference = 0u8;
    for (a, b) in actual.iter().zip(expected.iter()) {
        difference |= a ^ b;
    }
    difference == 0
}

/// An address block such as `10.0.0.0/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr_text.trim().parse().ok()?;
        let max_len = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_text {
            Some(p) => p.trim().parse::<u8>().ok()?,
            None => max_len,
        };
        (prefix_len <= max_len).then_some(Cidr {
            network,
            prefix_len,
        })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        // An IPv4 client reaching an IPv6 socket shows up as ::ffff:a.b.c.d.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => prefix_matches(
                u128::from(u32::from(net)),
                u128::from(u32::from(a)),
                32,
                self.prefix_len,
            ),
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                prefix_matches(u128::from(net), u128::from(a), 128, self.prefix_len)
            }
            _ => false,
        }
    }
}

fn prefix_matches(net: u128, addr: u128, width: u32, prefix_len: u8) -> bool {
    let host_bits = width - u32::from(prefix_len).min(width);
    if host_bits >= 128 {
        return true;
    }
    (net >> host_bits) == (addr >> host_bits)
}

/// Whether `addr` may bind under an allow-list (empty = anyone). Entries that
/// do not parse match nothing (the config loader refuses them up front; the
/// admin API may not have).
pub fn address_allowed(allowed: &[String], addr: IpAddr) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .any(|text| Cidr::parse(text).is_some_and(|c| c.contains(addr)))
}

/// Failed binds per source address on one core, with the delay the next
/// failure earns. Bounded: when full, entries older than the window go
/// first, then the oldest.
#[derive(Debug)]
pub struct FailedBinds {
    entries: HashMap<IpAddr, Failures>,
    capacity: usize,
    window_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last_ms: u64,
}

/// First failure waits this long before its bind_resp; each further one in
/// the window doubles it, up to [`MAX_FAILED_BIND_DELAY_MS`].
pub const FIRST_FAILED_BIND_DELAY_MS: u64 = 100;
pub const MAX_FAILED_BIND_DELAY_MS: u64 = 5_000;

impl FailedBinds {
    pub fn new(capacity: usize, window_ms: u64) -> FailedBinds {
        FailedBinds {
            entries: HashMap::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            window_ms,
        }
    }

    /// Records a failure from `addr`; returns how long to hold the answer.
    pub fn record_failure(&mut self, addr: IpAddr, now_ms: u64) -> u64 {
        if !self.entries.contains_key(&addr) && self.entries.len() >= self.capacity {
            self.evict(now_ms);
        }
        let window_ms = self.window_ms;
        let entry = self.entries.entry(addr).or_insert(Failures {
            count: 0,
            last_ms: now_ms,
        });
        if now_ms.saturating_sub(entry.last_ms) > window_ms {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last_ms = now_ms;
        let doublings = entry.count.saturating_sub(1).min(16);
        (FIRST_FAILED_BIND_DELAY_MS << doublings).min(MAX_FAILED_BIND_DELAY_MS)
    }

    /// A successful bind clears the address's record.
    pub fn record_success(&mut self, addr: IpAddr) {
        self.entries.remove(&addr);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict(&mut self, now_ms: u64) {
        let window_ms = self.window_ms;
        self.entries
            .retain(|_, f| now_ms.saturating_sub(f.last_ms) <= window_ms);
        if self.entries.len() >= self.capacity {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, f)| f.last_ms)
                .map(|(a, _)| *a)
            {
                self.entries.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip_and_salt() {
        let a = hash_password("secret");
        let b = hash_password("secret");
        assert_ne!(a, b, "salts differ");
        assert!(is_password_hash(&a));
        assert!(verify_password(b"secret", &a));
        assert!(!verify_password(b"secreT", &a));
        assert!(!verify_password(b"", &a));
        assert!(!verify_password(b"secret", "tern$hmac-sha256$zz$00"));
        assert!(!verify_password(b"secret", "plain"));
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA-256(key = 16 zero bytes, "trial"), fixed so the format stays stable.
        let stored = hash_with_salt("trial", &[0u8; 16]);
        assert!(stored.starts_with("tern$hmac-sha256$00000000000000000000000000000000$"));
        assert!(verify_password(b"trial", &stored));
    }

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::/0")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(!Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense").is_none());
        assert!(address_allowed(&[], "1.2.3.4".parse().unwrap()));
        assert!(!address_allowed(
            &["127.0.0.0/8".into()],
            "1.2.3.4".parse().unwrap()
        ));
    }

    #[test]
    fn failed_binds_back_off_and_stay_bounded() {
        let mut table = FailedBinds::new(2, 60_000);
        let a: IpAddr = "1.1.1.1".parse().unwrap();
        assert_eq!(table.record_failure(a, 0), 100);
        assert_eq!(table.record_failure(a, 1), 200);
        assert_eq!(table.record_failure(a, 2), 400);
        for i in 3..40 {
            assert!(table.record_failure(a, i) <= MAX_FAILED_BIND_DELAY_MS);
        }
        // Outside the window the count starts over.
        assert_eq!(table.record_failure(a, 200_000), 100);
        table.record_failure("2.2.2.2".parse().unwrap(), 200_001);
        table.record_failure("3.3.3.3".parse().unwrap(), 200_002);
        assert_eq!(table.len(), 2, "capacity holds");
        table.record_success("3.3.3.3".parse().unwrap());
        assert_eq!(table.len(), 1);
    }
}
