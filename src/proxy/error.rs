//! `ProxyError`: everything that can go wrong at the request boundary, and its one mapping
//! to a status code and a small response that identifies geolb.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::proxy::body::RespBody;
use crate::upstream::failure::{FailureKind, UpstreamFailure};

/// A request-level failure. `status()` is the single error→status mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("host not covered by this connection's certificate")]
    Misdirected,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request body over the limit")]
    BodyTooLarge,
    #[error("method not allowed at the edge (CONNECT, TRACE)")]
    MethodNotAllowed,
    #[error("no healthy backend")]
    NoHealthyBackend,
    #[error("upstream connect failed")]
    UpstreamConnect,
    #[error("upstream connect timed out")]
    UpstreamConnectTimeout,
    #[error("upstream response timed out")]
    UpstreamTimeout,
    #[error("upstream connection failed after the request was sent")]
    UpstreamReset,
    #[error("request timed out")]
    RequestTimeout,
    #[error("client request body failed")]
    ClientBody,
    #[error("client stopped sending its request body")]
    ClientBodyTimeout,
    #[error("retry budget exhausted")]
    RetryBudget,
    #[error("no region holds the primary database (write held, then refused)")]
    WriteHeld,
    #[error("the request already passed this proxy (Via loop)")]
    LoopDetected,
    #[error("client sent its request body too slowly")]
    ClientBodyTooSlow,
}

impl ProxyError {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::BadRequest(_) | ProxyError::ClientBody => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientBodyTimeout | ProxyError::ClientBodyTooSlow => {
                StatusCode::REQUEST_TIMEOUT
            }
            ProxyError::LoopDetected => StatusCode::LOOP_DETECTED,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoHealthyBackend | ProxyError::RetryBudget | ProxyError::WriteHeld => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamConnect | ProxyError::UpstreamReset => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnectTimeout
            | ProxyError::UpstreamTimeout
            | ProxyError::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Short machine-readable code, used in logs and the `x-geolb-error` header.
    pub(crate) fn code(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::Misdirected => "misdirected",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::NoHealthyBackend => "no_healthy_backend",
            ProxyError::UpstreamConnect => "upstream_connect",
            ProxyError::UpstreamConnectTimeout => "upstream_connect_timeout",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamReset => "upstream_reset",
            ProxyError::RequestTimeout => "request_timeout",
            ProxyError::ClientBody => "client_body",
            ProxyError::ClientBodyTimeout => "client_body_timeout",
            ProxyError::RetryBudget => "retry_budget",
            ProxyError::WriteHeld => "write_held",
            ProxyError::LoopDetected => "loop_detected",
            ProxyError::ClientBodyTooSlow => "client_body_too_slow",
        }
    }

    /// The response geolb sends for this error.
    pub(crate) fn response(self) -> Response<RespBody> {
        let mut r = error_response(self.status(), self.code());
        if self == ProxyError::WriteHeld {
            // The primary is usually back within seconds (a failover); RFC 9110 §10.2.3.
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<UpstreamFailure> for ProxyError {
    fn from(f: UpstreamFailure) -> ProxyError {
        match f.kind {
            FailureKind::Connect => ProxyError::UpstreamConnect,
            FailureKind::ConnectTimeout => ProxyError::UpstreamConnectTimeout,
            FailureKind::ResponseTimeout => ProxyError::UpstreamTimeout,
            FailureKind::Reset => ProxyError::UpstreamReset,
            FailureKind::BodyTooLarge => ProxyError::BodyTooLarge,
            FailureKind::BodyTimeout => ProxyError::ClientBodyTimeout,
            FailureKind::BodyTooSlow => ProxyError::ClientBodyTooSlow,
            FailureKind::ClientBody => ProxyError::ClientBody,
        }
    }
}

/// A small plain-text response naming geolb; no internals.
pub(crate) fn error_response(status: StatusCode, code: &'static str) -> Response<RespBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let text = format!("{} {reason} (geolb: {code})\n", status.as_u16());
    let mut resp = Response::new(RespBody::full(Bytes::from(text)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::SERVER, HeaderValue::from_static("geolb"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(code) {
        h.insert("x-geolb-error", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_total_and_sane() {
        assert_eq!(
            ProxyError::UpstreamConnect.status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::UpstreamTimeout.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::BodyTooLarge.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(ProxyError::Misdirected.status().as_u16(), 421);
        let r = ProxyError::NoRoute.response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()["server"], "geolb");
    }
}
