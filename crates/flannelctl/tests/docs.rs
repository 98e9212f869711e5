//! The README and docs stay true to the code: every path they name exists in the repository, every CNI plugin a
//! README config names is one we build, every `--flag` they mention is one of our programs' flags, and nothing
//! points at notes outside the repository.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// README.md and every docs/*.md, with their text.
fn documents() -> Vec<(PathBuf, String)> {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    for e in fs::read_dir(root.join("docs")).expect("docs/").flatten() {
        if e.path().extension().is_some_and(|x| x == "md") {
            files.push(e.path());
        }
    }
    files
        .into_iter()
        .map(|p| {
            let t = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, t)
        })
        .collect()
}

/// The texts between backticks.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn paths_named_in_the_docs_exist_and_stay_in_the_repository() {
    let root = repo();
    let mut bad = Vec::new();
    for (file, text) in documents() {
        let dir = file.parent().unwrap_or(&root).to_path_buf();
        // Markdown links to local files: relative to the document.
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or("");
            let target = target.split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            if !dir.join(target).exists() {
                bad.push(format!("{}: link to {target}", file.display()));
            }
        }
        // Repository paths in code spans: relative to the root.
        for span in code_spans(&text) {
            let first = span.split_whitespace().next().unwrap_or("");
            let p = first.trim_end_matches([',', '.', ':', ';']);
            if ["crates/", "scripts/", "docs/", "deploy/", ".ci/"]
                .iter()
                .any(|pre| p.starts_with(pre))
                && !p.contains('*')
                && !p.contains('<')
                && !root.join(p).exists()
            {
                bad.push(format!("{}: {p} does not exist", file.display()));
            }
        }
        // Notes outside the repository are not there for a reader of the repository.
        if text.contains("shared/") {
            bad.push(format!(
                "{}: refers to shared/, which is not in the repository",
                file.display()
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn cni_plugins_in_readme_configs_are_ones_we_build() {
    let root = repo();
    let readme = fs::read_to_string(root.join("README.md")).expect("README.md");
    let mut named = Vec::new();
    for span in code_spans(&readme)
        .into_iter()
        .filter(|s| s.contains("\"plugins\""))
    {
        let v: serde_json::Value = serde_json::from_str(span)
            .unwrap_or_else(|e| panic!("README conflist is not JSON ({e}): {span}"));
        for p in v["plugins"].as_array().into_iter().flatten() {
            named.push(p["type"].as_str().unwrap_or_default().to_string());
        }
    }
    assert!(!named.is_empty(), "the README shows a conflist");
    for t in named {
        let bin = root.join("crates/plugins/src/bin").join(format!("{t}.rs"));
        assert!(
            bin.exists(),
            "the README's conflist names {t:?}, which flannel-rs does not build"
        );
    }
}

#[test]
fn flags_in_the_readme_are_real() {
    let ctl = Path::new(env!("CARGO_BIN_EXE_flannelctl"));
    let flanneld = ctl.with_file_name("flanneld");
    assert!(
        flanneld.is_file(),
        "build flanneld first (cargo build --workspace --bins): {} is missing",
        flanneld.display()
    );
    let help = |bin: &Path, args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .arg("--help")
            .output()
            .expect("run --help");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let mut all = help(&flanneld, &[]) + &help(&flanneld, &["install-cni"]);
    for sub in [
        &["lab", "up"][..],
        &["lab", "status"],
        &["lab", "exec"],
        &["lab", "down"],
        &["status"],
        &["bench", "cni"],
        &["bench", "kube"],
        &[],
    ] {
        all += &help(ctl, sub);
    }
    let readme = fs::read_to_string(repo().join("README.md")).expect("README.md");
    let mut missing = Vec::new();
    for word in readme.split(|c: char| c.is_whitespace() || c == '`' || c == '(' || c == ')') {
        let Some(flag) = word.strip_prefix("--") else {
            continue;
        };
        let flag: String = flag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if flag.is_empty()
            || ["no-install-recommends", "release", "workspace", "bins"].contains(&flag.as_str())
        {
            continue;
        }
        if !all.contains(&format!("--{flag}")) {
            missing.push(flag);
        }
    }
    assert!(
        missing.is_empty(),
        "flags in the README that no program has: {missing:?}"
    );
}
