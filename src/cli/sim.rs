//! `tern sim`: command-line arguments of the operator SMSC simulator.
//!
//! Owns: argument parsing and validation into `sim::SimConfig`. Must not
//! touch: the simulator's behaviour (src/sim/).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Args;

use crate::sim::{OutcomeMix, SimConfig, SimIdFormat};
use crate::smpp::status::CommandStatus;

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to accept SMPP binds on (every core listens with SO_REUSEPORT).
    #[arg(long, default_value = "127.0.0.1:2776")]
    pub listen: SocketAddr,
    /// Cores to run on, e.g. `0,1` (default: all this process may use).
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// Accept only binds with this system_id (default: any).
    #[arg(long)]
    pub system_id: Option<String>,
    /// Accept only binds with this password (default: any).
    #[arg(long)]
    pub password: Option<String>,
    /// Message ids: `hex`, `dec`, or `dec-resp-hex-receipt` (decimal in
    /// submit_sm_resp, hex in the receipt, as some SMSCs do).
    #[arg(long, default_value = "hex", value_parser = parse_id_format)]
    pub id_format: SimIdFormat,
    /// Delay before a receipt is sent, in ms.
    #[arg(long, default_value_t = 0)]
    pub receipt_delay_ms: u64,
    /// Extra random delay per receipt, uniform in [0, this] ms.
    #[arg(long, default_value_t = 0)]
    pub receipt_jitter_ms: u64,
    /// Receipt outcomes with weights.
    #[arg(long, default_value = "DELIVRD=100", value_parser = OutcomeMix::parse)]
    pub outcomes: OutcomeMix,
    /// Answer ESME_RTHROTTLED to every Nth submit_sm (per core; 0: never).
    #[arg(long, default_value_t = 0)]
    pub throttle_every: u64,
    /// Probability (0..=1) of answering --fail-status instead of OK.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// The status --fail-rate answers, by name (e.g. ESME_RSYSERR) or number.
    #[arg(long, default_value = "ESME_RSYSERR", value_parser = parse_status)]
    pub fail_status: CommandStatus,
    /// Delay every submit_sm_resp by this many ms.
    #[arg(long, default_value_t = 0)]
    pub resp_delay_ms: u64,
    /// Close a connection after it submitted this many (0: never).
    #[arg(long, default_value_t = 0)]
    pub drop_after: u64,
    /// Answer ESME_RTHROTTLED beyond this many submit_sm/s (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_tps: u64,
    /// MO messages per second to send to bound receivers.
    #[arg(long, default_value_t = 0.0)]
    pub mo_rate: f64,
    /// destination_addr of MO messages.
    #[arg(long, default_value = "12345")]
    pub mo_to: String,
    /// Seed of the simulator's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// deliver_sm outstanding per receiver bind.
    #[arg(long, default_value_t = 256)]
    pub deliver_window: usize,
    /// Resend a deliver_sm not answered within this many ms.
    #[arg(long, default_value_t = 10_000)]
    pub deliver_timeout_ms: u64,
    /// Give up on a deliver_sm (counted as dropped) after this many sends.
    #[arg(long, default_value_t = 5)]
    pub deliver_max_attempts: u32,
    /// Receipts kept per core while no receiver of their system_id is bound;
    /// beyond it they are dropped and counted.
    #[arg(long, default_value_t = 1_000_000)]
    pub held_max: usize,
    /// Write totals and per-destination counts here at exit (JSON).
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Send enquire_link on every bound connection this often, in ms, and
    /// close a connection that leaves one unanswered for as long (0: never).
    #[arg(long, default_value_t = 0)]
    pub enquire_link_ms: u64,
    /// Summary line period on stderr, in ms.
    #[arg(long, default_value_t = 1_000)]
    pub summary_every_ms: u64,
}

fn parse_id_format(text: &str) -> Result<SimIdFormat, String> {
    SimIdFormat::parse(text)
        .ok_or_else(|| format!("`{text}`: expected hex, dec or dec-resp-hex-receipt"))
}

fn parse_status(text: &str) -> Result<CommandStatus, String> {
    if let Some(status) = CommandStatus::from_name(text) {
        return Ok(status);
    }
    let number = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    number
        .map(CommandStatus)
        .map_err(|_| format!("`{text}`: not a status name (ESME_...) or number"))
}

impl SimArgs {
    pub fn into_config(self) -> Result<SimConfig, String> {
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err("--fail-rate must be between 0 and 1".into());
        }
        if !self.mo_rate.is_finite() || self.mo_rate < 0.0 {
            return Err("--mo-rate must be 0 or more".into());
        }
        if self.deliver_window == 0 {
            return Err("--deliver-window must be at least 1".into());
        }
        Ok(SimConfig {
            listen: self.listen,
            cores: self.cores,
            system_id: self.system_id,
            password: self.password,
            id_format: self.id_format,
            receipt_delay_ms: self.receipt_delay_ms,
            receipt_jitter_ms: self.receipt_jitter_ms,
            outcomes: self.outcomes,
            throttle_every: self.throttle_every,
            fail_rate: self.fail_rate,
            fail_status: self.fail_status,
            resp_delay_ms: self.resp_delay_ms,
            drop_after: self.drop_after,
            max_tps: self.max_tps,
            mo_rate_per_s: self.mo_rate,
            mo_to: self.mo_to,
            seed: self.seed,
            deliver_window: self.deliver_window,
            deliver_timeout_ms: self.deliver_timeout_ms,
            deliver_max_attempts: self.deliver_max_attempts.max(1),
            held_max: self.held_max,
            summary_every_ms: self.summary_every_ms,
            report_json: self.report_json,
            enquire_link_ms: self.enquire_link_ms,
        })
    }
}

pub fn run(args: SimArgs) -> i32 {
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tern sim: {e}");
            return 2;
        }
    };
    match crate::sim::run(config, Arc::new(AtomicBool::new(false))) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("tern sim: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_by_name_or_number() {
        assert_eq!(
            parse_status("ESME_RTHROTTLED"),
            Ok(CommandStatus::ESME_RTHROTTLED)
        );
        assert_eq!(parse_status("0x58"), Ok(CommandStatus(0x58)));
        assert_eq!(parse_status("8"), Ok(CommandStatus(8)));
        assert!(parse_status("nope").is_err());
    }
}
