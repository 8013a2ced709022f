//! Bad input makes `pullahead replay` exit non-zero with one line that names
//! the file and line, and never panic.

use std::process::Command;

const GOOD: &str = r#"{"ts":1,"type":"pull","node":"n","image":"i","cached":true}"#;

fn replay(contents: &[u8]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, contents).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .arg("replay")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].contains("bad.jsonl"), "names the file: {stderr}");
    (out.status.code().unwrap_or(-1), errors[0].to_string())
}

fn expect(contents: &[u8], needle: &str) {
    let (code, line) = replay(contents);
    assert_ne!(code, 0);
    assert!(line.contains(needle), "{line:?} lacks {needle:?}");
}

#[test]
fn truncated_line() {
    expect(
        format!("{GOOD}\n{{\"ts\":2,\"type\":\"po").as_bytes(),
        "bad.jsonl:2:18: malformed event: EOF while parsing a string",
    );
}

#[test]
fn wrong_field_type() {
    expect(
        format!("{GOOD}\n{{\"ts\":2,\"type\":\"pull\",\"node\":\"n\",\"image\":\"i\",\"cached\":\"yes\"}}\n").as_bytes(),
        "bad.jsonl:2:59: malformed event: invalid type: string \"yes\", expected a boolean",
    );
}

#[test]
fn time_going_backwards() {
    expect(
        format!("{GOOD}\n{}\n", GOOD.replace("\"ts\":1", "\"ts\":0.5")).as_bytes(),
        "bad.jsonl:2: time goes backwards",
    );
}

#[test]
fn unknown_version() {
    expect(
        b"{\"type\":\"trace\",\"version\":7,\"ts\":0,\"source\":\"future\"}\n",
        "bad.jsonl:1: unsupported schema version 7",
    );
}

#[test]
fn empty_file() {
    expect(b"", "the file is empty");
}

#[test]
fn line_over_the_limit() {
    let mut text = format!("{GOOD}\n").into_bytes();
    text.extend(std::iter::repeat_n(
        b' ',
        pullahead::event::MAX_LINE_BYTES + 1,
    ));
    text.extend(b"\n");
    expect(
        &text,
        "bad.jsonl:2: line longer than the limit of 1048576 bytes",
    );
}

#[test]
fn missing_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["replay", "/nonexistent/x.jsonl"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/x.jsonl: No such file"),
        "{stderr}"
    );
}

#[test]
fn unknown_policy() {
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["replay", "--policy", "magic", "replay-data/ca-small.jsonl"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown policy \"magic\""), "{stderr}");
}

#[test]
fn the_first_bad_line_is_named_even_when_a_later_binding_is_bad_too() {
    // Line 2 is a workload the oracle's pre-scan skips unparsed; line 3 is
    // a binding it parses. The error must still name line 2.
    let workload = r#"{"ts":2,"type":"workload","workload":"a/w","kind":"Deployment","images":5}"#;
    let binding = r#"{"ts":3,"type":"pod","pod":"a/p","images":7,"phase":"scheduled","node":"n"}"#;
    expect(
        format!("{GOOD}\n{workload}\n{binding}\n").as_bytes(),
        "bad.jsonl:2:73: malformed event",
    );
    // And time going backwards between two lines the scan skips comes
    // before a bad binding later on.
    let late = GOOD.replace("\"ts\":1", "\"ts\":0.5");
    expect(
        format!("{GOOD}\n{late}\n{binding}\n").as_bytes(),
        "bad.jsonl:2: time goes backwards",
    );
}
