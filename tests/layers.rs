//! The layering of `src/`: every `crate::` path outside test code points to a module the
//! declaration in `src/lib.rs` puts below the importing one (an earlier layer, or earlier
//! in the same layer), so the module graph has no cycle; `docs/architecture.md` draws the
//! same declaration. `UPDATE_LAYERS=1 cargo test --test layers` rewrites the drawing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const BEGIN: &str = "<!-- layers:begin -->";
const END: &str = "<!-- layers:end -->";

/// `(layer, module)` in declared order, from the table of the crate doc.
fn declaration(lib_rs: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in lib_rs.lines() {
        let Some(row) = line.strip_prefix("//! |") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 3 || cells[0] == "layer" || cells[0].starts_with("---") {
            continue;
        }
        let module = cells[1].trim_matches(|c| c == '[' || c == ']' || c == '`');
        out.push((cells[0].to_string(), module.to_string()));
    }
    out
}

/// The source without comments, string literals' contents and `#[cfg(test)]` items.
fn strip(src: &str) -> String {
    // comments
    let mut s = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'\''
            && (b.get(i + 2) == Some(&b'\'')
                || (b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'')))
        {
            // a char literal ('"', '{', '\\'): dropped
            i += if b[i + 1] == b'\\' { 4 } else { 3 };
        } else if b[i] == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // a raw string r"…" or r#"…"#: kept as ""
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                s.push(b[i] as char);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"'
                    && b[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|c| **c == b'#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            s.push_str("\"\"");
            i = j;
        } else if b[i] == b'"' {
            // a string literal: kept as "" (a path in a message is no import)
            s.push('"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            s.push('"');
            i += 1;
        } else {
            s.push(b[i] as char);
            i += 1;
        }
    }
    // #[cfg(test)] items: the attribute and the braced item after it
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // the item ends at the matching brace of its first `{`, or at a `;` before any `{`
        let brace = after.find('{');
        let semi = after.find(';');
        match (brace, semi) {
            (Some(bp), Some(sp)) if sp < bp => rest = &after[sp + 1..],
            (Some(bp), _) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (k, c) in after[bp..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = bp + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            (None, Some(sp)) => rest = &after[sp + 1..],
            (None, None) => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// The top-level modules a (stripped) file names through `crate::`, including the groups
/// of `use crate::{a, b::c}`.
fn imports(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = src;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `gravity_exporter_crate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            // the group up to its matching brace, split at its own commas
            let mut depth = 1usize;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        items.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            items.push(item);
            for it in items {
                let name = ident(it.trim_start());
                if !name.is_empty() && name != "self" {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None`: `lib.rs`, `main.rs`).
fn module_of(src_dir: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src_dir).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Every import against the declared order, as `"a -> b"`.
fn violations(
    decl: &[(String, String)],
    files: &[(String, String)],
) -> (Vec<String>, BTreeSet<String>) {
    let pos: BTreeMap<&str, usize> = decl
        .iter()
        .enumerate()
        .map(|(i, (_, m))| (m.as_str(), i))
        .collect();
    let mut bad = Vec::new();
    let mut undeclared = BTreeSet::new();
    for (module, src) in files {
        let Some(&me) = pos.get(module.as_str()) else {
            undeclared.insert(module.clone());
            continue;
        };
        for to in imports(&strip(src)) {
            if to == *module {
                continue;
            }
            match pos.get(to.as_str()) {
                Some(&them) if them < me => {}
                Some(_) => bad.push(format!("{module} -> {to}")),
                None => {} // a name that is no module of the crate (a macro path, say)
            }
        }
    }
    bad.sort();
    bad.dedup();
    (bad, undeclared)
}

fn drawing(decl: &[(String, String)]) -> String {
    let mut layers: Vec<(String, Vec<String>)> = Vec::new();
    for (l, m) in decl {
        match layers.last_mut() {
            Some((name, ms)) if name == l => ms.push(format!("`{m}`")),
            _ => layers.push((l.clone(), vec![format!("`{m}`")])),
        }
    }
    let mut s = String::from(
        "| layer | modules, each importing only from the rows below it and the modules before it in its row |\n| --- | --- |\n",
    );
    for (l, ms) in layers.iter().rev() {
        s.push_str(&format!("| {l} | {} |\n", ms.join(" → ")));
    }
    s
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_import_points_down_the_declared_layers() {
    let src_dir = root().join("src");
    let decl = declaration(&std::fs::read_to_string(src_dir.join("lib.rs")).unwrap());
    assert!(
        decl.len() >= 20,
        "the declaration in src/lib.rs was not found: {decl:?}"
    );
    let layers: BTreeSet<&str> = decl.iter().map(|(l, _)| l.as_str()).collect();
    for l in [
        "foundations",
        "clients",
        "state",
        "producers",
        "views",
        "app",
    ] {
        assert!(layers.contains(l), "layer {l} missing from the declaration");
    }
    let mut paths = Vec::new();
    rust_files(&src_dir, &mut paths);
    let files: Vec<(String, String)> = paths
        .iter()
        .filter_map(|p| Some((module_of(&src_dir, p)?, std::fs::read_to_string(p).unwrap())))
        .collect();
    let (bad, undeclared) = violations(&decl, &files);
    assert!(
        undeclared.is_empty(),
        "modules missing from the layer table of src/lib.rs: {undeclared:?}"
    );
    assert!(
        bad.is_empty(),
        "imports against the declared layers (src/lib.rs):\n{}",
        bad.join("\n")
    );
    // every declared module exists
    let present: BTreeSet<&str> = files.iter().map(|(m, _)| m.as_str()).collect();
    for (_, m) in &decl {
        assert!(
            present.contains(m.as_str()),
            "declared module {m} has no file"
        );
    }
}

#[test]
fn an_upward_import_is_found_and_test_code_is_not_counted() {
    let decl: Vec<(String, String)> = [("foundations", "base"), ("state", "state"), ("app", "app")]
        .iter()
        .map(|(l, m)| (l.to_string(), m.to_string()))
        .collect();
    let files = vec![
        // an upward import in a use group, one in a path, and one only in test code
        (
            "base".to_string(),
            "use crate::{state::Slot, base::x};\nfn q() { let c = '\"'; let r = r#\"crate::app {\"#; }\nfn f() { crate::app::run(); }\n// crate::app in a comment\nconst S: &str = \"crate::app\";\n#[cfg(test)]\nmod tests { use crate::app::Exporter; }\n"
                .to_string(),
        ),
        ("state".to_string(), "use crate::base::lock;\n".to_string()),
        ("app".to_string(), "use crate::{base, state::{Slot, PipelineState}};\n".to_string()),
        ("stray".to_string(), String::new()),
    ];
    let (bad, undeclared) = violations(&decl, &files);
    assert_eq!(
        bad,
        vec!["base -> app".to_string(), "base -> state".to_string()]
    );
    assert_eq!(
        undeclared.into_iter().collect::<Vec<_>>(),
        vec!["stray".to_string()]
    );
}

#[test]
fn the_architecture_doc_draws_the_declaration() {
    let decl = declaration(&std::fs::read_to_string(root().join("src/lib.rs")).unwrap());
    let want = drawing(&decl);
    let path = root().join("docs/architecture.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/architecture.md has no {BEGIN} … {END} block");
    };
    let have = doc[b + BEGIN.len()..e].trim_start_matches('\n');
    if have != want {
        if std::env::var_os("UPDATE_LAYERS").is_some() {
            let new = format!("{}{BEGIN}\n{want}{}", &doc[..b], &doc[e..]);
            std::fs::write(&path, new).unwrap();
        } else {
            panic!("docs/architecture.md's layer drawing is not the declaration of src/lib.rs; run UPDATE_LAYERS=1 cargo test --test layers\nwant:\n{want}\nhave:\n{have}");
        }
    }
}
