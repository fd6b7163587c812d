//! SMPP command_status values (SMPP 3.4 section 5.1.3, plus the SMPP 5.0 codes
//! that 3.4 peers use in practice, such as ESME_RINVDCS).
//!
//! Owns: the status number space, names and human texts, and which statuses are
//! temporary (worth a retry). Must not touch: PDU layout or session state.

use std::fmt;

/// A command_status. A newtype rather than an enum because peers send values
/// outside the specification (the vendor range 0x400..=0x4FF in particular) and
/// we must carry them faithfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CommandStatus(pub u32);

macro_rules! statuses {
    ($( $konst:ident = $value:expr, $text:expr; )*) => {
        impl CommandStatus {
            $( pub const $konst: CommandStatus = CommandStatus($value); )*

            /// Every status the specifications name, in numeric order.
            pub const KNOWN: &'static [CommandStatus] = &[ $( CommandStatus::$konst, )* ];

            /// The specification's symbolic name, e.g. `ESME_RTHROTTLED`.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($konst)), )*
                    _ => None,
                }
            }

            /// The specification's description, for people.
            pub fn text(self) -> &'static str {
                match self.0 {
                    $( $value => $text, )*
                    0x100..=0x3FF => "Reserved for SMPP extension",
                    0x400..=0x4FF => "Reserved for SMSC vendor specific errors",
                    _ => "Reserved",
                }
            }

            pub fn from_name(name: &str) -> Option<CommandStatus> {
                match name {
                    $( stringify!($konst) => Some(CommandStatus::$konst), )*
                    _ => None,
                }
            }
        }
    };
}

statuses! {
    ESME_ROK = 0x0000_0000, "No error";
    ESME_RINVMSGLEN = 0x0000_0001, "Message length is invalid";
    ESME_RINVCMDLEN = 0x0000_0002, "Command length is invalid";
    ESME_RINVCMDID = 0x0000_0003, "Invalid command ID";
    ESME_RINVBNDSTS = 0x0000_0004, "Incorrect bind status for given command";
    ESME_RALYBND = 0x0000_0005, "ESME already in bound state";
    ESME_RINVPRTFLG = 0x0000_0006, "Invalid priority flag";
    ESME_RINVREGDLVFLG = 0x0000_0007, "Invalid registered delivery flag";
    ESME_RSYSERR = 0x0000_0008, "System error";
    ESME_RINVSRCADR = 0x0000_000A, "Invalid source address";
    ESME_RINVDSTADR = 0x0000_000B, "Invalid destination address";
    ESME_RINVMSGID = 0x0000_000C, "Message ID is invalid";
    ESME_RBINDFAIL = 0x0000_000D, "Bind failed";
    ESME_RINVPASWD = 0x0000_000E, "Invalid password";
    ESME_RINVSYSID = 0x0000_000F, "Invalid system ID";
    ESME_RCANCELFAIL = 0x0000_0011, "Cancel SM failed";
    ESME_RREPLACEFAIL = 0x0000_0013, "Replace SM failed";
    ESME_RMSGQFUL = 0x0000_0014, "Message queue full";
    ESME_RINVSERTYP = 0x0000_0015, "Invalid service type";
    ESME_RINVNUMDESTS = 0x0000_0033, "Invalid number of destinations";
    ESME_RINVDLNAME = 0x0000_0034, "Invalid distribution list name";
    ESME_RINVDESTFLAG = 0x0000_0040, "Destination flag is invalid (submit_multi)";
    ESME_RINVSUBREP = 0x0000_0042, "Invalid 'submit with replace' request";
    ESME_RINVESMCLASS = 0x0000_0043, "Invalid esm_class field data";
    ESME_RCNTSUBDL = 0x0000_0044, "Cannot submit to distribution list";
    ESME_RSUBMITFAIL = 0x0000_0045, "submit_sm or submit_multi failed";
    ESME_RINVSRCTON = 0x0000_0048, "Invalid source address TON";
    ESME_RINVSRCNPI = 0x0000_0049, "Invalid source address NPI";
    ESME_RINVDSTTON = 0x0000_0050, "Invalid destination address TON";
    ESME_RINVDSTNPI = 0x0000_0051, "Invalid destination address NPI";
    ESME_RINVSYSTYP = 0x0000_0053, "Invalid system_type field";
    ESME_RINVREPFLAG = 0x0000_0054, "Invalid replace_if_present flag";
    ESME_RINVNUMMSGS = 0x0000_0055, "Invalid number of messages";
    ESME_RTHROTTLED = 0x0000_0058, "Throttling error (ESME has exceeded allowed message limits)";
    ESME_RINVSCHED = 0x0000_0061, "Invalid scheduled delivery time";
    ESME_RINVEXPIRY = 0x0000_0062, "Invalid message validity period (expiry time)";
    ESME_RINVDFTMSGID = 0x0000_0063, "Predefined message invalid or not found";
    ESME_RX_T_APPN = 0x0000_0064, "ESME receiver temporary app error code";
    ESME_RX_P_APPN = 0x0000_0065, "ESME receiver permanent app error code";
    ESME_RX_R_APPN = 0x0000_0066, "ESME receiver reject message error code";
    ESME_RQUERYFAIL = 0x0000_0067, "query_sm request failed";
    ESME_RINVOPTPARSTREAM = 0x0000_00C0, "Error in the optional part of the PDU body";
    ESME_ROPTPARNOTALLWD = 0x0000_00C1, "Optional parameter not allowed";
    ESME_RINVPARLEN = 0x0000_00C2, "Invalid parameter length";
    ESME_RMISSINGOPTPARAM = 0x0000_00C3, "Expected optional parameter missing";
    ESME_RINVOPTPARAMVAL = 0x0000_00C4, "Invalid optional parameter value";
    ESME_RDELIVERYFAILURE = 0x0000_00FE, "Delivery failure (used for data_sm_resp)";
    ESME_RUNKNOWNERR = 0x0000_00FF, "Unknown error";
    ESME_RSERTYPUNAUTH = 0x0000_0100, "ESME not authorised to use specified service_type (SMPP 5.0)";
    ESME_RPROHIBITED = 0x0000_0101, "ESME prohibited from using specified operation (SMPP 5.0)";
    ESME_RSERTYPUNAVAIL = 0x0000_0102, "Specified service_type is unavailable (SMPP 5.0)";
    ESME_RSERTYPDENIED = 0x0000_0103, "Specified service_type is denied (SMPP 5.0)";
    ESME_RINVDCS = 0x0000_0104, "Invalid data coding scheme (SMPP 5.0)";
    ESME_RINVSRCADDRSUBUNIT = 0x0000_0105, "Source address sub unit is invalid (SMPP 5.0)";
    ESME_RINVDSTADDRSUBUNIT = 0x0000_0106, "Destination address sub unit is invalid (SMPP 5.0)";
}

impl CommandStatus {
    pub fn is_ok(self) -> bool {
        self == CommandStatus::ESME_ROK
    }

    /// Temporary conditions a sender should retry later (SMPP-NOTES: back-pressure
    /// is RTHROTTLED and RMSGQFUL); everything else is final for this message.
    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            CommandStatus::ESME_RTHROTTLED
                | CommandStatus::ESME_RMSGQFUL
                | CommandStatus::ESME_RX_T_APPN
                | CommandStatus::ESME_RSYSERR
        )
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} (0x{:08X}): {}", self.0, self.text()),
            None => write!(f, "0x{:08X}: {}", self.0, self.text()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_status_has_a_unique_name_and_a_text() {
        let mut names = std::collections::HashSet::new();
        for s in CommandStatus::KNOWN {
            let name = s.name().expect("known status has a name");
            assert!(names.insert(name), "duplicate name {name}");
            assert_eq!(CommandStatus::from_name(name), Some(*s));
            assert!(!s.text().is_empty());
        }
        assert!(CommandStatus::KNOWN.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn vendor_range_is_carried_not_invented() {
        let s = CommandStatus(0x0000_0401);
        assert_eq!(s.name(), None);
        assert_eq!(s.text(), "Reserved for SMSC vendor specific errors");
        assert_eq!(
            s.to_string(),
            "0x00000401: Reserved for SMSC vendor specific errors"
        );
        assert_eq!(
            CommandStatus::ESME_RTHROTTLED.to_string(),
            "ESME_RTHROTTLED (0x00000058): Throttling error (ESME has exceeded allowed message limits)"
        );
    }
}
