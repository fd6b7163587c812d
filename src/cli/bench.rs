//! `tern bench ...`: load generators. Owns: their arguments and output
//! (human or one JSON object). Must not touch: the generators themselves
//! (src/bench/).

use std::net::SocketAddr;

use clap::{Args, Subcommand};

use crate::bench::smpp::{BenchConfig, BindAs};
use crate::smpp::receipt::IdFormat;

// Parsed once at start-up and matched once: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// SMPP customer load: N transceiver binds, window W, optional receipts.
    Smpp(SmppArgs),
    /// Committed proposals per second and commit latency of the replicated store.
    Store(super::bench_store::BenchStoreArgs),
    /// HTTP submit load: N keep-alive connections posting to /v1/messages.
    Http(HttpArgs),
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// HTTP server of `tern serve`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: SocketAddr,
    /// The account's API key (bearer token).
    #[arg(long, default_value = "trial")]
    pub api_key: String,
    /// Keep-alive connections, spread across cores; one request in flight each.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Send for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// The JSON body of every request.
    #[arg(
        long,
        default_value = r#"{"from":"TERN","to":"447900000001","text":"Hello from tern bench"}"#
    )]
    pub body: String,
    /// Cores to run on, e.g. `1` (default: all this process may use).
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SmppArgs {
    /// SMPP server to bind to.
    #[arg(long, default_value = "127.0.0.1:2775")]
    pub target: SocketAddr,
    #[arg(long, default_value = "trial")]
    pub system_id: String,
    #[arg(long, default_value = "trial")]
    pub password: String,
    /// Transceiver binds, spread across cores.
    #[arg(long, default_value_t = 1)]
    pub binds: usize,
    /// submit_sm outstanding per bind.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Total submit_sm to send.
    #[arg(
        long,
        conflicts_with = "duration_s",
        required_unless_present = "duration_s"
    )]
    pub count: Option<u64>,
    /// Submit for this many seconds.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Target submit_sm per second over all binds (default: as fast as the window allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Ask for receipts (registered_delivery=1) and match each to its message id.
    #[arg(long)]
    pub dlr: bool,
    /// After the last submit, wait at most this long for outstanding receipts.
    #[arg(long, default_value_t = 10.0)]
    pub dlr_wait_s: f64,
    /// short_message text.
    #[arg(long, default_value = "Hello from tern bench")]
    pub text: String,
    #[arg(long, default_value = "TERN")]
    pub source: String,
    #[arg(long, default_value = "447900000001")]
    pub destination: String,
    /// Cores to run on, e.g. `1` (default: all this process may use).
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// A submit_sm without response after this long counts as a timeout.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// How the server's ids compare between submit_sm_resp and receipt:
    /// as-is, hex, dec, hex-in-receipt-dec-in-resp, dec-in-receipt-hex-in-resp.
    #[arg(long, default_value = "as-is", value_parser = parse_id_format)]
    pub id_format: IdFormat,
    /// transceiver, transmitter (receipts wait in the server) or receiver
    /// (submits nothing, give --count 0; collects receipts).
    #[arg(long = "bind", default_value = "transceiver", value_parser = parse_bind_as)]
    pub bind_as: BindAs,
    /// End once this many receipts arrived over all binds (at most
    /// --dlr-wait-s after the last submit); default: one per acknowledged
    /// submit with --dlr.
    #[arg(long)]
    pub expect_receipts: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_bind_as(text: &str) -> Result<BindAs, String> {
    BindAs::parse(text)
        .ok_or_else(|| format!("`{text}`: expected transceiver, transmitter or receiver"))
}

fn parse_id_format(text: &str) -> Result<IdFormat, String> {
    Ok(match text {
        "as-is" => IdFormat::AsIs,
        "hex" => IdFormat::HexCaseInsensitive,
        "dec" => IdFormat::Decimal,
        "hex-in-receipt-dec-in-resp" => IdFormat::HexInReceiptDecimalInResp,
        "dec-in-receipt-hex-in-resp" => IdFormat::DecimalInReceiptHexInResp,
        _ => return Err(format!("`{text}`: unknown id format")),
    })
}

pub fn run(command: BenchCommand) -> i32 {
    match command {
        BenchCommand::Smpp(args) => run_smpp(args),
        BenchCommand::Store(args) => super::bench_store::run(args),
        BenchCommand::Http(args) => run_http(args),
    }
}

fn run_http(args: HttpArgs) -> i32 {
    let json = args.json;
    let config = crate::bench::http::HttpBenchConfig {
        target: args.target,
        api_key: args.api_key,
        connections: args.connections,
        duration_s: args.duration_s,
        body: args.body,
        cores: args.cores,
    };
    match crate::bench::http::run(config) {
        Ok(report) if json => match serde_json::to_string(&report) {
            Ok(text) => {
                println!("{text}");
                0
            }
            Err(e) => {
                eprintln!("tern bench http: {e}");
                1
            }
        },
        Ok(report) => {
            println!("{report}");
            0
        }
        Err(e) => {
            eprintln!("tern bench http: {e}");
            1
        }
    }
}

fn run_smpp(args: SmppArgs) -> i32 {
    let json = args.json;
    let config = BenchConfig {
        target: args.target,
        system_id: args.system_id,
        password: args.password,
        binds: args.binds,
        window: args.window,
        count: args.count,
        duration_s: args.duration_s,
        rate_per_s: args.rate,
        dlr: args.dlr,
        dlr_wait_s: args.dlr_wait_s,
        text: args.text,
        source: args.source,
        destination: args.destination,
        cores: args.cores,
        timeout_ms: args.timeout_ms,
        id_format: args.id_format,
        progress: true,
        bind_as: args.bind_as,
        expect_receipts: args.expect_receipts,
    };
    match crate::bench::smpp::run(config) {
        Ok(report) => {
            if json {
                match serde_json::to_string(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("tern bench smpp: {e}");
                        return 1;
                    }
                }
            } else {
                println!("{report}");
            }
            0
        }
        Err(e) => {
            eprintln!("tern bench smpp: {e}");
            1
        }
    }
}
