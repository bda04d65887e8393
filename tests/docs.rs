//! The documentation a newcomer reads must not send them nowhere: every relative markdown
//! link of every markdown file of the repository (README.md, docs/, alerts/, dashboards/, …;
//! not `target/` or `.git/`) names a file or directory that exists, and a link with an
//! `#anchor` into a markdown file names a heading of that file (GitHub's slugs). No
//! `docs/*.md` file is empty.
//!
//! Reads files only: no `gravity_exporter` import, so it does not depend on the crate's
//! module layout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.md` file under `dir`, skipping build output, VCS data and hidden directories.
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if name == "target" || name == ".git" || name == "node_modules" {
                continue;
            }
            markdown_files(&e.path(), out);
        } else if ft.is_file() && name.ends_with(".md") {
            out.push(e.path());
        }
    }
}

/// The text outside fenced code blocks, line by line (`None` for lines inside a fence, so
/// line numbers stay right).
fn prose_lines(text: &str) -> Vec<Option<&str>> {
    let mut fence: Option<(char, usize)> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        let ch = t.chars().next().unwrap_or(' ');
        let run = t.chars().take_while(|&c| c == ch).count();
        if (ch == '`' || ch == '~') && run >= 3 {
            match fence {
                None => {
                    fence = Some((ch, run));
                    out.push(None);
                    continue;
                }
                Some((c, n)) if c == ch && run >= n && t.trim_end().len() == run => {
                    fence = None;
                    out.push(None);
                    continue;
                }
                _ => {}
            }
        }
        out.push(if fence.is_some() { None } else { Some(line) });
    }
    out
}

/// `line` without its inline code spans (a link inside code is not a link).
fn without_code_spans(line: &str) -> String {
    let b: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '`' {
            let n = b[i..].iter().take_while(|&&c| c == '`').count();
            // find the closing run of the same length
            let mut j = i + n;
            let mut close = None;
            while j < b.len() {
                if b[j] == '`' {
                    let m = b[j..].iter().take_while(|&&c| c == '`').count();
                    if m == n {
                        close = Some(j + m);
                        break;
                    }
                    j += m;
                } else {
                    j += 1;
                }
            }
            match close {
                Some(end) => {
                    out.push_str("code");
                    i = end;
                }
                None => {
                    out.extend(&b[i..i + n]);
                    i += n;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The destinations of the inline links `[text](dest)` / images and of the reference
/// definitions `[ref]: dest` of one line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    let t = line.trim_start();
    if t.starts_with('[') {
        if let Some(close) = t.find("]:") {
            if !t[..close].contains('(') {
                if let Some(dest) = t[close + 2..].split_whitespace().next() {
                    out.push(dest.trim_matches(|c| c == '<' || c == '>').to_string());
                }
            }
        }
    }
    let mut rest = line.as_str();
    while let Some(p) = rest.find("](") {
        let after = &rest[p + 2..];
        // the destination ends at the matching ')' (parentheses may nest)
        let mut depth = 0usize;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let Some(end) = end else { break };
        let inner = after[..end].trim();
        let dest = if let Some(d) = inner.strip_prefix('<') {
            d.split('>').next().unwrap_or("")
        } else {
            // a title may follow: `(path "title")`
            inner.split_whitespace().next().unwrap_or("")
        };
        if !dest.is_empty() {
            out.push(dest.to_string());
        }
        rest = &after[end..];
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// GitHub's anchor of a heading: the rendered text lower-cased, every character that is not
/// a letter, a digit, `-`, `_` or a space dropped, each space turned into `-`.
fn slug(heading: &str) -> String {
    // rendered text: code spans keep their content, links their text, emphasis goes
    let mut text = String::new();
    let mut rest = heading;
    while let Some(p) = rest.find('[') {
        text.push_str(&rest[..p]);
        let after = &rest[p + 1..];
        match after.find("](") {
            Some(q) if after[q + 2..].contains(')') => {
                text.push_str(&after[..q]);
                let tail = &after[q + 2..];
                rest = &tail[tail.find(')').map_or(tail.len(), |i| i + 1)..];
            }
            _ => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file: heading slugs (duplicates get `-1`, `-2`, … as on
/// GitHub) and explicit `<a name=…>` / `id=…` anchors.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut add = |s: String, out: &mut BTreeSet<String>| {
        let n = seen.entry(s.clone()).or_insert(0);
        let a = if *n == 0 {
            s.clone()
        } else {
            format!("{s}-{n}")
        };
        *n += 1;
        out.insert(a);
    };
    let lines = prose_lines(text);
    for (i, line) in lines.iter().enumerate() {
        let Some(line) = line else { continue };
        let t = line.trim_start();
        let hashes = t.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && t[hashes..].starts_with([' ', '\t']) {
            let h = t[hashes..].trim().trim_end_matches('#').trim_end();
            add(slug(h), &mut out);
            continue;
        }
        // setext headings: text, then a line of '=' or '-'
        if let Some(Some(next)) = lines.get(i + 1) {
            let n = next.trim();
            if !t.is_empty()
                && !t.starts_with(['|', '-', '*', '>'])
                && !n.is_empty()
                && (n.chars().all(|c| c == '=') || (n.len() >= 3 && n.chars().all(|c| c == '-')))
            {
                add(slug(t), &mut out);
            }
        }
        for key in ["name=\"", "id=\""] {
            let mut rest = *line;
            while let Some(p) = rest.find(key) {
                let v = &rest[p + key.len()..];
                if let Some(e) = v.find('"') {
                    out.insert(v[..e].to_string());
                }
                rest = v;
            }
        }
    }
    out
}

/// Resolves a link destination of `file` against the repository.
fn resolve(file: &Path, path: &str) -> PathBuf {
    let base = if let Some(abs) = path.strip_prefix('/') {
        root().join(abs)
    } else {
        file.parent().unwrap_or(Path::new("")).join(path)
    };
    // normalise `..` without touching the filesystem
    let mut out = PathBuf::new();
    for c in base.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

#[test]
fn every_relative_link_resolves_and_no_doc_is_empty() {
    let mut files = Vec::new();
    markdown_files(&root(), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")),
        "no README.md found under {}",
        root().display()
    );
    let mut problems = Vec::new();
    let mut checked = 0usize;
    let mut anchor_cache: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        if rel(file).starts_with("docs/") && text.trim().is_empty() {
            problems.push(format!("{}: empty", rel(file)));
        }
        for (n, line) in prose_lines(&text).into_iter().enumerate() {
            let Some(line) = line else { continue };
            for dest in link_targets(line) {
                let lower = dest.to_ascii_lowercase();
                if lower.starts_with("http://")
                    || lower.starts_with("https://")
                    || lower.starts_with("mailto:")
                    || lower.starts_with("ftp://")
                {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match dest.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (dest.as_str(), None),
                };
                let target = if path.is_empty() {
                    file.clone()
                } else {
                    resolve(file, &percent_decode(path))
                };
                let at = format!("{}:{}: ({dest})", rel(file), n + 1);
                if !target.exists() {
                    problems.push(format!("{at}: {} does not exist", rel(&target)));
                    continue;
                }
                let Some(anchor) = anchor.filter(|a| !a.is_empty()) else {
                    continue;
                };
                if target.extension().and_then(|e| e.to_str()) != Some("md") {
                    continue;
                }
                let known = anchor_cache.entry(target.clone()).or_insert_with(|| {
                    anchors(&std::fs::read_to_string(&target).unwrap_or_default())
                });
                let anchor = percent_decode(anchor).to_lowercase();
                if !known.contains(&anchor) {
                    problems.push(format!(
                        "{at}: no heading with the anchor #{anchor} in {}",
                        rel(&target)
                    ));
                }
            }
        }
    }
    assert!(
        checked > 0,
        "no relative link found: the extractor is broken"
    );
    assert!(
        problems.is_empty(),
        "{} broken link(s) or empty doc(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(
        slug("TLS and basic auth (`--web.config.file`)"),
        "tls-and-basic-auth---webconfigfile"
    );
    assert_eq!(
        slug("Consistency (source: the opt-in checker, `--consistency.tables`)"),
        "consistency-source-the-opt-in-checker---consistencytables"
    );
    assert_eq!(slug("Layers"), "layers");
    assert_eq!(slug("What is `gravity_up`?"), "what-is-gravity_up");
    assert_eq!(slug("See [the docs](x.md) now"), "see-the-docs-now");
    let a = anchors("# A\n## A\n```\n# not a heading\n```\nB\n---\n");
    assert!(
        a.contains("a") && a.contains("a-1") && a.contains("b"),
        "{a:?}"
    );
    assert!(!a.contains("not-a-heading"), "{a:?}");
    assert_eq!(
        link_targets("see [x](a.md#b), `[y](no.md)` and ![i](img.png \"t\")"),
        vec!["a.md#b".to_string(), "img.png".to_string()]
    );
    assert_eq!(
        link_targets("[ref]: ../x.md#y"),
        vec!["../x.md#y".to_string()]
    );
}
