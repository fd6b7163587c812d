//! The HTTP face of a node: one hyper http1 server per connection core.
//!
//! Owns: the HTTP listeners of a core (SO_REUSEPORT on `http.listen`, and on
//! `http.admin_listen` when the admin API listens apart), the per-connection
//! task (keep-alive, header read timeout, bounded connections per core,
//! graceful close on shutdown), the router (method + path), counting every
//! request by route and status (`tern_http_requests_total`, and its duration
//! by route), the per-core [`HttpContext`], the body size limit and the JSON
//! error shape
//! `{"error":{"code":…,"message":…}}`; and the operational routes `/health`,
//! `/ready`, `/metrics`. Must not touch: HTTP parsing (hyper does it, see
//! `rt`), the store's internals (only `StoreHandle`), SMPP sessions, or other
//! cores. The customer API lives in `api`, the admin API in `admin`.
//!
//! Everything here lives on one executor thread: `Cell`/`RefCell`, no locks,
//! no borrow held across an await.

pub mod admin;
pub mod api;
pub mod rfc3339;
pub mod rt;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::future::or;
use glommio::net::TcpListener;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::config::Resolved;
use crate::engine::shard::Shard;
use crate::metrics::HttpRoute;
use crate::store::driver::StoreHandle;

/// Every response body is one buffer.
pub type HttpResponse = Response<Full<Bytes>>;

/// How often a connection looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(200);
/// A client has this long to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that stops reading our answers is dropped after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Content type of `/metrics` (Prometheus text exposition 0.0.4).
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// A connection's in-flight answers finish within this after the stop flag.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the HTTP server of every core applies, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    /// The admin API's own address; `None` = `/admin/...` on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token of the admin API; empty = the admin API is off.
    pub admin_token: String,
    pub max_body_bytes: usize,
    pub max_connections_per_core: usize,
}

impl HttpSettings {
    /// `None` when the configuration turns HTTP off (`http.listen = ""`).
    pub fn from_config(resolved: &Resolved) -> Option<HttpSettings> {
        let listen = resolved.http_listen?;
        let http = &resolved.config.http;
        Some(HttpSettings {
            listen,
            admin_listen: resolved.http_admin_listen,
            admin_token: http.admin_token.clone(),
            max_body_bytes: usize::try_from(http.max_body_bytes).unwrap_or(usize::MAX),
            max_connections_per_core: resolved.config.smpp.max_connections_per_core as usize,
        })
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    /// Customer API, health, metrics, and the admin API unless it listens apart.
    Main,
    /// Only `/admin/...` (plus health), on `admin_listen`.
    Admin,
}

/// What one core's HTTP connections share.
pub struct HttpContext {
    shard: Rc<Shard>,
    settings: HttpSettings,
    open_connections: Cell<usize>,
    api: api::ApiState,
}

impl HttpContext {
    pub fn new(shard: Rc<Shard>, settings: HttpSettings) -> HttpContext {
        HttpContext {
            api: api::ApiState::new(shard.cores()),
            shard,
            settings,
            open_connections: Cell::new(0),
        }
    }

    pub fn shard(&self) -> &Rc<Shard> {
        &self.shard
    }

    pub fn store(&self) -> &StoreHandle {
        self.shard.store()
    }

    pub fn node_id(&self) -> u64 {
        self.shard.node_id()
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// The admin API's bearer token; empty when the admin API is off.
    pub fn admin_token(&self) -> &str {
        &self.settings.admin_token
    }

    pub fn open_connections(&self) -> usize {
        self.open_connections.get()
    }

    pub(crate) fn api(&self) -> &api::ApiState {
        &self.api
    }
}

/// The bound listeners of one core, before the shard exists.
pub struct Listeners {
    main: TcpListener,
    admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds this core's HTTP listeners (SO_REUSEPORT: every core binds the
    /// same address and the kernel spreads connections).
    pub fn bind(settings: &HttpSettings) -> Result<Listeners, String> {
        let main = TcpListener::bind(settings.listen)
            .map_err(|e| format!("cannot listen for HTTP on {}: {e}", settings.listen))?;
        let admin = match settings.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .map_err(|e| format!("cannot listen for the admin API on {addr}: {e}"))?,
            ),
            None => None,
        };
        Ok(Listeners { main, admin })
    }

    pub fn main_addr(&self) -> Option<SocketAddr> {
        self.main.local_addr().ok()
    }
}

/// This core's running HTTP server.
pub struct Server {
    context: Rc<HttpContext>,
    acceptors: Vec<glommio::Task<()>>,
}

impl Server {
    /// Starts accepting on `listeners`.
    pub fn start(shard: Rc<Shard>, settings: HttpSettings, listeners: Listeners) -> Server {
        let context = Rc::new(HttpContext::new(Rc::clone(&shard), settings));
        let weak = Rc::downgrade(&context);
        shard.on_account_change(Box::new(move |change| {
            if let Some(context) = weak.upgrade() {
                context.api.forget(change);
            }
        }));
        let mut acceptors = vec![glommio::spawn_local(accept_loop(
            Rc::clone(&context),
            listeners.main,
            Face::Main,
        ))];
        if let Some(admin) = listeners.admin {
            acceptors.push(glommio::spawn_local(accept_loop(
                Rc::clone(&context),
                admin,
                Face::Admin,
            )));
        }
        Server { context, acceptors }
    }

    pub fn context(&self) -> &Rc<HttpContext> {
        &self.context
    }

    /// Stops accepting (closing the listeners); open connections finish
    /// their answers and close on their own (see [`serve_connection`]).
    pub async fn stop_accepting(&mut self) {
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.cancel().await;
        }
    }
}

async fn accept_loop(context: Rc<HttpContext>, listener: TcpListener, face: Face) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if context.open_connections.get() >= context.settings.max_connections_per_core {
                    tracing::warn!("HTTP connection limit reached; closing");
                    drop(stream);
                    continue;
                }
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                context
                    .open_connections
                    .set(context.open_connections.get() + 1);
                let conn_context = Rc::clone(&context);
                glommio::spawn_local(async move {
                    serve_connection(Rc::clone(&conn_context), stream, peer, face).await;
                    let open = conn_context.open_connections.get();
                    conn_context.open_connections.set(open.saturating_sub(1));
                })
                .detach();
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!("HTTP accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

enum ConnEvent {
    Done(Result<(), hyper::Error>),
    Tick,
}

/// Serves one accepted connection (keep-alive) until the client closes it,
/// it breaks, or the node stops (then in-flight answers finish first).
async fn serve_connection(
    context: Rc<HttpContext>,
    stream: glommio::net::TcpStream,
    peer: SocketAddr,
    face: Face,
) {
    let service_context = Rc::clone(&context);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let context = Rc::clone(&service_context);
        async move {
            // A handler may refuse a request (401, 413, 405 ...) without
            // reading its body; hyper then closes the connection after the
            // answer. Saying so in the answer keeps a keep-alive client from
            // sending its next request into a connection that is going away.
            let has_body = !hyper::body::Body::is_end_stream(request.body());
            let started = std::time::Instant::now();
            let which = Route::of(
                request.method(),
                request.uri().path(),
                face,
                &context.settings,
            );
            let mut response = route(context, request, which).await;
            crate::metrics::http_request(
                which.metric_route(),
                response.status().as_u16(),
                started.elapsed(),
            );
            if has_body
                && (response.status().is_client_error() || response.status().is_server_error())
            {
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(rt::LocalTimer)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let connection = builder.serve_connection(rt::HyperIo::new(stream), service);
    futures_lite::pin!(connection);
    let mut stop_deadline = None;
    loop {
        let event = or(
            async { ConnEvent::Done(connection.as_mut().await) },
            async {
                glommio::timer::sleep(STOP_POLL).await;
                ConnEvent::Tick
            },
        )
        .await;
        match event {
            ConnEvent::Done(Ok(())) => return,
            ConnEvent::Done(Err(e)) => {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
                return;
            }
            ConnEvent::Tick => {
                if !context.shard.stopping() {
                    continue;
                }
                match stop_deadline {
                    None => {
                        connection.as_mut().graceful_shutdown();
                        stop_deadline = Some(std::time::Instant::now() + SHUTDOWN_GRACE);
                    }
                    Some(deadline) if std::time::Instant::now() >= deadline => return,
                    Some(_) => {}
                }
            }
        }
    }
}

/// Dispatches one request to the route its method and path chose.
async fn route(context: Rc<HttpContext>, request: Request<Incoming>, which: Route) -> HttpResponse {
    match which {
        Route::Health => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        Route::Ready => ready(&context),
        Route::Metrics => metrics(),
        Route::OpenApi => api::openapi(),
        Route::Submit => api::submit(&context, request).await,
        Route::Lookup => api::lookup(&context, request).await,
        Route::Admin => admin::handle(context, request).await,
        Route::MethodNotAllowed => method_not_allowed(),
        Route::NotFound => not_found(),
    }
}

/// Where a request goes, decided from its method and path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Ready,
    Metrics,
    OpenApi,
    Submit,
    Lookup,
    Admin,
    MethodNotAllowed,
    NotFound,
}

impl Route {
    /// The route's `route` label in the request metrics.
    fn metric_route(self) -> HttpRoute {
        match self {
            Route::Health => HttpRoute::Health,
            Route::Ready => HttpRoute::Ready,
            Route::Metrics => HttpRoute::Metrics,
            Route::OpenApi => HttpRoute::OpenApi,
            Route::Submit => HttpRoute::Submit,
            Route::Lookup => HttpRoute::Lookup,
            Route::Admin => HttpRoute::Admin,
            Route::MethodNotAllowed => HttpRoute::MethodNotAllowed,
            Route::NotFound => HttpRoute::NotFound,
        }
    }

    fn of(method: &Method, path: &str, face: Face, settings: &HttpSettings) -> Route {
        if path == "/admin" || path.starts_with("/admin/") {
            let admin_here = match face {
                Face::Admin => true,
                Face::Main => settings.admin_listen.is_none(),
            };
            return if admin_here {
                Route::Admin
            } else {
                Route::NotFound
            };
        }
        if face == Face::Admin && path != "/health" {
            return Route::NotFound;
        }
        let (route, wanted) = match path {
            "/health" => (Route::Health, Method::GET),
            "/ready" => (Route::Ready, Method::GET),
            "/metrics" => (Route::Metrics, Method::GET),
            "/v1/openapi.json" => (Route::OpenApi, Method::GET),
            "/v1/messages" => (Route::Submit, Method::POST),
            p if p.len() > "/v1/messages/".len() && p.starts_with("/v1/messages/") => {
                (Route::Lookup, Method::GET)
            }
            _ => return Route::NotFound,
        };
        if *method == wanted {
            route
        } else {
            Route::MethodNotAllowed
        }
    }
}

/// 200 when the store has a leader and this node applied all it knows
/// committed; 503 with the reason otherwise. Reads shared counters only.
fn ready(context: &HttpContext) -> HttpResponse {
    let metrics = context.store().metrics();
    if metrics.leader_id == 0 {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            "the store has no leader: a quorum of nodes is not reachable",
        );
    }
    if metrics.applied_index < metrics.commit_index {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "catching_up",
            &format!(
                "applied index {} is behind commit index {}",
                metrics.applied_index, metrics.commit_index
            ),
        );
    }
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ready",
            "leader": metrics.leader_id,
            "applied_index": metrics.applied_index,
        }),
    )
}

fn metrics() -> HttpResponse {
    let mut text = String::with_capacity(16 * 1024);
    crate::metrics::render_prometheus(&mut text);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
    );
    response
}

/// The error body every route uses.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

/// `{"error":{"code":code,"message":message}}` with `status`. `code` is
/// stable snake_case clients may branch on; `message` is for people.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    debug_assert!(
        code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "error code `{code}` is not snake_case"
    );
    json_response(
        status,
        &ErrorBody {
            error: ErrorDetail { code, message },
        },
    )
}

/// `value` as a JSON body with `status`.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> HttpResponse {
    let body = match serde_json::to_vec(value) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!("response did not serialise: {e}");
            let mut response = Response::new(Full::new(Bytes::from_static(
                br#"{"error":{"code":"internal","message":"response did not serialise"}}"#,
            )));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return response;
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn method_not_allowed() -> HttpResponse {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not accept that method",
    )
}

pub fn not_found() -> HttpResponse {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such resource")
}

/// The request body, at most `max_body_bytes` (413 JSON beyond, judged from
/// Content-Length before reading when the client sends one).
pub async fn read_body(
    context: &HttpContext,
    request: Request<Incoming>,
) -> Result<Bytes, HttpResponse> {
    let limit = context.settings.max_body_bytes;
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("the request body is larger than {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(json_error(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            &format!("the request body could not be read: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body_json(response: HttpResponse) -> serde_json::Value {
        let bytes = futures_lite::future::block_on(response.into_body().collect())
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).expect("a JSON body")
    }

    #[test]
    fn errors_have_the_documented_shape() {
        let response = json_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "too big");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        assert_eq!(
            body_json(response),
            serde_json::json!({"error": {"code": "body_too_large", "message": "too big"}})
        );
    }

    #[test]
    fn routes_by_method_and_path() {
        let settings = HttpSettings {
            listen: "127.0.0.1:8080".parse().expect("address"),
            admin_listen: None,
            admin_token: String::new(),
            max_body_bytes: 1024,
            max_connections_per_core: 10,
        };
        let apart = HttpSettings {
            admin_listen: Some("127.0.0.1:8081".parse().expect("address")),
            ..settings.clone()
        };
        let of = |method: Method, path: &str, face: Face, settings: &HttpSettings| {
            Route::of(&method, path, face, settings)
        };
        assert_eq!(
            of(Method::GET, "/health", Face::Main, &settings),
            Route::Health
        );
        assert_eq!(
            of(Method::POST, "/v1/messages", Face::Main, &settings),
            Route::Submit
        );
        assert_eq!(
            of(Method::GET, "/v1/messages", Face::Main, &settings),
            Route::MethodNotAllowed
        );
        assert_eq!(
            of(Method::GET, "/v1/messages/abc", Face::Main, &settings),
            Route::Lookup
        );
        assert_eq!(
            of(Method::GET, "/v1/messages/", Face::Main, &settings),
            Route::NotFound
        );
        assert_eq!(
            of(Method::GET, "/admin/accounts", Face::Main, &settings),
            Route::Admin
        );
        assert_eq!(
            of(Method::GET, "/admin/accounts", Face::Main, &apart),
            Route::NotFound
        );
        assert_eq!(
            of(Method::GET, "/admin/accounts", Face::Admin, &apart),
            Route::Admin
        );
        assert_eq!(
            of(Method::POST, "/v1/messages", Face::Admin, &apart),
            Route::NotFound
        );
        assert_eq!(
            of(Method::GET, "/nope", Face::Main, &settings),
            Route::NotFound
        );
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let response = metrics();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(PROMETHEUS_CONTENT_TYPE.as_bytes())
        );
    }
}
