//! PROXY protocol v1/v2 header reading: exact-length reads (never consumes application bytes),
//! bounded size, parsed with `ppp`.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line including CRLF (spec: 107).
const V1_MAX: usize = 107;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PpError {
    #[error("connection closed before the PROXY header")]
    Eof,
    #[error("not a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Read one PROXY header. `Ok(Some(addr))` is the client address it declares; `Ok(None)` a
/// LOCAL / UNKNOWN header (use the socket peer).
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<SocketAddr>, PpError> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head[..8])
        .await
        .map_err(|_| PpError::Eof)?;
    if head[..8] == V2_SIG[..8] {
        r.read_exact(&mut head[8..16])
            .await
            .map_err(|_| PpError::Eof)?;
        if head[..12] != V2_SIG {
            return Err(PpError::Missing);
        }
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if len > 1024 {
            return Err(PpError::Malformed(format!("v2 length {len} too large")));
        }
        let mut buf = vec![0u8; 16 + len];
        buf[..16].copy_from_slice(&head);
        r.read_exact(&mut buf[16..])
            .await
            .map_err(|_| PpError::Eof)?;
        let h =
            ppp::v2::Header::try_from(&buf[..]).map_err(|e| PpError::Malformed(e.to_string()))?;
        if h.command == ppp::v2::Command::Local {
            return Ok(None);
        }
        return Ok(match h.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            ppp::v2::Addresses::IPv6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            _ => None,
        });
    }
    if &head[..6] != b"PROXY " {
        return Err(PpError::Missing);
    }
    let mut line = Vec::with_capacity(V1_MAX);
    line.extend_from_slice(&head[..8]);
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(PpError::Malformed("v1 line too long".into()));
        }
        let b = r.read_u8().await.map_err(|_| PpError::Eof)?;
        line.push(b);
    }
    // ASCII only: `ppp` slices the line by byte index and panics inside a multi-byte
    // character (found by `fuzz/`, target proxy_protocol).
    if !line.is_ascii() {
        return Err(PpError::Malformed("not ASCII".into()));
    }
    let s = std::str::from_utf8(&line).map_err(|_| PpError::Malformed("not ASCII".into()))?;
    let h = ppp::v1::Header::try_from(s).map_err(|e| PpError::Malformed(e.to_string()))?;
    Ok(match h.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, PpError>, Vec<u8>) {
        let mut r = bytes;
        let res = read_header(&mut r).await;
        (res, r.to_vec())
    }

    #[tokio::test]
    async fn v1_and_v2_leave_payload_untouched() {
        let (res, rest) = parse(b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 443\r\nGET /").await;
        assert_eq!(res.unwrap(), Some("203.0.113.9:5555".parse().unwrap()));
        assert_eq!(rest, b"GET /");
        let h = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:1234".parse::<SocketAddr>().unwrap(),
                "[::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = h.clone();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (res, rest) = parse(&bytes).await;
        assert_eq!(res.unwrap(), Some("[2001:db8::7]:1234".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01");
        let (res, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(res.unwrap(), None);
    }

    #[tokio::test]
    async fn garbage_is_rejected() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n").await.0,
            Err(PpError::Missing)
        );
        assert!(matches!(
            parse(b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n").await.0,
            Err(PpError::Malformed(_))
        ));
        assert!(matches!(
            parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'A', b'A'].repeat(20))
                .await
                .0,
            Err(PpError::Malformed(_))
        ));
        assert_eq!(parse(b"PROX").await.0, Err(PpError::Eof));
        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&v2).await.0, Err(PpError::Malformed(_))));
    }
}
