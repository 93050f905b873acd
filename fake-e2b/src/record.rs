//! The outermost layer of both servers: records every request in arrival order and serves the
//! responses injected with `FakeE2b::fail_next` in place of the real handler.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Recorded;
use crate::state::{InjectedFailure, MAX_BODY_BYTES, MAX_RECORDED_REQUESTS, Shared, lock};

pub(crate) async fn record_and_inject(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large for fake-e2b").into_response();
    };
    let method = parts.method.to_string();
    let path = parts.uri.path().to_string();
    {
        let mut recorded = lock(&shared.recorded);
        if recorded.len() == MAX_RECORDED_REQUESTS {
            recorded.pop_front();
        }
        recorded.push_back(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    if let Some(failure) = shared.take_failure(&method, &path) {
        return injected(failure);
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

fn injected(failure: InjectedFailure) -> Response {
    let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let is_json = serde_json::from_str::<serde_json::Value>(&failure.body).is_ok();
    let mut response = (status, failure.body).into_response();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    if is_json {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    for (name, value) in failure.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
    response
}
