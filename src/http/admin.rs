//! The admin API: `/admin/v1/...`, for operators and their scripts.
//!
//! Owns: bearer-token authentication of admin requests, the admin routes
//! (list, read, create or replace, change and remove accounts, connectors,
//! routes and number ranges; cluster status; any message by id), and their
//! JSON answers and error codes. Must not touch: the customer API, the
//! store's internals (only `StoreHandle` queries and proposals) or the
//! upstream binds (their status is read, never changed, here).
//!
//! Every change is a proposal through the log (`UpsertX` / `RemoveX`) and is
//! answered only once it committed and applied here, so every node sees it
//! when the answer arrives. A change reads the stored object first (for
//! masked secrets and PATCH); two concurrent changes of one object are last
//! writer wins.
//!
//! The transport-independent part is [`respond`]: method, path, the
//! Authorization header and the body in, a status and JSON out.

pub mod records;

use std::rc::Rc;

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};
use serde_json::{json, Map, Value};

use super::{json_response, read_body, HttpContext, HttpResponse};

use crate::store::command::{BindKind, Command};
use crate::store::driver::{ProposeError, StoreHandle};
use crate::store::id::MessageId;
use crate::store::state::{AppState, ApplyOutcome, Message};
use records::{FieldError, Kind, Known, Record};

/// The request methods the admin API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Put,
    Patch,
    Delete,
    Other,
}

impl Verb {
    pub fn from_method(method: &str) -> Verb {
        match method {
            "GET" | "HEAD" => Verb::Get,
            "PUT" => Verb::Put,
            "PATCH" => Verb::Patch,
            "DELETE" => Verb::Delete,
            _ => Verb::Other,
        }
    }
}

/// An answer: HTTP status and JSON body (`Value::Null` = no body).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply { status, body }
    }

    /// `{"error":{"code":...,"message":...}}`, the shape of every API error.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
        Reply {
            status,
            body: json!({"error": {"code": code, "message": message.into()}}),
        }
    }

    fn invalid(error: &FieldError) -> Reply {
        let mut reply = Reply::error(422, "invalid_field", error.text());
        if let (Some(field), Some(object)) = (&error.field, reply.body["error"].as_object_mut()) {
            object.insert("field".into(), json!(field));
        }
        reply
    }
}

/// What the admin routes need from the node.
pub struct AdminEnv<'a> {
    pub store: &'a StoreHandle,
    pub node_id: u64,
    /// `http.admin_token`; empty = the admin API is off.
    pub token: &'a str,
}

/// Answers one `/admin/...` request (the router hands every one here).
pub async fn handle(context: Rc<HttpContext>, request: Request<Incoming>) -> HttpResponse {
    let token = context.admin_token();
    let authorization = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    // Nothing is read from an unauthenticated caller, not even the body.
    if let Err(reply) = authorize(token, authorization) {
        return to_response(&reply);
    }
    let authorization = authorization.map(<[u8]>::to_vec);
    let verb = Verb::from_method(request.method().as_str());
    let path = request.uri().path().to_string();
    let body = match verb {
        Verb::Put | Verb::Patch => match read_body(&context, request).await {
            Ok(body) => body,
            Err(response) => return response,
        },
        _ => hyper::body::Bytes::new(),
    };
    let env = AdminEnv {
        store: context.store(),
        node_id: context.node_id(),
        token,
    };
    let reply = respond(&env, verb, &path, authorization.as_deref(), &body).await;
    to_response(&reply)
}

fn to_response(reply: &Reply) -> HttpResponse {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &reply.body);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, PUT, PATCH, DELETE"),
        );
    }
    response
}

/// Checks `Authorization: Bearer TOKEN` against the configured token. The
/// comparison is of SHA-256 digests in constant time, so neither the
/// content nor the length of the token leaks through timing.
pub fn authorize(token: &str, authorization: Option<&[u8]>) -> Result<(), Reply> {
    if token.is_empty() {
        return Err(Reply::error(
            404,
            "not_found",
            "the admin API is off on this node (http.admin_token is empty)",
        ));
    }
    let given = authorization
        .and_then(|h| h.strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    let Some(given) = given else {
        return Err(Reply::error(
            401,
            "unauthorized",
            "send the admin token as `Authorization: Bearer TOKEN`",
        ));
    };
    use sha2::{Digest, Sha256};
    let expected = Sha256::digest(token.as_bytes());
    let actual = Sha256::digest(given);
    let difference = expected
        .iter()
        .zip(actual.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if difference == 0 {
        Ok(())
    } else {
        Err(Reply::error(401, "unauthorized", "wrong admin token"))
    }
}

/// Answers one admin request. `path` is the request path without the query.
pub async fn respond(
    env: &AdminEnv<'_>,
    verb: Verb,
    path: &str,
    authorization: Option<&[u8]>,
    body: &[u8],
) -> Reply {
    if let Err(reply) = authorize(env.token, authorization) {
        return reply;
    }
    let Some(rest) = path.strip_prefix("/admin/v1/") else {
        return Reply::error(404, "not_found", format!("no admin endpoint at {path}"));
    };
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match (verb, segments.as_slice()) {
        (Verb::Get, ["status"]) => status(env).await,
        (Verb::Get, ["messages", id]) => message(env, id).await,
        (_, [collection, ..]) if Kind::from_collection(collection).is_none() => Reply::error(
            404,
            "not_found",
            format!("no admin endpoint at {path}; see /admin/v1/{{accounts,connectors,routes,number-ranges,status,messages/ID}}"),
        ),
        (Verb::Get, [collection]) => list(env, kind(collection)).await,
        (Verb::Get, [collection, name]) => show(env, kind(collection), name).await,
        (Verb::Put, [collection, name]) => put(env, kind(collection), name, body, false).await,
        (Verb::Patch, [collection, name]) => put(env, kind(collection), name, body, true).await,
        (Verb::Delete, [collection, name]) => delete(env, kind(collection), name).await,
        (_, [_]) | (_, [_, _]) => Reply::error(
            405,
            "method_not_allowed",
            "collections take GET; objects take GET, PUT, PATCH and DELETE",
        ),
        _ => Reply::error(404, "not_found", format!("no admin endpoint at {path}")),
    }
}

/// The kind of a collection already checked by the router.
fn kind(collection: &str) -> Kind {
    Kind::from_collection(collection).unwrap_or(Kind::Account)
}

fn store_error(error: ProposeError) -> Reply {
    match error {
        ProposeError::Retry(reason) => Reply::error(
            503,
            "not_committed",
            format!(
                "the store could not commit ({reason:?}); the change may still apply: \
                 read it back before retrying"
            ),
        ),
        ProposeError::Busy => Reply::error(503, "store_busy", "the store is busy; retry shortly"),
        ProposeError::Stopped => Reply::error(503, "shutting_down", "this node is stopping"),
    }
}

fn records_of(state: &AppState, kind: Kind) -> Vec<Record> {
    match kind {
        Kind::Account => state.accounts().cloned().map(Record::Account).collect(),
        Kind::Connector => state.connectors().cloned().map(Record::Connector).collect(),
        Kind::Route => state.routes().cloned().map(Record::Route).collect(),
        Kind::NumberRange => state
            .number_ranges()
            .cloned()
            .map(Record::NumberRange)
            .collect(),
    }
}

fn record_of(state: &AppState, kind: Kind, name: &str) -> Option<Record> {
    match kind {
        Kind::Account => state.account(name).cloned().map(Record::Account),
        Kind::Connector => state.connector(name).cloned().map(Record::Connector),
        Kind::Route => state
            .routes()
            .find(|r| r.name == name)
            .cloned()
            .map(Record::Route),
        Kind::NumberRange => state
            .number_ranges()
            .find(|r| r.name == name)
            .cloned()
            .map(Record::NumberRange),
    }
}

async fn list(env: &AdminEnv<'_>, kind: Kind) -> Reply {
    match env.store.query(move |state| records_of(state, kind)).await {
        Ok(found) => Reply::json(200, Value::Array(found.iter().map(records::view).collect())),
        Err(e) => store_error(e),
    }
}

fn not_found(kind: Kind, name: &str) -> Reply {
    Reply::error(
        404,
        "not_found",
        format!("no {} is named `{name}`", kind.noun()),
    )
}

async fn show(env: &AdminEnv<'_>, kind: Kind, name: &str) -> Reply {
    let wanted = name.to_string();
    match env
        .store
        .query(move |state| record_of(state, kind, &wanted))
        .await
    {
        Ok(Some(record)) => Reply::json(200, records::view(&record)),
        Ok(None) => not_found(kind, name),
        Err(e) => store_error(e),
    }
}

/// PUT (create or replace) and PATCH (change the named fields).
async fn put(env: &AdminEnv<'_>, kind: Kind, name: &str, body: &[u8], patch: bool) -> Reply {
    let changes: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Reply::error(400, "invalid_json", "the body must be a JSON object"),
        Err(e) => return Reply::error(400, "invalid_json", format!("the body is not JSON: {e}")),
    };
    let wanted = name.to_string();
    let read = env
        .store
        .query(move |state| {
            let known = Known {
                connectors: state.connectors().map(|c| c.name.clone()).collect(),
                accounts: state.accounts().map(|a| a.name.clone()).collect(),
            };
            (record_of(state, kind, &wanted), known)
        })
        .await;
    let (existing, known) = match read {
        Ok(found) => found,
        Err(e) => return store_error(e),
    };
    let body = match (&existing, patch) {
        (Some(stored), true) => records::merge(stored, &changes),
        (None, true) => return not_found(kind, name),
        (_, false) => changes,
    };
    let record = match records::build(kind, name, body, existing.as_ref(), &known) {
        Ok(record) => record,
        Err(e) => return Reply::invalid(&e),
    };
    if existing.as_ref() == Some(&record) {
        return Reply::json(200, records::view(&record));
    }
    let command = match record.clone() {
        Record::Account(a) => Command::UpsertAccount(a),
        Record::Connector(c) => Command::UpsertConnector(c),
        Record::Route(r) => Command::UpsertRoute(r),
        Record::NumberRange(n) => Command::UpsertNumberRange(n),
    };
    match env.store.propose(command.encode()).await {
        Ok(ApplyOutcome::Applied) => {
            tracing::info!(
                kind = kind.noun(),
                name,
                "provisioned through the admin API"
            );
            let status = if existing.is_some() { 200 } else { 201 };
            Reply::json(status, records::view(&record))
        }
        Ok(other) => Reply::error(
            409,
            "rejected",
            format!("the store refused the change: {other:?}"),
        ),
        Err(e) => store_error(e),
    }
}

async fn delete(env: &AdminEnv<'_>, kind: Kind, name: &str) -> Reply {
    if kind == Kind::Connector {
        let wanted = name.to_string();
        let users = env
            .store
            .query(move |state| {
                state
                    .routes()
                    .filter(|r| r.targets.iter().any(|t| t.connector == wanted))
                    .map(|r| r.name.clone())
                    .collect::<Vec<_>>()
            })
            .await;
        match users {
            Ok(users) if !users.is_empty() => {
                return Reply::error(
                    409,
                    "in_use",
                    format!(
                        "routes {} send to connector `{name}`; change or delete them first",
                        users.join(", ")
                    ),
                )
            }
            Ok(_) => {}
            Err(e) => return store_error(e),
        }
    }
    let name_owned = name.to_string();
    let command = match kind {
        Kind::Account => Command::RemoveAccount { name: name_owned },
        Kind::Connector => Command::RemoveConnector { name: name_owned },
        Kind::Route => Command::RemoveRoute { name: name_owned },
        Kind::NumberRange => Command::RemoveNumberRange { name: name_owned },
    };
    match env.store.propose(command.encode()).await {
        Ok(ApplyOutcome::Applied) => {
            tracing::info!(kind = kind.noun(), name, "removed through the admin API");
            Reply::json(200, json!({"deleted": name}))
        }
        Ok(ApplyOutcome::NotFound) => not_found(kind, name),
        Ok(other) => Reply::error(
            409,
            "rejected",
            format!("the store refused the change: {other:?}"),
        ),
        Err(e) => store_error(e),
    }
}

fn bind_kind_name(kind: BindKind) -> &'static str {
    match kind {
        BindKind::Transmitter => "transmitter",
        BindKind::Receiver => "receiver",
        BindKind::Transceiver => "transceiver",
    }
}

/// What `status` reads from the state in one query.
struct StateView {
    nodes: Vec<(u64, u32, bool)>,
    binds: Vec<(String, [usize; 3])>,
    connectors: Vec<(String, bool, u16)>,
    messages: usize,
}

async fn status(env: &AdminEnv<'_>) -> Reply {
    let metrics = env.store.metrics();
    let read = env
        .store
        .query(|state| {
            let binds = state
                .accounts()
                .filter_map(|a| {
                    let mut counts = [0usize; 3];
                    for (_, kind) in state.binds_for_account(&a.name) {
                        let slot = match kind {
                            BindKind::Transmitter => 0,
                            BindKind::Receiver => 1,
                            BindKind::Transceiver => 2,
                        };
                        counts[slot] += 1;
                    }
                    (counts.iter().sum::<usize>() > 0).then(|| (a.name.clone(), counts))
                })
                .collect();
            StateView {
                nodes: state
                    .nodes()
                    .map(|(id, r)| (id, r.incarnation, r.up))
                    .collect(),
                binds,
                connectors: state
                    .connectors()
                    .map(|c| (c.name.clone(), c.enabled, c.bind_count))
                    .collect(),
                messages: state.message_count(),
            }
        })
        .await;
    let view = match read {
        Ok(view) => view,
        Err(e) => return store_error(e),
    };
    // Membership is only known to the store thread's raft node; asking for
    // it blocks, so it is asked from glommio's blocking pool, off the reactor.
    let handle = env.store.clone();
    let membership = glommio::executor()
        .spawn_blocking(move || handle.status_blocking())
        .await;
    let (voters, learners) = match membership {
        Ok(s) => (s.voters, s.learners),
        Err(e) => return store_error(e),
    };
    let up = |id: u64| view.nodes.iter().find(|n| n.0 == id).map(|n| n.2);
    let member = |id: &u64, role: &str| json!({"id": id, "role": role, "up": up(*id), "leader": *id == metrics.leader_id});
    let members: Vec<Value> = voters
        .iter()
        .map(|id| member(id, "voter"))
        .chain(learners.iter().map(|id| member(id, "learner")))
        .collect();
    let binds: Vec<Value> = view
        .binds
        .iter()
        .map(|(account, counts)| {
            json!({
                "account": account,
                bind_kind_name(BindKind::Transmitter): counts[0],
                bind_kind_name(BindKind::Receiver): counts[1],
                bind_kind_name(BindKind::Transceiver): counts[2],
            })
        })
        .collect();
    // The store says which connectors exist; this node's upstream side says
    // how its binds are doing (a record it has not started yet has no entry).
    let live = crate::upstream::status();
    let connectors: Vec<Value> = view
        .connectors
        .iter()
        .map(
            |(name, enabled, binds)| match live.iter().find(|s| &s.name == name) {
                Some(s) => json!({
                    "name": name,
                    "enabled": enabled,
                    "binds_configured": s.binds_configured,
                    "binds_up": s.binds_up,
                    "state": connector_state(s.enabled, s.binds_configured, s.binds_up),
                    "last_error": s.last_error,
                    "submitted": s.submitted,
                    "failed": s.failed,
                }),
                None => json!({
                    "name": name,
                    "enabled": enabled,
                    "binds_configured": binds,
                    "binds_up": Value::Null,
                    "state": "unknown",
                    "last_error": Value::Null,
                }),
            },
        )
        .collect();
    Reply::json(
        200,
        json!({
            "node_id": env.node_id,
            "leader_id": metrics.leader_id,
            "term": metrics.term,
            "commit_index": metrics.commit_index,
            "applied_index": metrics.applied_index,
            "members": members,
            "nodes": view.nodes.iter().map(|(id, incarnation, up)| {
                json!({"id": id, "incarnation": incarnation, "up": up})
            }).collect::<Vec<_>>(),
            "binds": binds,
            "connectors": connectors,
            "messages_in_state": view.messages,
        }),
    )
}

/// One word for a connector's binds on this node.
fn connector_state(enabled: bool, configured: u32, up: u32) -> &'static str {
    match (enabled, up) {
        (false, _) => "disabled",
        (true, 0) => "down",
        (true, up) if up < configured => "degraded",
        (true, _) => "up",
    }
}

async fn message(env: &AdminEnv<'_>, id_text: &str) -> Reply {
    let Ok(id) = MessageId::parse(id_text) else {
        return Reply::error(
            400,
            "invalid_id",
            format!("`{id_text}` is not a message id (20 base32 characters)"),
        );
    };
    match env
        .store
        .query(move |state| state.message(&id).cloned())
        .await
    {
        Ok(Some(found)) => Reply::json(200, message_view(&found)),
        Ok(None) => Reply::error(404, "not_found", format!("no message {id} in the state")),
        Err(e) => store_error(e),
    }
}

/// The whole record of a message, for an operator (any account's).
fn message_view(message: &Message) -> Value {
    let a = &message.accept;
    let address = |x: &crate::store::command::Address| json!({"ton": x.ton, "npi": x.npi, "digits": x.digits});
    json!({
        "id": a.id.to_string(),
        "account": a.account,
        "state": format!("{:?}", message.state),
        "source": address(&a.source),
        "destination": address(&a.destination),
        "data_coding": a.data_coding,
        "esm_class": a.esm_class,
        "protocol_id": a.protocol_id,
        "priority": a.priority,
        "registered_delivery": a.registered_delivery,
        "payload_hex": hex::encode(&a.payload),
        "segment": a.segment.map(|s| json!({"reference": s.reference, "total": s.total, "sequence": s.sequence})),
        "received_at_ms": a.received_at_ms,
        "validity_until_ms": a.validity_until_ms,
        "scheduled_at_ms": a.scheduled_at_ms,
        "client_ref": a.client_ref,
        "accepted_by_node": a.owner_node,
        "owner_node": message.owner,
        "attempts": message.attempts,
        "last_status": message.last_status,
        "retry_at_ms": message.retry_at_ms,
        "upstreams": message.upstreams.iter().map(|u| json!({
            "connector": u.connector,
            "upstream_id": u.upstream_id,
            "submitted_at_ms": u.submitted_at_ms,
        })).collect::<Vec<_>>(),
        "done_at_ms": message.done_at_ms,
        "receipt_err": message.receipt_err,
        "receipt_raw": message.receipt_raw.as_deref().map(String::from_utf8_lossy),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_required_and_compared() {
        assert_eq!(authorize("", Some(b"Bearer x")).unwrap_err().status, 404);
        assert_eq!(authorize("s3cret", None).unwrap_err().status, 401);
        assert_eq!(
            authorize("s3cret", Some(b"Basic czNjcmV0"))
                .unwrap_err()
                .status,
            401
        );
        let wrong = authorize("s3cret", Some(b"Bearer s3cre")).unwrap_err();
        assert_eq!(wrong.status, 401);
        assert_eq!(wrong.body["error"]["code"], "unauthorized");
        assert!(authorize("s3cret", Some(b"Bearer s3cret")).is_ok());
    }

    #[test]
    fn field_errors_carry_the_field() {
        let reply = Reply::invalid(&FieldError {
            field: Some("max_tps".into()),
            message: "invalid type".into(),
        });
        assert_eq!(reply.status, 422);
        assert_eq!(reply.body["error"]["field"], "max_tps");
        assert_eq!(reply.body["error"]["code"], "invalid_field");
    }

    #[test]
    fn connector_state_words() {
        assert_eq!(connector_state(false, 2, 2), "disabled");
        assert_eq!(connector_state(true, 2, 0), "down");
        assert_eq!(connector_state(true, 2, 1), "degraded");
        assert_eq!(connector_state(true, 2, 2), "up");
    }

    #[test]
    fn methods_map_to_verbs() {
        assert_eq!(Verb::from_method("PATCH"), Verb::Patch);
        assert_eq!(Verb::from_method("POST"), Verb::Other);
    }
}
