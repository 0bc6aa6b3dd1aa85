//! The network edge: listeners and accept loops, PROXY protocol, TLS handshakes, HTTP/1.1
//! or h2 (ALPN or preface sniffing), connection lifetimes and drain.

pub(crate) mod accept;
pub(crate) mod prefixed;
pub(crate) mod proxy_protocol;
pub(crate) mod server;
