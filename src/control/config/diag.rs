//! Configuration diagnostics: every error carries the file, line, column and field path.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Document, Item, TableLike, Value};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based; 0 when the position is unknown.
    pub line: usize,
    /// 1-based; 0 when the position is unknown.
    pub column: usize,
    /// Dotted field path such as `routes[2].service`; empty for syntax errors.
    pub path: String,
    /// What is wrong, e.g. "unknown service `ap` (did you mean `app`?)".
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A list of errors, printed one per line.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Byte offset → (line, column), both 1-based.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = src[line_start..offset].chars().count() + 1;
    (line, column)
}

/// Source positions for field paths, from a span-preserving parse of the same text.
pub struct Locator<'a> {
    file: &'a Path,
    src: &'a str,
    doc: Option<Document<&'a str>>,
}

impl<'a> Locator<'a> {
    /// Positions in `src`, the text of `file`.
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Locator {
            file,
            src,
            doc: Document::parse(src).ok(),
        }
    }

    /// An error at `path` (e.g. `services.shop.backends[1].region`).
    pub fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = self
            .span_of(path)
            .map_or((0, 0), |r| line_col(self.src, r.start));
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            path: path.to_owned(),
            message: message.into(),
        }
    }

    /// An error from the TOML parser or serde, positioned by its span; the path is inferred.
    pub fn from_toml(&self, err: &toml::de::Error) -> ConfigError {
        let mut span = err.span();
        // serde reports unknown fields at the enclosing table; point at the key itself.
        if let (Some(r), Some(field)) = (span.clone(), unknown_field_name(err.message())) {
            if let Some(at) = find_key(self.src, r.start, field) {
                span = Some(at..at + field.len());
            }
        }
        let (line, column) = span.clone().map_or((0, 0), |r| line_col(self.src, r.start));
        let path = span.map(|r| self.path_at(r.start)).unwrap_or_default();
        let mut message = err.message().trim().to_owned();
        if let Some(hint) = unknown_field_hint(&message) {
            message.push_str(&hint);
        }
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            path,
            message,
        }
    }

    fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut item: &Item = doc.as_item();
        let mut best = None;
        for seg in split_path(path) {
            let next = match seg {
                Seg::Key(k) => {
                    if let Some(t) = item.as_table_like() {
                        if let Some((key, _)) = t.get_key_value(k) {
                            best = key.span().or(best);
                        }
                    }
                    item.get(k)
                }
                Seg::Index(i) => item.get(i),
            };
            match next {
                Some(n) => {
                    item = n;
                    best = item_span(item).or(best);
                }
                None => break,
            }
        }
        best
    }

    /// The dotted path of the innermost key whose value contains `offset`.
    fn path_at(&self, offset: usize) -> String {
        let Some(doc) = self.doc.as_ref() else {
            return String::new();
        };
        let mut out = String::new();
        walk_table(doc.as_table(), offset, &mut out);
        out
    }
}

fn item_span(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::Value(v) => v.span(),
        Item::Table(t) => t.span(),
        Item::ArrayOfTables(a) => a.span(),
        Item::None => None,
    }
}

enum Node<'a> {
    Table(&'a dyn TableLike),
    Value(&'a Value),
}

/// Earliest source position inside a table (implicit tables have no span of their own).
fn first_start(t: &dyn TableLike) -> Option<usize> {
    t.iter()
        .filter_map(|(k, v)| {
            let key = t
                .get_key_value(k)
                .and_then(|(key, _)| key.span())
                .map(|r| r.start);
            let own = match v {
                Item::Table(tab) => tab.span().map(|r| r.start).or_else(|| first_start(tab)),
                Item::ArrayOfTables(a) => {
                    a.iter().filter_map(|tab| tab.span().map(|r| r.start)).min()
                }
                other => item_span(other).map(|r| r.start),
            };
            match (key, own) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        })
        .min()
}

fn walk_table(t: &dyn TableLike, offset: usize, out: &mut String) {
    // Tables run until the next one starts (no end); values end with their span.
    let mut best: Option<(usize, String, Node<'_>)> = None;
    let mut consider = |start: Option<usize>, end: Option<usize>, seg: String, node| {
        let Some(start) = start else { return };
        if start <= offset
            && end.is_none_or(|e| offset < e)
            && best.as_ref().is_none_or(|b| start >= b.0)
        {
            best = Some((start, seg, node));
        }
    };
    for (k, v) in t.iter() {
        let key_start = t
            .get_key_value(k)
            .and_then(|(key, _)| key.span())
            .map(|r| r.start);
        match v {
            Item::ArrayOfTables(arr) => {
                for (i, tab) in arr.iter().enumerate() {
                    consider(
                        tab.span().map(|r| r.start),
                        None,
                        format!("{k}[{i}]"),
                        Node::Table(tab),
                    );
                }
            }
            Item::Table(tab) => {
                let start = tab
                    .span()
                    .map(|r| r.start)
                    .or_else(|| first_start(tab))
                    .or(key_start);
                consider(start, None, k.to_owned(), Node::Table(tab));
            }
            Item::Value(val) => {
                let end = val.span().map(|r| r.end);
                consider(
                    key_start.or(val.span().map(|r| r.start)),
                    end,
                    k.to_owned(),
                    Node::Value(val),
                );
            }
            Item::None => {}
        }
    }
    if let Some((_, seg, node)) = best {
        if !out.is_empty() && !seg.starts_with('[') {
            out.push('.');
        }
        out.push_str(&seg);
        match node {
            Node::Table(t) => walk_table(t, offset, out),
            Node::Value(v) => walk_value(v, offset, out),
        }
    }
}

fn walk_value(v: &Value, offset: usize, out: &mut String) {
    if let Some(t) = v.as_inline_table() {
        walk_table(t, offset, out);
    } else if let Some(arr) = v.as_array() {
        for (i, el) in arr.iter().enumerate() {
            if el.span().is_some_and(|r| r.contains(&offset)) {
                out.push_str(&format!("[{i}]"));
                walk_value(el, offset, out);
                return;
            }
        }
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Key(name));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

fn unknown_field_name(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")?
        .split_once('`')
        .map(|(f, _)| f)
}

/// Offset of `key` used as a key (`key =` after a line start, `{` or `,`) at or after `from`.
fn find_key(src: &str, from: usize, key: &str) -> Option<usize> {
    // An empty key (`"" = …`) is never written bare, and would match everywhere without
    // advancing (found by `fuzz/`, target config: it looped forever).
    if key.is_empty() {
        return None;
    }
    let b = src.as_bytes();
    let mut i = from.min(src.len());
    while let Some(pos) = src.get(i..)?.find(key) {
        let at = i + pos;
        let before = src[..at].trim_end_matches([' ', '\t']);
        let ok_before = before.is_empty() || before.ends_with(['\n', '{', ',']);
        let after = src[at + key.len()..].trim_start_matches([' ', '\t']);
        if ok_before && after.starts_with('=') && b.get(at + key.len()).is_some() {
            return Some(at);
        }
        i = at + key.len();
    }
    None
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" add the nearest valid key.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (given, rest) = rest.split_once('`')?;
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let best = candidates.iter().min_by_key(|c| edit_distance(given, c))?;
    (edit_distance(given, best) <= given.len().max(2) / 2 + 1)
        .then(|| format!(" (did you mean `{best}`?)"))
}

/// Levenshtein distance over bytes.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let s = "a = 1\nbb = 2\n";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 6), (2, 1));
        assert_eq!(line_col(s, 8), (2, 3));
    }

    #[test]
    fn locates_nested_paths() {
        let src = "[services.shop]\nbackends = [\n  { region = \"eu\", address = \"x\" },\n]\n\n[[routes]]\nservice = \"nope\"\n";
        let loc = Locator::new(Path::new("r.toml"), src);
        let e = loc.error("routes[0].service", "unknown service `nope`");
        assert_eq!((e.line, e.column), (7, 11));
        let e = loc.error("services.shop.backends[0].region", "x");
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "r.toml:3:14: services.shop.backends[0].region: x"
        );
    }

    #[test]
    fn hint_suggests_nearest_key() {
        let m = "unknown field `hots`, expected one of `hosts`, `path_prefix`, `service`";
        assert_eq!(
            unknown_field_hint(m).as_deref(),
            Some(" (did you mean `hosts`?)")
        );
        let m = "unknown field `zzzzzzzz`, expected one of `hosts`, `service`";
        assert_eq!(unknown_field_hint(m), None);
    }
}
