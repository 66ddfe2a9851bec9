//! The agent's rooms as ARCHITECTURE.md draws them, checked from the source: every module's
//! `crate::` and `super::` paths are its edges; the module graph must have no cycle, each room
//! may use only the rooms below it, and no function may grow past what one reads at once.
//! (cargo-modules' `dependencies --acyclic` checks the same; this needs no extra tool.)

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// The rooms, bottom up: each may use itself and the rooms before it.
const ROOMS: [&str; 8] = ["core", "kernel", "signaling", "link", "ops", "config", "agent", "cli"];
/// Test support that may use everything, and the binary.
const ABOVE_ALL: [&str; 2] = ["fuzzing", "main"];
/// The longest function allowed, in lines (issue 10: "no function longer than about 80").
const MAX_FN_LINES: usize = 80;

/// Module path ("link::serve") → source text, for every file under src/.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().trim_end_matches(".rs").to_owned();
            let mut module = prefix.to_vec();
            if path.is_dir() {
                module.push(name);
                walk(&path, &module, out);
                continue;
            }
            if name != "mod" && name != "lib" {
                module.push(name);
            }
            out.insert(module.join("::"), fs::read_to_string(&path).unwrap());
        }
    }
    let mut out = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &[], &mut out);
    out
}

/// Paths in `use` trees, expanded: `use crate::{a::{b, c}, d};` gives a::b, a::c, d.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        out.push(format!("{prefix}{}", tree.split(" as ").next().unwrap().trim()));
        return;
    };
    let head = format!("{prefix}{}", &tree[..open]);
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&inner[start..i], &head, out);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() {
        expand(&inner[start..], &head, out);
    }
}

/// Code without comments and string literals (so doc text names no edges).
fn code_only(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap();
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
        }
        out.push('\n');
    }
    out
}

/// The modules `module` uses: the longest known module named by each path it mentions.
fn edges(module: &str, text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    // Inline test modules' `super` is the file itself, not its parent: leave them out.
    let text = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
    let code = code_only(text.split("#[cfg(test)]\npub(crate) mod tests {").next().unwrap());
    let mut paths = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("use ") {
        let stmt = &rest[i + 4..rest[i..].find(';').map_or(rest.len(), |j| i + j)];
        expand(stmt, "", &mut paths);
        rest = &rest[i + 4..];
    }
    for word in code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        // `a::b::{` is the head of a use tree, which `expand` reads whole above.
        if word.contains("::") && !word.ends_with("::") {
            paths.push(word.to_owned());
        }
    }
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let mut out = BTreeSet::new();
    for path in paths {
        let absolute = if let Some(p) = path.strip_prefix("crate::") {
            p.to_owned()
        } else if let Some(p) = path.strip_prefix("super::") {
            if parent.is_empty() { p.to_owned() } else { format!("{parent}::{p}") }
        } else if let Some(p) = path.strip_prefix("self::") {
            if module.is_empty() { p.to_owned() } else { format!("{module}::{p}") }
        } else if !module.is_empty() && known.contains(&format!("{module}::{}", path.split("::").next().unwrap())) {
            format!("{module}::{path}") // a child module, by its bare name
        } else {
            continue;
        };
        let parts: Vec<&str> = absolute.split("::").collect();
        if let Some(target) = (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|m| known.contains(m))
            && target != module
            && !target.is_empty()
        {
            out.insert(target);
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    modules.iter().map(|(m, text)| (m.clone(), edges(m, text, &known))).collect()
}

fn room(module: &str) -> &str {
    module.split("::").next().unwrap()
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    // Depth-first search; a module met again while on the stack closes a cycle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| *s == m) {
            return Some(stack[i..].iter().map(|s| s.to_string()).chain([m.to_owned()]).collect());
        }
        if !done.insert(m) {
            return None;
        }
        stack.push(m);
        for next in &graph[m] {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("a cycle in the module graph: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn each_room_uses_only_the_rooms_below_it() {
    let rank = |r: &str| ROOMS.iter().position(|x| *x == r);
    let mut wrong = Vec::new();
    for (m, uses) in graph() {
        let from = room(&m);
        if m.is_empty() || ABOVE_ALL.contains(&from) {
            continue;
        }
        let Some(from_rank) = rank(from) else {
            wrong.push(format!("{m}: in no room (add it to a room and to ARCHITECTURE.md)"));
            continue;
        };
        for u in uses {
            if rank(room(&u)).is_none_or(|r| r > from_rank) {
                wrong.push(format!("{m} uses {u}"));
            }
        }
    }
    assert!(wrong.is_empty(), "dependencies that point up:\n{}", wrong.join("\n"));
}

#[test]
fn the_rooms_are_the_folders_and_the_architecture_names_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let arch = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md")).unwrap();
    for r in ROOMS {
        let folder = src.join(r).is_dir();
        let file = src.join(format!("{r}.rs")).is_file();
        assert!(folder || file, "room {r} has no folder or file in src/");
        assert!(
            arch.contains(&format!("`{r}/`")) || arch.contains(&format!("`{r}.rs`")),
            "ARCHITECTURE.md's map lacks {r}"
        );
    }
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    for r in ROOMS {
        assert!(lib.contains(&format!("[`{r}`]")), "lib.rs's map lacks {r}");
    }
}

/// Function lengths, from `fn` to its closing brace at the same indentation.
fn long_functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let is_fn = ["fn ", "pub fn ", "async fn ", "pub async fn ", "pub(crate) fn ", "pub(super) fn ", "const fn "]
            .iter()
            .any(|p| trimmed.starts_with(p));
        if !is_fn || trimmed.ends_with(';') {
            continue;
        }
        let close = " ".repeat(indent) + "}";
        if let Some(len) = lines[i..].iter().position(|l| *l == close) {
            let name = trimmed.split('(').next().unwrap().rsplit(' ').next().unwrap().to_owned();
            out.push((name, len + 1));
        }
    }
    out
}

#[test]
fn no_function_is_longer_than_one_reads_at_once() {
    let mut long = Vec::new();
    for (m, text) in modules() {
        for (name, len) in long_functions(&text) {
            if len > MAX_FN_LINES {
                long.push(format!("{m}::{name}: {len} lines"));
            }
        }
    }
    assert!(long.is_empty(), "functions over {MAX_FN_LINES} lines:\n{}", long.join("\n"));
}
