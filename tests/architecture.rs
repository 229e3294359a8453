//! The module map holds: no file-level import cycles, and top-level modules depend only on
//! lower layers (docs/ARCHITECTURE.md). Reads `src/` the way `use` paths name files:
//! `crate::a::b`, `super::…`, `self::…` and `use crate::{a, b::c}` groups; test modules
//! (`#[cfg(test)]` and after) may look anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers, lowest first. A top-level module may use modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    &["error", "rng"],
    &["allocator", "input_file", "settings", "switches", "tempfiles"],
    &["kernels", "remote"],
    &["scene"],
    &["align", "eval"],
    &["diffusion"],
    &["engine"],
    &["dev"],
    &["cli", "app"],
    &["lib", "main"],
];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// src-relative path → text, for every .rs file.
fn sources() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                out.insert(rel, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// "a/b.rs" → [a, b]; "a/mod.rs" → [a]; "lib.rs"/"main.rs" → [].
fn module_of(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = path.trim_end_matches(".rs").split('/').map(String::from).collect();
    let last = parts.last().cloned().unwrap_or_default();
    if last == "mod" || (parts.len() == 1 && (last == "lib" || last == "main")) {
        parts.pop();
    }
    parts
}

/// The file that defines the longest prefix of a module path.
fn file_of(files: &BTreeMap<String, String>, m: &[String]) -> Option<String> {
    (1..=m.len()).rev().find_map(|k| {
        let p = m[..k].join("/");
        [format!("{p}.rs"), format!("{p}/mod.rs")].into_iter().find(|c| files.contains_key(c))
    })
}

/// Code without comments and without test modules.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Paths after `crate::`, `super::` or `self::` (as identifiers), and `use crate::{…}` groups.
fn paths(code: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < bytes.len() {
        for root in ["crate", "super", "self"] {
            let r: Vec<char> = root.chars().collect();
            let before_ok = i == 0 || !is_ident(bytes[i - 1]);
            if before_ok && bytes[i..].starts_with(&r) && bytes[i + r.len()..].starts_with(&[':', ':']) {
                let mut j = i + r.len();
                let mut names = Vec::new();
                while bytes[j..].starts_with(&[':', ':']) {
                    j += 2;
                    if bytes.get(j) == Some(&'{') {
                        // A group: each item is its own path.
                        let end = bytes[j..].iter().position(|&c| c == '}').map_or(bytes.len(), |e| j + e);
                        let group: String = bytes[j + 1..end].iter().collect();
                        for item in group.split(',') {
                            let item: Vec<String> = item
                                .trim()
                                .split("::")
                                .map(|s| s.trim().to_string())
                                .filter(|s| !s.is_empty())
                                .collect();
                            let mut full = names.clone();
                            full.extend(item);
                            out.push((root.to_string(), full));
                        }
                        j = end;
                        names.clear();
                        break;
                    }
                    let start = j;
                    while j < bytes.len() && is_ident(bytes[j]) {
                        j += 1;
                    }
                    names.push(bytes[start..j].iter().collect());
                }
                if !names.is_empty() {
                    out.push((root.to_string(), names));
                }
                i = j;
                break;
            }
        }
        i += 1;
    }
    out
}

/// file → files it uses (a child using its own parent `mod.rs` is the usual shape, not an edge).
fn edges(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (f, text) in files {
        let here = module_of(f);
        let is_mod = f.ends_with("mod.rs") || f == "lib.rs" || f == "main.rs";
        let mut set = BTreeSet::new();
        for (root, names) in paths(&code(text)) {
            let m: Vec<String> = match root.as_str() {
                "crate" => names,
                "self" if is_mod => [here.clone(), names].concat(),
                "self" => [here.clone(), names].concat(),
                _ => {
                    // super:: from a file module is its parent; from a mod.rs, the grandparent.
                    let parent = if is_mod {
                        here[..here.len().saturating_sub(1)].to_vec()
                    } else {
                        here[..here.len() - 1].to_vec()
                    };
                    [parent, names].concat()
                }
            };
            if let Some(g) = file_of(files, &m) {
                let parent_mod =
                    g.ends_with("mod.rs") && Path::new(&g).parent() == Path::new(f).parent() && !f.ends_with("mod.rs");
                if g != *f && !parent_mod {
                    set.insert(g);
                }
            }
        }
        edges.insert(f.clone(), set);
    }
    edges
}

/// Strongly connected components with more than one file.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then components on the reversed graph.
    fn dfs(v: &str, g: &BTreeMap<String, BTreeSet<String>>, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(v.to_string()) {
            return;
        }
        for w in g.get(v).into_iter().flatten() {
            dfs(w, g, seen, out);
        }
        out.push(v.to_string());
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for v in edges.keys() {
        dfs(v, edges, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<String, BTreeSet<String>> = edges.keys().map(|k| (k.clone(), BTreeSet::new())).collect();
    for (v, ws) in edges {
        for w in ws {
            rev.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut comps = Vec::new();
    for v in order.iter().rev() {
        let mut comp = Vec::new();
        dfs(v, &rev, &mut seen, &mut comp);
        if comp.len() > 1 {
            comp.sort();
            comps.push(comp);
        }
    }
    comps
}

#[test]
fn no_file_level_import_cycles() {
    let files = sources();
    let e = edges(&files);
    let c = cycles(&e);
    assert!(c.is_empty(), "import cycles: {c:?}");
}

#[test]
fn top_level_modules_use_only_lower_layers() {
    let files = sources();
    let mut wrong = Vec::new();
    for (f, uses) in edges(&files) {
        let from = f.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        let Some(lf) = layer_of(&from) else {
            wrong.push(format!("{f}: top-level module {from} has no layer in tests/architecture.rs"));
            continue;
        };
        for g in uses {
            let to = g.split('/').next().unwrap().trim_end_matches(".rs").to_string();
            if to == from {
                continue;
            }
            match layer_of(&to) {
                Some(lt) if lt < lf => {}
                _ => wrong.push(format!("{f} uses {g}")),
            }
        }
    }
    assert!(wrong.is_empty(), "dependencies against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle_and_an_upward_edge() {
    let mut files = BTreeMap::new();
    files.insert("a.rs".to_string(), "use crate::b::X;".to_string());
    files.insert("b.rs".to_string(), "fn f() { crate::a::y(); }".to_string());
    files.insert("c/mod.rs".to_string(), "mod d; use self::d::Z;".to_string());
    files.insert("c/d.rs".to_string(), "use super::W; use crate::{a, b::Q};".to_string());
    let e = edges(&files);
    assert_eq!(cycles(&e), vec![vec!["a.rs".to_string(), "b.rs".to_string()]]);
    assert!(e["c/d.rs"].contains("a.rs") && e["c/d.rs"].contains("b.rs"), "{e:?}");
    assert!(!e["c/d.rs"].contains("c/mod.rs"), "a child using its parent is no edge");
    assert!(e["c/mod.rs"].contains("c/d.rs"));
}
