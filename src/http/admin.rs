//! The admin API (`/admin/...`): operators' reads and changes of accounts,
//! connectors, routes and number ranges, behind the admin bearer token.
//!
//! Owns: everything under `/admin/`. Must not touch: the customer API, the
//! listeners or the router (see the parent module), which hands every
//! `/admin/...` request here on the listener that serves the admin API.
//!
//! This first version answers every admin path with 404 JSON: no admin
//! endpoint exists yet on this branch.

use std::rc::Rc;

use hyper::body::Incoming;
use hyper::Request;

use super::{not_found, HttpContext, HttpResponse};

/// Answers one `/admin/...` request.
pub async fn handle(context: Rc<HttpContext>, request: Request<Incoming>) -> HttpResponse {
    let _ = (context, request);
    not_found()
}
