//! The library's modules in layers: every `crate::` path in a module's code names a module of a
//! lower layer, so no import runs up the layers and the modules cannot import each other in a
//! circle. README's "Layout" shows the same table.

use std::path::Path;

/// Each top-level module of `src/` and its layer; a module imports only lower layers.
const LAYERS: &[(&str, usize)] = &[
    ("alloc", 0),
    ("diagnostic", 0),
    ("threads", 0),
    ("build_info", 0),
    ("error", 1),
    ("device", 2),
    // a macro of `device`, exported at the crate's root
    ("on_device", 2),
    ("files", 2),
    ("tensor", 2),
    ("memory", 3),
    ("spec", 3),
    ("fixtures", 4),
    ("data", 4),
    ("graph", 4),
    ("kernels", 4),
    ("backend", 5),
    ("ops", 6),
    ("nn", 7),
    ("rules", 8),
    ("models", 9),
    ("train", 10),
    ("experiment", 11),
];

/// The code of a line: without a `//` comment (doc comments link freely up and down).
pub fn code(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    // a comment after code; `//` inside a string literal would end the line early, which only
    // hides a path from this check, never invents one
    line.split(" //").next().unwrap_or(line)
}

/// Every `.rs` file under `dir`.
pub fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn no_module_imports_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let layer = |name: &str| LAYERS.iter().find(|(m, _)| *m == name).map(|(_, l)| *l);
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        // the binary (main.rs, cli/) sits on top; lib.rs only declares the modules
        if ["main", "cli", "lib"].contains(&top.as_str()) {
            continue;
        }
        let own = layer(&top).unwrap_or_else(|| {
            panic!(
                "src/{} is in no layer: add `{top}` to LAYERS and README",
                rel.display()
            )
        });
        let text = std::fs::read_to_string(file).unwrap();
        for (k, line) in text.lines().enumerate() {
            let mut rest = code(line);
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name == top {
                    continue;
                }
                match layer(&name) {
                    Some(l) if l < own => {}
                    Some(l) => violations.push(format!(
                        "src/{}:{}: `{top}` (layer {own}) imports `{name}` (layer {l})",
                        rel.display(),
                        k + 1
                    )),
                    None => violations.push(format!(
                        "src/{}:{}: `crate::{name}` is in no layer",
                        rel.display(),
                        k + 1
                    )),
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// The check finds what it is meant to find.
#[test]
fn the_layer_check_reads_code_not_comments() {
    assert_eq!(
        code("    use crate::ops::x; // see crate::train"),
        "    use crate::ops::x;"
    );
    assert_eq!(code("    /// links [`crate::train`]"), "");
}
