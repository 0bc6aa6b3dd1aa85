//! Configuration diagnostics: every error carries the file, line, column and field path.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Document, Item};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the position is unknown.
    pub line: usize,
    /// 1-based; 0 when the position is unknown.
    pub column: usize,
    /// Dotted field path such as `routes[2].service`; empty for syntax errors.
    pub path: String,
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
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
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
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Locator { file, src, doc: Document::parse(src).ok() }
    }

    /// An error at `path` (e.g. `services.shop.backends[1].region`).
    pub fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.span_of(path).map_or((0, 0), |r| line_col(self.src, r.start));
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
        let span = err.span();
        let (line, column) = span.clone().map_or((0, 0), |r| line_col(self.src, r.start));
        let path = span.map(|r| self.path_at(r.start)).unwrap_or_default();
        let mut message = err.message().trim().to_owned();
        if let Some(hint) = unknown_field_hint(&message) {
            message.push_str(&hint);
        }
        ConfigError { file: self.file.to_path_buf(), line, column, path, message }
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
        let Some(doc) = self.doc.as_ref() else { return String::new() };
        let mut out = String::new();
        walk(doc.as_item(), offset, &mut out);
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

fn walk(item: &Item, offset: usize, out: &mut String) {
    if let Some(t) = item.as_table_like() {
        for (k, v) in t.iter() {
            let key_span = t.get_key_value(k).and_then(|(key, _)| key.span());
            let inside = item_span(v).is_some_and(|r| r.contains(&offset))
                || key_span.is_some_and(|r| r.contains(&offset));
            if inside {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
                walk(v, offset, out);
                return;
            }
        }
    } else if let Some(arr) = item.as_array_of_tables() {
        for (i, t) in arr.iter().enumerate() {
            if t.span().is_some_and(|r| r.contains(&offset)) {
                out.push_str(&format!("[{i}]"));
                for (k, v) in t.iter() {
                    let key_span = t.key(k).and_then(|key| key.span());
                    let inside = item_span(v).is_some_and(|r| r.contains(&offset))
                        || key_span.is_some_and(|r| r.contains(&offset));
                    if inside {
                        out.push('.');
                        out.push_str(k);
                        walk(v, offset, out);
                        return;
                    }
                }
                return;
            }
        }
    } else if let Some(arr) = item.as_array() {
        for (i, v) in arr.iter().enumerate() {
            if v.span().is_some_and(|r| r.contains(&offset)) {
                out.push_str(&format!("[{i}]"));
                if let Some(t) = v.as_inline_table() {
                    for (k, v2) in t.iter() {
                        let key_span = t.key(k).and_then(|key| key.span());
                        let inside = v2.span().is_some_and(|r| r.contains(&offset))
                            || key_span.is_some_and(|r| r.contains(&offset));
                        if inside {
                            out.push('.');
                            out.push_str(k);
                            return;
                        }
                    }
                }
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
        assert_eq!(e.to_string(), "r.toml:3:14: services.shop.backends[0].region: x");
    }

    #[test]
    fn hint_suggests_nearest_key() {
        let m = "unknown field `hots`, expected one of `hosts`, `path_prefix`, `service`";
        assert_eq!(unknown_field_hint(m).as_deref(), Some(" (did you mean `hosts`?)"));
        let m = "unknown field `zzzzzzzz`, expected one of `hosts`, `service`";
        assert_eq!(unknown_field_hint(m), None);
    }
}
