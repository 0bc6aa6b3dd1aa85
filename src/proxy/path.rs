//! Request path normalisation (RFC 3986 §6.2.2): percent-encoded unreserved characters are
//! decoded (`%7E` → `~`, `%2e` → `.`), remaining percent-encodings are upper-cased, repeated
//! slashes are merged, and `.`/`..` segments are removed (§5.2.4). A path that would climb
//! above the root, a malformed percent-encoding or a backslash is refused. An encoded slash
//! (`%2F`) or backslash (`%5C`) stays encoded: it is data inside a segment, never a separator
//! (so `/a%2F..%2Fb` is one segment and is not collapsed).
//!
//! Route matching and the path sent to backends both use the result, so a path-prefix route
//! sees exactly what the backend sees. Already-normal paths (nearly all) are checked without
//! allocating.

use http::uri::{PathAndQuery, Uri};

use crate::observe::metrics::PathMetrics;
use crate::proxy::error::ProxyError;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// `..` segments climb above the root.
    #[error("the path climbs above the root")]
    AboveRoot = 0,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the path")]
    BadEscape = 1,
    /// A literal backslash (not a URI character; some servers treat it as `/`).
    #[error("backslash in the path")]
    Backslash = 2,
}

/// Normalise `req`'s path in place (the query is kept as sent), counting what changed.
pub(crate) fn apply<B>(req: &mut http::Request<B>, m: &PathMetrics) -> Result<(), ProxyError> {
    let normalized = match normalize_path(req.uri().path()) {
        Ok(None) => return Ok(()),
        Ok(Some(p)) => p,
        Err(e) => {
            m.rejected[e as usize].increment(1);
            return Err(ProxyError::BadRequest(e.reason()));
        }
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = PathAndQuery::try_from(pq).ok();
    let Ok(uri) = Uri::from_parts(parts) else {
        m.rejected[PathError::BadEscape as usize].increment(1);
        return Err(ProxyError::BadRequest("invalid path"));
    };
    *req.uri_mut() = uri;
    m.normalized.increment(1);
    Ok(())
}

impl PathError {
    fn reason(self) -> &'static str {
        match self {
            PathError::AboveRoot => "path climbs above the root",
            PathError::BadEscape => "malformed percent-encoding in the path",
            PathError::Backslash => "backslash in the path",
        }
    }
}

/// `None` when `path` is already normal; `Some(normalised)` when it changed.
pub(crate) fn normalize_path(path: &str) -> Result<Option<String>, PathError> {
    if is_normal(path.as_bytes())? {
        return Ok(None);
    }
    let decoded = decode_unreserved(path.as_bytes())?;
    let out = remove_dots(&decoded)?;
    Ok((out != path).then_some(out))
}

/// Fast check: no escapes that need work, no `//`, no `.`/`..` segments.
fn is_normal(p: &[u8]) -> Result<bool, PathError> {
    if p.first() != Some(&b'/') {
        // Asterisk-form (`OPTIONS *`) and anything odd go through the slow path, which keeps
        // a non-slash start unchanged.
        return Ok(p == b"*");
    }
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (h, l) = hex_pair(p, i)?;
                let v = (h << 4) | l;
                if is_unreserved(v)
                    || p[i + 1].is_ascii_lowercase()
                    || p[i + 2].is_ascii_lowercase()
                {
                    return Ok(false);
                }
                i += 3;
                continue;
            }
            b'/' => {
                let rest = &p[i + 1..];
                if rest.first() == Some(&b'/')
                    || rest == b"."
                    || rest == b".."
                    || rest.starts_with(b"./")
                    || rest.starts_with(b"../")
                {
                    return Ok(false);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(true)
}

fn hex_pair(p: &[u8], i: usize) -> Result<(u8, u8), PathError> {
    let h = p.get(i + 1).and_then(|c| hex(*c));
    let l = p.get(i + 2).and_then(|c| hex(*c));
    match (h, l) {
        (Some(h), Some(l)) => Ok((h, l)),
        _ => Err(PathError::BadEscape),
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Decode `%XX` of unreserved characters; upper-case the hex of the others.
fn decode_unreserved(p: &[u8]) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (h, l) = hex_pair(p, i)?;
                let v = (h << 4) | l;
                if is_unreserved(v) {
                    out.push(char::from(v));
                } else {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(h)]));
                    out.push(char::from(HEX[usize::from(l)]));
                }
                i += 3;
            }
            c => {
                // The URI parser only admits ASCII here.
                out.push(char::from(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Merge slashes and remove `.`/`..` segments; `..` above the root is an error.
fn remove_dots(p: &str) -> Result<String, PathError> {
    if !p.starts_with('/') {
        return Ok(p.to_owned());
    }
    let mut segs: Vec<&str> = Vec::new();
    let mut parts = p[1..].split('/').peekable();
    // A trailing `/`, `/.` or `/..` leaves a directory path (ends with `/`).
    let mut trailing = false;
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            "" => trailing = last,
            "." => trailing = last,
            ".." => {
                if segs.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing = last;
            }
            s => {
                segs.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(p.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segs.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize_path(p).map(|o| o.unwrap_or_else(|| p.to_owned()))
    }

    #[test]
    fn normal_paths_are_untouched_without_allocating() {
        for p in ["/", "/a/b", "/a/b/", "/a.b/c..d/.e", "/%2F/%3A", "*"] {
            assert_eq!(normalize_path(p), Ok(None), "{p}");
        }
        assert_eq!(normalize_path("/a%2Fb"), Ok(None), "an encoded slash stays");
    }

    #[test]
    fn rfc3986_examples_and_hostile_paths() {
        let cases = [
            ("/static/../admin", "/admin"),
            ("/static/%2e%2e/admin", "/admin"),
            ("/static/%2E%2e/admin", "/admin"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../", "/a/"),
            ("/%7Euser/%61bc", "/~user/abc"),
            ("/a%2fb", "/a%2Fb"),
            ("/a/%2F../b", "/a/%2F../b"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/.", "/"),
            ("/..x/.y", "/..x/.y"),
        ];
        for (input, want) in cases {
            assert_eq!(n(input).as_deref(), Ok(want), "{input}");
        }
        for bad in [
            "/../../etc/passwd",
            "/..",
            "/a/../..",
            "/%2e%2e/x",
            "/a/%2E%2E/%2e%2e",
        ] {
            assert_eq!(n(bad), Err(PathError::AboveRoot), "{bad}");
        }
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%4"), Err(PathError::BadEscape));
        assert_eq!(n("/a\\..\\b"), Err(PathError::Backslash));
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in ["/a/./b//../c/%7e/%2f/", "/x/%2e/y", "//", "/a/b/../../c"] {
            let once = n(p).unwrap();
            assert_eq!(normalize_path(&once), Ok(None), "{p} -> {once}");
        }
    }
}
