//! The customer API: `POST /v1/messages`, `GET /v1/messages/{id}` and the
//! OpenAPI document at `GET /v1/openapi.json`.
//!
//! Owns: API-key authentication (bearer token against `Account.api_key_hash`,
//! with a per-core cache of key digest → account), the JSON request and
//! response shapes, turning a request into one `AcceptBatch` (encoding
//! choice and segmentation with concatenation UDH, one message per recipient
//! per segment), the same address and flag validation, sender allow-list and
//! per-account throttle as SMPP, idempotency keys, and answering only after
//! the batch committed. Must not touch: listeners and routing (parent
//! module), the store's internals (only `StoreHandle`), SMPP sessions.
//!
//! Why a cache: an API key is checked with the same salted hash as SMPP
//! passwords, so finding the account of a key means trying every account's
//! hash. The cache keeps a key's SHA-256 digest (never the key) → account on
//! this core. An account written or removed on this node drops its entries
//! on every core before the next request looks (the shard's account
//! changes, see `Shard::take_account_changes`), so a removed or disabled
//! account or a rotated key is refused as soon as the change is applied
//! here. As a backstop an entry is also re-read from the store once it is
//! older than [`ACCOUNT_RECHECK_MS`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{json_error, json_response, not_found, read_body, rfc3339, HttpContext, HttpResponse};
use crate::engine::auth;
use crate::engine::throttle::{per_core_rate, TokenBucket};
use crate::metrics::Histogram;
use crate::smpp::pdu::{self, SubmitSm};
use crate::smpp::segment::{self, Carriage, ConcatReference};
use crate::smpp::text::{DataCoding, DefaultAlphabet, Encoding};
use crate::store::command::{
    Accept, AcceptBatch, Account, Address, Command, SegmentInfo, MAX_CLIENT_REF_BYTES,
    MAX_IDEMPOTENCY_KEY_BYTES,
};
use crate::store::driver::{AccountChange, ProposeError};
use crate::store::id::MessageId;
use crate::store::state::{ApplyOutcome, Message, MessageState, RejectReason};

/// The OpenAPI 3 description of this API, served as is.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");
/// Most recipients one request may name.
pub const MAX_RECIPIENTS: usize = 100;
/// A cached key → account match is re-read from the store after this long.
pub const ACCOUNT_RECHECK_MS: u64 = 2_000;
/// Keys remembered per core; the cache starts over when full.
const KEY_CACHE_CAPACITY: usize = 4_096;
/// Accounts with a throttle bucket per core; buckets start over when full.
const BUCKET_CAPACITY: usize = 4_096;
/// A lookup or account read waits this long for the store.
const STORE_READ_TIMEOUT_MS: u64 = 5_000;
/// Longest `validity_s` accepted (the SMPP relative form's limit is 99 years;
/// an SMS is useless long before).
const MAX_VALIDITY_S: u64 = 30 * 86_400;
/// esm_class bit: short_message starts with a user data header.
const ESM_CLASS_UDHI: u8 = 0x40;
const TON_INTERNATIONAL: u8 = 1;
const TON_NETWORK_SPECIFIC: u8 = 3;
const TON_ALPHANUMERIC: u8 = 5;
const NPI_UNKNOWN: u8 = 0;
const NPI_E164: u8 = 1;
/// Numeric senders up to this many digits are short codes, longer ones E.164.
const MAX_SHORT_CODE_DIGITS: usize = 8;

/// One core's API state: the key cache, throttle buckets, UDH references.
pub struct ApiState {
    cores: usize,
    keys: RefCell<HashMap<[u8; 32], CachedKey>>,
    buckets: RefCell<HashMap<String, TokenBucket>>,
    next_concat_reference: Cell<u8>,
    /// Bumped whenever entries are forgotten: a lookup that read the store
    /// before a change must not cache what it read.
    forgotten: Cell<u64>,
}

#[derive(Clone)]
struct CachedKey {
    account: Rc<Account>,
    checked_at_ms: u64,
}

impl ApiState {
    pub fn new(cores: usize) -> ApiState {
        ApiState {
            cores,
            keys: RefCell::new(HashMap::new()),
            buckets: RefCell::new(HashMap::new()),
            next_concat_reference: Cell::new(rand::random()),
            forgotten: Cell::new(0),
        }
    }

    /// Drops what this core cached about the changed account(s).
    pub fn forget(&self, change: &AccountChange) {
        self.forgotten.set(self.forgotten.get().wrapping_add(1));
        let mut keys = self.keys.borrow_mut();
        match change {
            AccountChange::All => keys.clear(),
            AccountChange::Account(name) => keys.retain(|_, cached| cached.account.name != *name),
        }
    }

    /// Takes `count` tokens from the account's bucket on this core (capped at
    /// one second's worth, so a large request needs a full bucket instead of
    /// never passing); false when throttled.
    fn try_take(&self, account: &Account, count: usize, now_ms: u64) -> bool {
        let Some(rate) = per_core_rate(account.throughput_per_s, self.cores) else {
            return true;
        };
        let mut buckets = self.buckets.borrow_mut();
        if buckets.len() >= BUCKET_CAPACITY && !buckets.contains_key(&account.name) {
            buckets.clear();
        }
        let bucket = buckets
            .entry(account.name.clone())
            .or_insert_with(|| TokenBucket::new(rate, now_ms));
        if bucket.rate_per_s() != rate {
            bucket.set_rate(rate);
        }
        let needed = count.min(usize::try_from(rate).unwrap_or(usize::MAX));
        (0..needed).all(|_| bucket.try_take(now_ms))
    }

    fn concat_reference(&self) -> ConcatReference {
        let reference = self.next_concat_reference.get();
        self.next_concat_reference.set(reference.wrapping_add(1));
        ConcatReference::Eight(reference)
    }
}

// ---------------------------------------------------------------- requests

/// `POST /v1/messages` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    from: String,
    to: Recipients,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    payload_hex: Option<String>,
    #[serde(default)]
    data_coding: Option<u8>,
    #[serde(default)]
    validity_s: Option<u64>,
    #[serde(default)]
    valid_until: Option<String>,
    #[serde(default)]
    scheduled_at: Option<String>,
    #[serde(default)]
    dlr: bool,
    #[serde(default)]
    client_ref: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Recipients {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Serialize)]
struct SubmitResponse<'a> {
    messages: Vec<SubmittedMessage<'a>>,
    encoding: &'static str,
    segments: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ref: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct SubmittedMessage<'a> {
    id: String,
    to: &'a str,
    segment: usize,
    segments: usize,
}

/// `GET /v1/messages/{id}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    pub id: String,
    pub state: &'static str,
    pub from: String,
    pub to: String,
    pub client_ref: Option<String>,
    pub received_at: String,
    pub scheduled_at: Option<String>,
    pub valid_until: Option<String>,
    pub submitted_at: Option<String>,
    pub done_at: Option<String>,
    pub connector: Option<String>,
    pub operator_id: Option<String>,
    pub attempts: u32,
    pub error: Option<MessageError>,
    pub segment: Option<SegmentView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MessageError {
    /// The last SMPP command_status an operator answered (0 = none).
    pub submit_status: u32,
    /// The receipt's `err:` code (0 = none).
    pub receipt_error: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SegmentView {
    pub reference: u16,
    pub total: u8,
    pub sequence: u8,
}

/// A validated request, ready to become accepts.
struct Plan {
    source: Address,
    recipients: Vec<String>,
    destinations: Vec<Address>,
    data_coding: u8,
    encoding: Encoding,
    parts: Vec<segment::Segment>,
    registered_delivery: u8,
    validity_until_ms: Option<u64>,
    scheduled_at_ms: Option<u64>,
    client_ref: Option<String>,
}

/// Why a request's headers or content are refused, before it becomes the
/// JSON error answer (kept small: it travels in `Result`s).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn response(self) -> HttpResponse {
        json_error(self.status, self.code, &self.message)
    }
}

/// A refusal of the request's content: 422 with a field-specific message.
fn invalid(message: impl Into<String>) -> Refusal {
    Refusal {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "validation_failed",
        message: message.into(),
    }
}

// -------------------------------------------------------------- endpoints

/// `GET /v1/openapi.json`.
pub fn openapi() -> HttpResponse {
    let mut response = hyper::Response::new(http_body_util::Full::new(Bytes::from_static(
        OPENAPI_JSON.as_bytes(),
    )));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `POST /v1/messages`: validates, proposes one `AcceptBatch`, answers 201
/// once it committed (or the first answer again for a replayed key).
pub async fn submit(context: &HttpContext, request: Request<Incoming>) -> HttpResponse {
    let received_at = Instant::now();
    let account = match authenticate(context, &request).await {
        Ok(account) => account,
        Err(response) => return response,
    };
    let idempotency_key = match idempotency_key(&request) {
        Ok(key) => key,
        Err(refusal) => return refusal.response(),
    };
    let body = match read_body(context, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let parsed: SubmitRequest = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                &format!("the body is not a valid message request: {e}"),
            )
        }
    };
    let received_at_ms = unix_now_ms();
    let plan = match plan(context.api(), &account, parsed, received_at_ms) {
        Ok(plan) => plan,
        Err(refusal) => return refusal.response(),
    };
    let count = plan.recipients.len() * plan.parts.len();
    let shard = context.shard();
    if !context.api().try_take(&account, count, shard.now_ms()) {
        crate::metrics::submit_refused(
            &account.name,
            crate::smpp::status::CommandStatus::ESME_RTHROTTLED,
        );
        let mut response = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            &format!(
                "the account's limit of {} messages per second is reached",
                account.throughput_per_s
            ),
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    if !shard.try_reserve_in_flight() {
        return store_busy();
    }
    let outcome = propose(
        context,
        &account,
        &plan,
        idempotency_key,
        &body,
        received_at_ms,
    )
    .await;
    shard.release_in_flight();
    crate::metrics::observe_duration(Histogram::SubmitLatency, received_at.elapsed());
    let ids = match outcome {
        Ok(Proposed::Accepted(ids)) => {
            for _ in 0..ids.len() {
                crate::metrics::accepted(&account.name);
            }
            ids
        }
        Ok(Proposed::Replayed(ids)) => ids,
        Err(response) => return response,
    };
    created(&plan, &ids)
}

/// `GET /v1/messages/{id}`: the message if it belongs to the caller's account.
pub async fn lookup(context: &HttpContext, request: Request<Incoming>) -> HttpResponse {
    let account = match authenticate(context, &request).await {
        Ok(account) => account,
        Err(response) => return response,
    };
    let text = request
        .uri()
        .path()
        .strip_prefix("/v1/messages/")
        .unwrap_or_default();
    let Ok(id) = MessageId::parse(text) else {
        return not_found();
    };
    let name = account.name.clone();
    let read = context.store().query(move |state| {
        state
            .message(&id)
            .filter(|m| m.accept.account == name)
            .map(view_of)
    });
    match with_timeout(read).await {
        Some(Ok(Some(view))) => json_response(StatusCode::OK, &view),
        Some(Ok(None)) => match archived_message(context, &account.name, id).await {
            Some(view) => json_response(StatusCode::OK, &view),
            None => not_found(),
        },
        Some(Err(e)) => store_error(e),
        None => store_timeout(),
    }
}

/// A message that left the hot state (evicted or purged by retention), from
/// this node's archive; only its own account may read it. An archive that is
/// busy or absent answers as "not found": the archive is a lookup
/// convenience, not part of the no-loss guarantee.
pub async fn archived_message(
    context: &HttpContext,
    account: &str,
    id: MessageId,
) -> Option<MessageView> {
    let archived = context.store().archived(id).await.ok()??;
    if archived.account != account {
        return None;
    }
    let error = (archived.last_status != 0 || archived.receipt_err != 0).then_some(MessageError {
        submit_status: archived.last_status,
        receipt_error: archived.receipt_err,
    });
    Some(MessageView {
        id: archived.id.to_string(),
        state: state_name(archived.state),
        from: archived.source.digits,
        to: archived.destination.digits,
        client_ref: archived.client_ref,
        received_at: rfc3339::format_ms(archived.received_at_ms),
        scheduled_at: None,
        valid_until: archived.validity_until_ms.map(rfc3339::format_ms),
        submitted_at: archived.submitted_at_ms.map(rfc3339::format_ms),
        done_at: archived.done_at_ms.map(rfc3339::format_ms),
        connector: archived.connector,
        operator_id: archived.upstream_id,
        attempts: archived.attempts,
        error,
        segment: archived.segment.map(|s| SegmentView {
            reference: s.reference,
            total: s.total,
            sequence: s.sequence,
        }),
    })
}

// ------------------------------------------------------------ authentication

/// The account of the request's bearer API key: 401 without a valid key,
/// 403 for a disabled account.
async fn authenticate(
    context: &HttpContext,
    request: &Request<Incoming>,
) -> Result<Rc<Account>, HttpResponse> {
    let key = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = key else {
        return Err(unauthorized(
            "an `Authorization: Bearer <api key>` header is required",
        ));
    };
    let account = find_account(context, key).await?;
    if !account.enabled {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "account_disabled",
            "the account of this API key is disabled",
        ));
    }
    Ok(account)
}

async fn find_account(context: &HttpContext, key: &str) -> Result<Rc<Account>, HttpResponse> {
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let now_ms = context.shard().now_ms();
    // Changes committed before this request arrived drop their entries now.
    context.shard().take_account_changes();
    let forgotten_before = context.api().forgotten.get();
    let cached = context.api().keys.borrow().get(&digest).cloned();
    if let Some(hit) = &cached {
        if now_ms.saturating_sub(hit.checked_at_ms) < ACCOUNT_RECHECK_MS {
            return Ok(Rc::clone(&hit.account));
        }
        // Re-read the one account: unchanged key hash = still this key's.
        let name = hit.account.name.clone();
        let fresh = with_timeout(context.store().query(move |s| s.account(&name).cloned())).await;
        match fresh {
            Some(Ok(Some(account))) if account.api_key_hash == hit.account.api_key_hash => {
                return Ok(remember(context, digest, account, now_ms, forgotten_before));
            }
            Some(Ok(_)) => {
                context.api().keys.borrow_mut().remove(&digest);
            }
            Some(Err(e)) => return Err(store_error(e)),
            None => return Err(store_timeout()),
        }
    }
    let read = context.store().query(|state| {
        state
            .accounts()
            .filter(|a| a.api_key_hash.is_some())
            .cloned()
            .collect::<Vec<Account>>()
    });
    let accounts = match with_timeout(read).await {
        Some(Ok(accounts)) => accounts,
        Some(Err(e)) => return Err(store_error(e)),
        None => return Err(store_timeout()),
    };
    let found = accounts.into_iter().find(|account| {
        account
            .api_key_hash
            .as_deref()
            .is_some_and(|hash| auth::verify_password(key.as_bytes(), hash))
    });
    match found {
        Some(account) => Ok(remember(context, digest, account, now_ms, forgotten_before)),
        None => Err(unauthorized("the API key is not valid")),
    }
}

/// Caches the key's account, unless entries were forgotten since the lookup
/// began (`forgotten_before`): what it read may be older than the change.
fn remember(
    context: &HttpContext,
    digest: [u8; 32],
    account: Account,
    now_ms: u64,
    forgotten_before: u64,
) -> Rc<Account> {
    let account = Rc::new(account);
    if context.api().forgotten.get() != forgotten_before {
        return account;
    }
    let mut keys = context.api().keys.borrow_mut();
    if keys.len() >= KEY_CACHE_CAPACITY && !keys.contains_key(&digest) {
        keys.clear();
    }
    keys.insert(
        digest,
        CachedKey {
            account: Rc::clone(&account),
            checked_at_ms: now_ms,
        },
    );
    account
}

fn unauthorized(message: &str) -> HttpResponse {
    let mut response = json_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn idempotency_key(request: &Request<Incoming>) -> Result<Option<String>, Refusal> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > MAX_IDEMPOTENCY_KEY_BYTES
        || !bytes.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_idempotency_key",
            message: format!(
                "Idempotency-Key must be 1..={MAX_IDEMPOTENCY_KEY_BYTES} printable ASCII characters"
            ),
        });
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

// ---------------------------------------------------------------- validation

/// Checks the request as SMPP checks a submit_sm and cuts the message into
/// its parts (the same parts for every recipient).
fn plan(
    api: &ApiState,
    account: &Account,
    request: SubmitRequest,
    now_ms: u64,
) -> Result<Plan, Refusal> {
    let recipients = match request.to {
        Recipients::One(to) => vec![to],
        Recipients::Many(list) => list,
    };
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(invalid(format!(
            "`to` names {} recipients; 1..={MAX_RECIPIENTS} are allowed",
            recipients.len()
        )));
    }
    let source = source_address(&request.from)?;
    if !account.allowed_senders.is_empty() && !account.allowed_senders.contains(&source.digits) {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            code: "sender_not_allowed",
            message: format!(
                "`from` {:?} is not an allowed sender of this account",
                request.from
            ),
        });
    }
    let destinations = recipients
        .iter()
        .map(|to| destination_address(to))
        .collect::<Result<Vec<_>, _>>()?;
    let (encoding, data_coding, parts) = match (&request.text, &request.payload_hex) {
        (Some(text), None) => {
            if request.data_coding.is_some() {
                return Err(invalid("`data_coding` goes with `payload_hex`, not `text`"));
            }
            if text.is_empty() {
                return Err(invalid("`text` is empty"));
            }
            let (choice, parts) =
                segment::segment_text(text, false, Carriage::Udh(api.concat_reference()))
                    .map_err(|e| invalid(format!("`text`: {e}")))?;
            let coding = DataCoding::plain(choice.encoding).to_smpp(DefaultAlphabet::Gsm7);
            (choice.encoding, coding, parts)
        }
        (None, Some(hex_text)) => {
            let payload = hex::decode(hex_text)
                .map_err(|e| invalid(format!("`payload_hex` is not hexadecimal: {e}")))?;
            if payload.is_empty() {
                return Err(invalid("`payload_hex` is empty"));
            }
            let coding = request.data_coding.unwrap_or(0x04);
            let encoding = DataCoding::from_smpp(coding, DefaultAlphabet::Gsm7)
                .map_err(|e| invalid(format!("`data_coding`: {e}")))?
                .encoding;
            let parts = segment::segment(encoding, &payload, Carriage::Udh(api.concat_reference()))
                .map_err(|e| invalid(format!("`payload_hex`: {e}")))?;
            (encoding, coding, parts)
        }
        _ => {
            return Err(invalid(
                "exactly one of `text` and `payload_hex` is required",
            ))
        }
    };
    let validity_until_ms = match (request.validity_s, &request.valid_until) {
        (Some(_), Some(_)) => {
            return Err(invalid("give `validity_s` or `valid_until`, not both"));
        }
        (Some(seconds), None) => {
            if seconds == 0 || seconds > MAX_VALIDITY_S {
                return Err(invalid(format!(
                    "`validity_s` must be 1..={MAX_VALIDITY_S}"
                )));
            }
            Some(now_ms.saturating_add(seconds * 1000))
        }
        (None, Some(text)) => {
            let until = rfc3339::parse_ms(text)
                .ok_or_else(|| invalid("`valid_until` is not an RFC 3339 date-time"))?;
            if until <= now_ms {
                return Err(invalid("`valid_until` is in the past"));
            }
            Some(until)
        }
        (None, None) => None,
    };
    let scheduled_at_ms = match &request.scheduled_at {
        Some(text) => {
            let at = rfc3339::parse_ms(text)
                .ok_or_else(|| invalid("`scheduled_at` is not an RFC 3339 date-time"))?;
            if validity_until_ms.is_some_and(|until| until <= at) {
                return Err(invalid("the message would expire before `scheduled_at`"));
            }
            Some(at)
        }
        None => None,
    };
    if let Some(reference) = &request.client_ref {
        if reference.len() > MAX_CLIENT_REF_BYTES {
            return Err(invalid(format!(
                "`client_ref` is longer than {MAX_CLIENT_REF_BYTES} bytes"
            )));
        }
    }
    let plan = Plan {
        source,
        recipients,
        destinations,
        data_coding,
        encoding,
        parts,
        registered_delivery: u8::from(request.dlr),
        validity_until_ms,
        scheduled_at_ms,
        client_ref: request.client_ref.filter(|r| !r.is_empty()),
    };
    check_as_smpp(&plan)?;
    Ok(plan)
}

/// Runs the SMPP submit_sm checks on what each accept will carry, so both
/// faces refuse the same messages.
fn check_as_smpp(plan: &Plan) -> Result<(), Refusal> {
    let smpp_address = |a: &Address| {
        pdu::Address::new(a.digits.as_bytes())
            .ok_or_else(|| invalid(format!("address {:?} is too long", a.digits)))
    };
    let source_addr = smpp_address(&plan.source)?;
    for destination in &plan.destinations {
        for part in &plan.parts {
            let sm = SubmitSm {
                source_addr_ton: plan.source.ton,
                source_addr_npi: plan.source.npi,
                source_addr,
                dest_addr_ton: destination.ton,
                dest_addr_npi: destination.npi,
                destination_addr: smpp_address(destination)?,
                esm_class: if part.udhi { ESM_CLASS_UDHI } else { 0 },
                registered_delivery: plan.registered_delivery,
                data_coding: plan.data_coding,
                short_message: Bytes::copy_from_slice(&part.bytes),
                ..SubmitSm::default()
            };
            if let Err(rejection) = pdu::validate_submit(&sm) {
                return Err(invalid(format!(
                    "{}: {}",
                    http_field(rejection.field),
                    rejection.reason
                )));
            }
        }
    }
    Ok(())
}

/// The request field an SMPP field name corresponds to.
fn http_field(smpp_field: &str) -> &str {
    match smpp_field {
        f if f.starts_with("source") => "`from`",
        f if f.starts_with("dest") => "`to`",
        "short_message" | "data_coding" | "esm_class" => "the message",
        other => other,
    }
}

/// `from`: letters make an alphanumeric sender (TON 5), up to
/// [`MAX_SHORT_CODE_DIGITS`] digits a short code (TON 3), more digits (or a
/// leading `+`) an E.164 number (TON 1, NPI 1).
fn source_address(from: &str) -> Result<Address, Refusal> {
    if from.is_empty() {
        return Err(invalid("`from` is empty"));
    }
    let digits = from.strip_prefix('+');
    let numeric = digits.unwrap_or(from);
    if !numeric.is_empty() && numeric.bytes().all(|b| b.is_ascii_digit()) {
        let (ton, npi) = if digits.is_some() || numeric.len() > MAX_SHORT_CODE_DIGITS {
            (TON_INTERNATIONAL, NPI_E164)
        } else {
            (TON_NETWORK_SPECIFIC, NPI_UNKNOWN)
        };
        return Ok(Address {
            ton,
            npi,
            digits: numeric.to_string(),
        });
    }
    Ok(Address {
        ton: TON_ALPHANUMERIC,
        npi: NPI_UNKNOWN,
        digits: from.to_string(),
    })
}

/// `to`: an E.164 number, digits with an optional leading `+`.
fn destination_address(to: &str) -> Result<Address, Refusal> {
    let digits = to.strip_prefix('+').unwrap_or(to);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!(
            "`to` {to:?} is not a phone number (digits, optionally after a `+`)"
        )));
    }
    Ok(Address {
        ton: TON_INTERNATIONAL,
        npi: NPI_E164,
        digits: digits.to_string(),
    })
}

// ------------------------------------------------------------------ proposal

enum Proposed {
    Accepted(Vec<MessageId>),
    /// The idempotency key already had an answer for this same body.
    Replayed(Vec<MessageId>),
}

async fn propose(
    context: &HttpContext,
    account: &Account,
    plan: &Plan,
    idempotency_key: Option<String>,
    body: &[u8],
    received_at_ms: u64,
) -> Result<Proposed, HttpResponse> {
    let shard = context.shard();
    let total = u8::try_from(plan.parts.len()).unwrap_or(u8::MAX);
    let mut accepts = Vec::with_capacity(plan.destinations.len() * plan.parts.len());
    let mut ids = Vec::with_capacity(accepts.capacity());
    for destination in &plan.destinations {
        for part in &plan.parts {
            let id = shard.next_message_id().map_err(|e| {
                tracing::error!("no message id: {e}");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "no message id could be assigned",
                )
            })?;
            let segment = match segment::parse_udh(&part.bytes) {
                Ok((udh, _)) if part.udhi => udh.concat.map(|c| SegmentInfo {
                    reference: c.reference,
                    total: c.total,
                    sequence: c.seqnum,
                }),
                _ => None,
            };
            debug_assert!(
                !part.udhi || segment.is_some_and(|s| s.total == total),
                "a part with a UDH carries no concatenation IE"
            );
            ids.push(id);
            accepts.push(Accept {
                id,
                account: account.name.clone(),
                source: plan.source.clone(),
                destination: destination.clone(),
                data_coding: plan.data_coding,
                esm_class: if part.udhi { ESM_CLASS_UDHI } else { 0 },
                protocol_id: 0,
                priority: 0,
                registered_delivery: plan.registered_delivery,
                payload: part.bytes.clone(),
                segment,
                received_at_ms,
                validity_until_ms: plan.validity_until_ms,
                owner_node: context.node_id(),
                client_ref: plan.client_ref.clone(),
                scheduled_at_ms: plan.scheduled_at_ms,
            });
        }
    }
    // Only a keyed request is ever compared with another one.
    let request_hash = idempotency_key.as_ref().map_or(0, |_| request_hash(body));
    let command = Command::AcceptBatch(AcceptBatch {
        account: account.name.clone(),
        idempotency_key: idempotency_key.clone(),
        request_hash,
        accepts,
        at_ms: received_at_ms,
    })
    .encode();
    let proposed_at = Instant::now();
    let pending = context.store().try_propose(command).map_err(store_error)?;
    let outcome = pending.outcome().await;
    crate::metrics::observe_duration(Histogram::CommitLatency, proposed_at.elapsed());
    match outcome {
        Ok(ApplyOutcome::Applied) => Ok(Proposed::Accepted(ids)),
        Ok(ApplyOutcome::Rejected(RejectReason::IdempotentReplay)) => {
            let Some(key) = idempotency_key else {
                return Err(internal("the store replayed a request without a key"));
            };
            replay(context, &account.name, key, request_hash, ids.len()).await
        }
        Ok(ApplyOutcome::Rejected(
            RejectReason::UnknownAccount | RejectReason::AccountDisabled,
        )) => Err(json_error(
            StatusCode::FORBIDDEN,
            "account_disabled",
            "the account of this API key is disabled or gone",
        )),
        Ok(other) => {
            tracing::error!(?other, "unexpected outcome of an AcceptBatch");
            Err(internal("the store refused the batch"))
        }
        Err(e) => Err(store_error(e)),
    }
}

/// The first answer under `key`, if it was for the same body.
async fn replay(
    context: &HttpContext,
    account: &str,
    key: String,
    request_hash: u64,
    expected_ids: usize,
) -> Result<Proposed, HttpResponse> {
    let account = account.to_string();
    let read = context
        .store()
        .query(move |state| state.idempotent(&account, &key).cloned());
    match with_timeout(read).await {
        Some(Ok(Some(record))) if record.request_hash == request_hash => {
            if record.ids.len() != expected_ids {
                return Err(internal("the first answer has another number of messages"));
            }
            Ok(Proposed::Replayed(record.ids))
        }
        Some(Ok(Some(_))) => Err(json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a request with another body",
        )),
        // Expired between apply and read: the first answer is gone.
        Some(Ok(None)) => Err(json_error(
            StatusCode::CONFLICT,
            "idempotency_key_expired",
            "this Idempotency-Key was used, and its first answer is no longer kept",
        )),
        Some(Err(e)) => Err(store_error(e)),
        None => Err(store_timeout()),
    }
}

/// A hash of the request body the same on every node (a retry may reach
/// another one): the first 8 bytes of its SHA-256.
fn request_hash(body: &[u8]) -> u64 {
    let digest = Sha256::digest(body);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// 201 with one entry per recipient per segment, in the batch's order.
fn created(plan: &Plan, ids: &[MessageId]) -> HttpResponse {
    let segments = plan.parts.len();
    debug_assert_eq!(
        ids.len(),
        plan.recipients.len() * segments,
        "ids per message"
    );
    let messages = plan
        .recipients
        .iter()
        .flat_map(|to| (1..=segments).map(move |segment| (to, segment)))
        .zip(ids)
        .map(|((to, segment), id)| SubmittedMessage {
            id: id.to_string(),
            to,
            segment,
            segments,
        })
        .collect();
    json_response(
        StatusCode::CREATED,
        &SubmitResponse {
            messages,
            encoding: encoding_name(plan.encoding),
            segments,
            client_ref: plan.client_ref.as_deref(),
        },
    )
}

fn encoding_name(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Gsm7 => "gsm7",
        Encoding::Ascii => "ascii",
        Encoding::Latin1 => "latin1",
        Encoding::Binary => "binary",
        Encoding::Ucs2 => "ucs2",
    }
}

// ---------------------------------------------------------------- lookups

fn view_of(message: &Message) -> MessageView {
    let accept = &message.accept;
    let current = message.upstreams.last();
    let error = (message.last_status != 0 || message.receipt_err != 0).then_some(MessageError {
        submit_status: message.last_status,
        receipt_error: message.receipt_err,
    });
    MessageView {
        id: accept.id.to_string(),
        state: state_name(message.state),
        from: accept.source.digits.clone(),
        to: accept.destination.digits.clone(),
        client_ref: accept.client_ref.clone(),
        received_at: rfc3339::format_ms(accept.received_at_ms),
        scheduled_at: accept.scheduled_at_ms.map(rfc3339::format_ms),
        valid_until: accept.validity_until_ms.map(rfc3339::format_ms),
        submitted_at: current.map(|u| rfc3339::format_ms(u.submitted_at_ms)),
        done_at: message.done_at_ms.map(rfc3339::format_ms),
        connector: current.map(|u| u.connector.clone()),
        operator_id: current.map(|u| u.upstream_id.clone()),
        attempts: message.attempts,
        error,
        segment: accept.segment.map(|s| SegmentView {
            reference: s.reference,
            total: s.total,
            sequence: s.sequence,
        }),
    }
}

/// Stable snake_case names of message states (the API's `state`).
pub fn state_name(state: MessageState) -> &'static str {
    match state {
        MessageState::Accepted => "accepted",
        MessageState::Submitted => "submitted",
        MessageState::EnRoute => "en_route",
        MessageState::Delivered => "delivered",
        MessageState::Expired => "expired",
        MessageState::Deleted => "deleted",
        MessageState::Undeliverable => "undeliverable",
        MessageState::OperatorAccepted => "operator_accepted",
        MessageState::Unknown => "unknown",
        MessageState::Rejected => "rejected",
        MessageState::Failed => "failed",
    }
}

// ------------------------------------------------------------ store answers

async fn with_timeout<T>(future: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(std::time::Duration::from_millis(STORE_READ_TIMEOUT_MS)).await;
        None
    })
    .await
}

fn store_busy() -> HttpResponse {
    let mut response = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_busy",
        "the node has too many messages in flight; retry shortly",
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn store_error(e: ProposeError) -> HttpResponse {
    match e {
        ProposeError::Busy => store_busy(),
        ProposeError::Retry(reason) => {
            let mut response = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_committed",
                &format!(
                    "the request was not committed ({reason:?}); retry it, with the same \
                     Idempotency-Key to avoid a duplicate"
                ),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        ProposeError::Stopped => {
            // Also what a reply dropped without an answer looks like, so it
            // is not "stopping" for sure: retrying is the safe advice.
            let mut response = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the store gave no answer (the node may be stopping); retry, with the same \
                 Idempotency-Key to avoid a duplicate",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

fn store_timeout() -> HttpResponse {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_timeout",
        "the store did not answer in time",
    )
}

fn internal(message: &str) -> HttpResponse {
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        Account {
            name: "acme".into(),
            password_hash: String::new(),
            max_binds: 0,
            throughput_per_s: 0,
            allowed_ips: Vec::new(),
            allowed_senders: Vec::new(),
            retention_s: 0,
            enabled: true,
            webhook_url: None,
            api_key_hash: None,
            webhook_secret: None,
            window: 0,
        }
    }

    fn request(json: serde_json::Value) -> SubmitRequest {
        serde_json::from_value(json).expect("a request")
    }

    fn status_of(result: Result<Plan, Refusal>) -> StatusCode {
        match result {
            Ok(_) => StatusCode::OK,
            Err(refusal) => refusal.status,
        }
    }

    #[test]
    fn short_gsm_text_is_one_part() {
        let api = ApiState::new(1);
        let plan = plan(
            &api,
            &account(),
            request(serde_json::json!({"from": "Acme", "to": "+4915112345678", "text": "hi"})),
            0,
        )
        .expect("valid");
        assert_eq!(plan.parts.len(), 1);
        assert_eq!(plan.encoding, Encoding::Gsm7);
        assert_eq!(plan.data_coding, 0);
        assert_eq!(plan.source.ton, TON_ALPHANUMERIC);
        assert_eq!(plan.destinations[0].digits, "4915112345678");
    }

    #[test]
    fn long_ucs2_text_is_segmented_with_udh() {
        let api = ApiState::new(1);
        let text = "Привет ".repeat(30);
        let plan = plan(
            &api,
            &account(),
            request(serde_json::json!({"from": "12345", "to": ["491511", "491512"], "text": text})),
            0,
        )
        .expect("valid");
        assert_eq!(plan.encoding, Encoding::Ucs2);
        assert_eq!(plan.data_coding, 8);
        assert_eq!(plan.parts.len(), 4, "210 UTF-16 units at 67 a part");
        assert!(plan.parts.iter().all(|p| p.udhi));
        assert_eq!(plan.source.ton, TON_NETWORK_SPECIFIC);
        let ids: Vec<MessageId> = (0..8)
            .filter_map(|i| MessageId::from_parts(1, 1, 0, i))
            .collect();
        let created = created(&plan, &ids);
        assert_eq!(created.status(), StatusCode::CREATED);
    }

    #[test]
    fn refuses_what_smpp_refuses() {
        let api = ApiState::new(1);
        let cases = [
            serde_json::json!({"from": "Acme", "to": "12ab", "text": "x"}),
            serde_json::json!({"from": "Acme", "to": [], "text": "x"}),
            serde_json::json!({"from": "AVeryLongSenderName", "to": "4915", "text": "x"}),
            serde_json::json!({"from": "Acme", "to": "4915", "text": ""}),
            serde_json::json!({"from": "Acme", "to": "4915", "text": "x", "payload_hex": "00"}),
            serde_json::json!({"from": "Acme", "to": "4915", "payload_hex": "zz"}),
            serde_json::json!({"from": "Acme", "to": "4915", "payload_hex": "00", "data_coding": 0x50}),
            serde_json::json!({"from": "Acme", "to": "4915", "text": "x", "validity_s": 0}),
            serde_json::json!({"from": "Acme", "to": "4915", "text": "x", "valid_until": "soon"}),
            serde_json::json!({"from": "Acme", "to": "4915", "text": "x", "scheduled_at": "2026-01-01"}),
            serde_json::json!({"from": "Acme", "to": "4915", "text": "x", "client_ref": "r".repeat(65)}),
        ];
        for case in cases {
            assert_eq!(
                status_of(plan(&api, &account(), request(case.clone()), 0)),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{case}"
            );
        }
        let too_many: Vec<String> = (0..=MAX_RECIPIENTS).map(|i| format!("49{i}")).collect();
        assert_eq!(
            status_of(plan(
                &api,
                &account(),
                request(serde_json::json!({"from": "Acme", "to": too_many, "text": "x"})),
                0
            )),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    #[test]
    fn senders_are_checked_against_the_account() {
        let api = ApiState::new(1);
        let mut limited = account();
        limited.allowed_senders = vec!["Acme".into()];
        let ok = serde_json::json!({"from": "Acme", "to": "4915", "text": "x"});
        let other = serde_json::json!({"from": "Other", "to": "4915", "text": "x"});
        assert_eq!(
            status_of(plan(&api, &limited, request(ok), 0)),
            StatusCode::OK
        );
        assert_eq!(
            status_of(plan(&api, &limited, request(other), 0)),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn validity_and_schedule_become_milliseconds() {
        let api = ApiState::new(1);
        let now_ms = 1_795_644_000_000;
        let plan = plan(
            &api,
            &account(),
            request(serde_json::json!({
                "from": "Acme", "to": "4915", "text": "x", "dlr": true,
                "validity_s": 3600, "scheduled_at": "2026-11-25T22:30:00Z"
            })),
            now_ms,
        )
        .expect("valid");
        assert_eq!(plan.validity_until_ms, Some(now_ms + 3_600_000));
        assert_eq!(plan.scheduled_at_ms, Some(now_ms + 1_800_000));
        assert_eq!(plan.registered_delivery, 1);
    }

    #[test]
    fn throttle_counts_every_message() {
        let api = ApiState::new(2);
        let mut limited = account();
        limited.throughput_per_s = 10;
        assert!(api.try_take(&limited, 3, 0), "5 per core per second");
        assert!(api.try_take(&limited, 2, 0));
        assert!(!api.try_take(&limited, 1, 0));
        assert!(api.try_take(&limited, 50, 1_000), "capped at a full bucket");
        assert!(api.try_take(&account(), 1_000, 0), "no limit");
    }

    #[test]
    fn request_hash_is_stable() {
        assert_eq!(request_hash(b"{}"), request_hash(b"{}"));
        assert_ne!(request_hash(b"{}"), request_hash(b"{ }"));
    }

    #[test]
    fn openapi_document_is_json() {
        let document: serde_json::Value =
            serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        assert!(document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")));
        for path in ["/v1/messages", "/v1/messages/{id}", "/health", "/ready"] {
            assert!(document["paths"][path].is_object(), "{path} is described");
        }
    }
}
