//! DLR and MO webhooks: deliveries owed to an account with a `webhook_url`
//! go out as signed JSON over HTTP POST instead of an SMPP deliver_sm.
//!
//! Owns: what a webhook carries ([`prepare`], copied out of the store on the
//! store thread by `delivery::load`), the JSON bodies, their signature, the
//! retry policy (exponential backoff with jitter, no giving up), the TLS
//! client settings ([`tls_config`]: built once at start from the built-in
//! web roots plus the operator's `webhook.ca_file`), and the node's webhook
//! [`Sender`]: it runs on the delivery hub's core, keeps at most
//! [`MAX_IN_FLIGHT`] requests open, and reuses keep-alive connections per
//! origin (scheme, host, port) (hyper's HTTP/1.1 client over glommio,
//! `crate::http::rt`, through rustls for `https://`).
//! Must not touch: the store (a 2xx goes back to the hub as
//! `HubEvent::Acked`, and the hub commits `DlrDelivered` / `MoDelivered`
//! exactly as for SMPP), SMPP sessions, or the HTTP server.
//!
//! At-least-once: a delivery is cleared only by the commit after a 2xx. A
//! crash between the 2xx and the commit, a failed commit or a response lost
//! on the way all send the same body again; receivers deduplicate on
//! `type` + `message_id`.
//!
//! Signature: `X-Tern-Signature: sha256=<hex HMAC-SHA256("<ts>.<body>")>`
//! keyed with the account's `webhook_secret`, `<ts>` being the
//! `X-Tern-Timestamp` header (unix seconds) of the same request, so a
//! receiver can refuse replays of old requests.
//!
//! `http://` and `https://` URLs. TLS always verifies the receiver's
//! certificate against the web roots (and the operator's CA bundle, for
//! private CAs) with SNI set to the URL's host; there is no switch to skip
//! that, so a receiver with a self-signed certificate needs its CA in
//! `webhook.ca_file`.
//!
//! "Retried until a 2xx" is bounded twice. In memory: the hub keeps at most
//! `delivery::MAX_WEBHOOKS_IN_HAND` webhook deliveries (apart from SMPP's
//! budget, so a dead receiver cannot stall deliver_sm); the rest wait in the
//! store. In time: a delivery lives as long as its message. When retention
//! purges a message (or an MO) whose webhook is still owed, the store drops
//! the delivery with it (counted in the store's `purged_deliveries`); before
//! each retry the hub asks the store whether the delivery is still owed
//! here ([`Sender::take_due`]), and one that is not is dropped, logged once
//! and counted (`tern_webhook_dropped_total`) instead of being sent again.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_lite::future::or;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use rand::Rng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::Serialize;
use sha2::Sha256;

use super::delivery::{DeliveryLink, HubEvent};
use crate::http::rt::HyperIo;
use crate::smpp::pdu::ESM_UDHI;
use crate::smpp::receipt::MessageState;
use crate::smpp::text::{self, DataCoding, DefaultAlphabet};
use crate::store::command::{MoReceived, SegmentInfo};
use crate::store::id::MessageId;
use crate::store::state::{AppState, DeliveryKind, PendingDelivery};

/// Webhook requests this node has open at once; more wait in the sender.
pub const MAX_IN_FLIGHT: usize = 256;
/// One attempt (resolve, connect, request, response) ends after this.
pub const ATTEMPT_TIMEOUT_MS: u64 = 10_000;
/// First retry delay; doubled per attempt up to [`RETRY_MAX_MS`].
pub const RETRY_BASE_MS: u64 = 1_000;
/// Longest wait between two attempts: a receiver down for hours is asked
/// every few minutes, never given up on while the store owes the delivery
/// (see the module header for what bounds that).
pub const RETRY_MAX_MS: u64 = 300_000;
/// Idle keep-alive connections kept per origin.
const IDLE_PER_ORIGIN: usize = 8;
/// Origins with idle connections kept; a new origin beyond it is served
/// without keeping its connection.
const MAX_ORIGINS: usize = 64;
/// Response bodies are read (for keep-alive) up to this and then dropped.
const MAX_RESPONSE_BODY_BYTES: usize = 64 * 1024;
/// Addresses of a webhook host tried in turn before an attempt fails.
const MAX_ADDRESSES_TRIED: usize = 4;
/// Longest webhook URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// Certificates taken from `webhook.ca_file` at most (a CA bundle is a few
/// hundred; this bounds what a wrong file can make us hold).
const MAX_CA_CERTIFICATES: usize = 4096;

pub const TIMESTAMP_HEADER: &str = "x-tern-timestamp";
pub const SIGNATURE_HEADER: &str = "x-tern-signature";

type HmacSha256 = Hmac<Sha256>;

/// Where an account's webhooks go and the key they are signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub secret: Option<String>,
}

/// What a DLR webhook reports, copied from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlrFacts {
    /// The original message's sender and recipient (not swapped as in a
    /// deliver_sm receipt).
    pub from: String,
    pub to: String,
    pub client_ref: Option<String>,
    /// SMPP message_state code.
    pub message_state: u8,
    pub error_code: u16,
    pub connector: Option<String>,
    pub operator_id: Option<String>,
    pub accepted_at_ms: u64,
    pub submitted_at_ms: Option<u64>,
    pub done_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Facts {
    Dlr(DlrFacts),
    Mo(MoReceived),
}

/// A webhook delivery as loaded from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub target: Target,
    pub facts: Facts,
}

/// Whether `account`'s deliveries go out by webhook (on the store thread).
pub fn takes_webhooks(state: &AppState, account: &str) -> bool {
    state
        .account(account)
        .is_some_and(|a| a.webhook_url.is_some())
}

/// The webhook for delivery `id` when its account has a webhook URL (on the
/// store thread); `None` sends it the SMPP way.
pub fn prepare(state: &AppState, id: MessageId, pending: &PendingDelivery) -> Option<Prepared> {
    let account = state.account(&pending.account)?;
    let url = account.webhook_url.as_ref()?;
    let facts = match pending.kind {
        DeliveryKind::Dlr => {
            let message = state.message(&id)?;
            let accept = &message.accept;
            let upstream = message.upstreams.last();
            Facts::Dlr(DlrFacts {
                from: accept.source.digits.clone(),
                to: accept.destination.digits.clone(),
                client_ref: accept.client_ref.clone(),
                message_state: message.state.receipt_code(),
                error_code: message.receipt_err,
                connector: upstream.map(|u| u.connector.clone()),
                operator_id: upstream.map(|u| u.upstream_id.clone()),
                accepted_at_ms: accept.received_at_ms,
                submitted_at_ms: upstream.map(|u| u.submitted_at_ms),
                done_at_ms: message.done_at_ms,
            })
        }
        DeliveryKind::Mo => Facts::Mo(state.mo(&id)?.mo.clone()),
    };
    Some(Prepared {
        target: Target {
            url: url.clone(),
            secret: account.webhook_secret.clone(),
        },
        facts,
    })
}

#[derive(Serialize)]
struct DlrBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message_id: String,
    account: &'a str,
    client_ref: Option<&'a str>,
    status: &'a str,
    message_state: u8,
    error_code: u16,
    from: &'a str,
    to: &'a str,
    connector: Option<&'a str>,
    operator_id: Option<&'a str>,
    accepted_at_ms: u64,
    submitted_at_ms: Option<u64>,
    done_at_ms: Option<u64>,
}

#[derive(Serialize)]
struct SegmentBody {
    reference: u16,
    total: u8,
    sequence: u8,
}

#[derive(Serialize)]
struct MoBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message_id: String,
    account: &'a str,
    from: &'a str,
    to: &'a str,
    connector: &'a str,
    data_coding: u8,
    /// The decoded text, or `None` when the coding is binary or unknown.
    text: Option<String>,
    /// The payload as received (UDH included) when there is no text.
    payload_hex: Option<String>,
    segment: Option<SegmentBody>,
    received_at_ms: u64,
}

/// The text of an MO without its UDH, if its coding is a text coding.
fn mo_text(mo: &MoReceived) -> Option<String> {
    let body = if mo.esm_class & ESM_UDHI != 0 {
        let udh_len = usize::from(*mo.payload.first()?) + 1;
        mo.payload.get(udh_len..)?
    } else {
        &mo.payload
    };
    let coding = DataCoding::from_smpp(mo.data_coding, DefaultAlphabet::Gsm7).ok()?;
    text::decode(coding, body).ok()
}

/// The JSON body of a webhook.
pub fn body(id: MessageId, account: &str, facts: &Facts) -> Vec<u8> {
    let encoded = match facts {
        Facts::Dlr(dlr) => {
            let state = MessageState::from_message_state(dlr.message_state)
                .unwrap_or(MessageState::Unknown);
            serde_json::to_vec(&DlrBody {
                kind: "dlr",
                message_id: id.to_string(),
                account,
                client_ref: dlr.client_ref.as_deref(),
                status: state.stat_text(),
                message_state: dlr.message_state,
                error_code: dlr.error_code,
                from: &dlr.from,
                to: &dlr.to,
                connector: dlr.connector.as_deref(),
                operator_id: dlr.operator_id.as_deref(),
                accepted_at_ms: dlr.accepted_at_ms,
                submitted_at_ms: dlr.submitted_at_ms,
                done_at_ms: dlr.done_at_ms,
            })
        }
        Facts::Mo(mo) => {
            let text = mo_text(mo);
            let payload_hex = text.is_none().then(|| hex::encode(&mo.payload));
            serde_json::to_vec(&MoBody {
                kind: "mo",
                message_id: mo.id.to_string(),
                account,
                from: &mo.source.digits,
                to: &mo.destination.digits,
                connector: &mo.connector,
                data_coding: mo.data_coding,
                text,
                payload_hex,
                segment: mo.segment.map(
                    |SegmentInfo {
                         reference,
                         total,
                         sequence,
                     }| SegmentBody {
                        reference,
                        total,
                        sequence,
                    },
                ),
                received_at_ms: mo.received_at_ms,
            })
        }
    };
    // Plain structs of strings and numbers always serialize.
    encoded.unwrap_or_else(|e| unreachable!("a webhook body serializes: {e}"))
}

/// `sha256=<hex>` of HMAC-SHA256 over `"<timestamp_s>.<body>"`.
pub fn signature(secret: &[u8], timestamp_s: u64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC-SHA256 accepts keys of every length"));
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait before attempt `attempts + 1`: the exponential ceiling, with
/// "equal jitter" (a uniform pick in its upper half, from `random`) so
/// deliveries that failed together do not all come back together.
pub fn retry_delay_ms(attempts: u32, random: u64) -> u64 {
    let doublings = attempts.saturating_sub(1).min(20);
    let ceiling = RETRY_BASE_MS
        .saturating_mul(1 << doublings)
        .min(RETRY_MAX_MS);
    let floor = ceiling / 2;
    floor + random % (ceiling - floor + 1)
}

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL: {0}")]
    Syntax(String),
    #[error("longer than {MAX_URL_BYTES} bytes")]
    TooLong,
    #[error("only http:// and https:// URLs are supported")]
    Scheme,
    #[error("user information in the URL is not supported; sign with webhook_secret instead")]
    UserInfo,
    #[error("no host")]
    NoHost,
}

/// How a webhook travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    /// HTTP/1.1 over TLS (rustls), the certificate verified for the host.
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Where one webhook URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// Host without IPv6 brackets; also the TLS server name.
    pub host: String,
    pub port: u16,
    /// The `Host` header value.
    pub authority: String,
    pub path_and_query: String,
}

/// Parses and checks a webhook URL.
pub fn parse_url(url: &str) -> Result<Endpoint, UrlError> {
    if url.len() > MAX_URL_BYTES {
        return Err(UrlError::TooLong);
    }
    let uri: hyper::Uri = url.parse().map_err(|e| UrlError::Syntax(format!("{e}")))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => return Err(UrlError::Scheme),
    };
    let authority = uri.authority().ok_or(UrlError::NoHost)?;
    if authority.as_str().contains('@') {
        return Err(UrlError::UserInfo);
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    Ok(Endpoint {
        scheme,
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(scheme.default_port()),
        authority: authority.as_str().to_string(),
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
    })
}

/// The configuration's check of an account's `webhook_url`.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ()).map_err(|e| e.to_string())
}

/// The node's TLS client settings for `https://` webhooks: the built-in web
/// roots, plus every certificate of the PEM bundle `ca_file` when given (for
/// receivers under a private CA). Built once at start; an unreadable file, one
/// without certificates or with a certificate rustls refuses is an error
/// (the caller names the configuration key).
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let shown = path.display();
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let mut added = 0usize;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate =
                certificate.map_err(|e| format!("{shown}: not a PEM certificate bundle: {e}"))?;
            if added >= MAX_CA_CERTIFICATES {
                return Err(format!(
                    "{shown}: more than {MAX_CA_CERTIFICATES} certificates"
                ));
            }
            roots
                .add(certificate)
                .map_err(|e| format!("{shown}: certificate {}: {e}", added + 1))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "{shown}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)"
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One webhook delivery in the sender's hands.
#[derive(Debug)]
pub struct Job {
    pub id: MessageId,
    pub kind: DeliveryKind,
    pub account: String,
    pub target: Target,
    /// Serialized once; every attempt sends the same bytes.
    pub body: Bytes,
    /// Attempts so far.
    pub attempts: u32,
}

impl Job {
    pub fn new(id: MessageId, kind: DeliveryKind, account: String, prepared: Prepared) -> Job {
        let body = Bytes::from(body(id, &account, &prepared.facts));
        Job {
            id,
            kind,
            account,
            target: prepared.target,
            body,
            attempts: 0,
        }
    }
}

/// Why an attempt did not get a 2xx.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Url(#[from] UrlError),
    #[error("cannot resolve the host: {0}")]
    Resolve(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no answer within {ATTEMPT_TIMEOUT_MS} ms")]
    Timeout,
    #[error("answered {0}")]
    Status(u16),
}

type Connection = SendRequest<Full<Bytes>>;

/// Where a keep-alive connection leads: a plain and a TLS connection to
/// the same host and port are different origins.
type Origin = (Scheme, String, u16);

/// Idle keep-alive connections by origin.
#[derive(Default)]
struct Pool {
    idle: HashMap<Origin, Vec<Connection>>,
}

impl Pool {
    fn take(&mut self, origin: &Origin) -> Option<Connection> {
        let list = self.idle.get_mut(origin)?;
        while let Some(connection) = list.pop() {
            if connection.is_ready() && !connection.is_closed() {
                return Some(connection);
            }
        }
        self.idle.remove(origin);
        None
    }

    fn put(&mut self, origin: Origin, connection: Connection) {
        if !self.idle.contains_key(&origin) && self.idle.len() >= MAX_ORIGINS {
            // Drop the least useful: any origin with nothing idle, else this one.
            self.idle.retain(|_, list| !list.is_empty());
            if self.idle.len() >= MAX_ORIGINS {
                return;
            }
        }
        let list = self.idle.entry(origin).or_default();
        if list.len() < IDLE_PER_ORIGIN {
            list.push(connection);
        }
    }
}

/// The host's addresses in the resolver's order, at most
/// [`MAX_ADDRESSES_TRIED`] of them.
async fn resolve(endpoint: &Endpoint) -> Result<Vec<SocketAddr>, AttemptError> {
    if let Ok(ip) = endpoint.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, endpoint.port)]);
    }
    // getaddrinfo blocks: off the reactor, on glommio's blocking pool.
    let name = (endpoint.host.clone(), endpoint.port);
    let addrs = glommio::executor()
        .spawn_blocking(move || {
            name.to_socket_addrs()
                .map(|addrs| addrs.take(MAX_ADDRESSES_TRIED).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(AttemptError::Resolve)?;
    if addrs.is_empty() {
        return Err(AttemptError::Resolve("no address".into()));
    }
    Ok(addrs)
}

/// A TCP connection to the first of the host's addresses that accepts
/// ("localhost" may resolve to ::1 first while the receiver listens on
/// 127.0.0.1 only).
async fn connect_tcp(endpoint: &Endpoint) -> Result<glommio::net::TcpStream, AttemptError> {
    let mut last_error = None;
    for addr in resolve(endpoint).await? {
        match glommio::net::TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(e.into()),
        }
    }
    Err(AttemptError::Connect(last_error.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
    })))
}

async fn connect(endpoint: &Endpoint, tls: &Arc<ClientConfig>) -> Result<Connection, AttemptError> {
    let stream = connect_tcp(endpoint).await?;
    // Small requests: send each at once.
    let _ = stream.set_nodelay(true);
    match endpoint.scheme {
        Scheme::Http => http1_over(stream).await,
        Scheme::Https => {
            // An IP literal becomes an IP server name (checked against the
            // certificate's IP SANs), anything else a DNS name (SNI).
            let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                AttemptError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
            let stream = futures_rustls::TlsConnector::from(Arc::clone(tls))
                .connect(name, stream)
                .await
                .map_err(AttemptError::Tls)?;
            http1_over(stream).await
        }
    }
}

/// An HTTP/1.1 client connection over `stream`, driven by a task of its own.
async fn http1_over<S>(stream: S) -> Result<Connection, AttemptError>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(HyperIo::new(stream)).await?;
    glommio::spawn_local(async move {
        if let Err(e) = connection.await {
            tracing::debug!("webhook connection ended: {e}");
        }
    })
    .detach();
    Ok(sender)
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One POST; `Ok` only for a 2xx.
async fn attempt(
    pool: &RefCell<Pool>,
    tls: &Arc<ClientConfig>,
    job: &Job,
) -> Result<(), AttemptError> {
    let endpoint = parse_url(&job.target.url)?;
    let origin = (endpoint.scheme, endpoint.host.clone(), endpoint.port);
    let timestamp_s = unix_now_s();
    let mut request = hyper::Request::post(endpoint.path_and_query.as_str())
        .header(hyper::header::HOST, endpoint.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "tern-webhook/1")
        .header(TIMESTAMP_HEADER, timestamp_s);
    if let Some(secret) = &job.target.secret {
        request = request.header(
            SIGNATURE_HEADER,
            signature(secret.as_bytes(), timestamp_s, &job.body),
        );
    }
    let request = request.body(Full::new(job.body.clone()))?;
    // Not held across an await: the pool is shared by this core's attempts.
    let reused = pool.borrow_mut().take(&origin);
    let mut connection = match reused {
        Some(connection) => connection,
        None => connect(&endpoint, tls).await?,
    };
    let response = connection.send_request(request).await?;
    let status = response.status();
    // Read the body (bounded) so the connection can carry the next request.
    let drained = Limited::new(response.into_body(), MAX_RESPONSE_BODY_BYTES)
        .collect()
        .await
        .is_ok();
    if drained && !connection.is_closed() {
        pool.borrow_mut().put(origin, connection);
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(AttemptError::Status(status.as_u16()))
    }
}

/// What a finished attempt reports to the sender.
enum Outcome {
    Delivered,
    Failed(Job),
}

/// The node's webhook sender, owned by the delivery hub on its core.
pub struct Sender {
    link: DeliveryLink,
    tls: Arc<ClientConfig>,
    ready: VecDeque<Job>,
    retrying: BTreeMap<(u64, MessageId), Job>,
    /// Retries that came due, until the hub has checked they are still owed.
    due: Vec<Job>,
    in_flight: usize,
    done_tx: flume::Sender<Outcome>,
    done_rx: flume::Receiver<Outcome>,
    pool: Rc<RefCell<Pool>>,
    started: Instant,
}

impl Sender {
    pub fn new(link: DeliveryLink, tls: Arc<ClientConfig>) -> Sender {
        // Every attempt in flight reports once: the channel never fills.
        let (done_tx, done_rx) = flume::bounded(MAX_IN_FLIGHT);
        Sender {
            link,
            tls,
            ready: VecDeque::new(),
            retrying: BTreeMap::new(),
            due: Vec::new(),
            in_flight: 0,
            done_tx,
            done_rx,
            pool: Rc::new(RefCell::new(Pool::default())),
            started: Instant::now(),
        }
    }

    /// Deliveries in hand (ready, sending, waiting for a retry or a check).
    pub fn len(&self) -> usize {
        self.ready.len() + self.retrying.len() + self.due.len() + self.in_flight
    }

    /// Retries that came due, for the hub to check with the store; each goes
    /// back by [`Sender::push`] if still owed, or is let go.
    pub fn take_due(&mut self) -> Vec<Job> {
        std::mem::take(&mut self.due)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, job: Job) {
        self.ready.push_back(job);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes finished attempts, moves due retries to the check
    /// ([`Sender::take_due`]) and starts sends up to the in-flight bound.
    /// Called by the hub on every turn of its loop.
    pub fn poll(&mut self) {
        while let Ok(outcome) = self.done_rx.try_recv() {
            debug_assert!(self.in_flight > 0, "an outcome without an attempt");
            self.in_flight = self.in_flight.saturating_sub(1);
            if let Outcome::Failed(job) = outcome {
                let delay_ms = retry_delay_ms(job.attempts, rand::thread_rng().gen());
                let due_ms = self.now_ms().saturating_add(delay_ms);
                self.retrying.insert((due_ms, job.id), job);
            }
        }
        self.release_due(self.now_ms());
        while self.in_flight < MAX_IN_FLIGHT {
            let Some(job) = self.ready.pop_front() else {
                break;
            };
            self.in_flight += 1;
            self.spawn(job);
        }
    }

    fn release_due(&mut self, now_ms: u64) {
        while let Some(entry) = self.retrying.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            self.due.push(entry.remove());
        }
    }

    fn spawn(&self, mut job: Job) {
        let pool = Rc::clone(&self.pool);
        let tls = Arc::clone(&self.tls);
        let link = self.link.clone();
        let done = self.done_tx.clone();
        glommio::spawn_local(async move {
            job.attempts = job.attempts.saturating_add(1);
            crate::metrics::webhook_attempt();
            let result = or(async { Some(attempt(&pool, &tls, &job).await) }, async {
                glommio::timer::sleep(Duration::from_millis(ATTEMPT_TIMEOUT_MS)).await;
                None
            })
            .await
            .unwrap_or(Err(AttemptError::Timeout));
            let outcome = match result {
                Ok(()) => {
                    crate::metrics::webhook_succeeded(&job.account, job.kind);
                    link.send(HubEvent::Acked {
                        id: job.id,
                        kind: job.kind,
                    })
                    .await;
                    Outcome::Delivered
                }
                Err(e) => {
                    crate::metrics::webhook_failed();
                    tracing::debug!(id = %job.id, attempts = job.attempts, "webhook not accepted: {e}");
                    Outcome::Failed(job)
                }
            };
            let _ = done.send_async(outcome).await;
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::command::Address;

    fn id() -> MessageId {
        MessageId::from_parts(3, 1, 0, 42).unwrap()
    }

    fn dlr() -> DlrFacts {
        DlrFacts {
            from: "TERN".into(),
            to: "447700900123".into(),
            client_ref: Some("order-17".into()),
            message_state: 2,
            error_code: 0,
            connector: Some("op".into()),
            operator_id: Some("u1".into()),
            accepted_at_ms: 1_000,
            submitted_at_ms: Some(2_000),
            done_at_ms: Some(3_000),
        }
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn signature_matches_a_known_answer() {
        // Computed independently: Python's hmac.new(b"s3cret",
        // b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"s3cret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
        assert_ne!(
            signature(b"s3cret", 1_700_000_001, br#"{"a":1}"#),
            signature(b"s3cret", 1_700_000_000, br#"{"a":1}"#),
            "the timestamp is signed"
        );
    }

    #[test]
    fn dlr_body_has_every_field() {
        let value = json(&body(id(), "acme", &Facts::Dlr(dlr())));
        assert_eq!(value["type"], "dlr");
        assert_eq!(value["message_id"], id().to_string());
        assert_eq!(value["account"], "acme");
        assert_eq!(value["client_ref"], "order-17");
        assert_eq!(value["status"], "DELIVRD");
        assert_eq!(value["message_state"], 2);
        assert_eq!(value["error_code"], 0);
        assert_eq!(value["from"], "TERN");
        assert_eq!(value["to"], "447700900123");
        assert_eq!(value["connector"], "op");
        assert_eq!(value["operator_id"], "u1");
        assert_eq!(value["accepted_at_ms"], 1_000);
        assert_eq!(value["submitted_at_ms"], 2_000);
        assert_eq!(value["done_at_ms"], 3_000);

        let mut failed = dlr();
        failed.message_state = 5;
        failed.error_code = 11;
        failed.client_ref = None;
        failed.connector = None;
        let value = json(&body(id(), "acme", &Facts::Dlr(failed)));
        assert_eq!(value["status"], "UNDELIV");
        assert_eq!(value["error_code"], 11);
        assert!(value["client_ref"].is_null());
        assert!(value["connector"].is_null());
    }

    #[test]
    fn mo_body_decodes_text_or_gives_hex() {
        let mut mo = MoReceived {
            id: id(),
            connector: "op".into(),
            source: Address {
                ton: 1,
                npi: 1,
                digits: "447700900999".into(),
            },
            destination: Address {
                ton: 1,
                npi: 1,
                digits: "44800123".into(),
            },
            data_coding: 8,
            esm_class: 0,
            payload: vec![0, b'o', 0, b'k', 0x04, 0x1F],
            segment: None,
            received_at_ms: 5_000,
        };
        let value = json(&body(id(), "acme", &Facts::Mo(mo.clone())));
        assert_eq!(value["type"], "mo");
        assert_eq!(value["from"], "447700900999");
        assert_eq!(value["to"], "44800123");
        assert_eq!(value["text"], "ok\u{041F}");
        assert!(value["payload_hex"].is_null());
        assert_eq!(value["received_at_ms"], 5_000);

        // A UDH is left out of the text; the segment says which part it is.
        mo.data_coding = 0;
        mo.esm_class = ESM_UDHI;
        mo.payload = vec![5, 0, 3, 9, 2, 1, b'h', b'i'];
        mo.segment = Some(SegmentInfo {
            reference: 9,
            total: 2,
            sequence: 1,
        });
        let value = json(&body(id(), "acme", &Facts::Mo(mo.clone())));
        assert_eq!(value["text"], "hi");
        assert_eq!(value["segment"]["total"], 2);

        mo.data_coding = 4;
        mo.esm_class = 0;
        mo.payload = vec![0xde, 0xad];
        let value = json(&body(id(), "acme", &Facts::Mo(mo)));
        assert!(value["text"].is_null());
        assert_eq!(value["payload_hex"], "dead");
    }

    #[test]
    fn backoff_doubles_within_jitter_bounds_and_is_capped() {
        for (attempts, ceiling) in [(1, 1_000), (2, 2_000), (4, 8_000), (40, RETRY_MAX_MS)] {
            for random in [0, 1, 499, 500, 501, u64::MAX] {
                let delay = retry_delay_ms(attempts, random);
                assert!(
                    (ceiling / 2..=ceiling).contains(&delay),
                    "{attempts} attempts, random {random}: {delay}"
                );
            }
        }
        assert_eq!(retry_delay_ms(1, 0), 500);
        assert_eq!(retry_delay_ms(1, 500), 1_000);
        assert_eq!(
            retry_delay_ms(u32::MAX, u64::MAX),
            retry_delay_ms(30, u64::MAX)
        );
        assert!(retry_delay_ms(u32::MAX, u64::MAX) <= RETRY_MAX_MS);
    }

    #[test]
    fn urls_are_parsed_for_both_schemes() {
        let endpoint = parse_url("http://127.0.0.1:8080/hooks/dlr?x=1").unwrap();
        assert_eq!(endpoint.scheme, Scheme::Http);
        assert_eq!(endpoint.host, "127.0.0.1");
        assert_eq!(endpoint.port, 8080);
        assert_eq!(endpoint.authority, "127.0.0.1:8080");
        assert_eq!(endpoint.path_and_query, "/hooks/dlr?x=1");
        let endpoint = parse_url("http://hooks.example").unwrap();
        assert_eq!((endpoint.port, endpoint.path_and_query.as_str()), (80, "/"));
        assert_eq!(parse_url("http://[::1]:9/h").unwrap().host, "::1");
        let endpoint = parse_url("https://hooks.example/dlr").unwrap();
        assert_eq!(endpoint.scheme, Scheme::Https);
        assert_eq!(endpoint.port, 443, "https defaults to 443");
        assert_eq!(endpoint.authority, "hooks.example");
        assert_eq!(endpoint.path_and_query, "/dlr");
        let endpoint = parse_url("https://localhost:8443").unwrap();
        assert_eq!((endpoint.scheme, endpoint.port), (Scheme::Https, 8443));
        assert_eq!(endpoint.path_and_query, "/");
        assert!(check_url("https://hooks.example/").is_ok());
        assert_eq!(parse_url("ftp://hooks.example/"), Err(UrlError::Scheme));
        assert_eq!(
            parse_url("https://u:p@hooks.example/"),
            Err(UrlError::UserInfo)
        );
        assert_eq!(
            parse_url("http://u:p@hooks.example/"),
            Err(UrlError::UserInfo)
        );
        assert!(parse_url("not a url").is_err());
        assert_eq!(
            parse_url(&format!("http://h/{}", "a".repeat(MAX_URL_BYTES))),
            Err(UrlError::TooLong)
        );
        assert!(check_url("ws://x/").unwrap_err().contains("https://"));
    }

    #[test]
    fn tls_config_takes_a_pem_bundle_and_names_a_bad_one() {
        let built_in = tls_config(None).unwrap();
        assert_eq!(built_in.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = tls_config(Some(&missing)).unwrap_err();
        assert!(
            e.contains("cannot read") && e.contains("missing.pem"),
            "{e}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let e = tls_config(Some(&empty)).unwrap_err();
        assert!(
            e.contains("no certificate") && e.contains("empty.pem"),
            "{e}"
        );

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(tls_config(Some(&broken)).is_err(), "not a certificate");

        let ca = rcgen::generate_simple_self_signed(vec!["tern-test-ca".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert!(tls_config(Some(&good)).is_ok());
    }

    #[test]
    fn due_retries_wait_for_the_check_before_going_out() {
        let (link, _inbox) = crate::engine::delivery::DeliveryLink::new();
        let mut sender = Sender::new(link, tls_config(None).unwrap());
        let prepared = Prepared {
            target: Target {
                url: "https://hooks.example/".into(),
                secret: None,
            },
            facts: Facts::Dlr(dlr()),
        };
        let mut job = Job::new(id(), DeliveryKind::Dlr, "acme".into(), prepared);
        job.attempts = 3;
        sender.retrying.insert((1_000, job.id), job);
        sender.release_due(999);
        assert!(sender.take_due().is_empty(), "not due yet");
        sender.release_due(1_000);
        assert_eq!(sender.len(), 1, "a due retry is still in hand");
        let due = sender.take_due();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].attempts, 3);
        assert!(sender.ready.is_empty(), "not sent before the check");
        assert!(sender.is_empty(), "taken out for the check");
    }
}
