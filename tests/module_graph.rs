//! The library's modules form layers: each one imports only modules below it. This test
//! reads the `crate::` paths of every source file of `varvedb/src` (outside comments and
//! `#[cfg(test)]` modules) and fails on an import cycle between top-level modules, and on
//! the imports the layering rules out by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The one harmless cycle: the error type names expected versions, and building a batch's
/// events returns errors.
const ALLOWED_CYCLE: &[&str] = &["batch", "error"];

/// Imports that must never exist, whatever else changes.
const FORBIDDEN: &[(&str, &str)] = &[
    ("read", "writer"),
    ("writer", "read"),
    ("read", "subscribe"),
    ("writer", "subscribe"),
    ("crypto", "storage"),
    ("crypto", "store"),
    ("storage", "store"),
    ("record", "store"),
    ("event", "store"),
    ("event", "read"),
    ("event", "subscribe"),
    ("key_record", "store"),
    ("lmdb_file", "storage"),
    ("lmdb_file", "store"),
];

/// The top-level modules declared in `lib.rs`.
fn modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect()
}

/// The source with line comments and `#[cfg(test)]` items removed.
fn code(source: &str) -> String {
    let mut out = String::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the item that follows: to the end of its braces.
            let mut depth = 0usize;
            let mut opened = false;
            for l in lines.by_ref() {
                depth = (depth + l.matches('{').count()).saturating_sub(l.matches('}').count());
                opened |= l.contains('{');
                if (opened && depth == 0) || (!opened && l.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let line = line.split(" // ").next().unwrap_or(line);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level modules named by `crate::` paths in `code`, including those inside
/// `use crate::{a::x, b::{y, z}}` groups.
fn imports(code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i + "crate::".len();
        at = start;
        // `$crate::` and `::varvedb::` paths are not ours.
        if start >= 8 && (bytes[start - 8] == b'$' || bytes[start - 8].is_ascii_alphanumeric()) {
            continue;
        }
        if bytes.get(start) == Some(&b'{') {
            // A group: every path at the group's top level names a module or an item of
            // the root.
            let mut depth = 0;
            let mut item = String::new();
            let mut names = Vec::new();
            for &b in &bytes[start..] {
                match b {
                    b'{' => {
                        depth += 1;
                        if depth == 1 {
                            continue;
                        }
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                if depth == 1 && b == b',' {
                    names.push(std::mem::take(&mut item));
                } else if depth == 1 {
                    item.push(b as char);
                }
            }
            names.push(item);
            for name in names {
                let first = name.trim().split("::").next().unwrap_or("").trim().to_owned();
                if known.contains(&first) {
                    found.insert(first);
                }
            }
        } else {
            let name: String =
                code[start..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if known.contains(&name) {
                found.insert(name);
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("varvedb/src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let known = modules(&lib);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path == src.join("lib.rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let module = relative.iter().next().unwrap().to_str().unwrap().trim_end_matches(".rs").to_owned();
            assert!(known.contains(&module), "{} is not under a module of lib.rs", relative.display());
            let source = std::fs::read_to_string(&path).unwrap();
            let mut deps = imports(&code(&source), &known);
            deps.remove(&module);
            graph.entry(module).or_default().extend(deps);
        }
    }
    graph
}

/// Strongly connected components of more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[w].min(s.low[v]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.index[w].min(s.low[v]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn library_modules_import_no_cycle() {
    let graph = graph();
    let allowed: BTreeSet<String> = ALLOWED_CYCLE.iter().map(|s| (*s).to_owned()).collect();
    for cycle in cycles(&graph) {
        assert!(cycle.is_subset(&allowed), "import cycle among {cycle:?}; the graph: {graph:#?}");
    }
}

#[test]
fn layering_rules_hold() {
    let graph = graph();
    for (from, to) in FORBIDDEN {
        assert!(
            !graph.get(*from).is_some_and(|deps| deps.contains(*to)),
            "{from} imports {to}; the graph: {graph:#?}"
        );
    }
}

#[test]
fn the_checker_sees_imports_and_cycles() {
    let known: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
    let source = "use crate::a::X;\nuse crate::{b::{Y, Z}, Root};\n// use crate::c::W;\n#[cfg(test)]\nmod tests {\n    use crate::c::V;\n}\nfn f() { $crate::c::x(); ::varvedb::c::y(); }\n";
    let found = imports(&code(source), &known);
    assert_eq!(found, ["a", "b"].iter().map(|s| (*s).to_owned()).collect());
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycles(&graph), vec![known.clone()]);
    graph.get_mut("c").unwrap().clear();
    assert!(cycles(&graph).is_empty());
}
