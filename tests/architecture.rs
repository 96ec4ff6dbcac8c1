//! The module structure `src/lib.rs` describes, checked: the top-level
//! modules form layers, and each imports only modules below it, so there is
//! no import cycle (the PUBLISH path reads forward). Cluster mode sits
//! above the core: only `broker` wires it. Also: no source, test or example
//! file over 600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom; a module may use only the ones after it.
const LAYERS: &[&str] = &[
    "broker", "cluster", "admin", "server", "local", "session", "context", "auth", "chat", "router", "store",
    "message", "budget", "config", "protocol", "metrics",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "node_modules") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its unit tests.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which top-level modules each top-level module names as `crate::x`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let used = graph.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name != top {
                used.insert(name);
            }
        }
    }
    graph
}

#[test]
fn each_module_imports_only_the_layers_below_it() {
    let graph = imports();
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut upward = Vec::new();
    for (module, used) in &graph {
        let Some(own) = rank(module) else {
            panic!("top-level module `{module}` is not in LAYERS (and src/lib.rs's list)");
        };
        for dependency in used {
            match rank(dependency) {
                Some(r) if r > own => {}
                _ => upward.push(format!("{module} -> {dependency}")),
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that go up or sideways (a cycle waiting to happen): {upward:?}"
    );
}

/// Cluster mode is a layer above the core: the core defines what it needs
/// as traits (`chat::RoomReplication`, `session::SessionDirectory`, ...),
/// `src/cluster/` implements them and `src/broker/` wires them, so the
/// `cluster` feature can compile NATS out. No other file names it.
#[test]
fn only_the_broker_wires_the_cluster() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let allowed = ["cluster", "config", "broker"];
    let naming: Vec<String> = files
        .iter()
        .filter(|file| {
            let relative = file.strip_prefix(&src).unwrap();
            let top = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            !allowed.contains(&top.trim_end_matches(".rs"))
        })
        .filter(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            let code: Vec<&str> = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or_default())
                .collect();
            code.join("\n").contains("crate::cluster")
        })
        .map(|file| file.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    assert!(
        naming.is_empty(),
        "these files name `crate::cluster` (define a trait in the core instead, and wire it in src/broker/): {naming:?}"
    );
}

#[test]
fn no_file_is_over_600_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "examples", "benches", "fuzz"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            (lines > 600).then(|| format!("{} ({lines})", f.strip_prefix(root).unwrap().display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by concern: {long:?}");
}

/// Which files under `src/` call `name` in their code (comments and unit
/// tests left out).
fn files_calling(name: &str) -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .iter()
        .filter(|file| {
            let code = code_of(&std::fs::read_to_string(file).unwrap());
            code.match_indices(name).any(|(i, _)| {
                // A call, not a longer name that ends with it.
                !code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            })
        })
        .map(|file| file.strip_prefix(&src).unwrap().display().to_string())
        .collect()
}

/// A topic is classified once, where its message enters, and the value
/// (`chat::Classified`) travels on; a filter is parsed once into a
/// `chat::Filter`. The gate, the route and the chat layer's PUBLISH
/// handling take those values and never parse again. Only these files
/// parse: the two values themselves, and entries that look at a topic
/// once (a retained message read back or taken from another node, a
/// packet a cluster node must catch up for before it is handled).
#[test]
fn topics_and_filters_are_parsed_where_they_enter() {
    let classifying = files_calling("classify(");
    let allowed = [
        "chat/topics.rs",
        "chat/classified.rs",
        "chat/upkeep.rs",
        "cluster/join.rs",
    ];
    let extra: Vec<&String> = classifying
        .iter()
        .filter(|f| !allowed.contains(&f.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "these files classify a topic again (take the `chat::Classified` of its entry instead): {extra:?}"
    );
    let parsing = files_calling("parse_shared(");
    let allowed = ["protocol/validate.rs", "chat/filter.rs"];
    let extra: Vec<&String> = parsing
        .iter()
        .filter(|f| !allowed.contains(&f.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "these files parse `$share/` themselves (take a `chat::Filter` instead): {extra:?}"
    );
}
