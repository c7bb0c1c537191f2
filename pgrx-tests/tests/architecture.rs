//! The layers of `src/`, checked: a lower layer never imports a higher one, and no two modules
//! import each other through any chain (no cycle).
//!
//! The edges are read from the source: every `crate::a::b` path and every `use crate::{...}` /
//! `super::` import outside test modules (`#[cfg(test)]`, `#[cfg(any(test, feature =
//! "pg_test"))]`), resolved to the longest module that exists. [`LAYERS`] is the declared order;
//! a module not listed there fails the test, so a new module gets a place on purpose.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, lowest first. A module may import modules of its own layer or below; a module path
/// listed here covers the module and everything under it, unless a longer entry says otherwise.
const LAYERS: &[(&str, &[&str])] = &[
    ("leaves", &["error", "gucs", "uuid", "catalog", "citus"]),
    ("registry", &["registry"]),
    ("context", &["context"]),
    ("access", &["tenants::access"]),
    ("capabilities", &["tenants", "tables", "quotas", "signing"]),
    ("wiring", &["xact", "hooks", "lib"]),
];

/// Every module of a source tree: `a.rs` and `a/mod.rs` are `a`, `a/b.rs` is `a::b`; `lib.rs`
/// is `lib`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                walk(&path, &format!("{prefix}{name}::"), out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module =
                    if name == "mod" { prefix.trim_end_matches("::").to_string() } else { format!("{prefix}{name}") };
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, "", &mut out);
    out
}

/// The source without test modules: a `#[cfg(test)]` or `#[cfg(any(test, ...))]` attribute and
/// the item after it (to its matching closing brace) are dropped, and so are comments.
fn without_tests(source: &str) -> String {
    let mut out = String::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") || trimmed.starts_with("#[cfg(any(test") {
            let mut depth = 0i32;
            let mut opened = false;
            for item in lines.by_ref() {
                depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
                opened |= item.contains('{');
                if opened && depth <= 0 {
                    break;
                }
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The module paths a source refers to: `crate::a::b::c` and the members of `use crate::{a,
/// b::c}` groups, and `super::x` relative to `module`.
fn references(module: &str, source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let text = without_tests(source);
    let bytes = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let path_at = |mut i: usize| {
        let start = i;
        while i < bytes.len() && (ident(bytes[i]) || bytes[i] == b':') {
            i += 1;
        }
        (text[start..i].trim_end_matches(':').to_string(), i)
    };
    let parent = module.rsplit_once("::").map(|(p, _)| p.to_string()).unwrap_or_default();
    for (keyword, base) in [("crate::", String::new()), ("super::", parent)] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(keyword) {
            let at = from + pos;
            from = at + keyword.len();
            if at > 0 && ident(bytes[at - 1]) {
                continue;
            }
            let join = |path: &str| if base.is_empty() { path.to_string() } else { format!("{base}::{path}") };
            if bytes.get(from) == Some(&b'{') {
                // `use crate::{a, b::c, d::{e, f}}`: the first segment of each member counts.
                let end = text[from..].find('}').map(|e| from + e).unwrap_or(text.len());
                for member in text[from + 1..end].split(',') {
                    let member = member.trim().trim_start_matches('{');
                    let head: String =
                        member.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
                    let head = head.trim_end_matches(':');
                    if !head.is_empty() && head != "self" {
                        found.insert(join(head));
                    }
                }
            } else {
                let (path, _) = path_at(from);
                if !path.is_empty() {
                    found.insert(join(&path));
                }
            }
        }
    }
    found
}

/// The longest existing module that `path` (a module or an item in one) is in.
fn resolve<'a>(path: &str, modules: &'a BTreeSet<String>) -> Option<&'a String> {
    let mut candidate = path.to_string();
    loop {
        if let Some(found) = modules.get(&candidate) {
            return Some(found);
        }
        candidate = candidate.rsplit_once("::")?.0.to_string();
    }
}

/// The layer of a module: its longest listed prefix.
fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, &'static str, usize)> = None;
    for (index, (name, members)) in LAYERS.iter().enumerate() {
        for member in *members {
            let covers = module == *member || module.starts_with(&format!("{member}::"));
            if covers && best.is_none_or(|b| member.len() > b.2) {
                best = Some((index, name, member.len()));
            }
        }
    }
    best.map(|(index, name, _)| (index, name))
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The import graph of a source tree (module → modules it refers to, itself excluded).
fn graph(src: &Path) -> Graph {
    let files = modules(src);
    let names: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = Graph::new();
    for (module, path) in &files {
        let source = std::fs::read_to_string(path).unwrap();
        let edges = references(module, &source)
            .iter()
            .filter_map(|r| resolve(r, &names))
            .filter(|target| *target != module && !module.starts_with(&format!("{target}::")))
            .cloned()
            .collect();
        graph.insert(module.clone(), edges);
    }
    graph
}

/// Every violation: modules without a layer, imports of a higher layer, and cycles (each as
/// the modules of one strongly connected component).
fn violations(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for (module, edges) in graph {
        let Some((from, from_name)) = layer_of(module) else {
            found.push(format!("module {module} has no layer: add it to LAYERS in pgrx-tests/tests/architecture.rs"));
            continue;
        };
        for target in edges {
            if let Some((to, to_name)) = layer_of(target) {
                if to > from {
                    found.push(format!("{module} (layer {from_name}) imports {target} (layer {to_name}, higher)"));
                }
            }
        }
    }
    for component in strongly_connected(graph) {
        if component.len() > 1 {
            found.push(format!("import cycle: {}", component.join(" -> ")));
        }
    }
    found
}

/// Tarjan's algorithm.
fn strongly_connected(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.graph.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            component.sort();
            s.out.push(component);
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.out
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../src")
}

#[test]
fn layers_hold_and_no_module_imports_in_a_cycle() {
    let graph = graph(&src_dir());
    assert!(graph.len() > 10, "read the source tree at {}", src_dir().display());
    let found = violations(&graph);
    assert!(
        found.is_empty(),
        "the layers of src/ are broken ({} problem(s)):\n  {}\n\nLower layers must not import higher ones \
         (LAYERS in pgrx-tests/tests/architecture.rs, lowest first); move the shared piece down a layer \
         instead.",
        found.len(),
        found.join("\n  ")
    );
}

/// The checker itself must be able to fail: an introduced upward import and an introduced
/// cycle are both reported, on a copy of the real tree with one line added.
#[test]
fn the_check_fails_on_an_introduced_cycle_and_an_upward_import() {
    let copy = std::env::temp_dir().join(format!("mt-architecture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    copy_tree(&src_dir(), &copy);
    // error (a leaf) importing a capability: upward, and a cycle (every module imports error).
    let error_rs = copy.join("error.rs");
    let mut source = std::fs::read_to_string(&error_rs).unwrap();
    source.push_str("\n#[allow(unused_imports)]\nuse crate::quotas::is_metered;\n");
    std::fs::write(&error_rs, source).unwrap();
    let found = violations(&graph(&copy));
    std::fs::remove_dir_all(&copy).unwrap();
    assert!(
        found.iter().any(|f| f.starts_with("error (layer leaves) imports quotas")),
        "an upward import is reported: {found:?}"
    );
    assert!(
        found.iter().any(|f| f.starts_with("import cycle:") && f.contains("error")),
        "a cycle is reported: {found:?}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
