//! The shell commands in README.md and docs/*.md, checked against the
//! binary, so that the documents and the code cannot drift apart.
//!
//! The rule, by the fence of a code block:
//! - ` ```sh ` — runnable: each command is run, on bundled data, and must
//!   exit 0. `pullahead …`, `./target/release/pullahead …` and
//!   `cargo run --release -- …` run this build's binary. Commands run in a
//!   scratch directory that links the repository's `replay-data`, `models`,
//!   `deploy` and `docs`, and `/tmp/` in a command means that directory, so
//!   what they write goes nowhere else.
//! - ` ```sh check ` — parsed, not run (it needs a cluster, or takes too
//!   long): a `pullahead` command must be accepted with `--help` appended
//!   (clap rejects an unknown flag or a bad value before it prints help),
//!   `bash SCRIPT …` must pass `bash -n SCRIPT`, and `helm install …` must
//!   render with `helm template` and the same arguments. Nothing else may
//!   stand in a check block.
//! - any other fence (` ```console `, ` ```text `, ` ```yaml `, none) is
//!   illustrative and not checked.
//!
//! One command a line; a line ending in `\` goes on to the next, `#` starts
//! a comment. tests/README.md says the same for writers of documents.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_pullahead");

#[derive(Debug, PartialEq)]
enum Mode {
    Run,
    Check,
}

#[derive(Debug)]
struct Block {
    file: String,
    line: usize,
    mode: Mode,
    commands: Vec<String>,
}

/// The blocks of `text`, which holds only ` ```sh ` and ` ```sh check `
/// fences.
fn blocks(file: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    let mut pending = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(info) = line.strip_prefix("```") {
            match current.take() {
                Some(b) => {
                    assert!(
                        pending.is_empty(),
                        "{file}:{}: a `\\` continues past the block's end",
                        b.line
                    );
                    out.push(b);
                }
                None => {
                    // `checked_blocks` has dropped every other fence.
                    let mode = if info.trim() == "sh" {
                        Mode::Run
                    } else {
                        Mode::Check
                    };
                    current = Some(Block {
                        file: file.to_string(),
                        line: i + 1,
                        mode,
                        commands: Vec::new(),
                    });
                }
            }
            continue;
        }
        let Some(b) = current.as_mut() else { continue };
        let code = match line.find(" #") {
            Some(at) => &line[..at],
            None if line.starts_with('#') => "",
            None => line,
        }
        .trim();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let command = std::mem::take(&mut pending).trim().to_string();
        if !command.is_empty() {
            b.commands.push(command);
        }
    }
    assert!(current.is_none(), "{file}: a code block is not closed");
    out
}

/// README.md and docs/*.md, each with its name from the repository root.
fn documents() -> Vec<(String, String)> {
    let mut files = vec![PathBuf::from(ROOT).join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(ROOT).unwrap_or(&p).display().to_string();
            let text = std::fs::read_to_string(&p).expect("read a document");
            (name, text)
        })
        .collect()
}

fn all_blocks() -> Vec<Block> {
    let mut out = Vec::new();
    for (name, text) in documents() {
        out.extend(checked_blocks(&name, &text));
    }
    out
}

/// The checked blocks of one document, with illustrative ones passed over
/// whole (their contents may hold anything, fences of other kinds aside).
fn checked_blocks(name: &str, text: &str) -> Vec<Block> {
    let mut kept = String::new();
    let mut inside: Option<bool> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(info) = t.strip_prefix("```") {
            inside = match inside {
                Some(_) => {
                    if inside == Some(true) {
                        kept.push_str(line);
                    }
                    kept.push('\n');
                    None
                }
                None => {
                    let checked = matches!(info.trim(), "sh" | "sh check");
                    if checked {
                        kept.push_str(line);
                    }
                    kept.push('\n');
                    Some(checked)
                }
            };
            continue;
        }
        if inside != Some(false) {
            kept.push_str(line);
        }
        kept.push('\n');
    }
    blocks(name, &kept)
}

/// `command` split into words; quotes group, as the shell's would.
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in command.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (None, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        out.push(word);
    }
    out
}

/// The arguments after the program when `w` runs pullahead, else `None`.
fn pullahead_args(w: &[String]) -> Option<&[String]> {
    match w {
        [p, rest @ ..] if p == "pullahead" || p == "./target/release/pullahead" => Some(rest),
        [c, r, d, rest @ ..] if c == "cargo" && r == "run" && d == "--release" => match rest {
            [dd, rest @ ..] if dd == "--" => Some(rest),
            _ => None,
        },
        _ => None,
    }
}

fn helm() -> PathBuf {
    let path = std::env::var("PULLAHEAD_HELM")
        .unwrap_or_else(|_| "/opt/pullahead-tools/helm/helm".to_string());
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "helm not found at {} (set PULLAHEAD_HELM, or run .ci/setup.d/30-helm.sh; .ci/test does)",
        path.display()
    );
    path
}

/// A scratch directory with the repository's data linked in.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("scratch dir");
    for name in ["replay-data", "models", "deploy", "docs"] {
        std::os::unix::fs::symlink(Path::new(ROOT).join(name), dir.path().join(name))
            .expect("link into the scratch dir");
    }
    dir
}

fn expect_success(b: &Block, command: &str, mut cmd: Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{}:{}: `{command}`: {e}", b.file, b.line));
    assert!(
        out.status.success(),
        "{}:{}: `{command}` failed ({}):\n{}{}",
        b.file,
        b.line,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(b: &Block, command: &str, dir: &Path) {
    let tmp = format!("{}/", dir.display());
    let w: Vec<String> = words(command)
        .into_iter()
        .map(|w| w.replace("/tmp/", &tmp))
        .collect();
    let args = pullahead_args(&w).unwrap_or_else(|| {
        panic!(
            "{}:{}: `{command}` is in a ```sh block but does not run pullahead; \
             fence it ```sh check or ```text",
            b.file, b.line
        )
    });
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("PULLAHEAD_KAFKA_BROKERS");
    expect_success(b, command, cmd);
}

fn check(b: &Block, command: &str) {
    let w = words(command);
    if let Some(args) = pullahead_args(&w) {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--help").current_dir(ROOT);
        expect_success(b, command, cmd);
        return;
    }
    match w.as_slice() {
        [bash, script, ..] if bash == "bash" => {
            let mut cmd = Command::new("bash");
            cmd.arg("-n").arg(script).current_dir(ROOT);
            expect_success(b, command, cmd);
        }
        [h, install, rest @ ..] if h == "helm" && install == "install" => {
            let mut cmd = Command::new(helm());
            cmd.arg("template").args(rest).current_dir(ROOT);
            expect_success(b, command, cmd);
        }
        _ => panic!(
            "{}:{}: `{command}` cannot be checked: a ```sh check block holds only pullahead, \
             `bash SCRIPT` and `helm install` commands (fence others ```text)",
            b.file, b.line
        ),
    }
}

#[test]
fn the_parser_follows_the_rule() {
    let text = "intro\n```sh\npullahead replay a.jsonl  # one\n./target/release/pullahead \\\n  tune b.jsonl --out /tmp/m.json\n```\n\
                ```text\npullahead not run\n```\n```sh check\nbash .ci/test\n```\n```console\n$ pullahead nothing\n```\n";
    let got = checked_blocks("t.md", text);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].mode, Mode::Run);
    assert_eq!(
        got[0].commands,
        [
            "pullahead replay a.jsonl",
            "./target/release/pullahead tune b.jsonl --out /tmp/m.json"
        ]
    );
    assert_eq!(got[1].mode, Mode::Check);
    assert_eq!(got[1].commands, ["bash .ci/test"]);
    assert_eq!(words("a 'b c' \"d\" ''"), ["a", "b c", "d", ""]);
    assert_eq!(
        pullahead_args(&words("cargo run --release -- replay x")).map(<[String]>::to_vec),
        Some(vec!["replay".to_string(), "x".to_string()])
    );
}

/// A command the binary does not take fails the check: the test can fail.
#[test]
fn a_flag_the_binary_lacks_fails_its_check() {
    let out = Command::new(BIN)
        .args(["replay", "--no-such-flag", "--help"])
        .output()
        .expect("run pullahead");
    assert!(!out.status.success());
}

#[test]
fn every_documented_command_runs_or_parses() {
    let blocks = all_blocks();
    let readme = blocks.iter().filter(|b| b.file == "README.md").count();
    assert!(readme >= 2, "README.md has {readme} checked blocks");
    let dir = scratch();
    let mut ran = 0;
    for b in &blocks {
        assert!(
            !b.commands.is_empty(),
            "{}:{}: an empty block",
            b.file,
            b.line
        );
        for command in &b.commands {
            match b.mode {
                Mode::Run => run(b, command, dir.path()),
                Mode::Check => check(b, command),
            }
            ran += 1;
        }
    }
    eprintln!(
        "{ran} documented commands checked in {} blocks",
        blocks.len()
    );
}
