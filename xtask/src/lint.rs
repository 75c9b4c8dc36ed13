//! Checks of the code's shape that rustfmt and clippy do not make: no source file grows past
//! [`MAX_LINES`] (split into siblings first, e.g. `foo/tests.rs`), and no library returns
//! `Result<_, String>` (errors are types with a kind a caller can match).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// About where a file stops being readable in one sitting.
pub const MAX_LINES: usize = 800;

/// Crates whose `src/` is library code (binaries' `main.rs` and thinpool's binary-only `cli/`
/// may use anyhow and strings).
const LIBRARIES: &[&str] = &["thinpool", "thinpool/units", "overlay", "init", "image", "qemu"];

pub fn check(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for dir in ["thinpool", "overlay", "init", "image", "qemu", "tests", "xtask", "fuzz"] {
        for f in rust_files(&root.join(dir))? {
            let rel = f.strip_prefix(root).unwrap_or(&f).to_owned();
            let text = std::fs::read_to_string(&f).with_context(|| f.display().to_string())?;
            let lines = text.lines().count();
            if lines > MAX_LINES && !is_test_file(&rel) {
                problems.push(format!(
                    "{}: {lines} lines (limit {MAX_LINES}; split it into siblings)",
                    rel.display()
                ));
            }
            if is_library_source(&rel) {
                for (n, line) in text.lines().enumerate() {
                    if returns_string_error(line) {
                        problems.push(format!(
                            "{}:{}: a library returns Result<_, String>; give the error a type",
                            rel.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!("code shape check failed:\n  {}", problems.join("\n  "));
    }
    eprintln!("code shape: every file within {MAX_LINES} lines, no Result<_, String> in libraries");
    Ok(())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if name != "target" && !name.starts_with('.') && name != "corpus" {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Unit-test siblings and integration tests are exempt from the length limit (a suite reads
/// as one list of cases); everything they test is not.
fn is_test_file(rel: &Path) -> bool {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "tests.rs"
        || name.ends_with("_tests.rs")
        || rel.components().any(|c| c.as_os_str() == "tests" || c.as_os_str() == "benches")
}

fn is_library_source(rel: &Path) -> bool {
    let s = rel.to_string_lossy();
    LIBRARIES.iter().any(|l| s.starts_with(&format!("{l}/src/")))
        && !s.ends_with("/main.rs")
        && !s.starts_with("thinpool/src/cli/")
        && !is_test_file(rel)
}

/// `Result<T, String>` in a signature or type (not in a comment).
fn returns_string_error(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    let Some(i) = code.find("Result<") else { return false };
    let mut depth = 0i32;
    let tail = &code[i + "Result<".len()..];
    for (j, c) in tail.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' if depth > 0 => depth -= 1,
            '>' => return false,
            ',' if depth == 0 => {
                let rest = tail[j + 1..].trim_start();
                return rest.starts_with("String>") || rest.starts_with("String >");
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_string_errors_in_signatures_only() {
        assert!(returns_string_error("pub fn f() -> Result<(), String> {"));
        assert!(returns_string_error("fn g(x: u8) -> Result<Vec<(u8, u16)>, String>;"));
        assert!(!returns_string_error("fn h() -> Result<String, Error> {"));
        assert!(!returns_string_error("fn h() -> Result<(), MyError<String>> {"));
        assert!(!returns_string_error("// Result<(), String> in a comment"));
        assert!(!returns_string_error("let x: io::Result<String> = f();"));
    }

    #[test]
    fn sorts_files_into_tests_and_libraries() {
        assert!(is_test_file(Path::new("thinpool/src/pool/tests.rs")));
        assert!(is_test_file(Path::new("thinpool/tests/nbd_pool.rs")));
        assert!(is_test_file(Path::new("thinpool/src/vg/format_tests.rs")));
        assert!(!is_test_file(Path::new("thinpool/src/nbd/server/conn.rs")));
        assert!(is_library_source(Path::new("thinpool/src/nbd/server/conn.rs")));
        assert!(is_library_source(Path::new("thinpool/units/src/lib.rs")));
        assert!(!is_library_source(Path::new("thinpool/src/cli/pool.rs")));
        assert!(!is_library_source(Path::new("qemu/src/main.rs")));
        assert!(!is_library_source(Path::new("xtask/src/main.rs")));
    }
}
