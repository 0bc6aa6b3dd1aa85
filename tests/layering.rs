//! The layering check (ARCHITECTURE.md): a module may import only from layers below its own,
//! modules of one layer do not import each other, and no two files import each other
//! through a cycle. Reads `src/` as text, so it needs no build of the crate's internals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. A module may import from lower layers only.
const LAYERS: &[&[&str]] = &[
    &["time"],
    &["geo", "tls"],
    &["health", "observe"],
    &["upstream"],
    &["route"],
    &["proxy", "dns"],
    &["net"],
    &["control"],
];

fn rank(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// A source file's module path, e.g. `src/route/select.rs` → `route::select`.
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// Remove comments and string literals (enough for this crate's style), and the unit-test
/// module at the end of a file (tests may build fixtures with higher layers).
fn strip(src: &str) -> String {
    let src = src
        .find("#[cfg(test)]\nmod tests")
        .map_or(src, |i| &src[..i]);
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' && !(i > 0 && (b[i - 1] == b'\'' || b[i - 1] == b'#')) {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every `crate::…` path in `src` (grouped imports expanded one level), as segment lists.
fn crate_paths(src: &str) -> Vec<Vec<String>> {
    let text = strip(src);
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("crate::") {
        let before_ok = rest[..i].chars().last().is_none_or(|c| !ident_char(c));
        rest = &rest[i + "crate::".len()..];
        if !before_ok {
            continue;
        }
        let mut segs = Vec::new();
        let mut s = rest;
        loop {
            let end = s.find(|c: char| !ident_char(c)).unwrap_or(s.len());
            if end == 0 {
                break;
            }
            segs.push(s[..end].to_string());
            s = &s[end..];
            if let Some(t) = s.strip_prefix("::") {
                s = t;
            } else {
                break;
            }
        }
        if let Some(group) = s.strip_prefix('{') {
            let close = group.find('}').unwrap_or(group.len());
            for item in group[..close].split(',') {
                let mut p = segs.clone();
                p.extend(
                    item.trim()
                        .split("::")
                        .map(|x| x.trim().to_string())
                        .take_while(|x| !x.is_empty() && x.chars().all(ident_char)),
                );
                out.push(p);
            }
        } else if !segs.is_empty() {
            out.push(segs);
        }
    }
    out
}

/// Violations in a crate given as (module path, source) pairs.
fn check(files: &[(String, String)]) -> Vec<String> {
    let modules: BTreeSet<&str> = files.iter().map(|(m, _)| m.as_str()).collect();
    let mut errors = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, src) in files {
        let top = module.split("::").next().unwrap_or("");
        for path in crate_paths(src) {
            // The longest module prefix of the path is the module depended on.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|p| modules.contains(p.as_str()));
            let Some(target) = target else { continue };
            let ttop = target.split("::").next().unwrap_or("").to_string();
            if ttop != top {
                match (rank(top), rank(&ttop)) {
                    (Some(a), Some(b)) if b >= a => errors.push(format!(
                        "{module} (layer {a}) imports {target} (layer {b}): \
                         only lower layers may be imported"
                    )),
                    (Some(_), None) => errors.push(format!(
                        "{module} imports {target}, which is not in a lower layer"
                    )),
                    _ => {}
                }
            }
            if target != *module && !module.starts_with(&format!("{target}::")) {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    errors.extend(cycles(&edges));
    errors
}

/// Import cycles between files (Tarjan's strongly connected components).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    struct T<'a> {
        e: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(next) = t.e.get(v) {
            for w in next {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low[v];
                    t.low.insert(v, lv.min(lw));
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low[v];
                    t.low.insert(v, lv.min(iw));
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort_unstable();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        e: edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
        .into_iter()
        .map(|c| format!("import cycle: {}", c.join(" → ")))
        .collect()
}

fn sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(root, &p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(root).unwrap();
            let m = module_of(rel);
            // The crate roots (lib, binary, demo) and the `fuzzing` facade (feature-gated entry
            // points into every layer's parsers) sit above every layer.
            if !matches!(m.as_str(), "lib" | "main" | "demo" | "fuzzing") {
                out.push((m, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
}

#[test]
fn layers_import_only_downwards_and_without_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    assert!(files.len() > 30, "found only {} files", files.len());
    for (m, _) in &files {
        let top = m.split("::").next().unwrap();
        assert!(
            rank(top).is_some(),
            "src/{top} is not in any layer: add it to LAYERS and ARCHITECTURE.md"
        );
    }
    let errors = check(&files);
    assert!(
        errors.is_empty(),
        "layering violations:\n{}",
        errors.join("\n")
    );
}

#[test]
fn an_upward_import_or_a_cycle_is_reported() {
    let f = |m: &str, s: &str| (m.to_string(), s.to_string());
    let files = vec![
        f("time", ""),
        f("route::table", "use crate::time::now_ms;"),
        f("route::select", "use crate::{time, route::table::X};"),
        f("control::app", "use crate::route::table::Route;"),
        // Upward: route (4) must not import control (7), even inside a group.
        f(
            "route::snapshot",
            "use crate::{time::now_ms, control::app::Shared};",
        ),
    ];
    let errors = check(&files);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("route::snapshot (layer 4) imports control::app (layer 7)")),
        "{errors:?}"
    );
    // Same layer, different module: geo and tls are independent.
    let errors = check(&[f("geo", "use crate::tls::CertSet;"), f("tls", "")]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    // A cycle inside one layer.
    let errors = check(&[
        f("proxy::a", "use crate::proxy::b::X;"),
        f("proxy::b", "fn f() { crate::proxy::a::y(); }"),
    ]);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("import cycle: proxy::a → proxy::b")),
        "{errors:?}"
    );
    // Comments and strings do not count.
    let errors = check(&[
        f(
            "time",
            "// crate::control::app\nfn f() { let _ = \"crate::control\"; }",
        ),
        f("control", ""),
    ]);
    assert!(errors.is_empty(), "{errors:?}");
}
