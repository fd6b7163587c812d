//! Masking of personal data in log output: phone numbers and message text.
//!
//! Owns: the process-wide masking switch (`[log] mask_personal_data`) and the
//! wrappers log sites print addresses and message bodies through. Must not
//! touch: what is stored, replicated or sent; masking changes only what a log
//! line shows.
//!
//! Why a switch read at every print rather than a per-subscriber filter: the
//! log sites know which field is personal, the subscriber does not, and a
//! relaxed load per printed field is nothing next to formatting the line.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static MASKING: AtomicBool = AtomicBool::new(true);

/// Characters hidden at the end of an address: enough to stop identifying a
/// subscriber while the prefix still shows country and network.
const MASKED_TAIL_CHARS: usize = 5;

/// Turns masking on or off for the whole process (from the configuration).
pub fn set_masking(enabled: bool) {
    MASKING.store(enabled, Ordering::Relaxed);
}

pub fn masking() -> bool {
    MASKING.load(Ordering::Relaxed)
}

/// An address (MSISDN or alphanumeric sender) as a log line may show it:
/// `447700900123` prints `4477009*****` while masking is on. Short values
/// keep at most half their characters.
#[derive(Debug, Clone, Copy)]
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_address(self.0, masking(), f)
    }
}

/// A message body as a log line may show it: its length in octets while
/// masking is on, the text (lossy UTF-8) otherwise.
#[derive(Debug, Clone, Copy)]
pub struct MaskedText<'a>(pub &'a [u8]);

impl fmt::Display for MaskedText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_text(self.0, masking(), f)
    }
}

fn write_address(address: &str, mask: bool, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if !mask {
        return f.write_str(address);
    }
    let chars = address.chars().count();
    let hidden = MASKED_TAIL_CHARS.min(chars.div_ceil(2));
    for c in address.chars().take(chars - hidden) {
        fmt::Write::write_char(f, c)?;
    }
    for _ in 0..hidden {
        f.write_str("*")?;
    }
    Ok(())
}

fn write_text(text: &[u8], mask: bool, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if mask {
        write!(f, "<{} octets>", text.len())
    } else {
        write!(f, "{}", String::from_utf8_lossy(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Address<'a>(&'a str, bool);
    impl fmt::Display for Address<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_address(self.0, self.1, f)
        }
    }
    struct Text<'a>(&'a [u8], bool);
    impl fmt::Display for Text<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_text(self.0, self.1, f)
        }
    }

    #[test]
    fn addresses_keep_a_prefix_and_hide_the_tail() {
        assert_eq!(Address("447700900123", true).to_string(), "4477009*****");
        assert_eq!(Address("+15551234", true).to_string(), "+155*****");
        // Short values keep at most half.
        assert_eq!(Address("1234", true).to_string(), "12**");
        assert_eq!(Address("123", true).to_string(), "1**");
        assert_eq!(Address("7", true).to_string(), "*");
        assert_eq!(Address("", true).to_string(), "");
        // Counted in characters, so multi-byte sender names cannot split.
        assert_eq!(Address("Ünïcødé", true).to_string(), "Ünï****");
    }

    #[test]
    fn text_becomes_its_length() {
        assert_eq!(Text(b"hello there", true).to_string(), "<11 octets>");
        assert_eq!(Text(b"", true).to_string(), "<0 octets>");
        assert_eq!(Text(b"hello", false).to_string(), "hello");
        assert_eq!(Text(&[0xff, b'a'], false).to_string(), "\u{fffd}a");
    }

    #[test]
    fn unmasked_prints_everything() {
        assert_eq!(Address("447700900123", false).to_string(), "447700900123");
    }

    #[test]
    fn masking_is_on_by_default() {
        // No test in this crate turns the switch off, so the default shows.
        assert!(masking());
        assert_eq!(Masked("447700900123").to_string(), "4477009*****");
        assert_eq!(MaskedText(b"secret").to_string(), "<6 octets>");
    }
}
