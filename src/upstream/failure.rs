//! What went wrong with one upstream attempt, decided once from a single walk of the error
//! chain: which phase failed (`kind`) and whose fault it was (`side`). Retry, passive
//! ejection and the client's status code are all derived from this one value.

use std::error::Error as _;

use super::body::{AlreadyClaimed, BodySlot, BodyTimeout, Cut, OverLimit};

/// The phase an attempt failed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// TCP connect (or TLS handshake) failed: nothing reached the backend.
    Connect,
    /// TCP connect + TLS handshake took longer than `timeouts.upstream_connect`.
    ConnectTimeout,
    /// No response headers within `timeouts.upstream_response_header` after the body was sent.
    ResponseTimeout,
    /// The connection failed after the request was (partly) sent.
    Reset,
    /// The client's body crossed `limits.max_body_bytes` while streaming.
    BodyTooLarge,
    /// The client paused its body longer than `timeouts.request_body`.
    BodyTimeout,
    /// The client sent its body below `limits.min_request_body_rate` after the grace
    /// period, or for longer than `timeouts.request_body_total`.
    BodyTooSlow,
    /// The client's body itself failed (bad framing, reset stream, already consumed).
    ClientBody,
}

/// Whose fault a failure is: a client-side failure never counts against the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client's request body caused it.
    Client,
    /// The backend or the network to it.
    Backend,
}

/// One failed attempt, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpstreamFailure {
    /// The phase that failed.
    pub(crate) kind: FailureKind,
    /// Whose fault it was.
    pub(crate) side: Side,
}

impl UpstreamFailure {
    /// The backend sent no response headers in time.
    pub(crate) const RESPONSE_TIMEOUT: UpstreamFailure = UpstreamFailure {
        kind: FailureKind::ResponseTimeout,
        side: Side::Backend,
    };

    /// Classify a client error. `slot` is the streamed request body, whose flags say what
    /// the client's side did (they are set where the body failed, before the error surfaced).
    pub(crate) fn of(
        err: &hyper_util::client::legacy::Error,
        slot: Option<&BodySlot>,
    ) -> UpstreamFailure {
        let client = |kind| UpstreamFailure {
            kind,
            side: Side::Client,
        };
        if let Some(s) = slot {
            if s.over_limit() {
                return client(FailureKind::BodyTooLarge);
            }
            match s.cut() {
                Some(Cut::Idle) => return client(FailureKind::BodyTimeout),
                Some(Cut::Rate | Cut::Total) => return client(FailureKind::BodyTooSlow),
                None => {}
            }
            if s.client_failed() {
                return client(FailureKind::ClientBody);
            }
        }
        let mut timed_out = false;
        let mut client_side = false;
        let mut src = err.source();
        while let Some(e) = src {
            if e.is::<OverLimit>() {
                return client(FailureKind::BodyTooLarge);
            }
            if e.is::<BodyTimeout>() {
                return client(FailureKind::BodyTimeout);
            }
            if e.is::<AlreadyClaimed>() {
                return client(FailureKind::ClientBody);
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                // A user error is the request body's (ours to send, the client's to give).
                client_side |= h.is_user();
            }
            src = e.source();
        }
        let kind = match (err.is_connect(), timed_out) {
            (true, true) => FailureKind::ConnectTimeout,
            (true, false) => FailureKind::Connect,
            (false, _) => FailureKind::Reset,
        };
        UpstreamFailure {
            kind,
            side: if client_side {
                Side::Client
            } else {
                Side::Backend
            },
        }
    }

    /// Nothing of the request reached the backend.
    pub(crate) fn before_sending(self) -> bool {
        matches!(
            self.kind,
            FailureKind::Connect | FailureKind::ConnectTimeout
        )
    }

    /// The client's body failed: the request ends here whatever the retry policy says.
    pub(crate) fn client_body(self) -> bool {
        matches!(
            self.kind,
            FailureKind::BodyTooLarge
                | FailureKind::BodyTimeout
                | FailureKind::BodyTooSlow
                | FailureKind::ClientBody
        )
    }
}
