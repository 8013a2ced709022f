//! Where a parse error points. serde_json and serde_yaml end their messages
//! with " at line L column C", which reads wrongly where the text parsed is
//! one line of a larger file; these helpers split the position off, so that
//! errors can say `FILE:LINE:COLUMN: what was expected`.

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

/// `message` without a trailing " at line L column C" (the form both serde
/// crates use), and that position.
fn split(message: String, line: u64, column: u64) -> (Option<Position>, String) {
    if line == 0 {
        return (None, message);
    }
    let tail = format!(" at line {line} column {column}");
    let message = match message.strip_suffix(&tail) {
        Some(head) => head.to_string(),
        None => message,
    };
    (Some(Position { line, column }), message)
}

/// A serde_json error's position (none for errors that have none, such as
/// an I/O error) and its message without it.
pub fn json(e: &serde_json::Error) -> (Option<Position>, String) {
    split(e.to_string(), e.line() as u64, e.column() as u64)
}

/// A serde_yaml error's position and its message without it.
pub fn yaml(e: &serde_yaml_ng::Error) -> (Option<Position>, String) {
    match e.location() {
        Some(l) => split(e.to_string(), l.line() as u64, l.column() as u64),
        None => (None, e.to_string()),
    }
}

/// `path:LINE:COLUMN`, or `path` without a position.
pub fn place(path: &str, pos: Option<Position>) -> String {
    match pos {
        Some(p) => format!("{path}:{}:{}", p.line, p.column),
        None => path.to_string(),
    }
}

/// `path:LINE:COLUMN: message`, or `path: message` without a position.
pub fn located(path: &str, pos: Option<Position>, message: &str) -> String {
    format!("{}: {message}", place(path, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_error_loses_its_tail_and_keeps_its_place() {
        let e = serde_json::from_str::<serde_json::Value>("{\n  \"a\": x\n}").unwrap_err();
        let (pos, msg) = json(&e);
        assert_eq!(pos, Some(Position { line: 2, column: 8 }));
        assert_eq!(msg, "expected value");
        assert_eq!(located("m.json", pos, &msg), "m.json:2:8: expected value");
    }

    #[test]
    fn a_yaml_error_loses_its_tail_and_keeps_its_place() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct S {
            a: u32,
        }
        let e = serde_yaml_ng::from_str::<S>("a: x\n").unwrap_err();
        let (pos, msg) = yaml(&e);
        let pos = pos.expect("a position");
        assert_eq!(pos.line, 1);
        assert!(!msg.contains(" at line "), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
    }

    #[test]
    fn without_a_position_only_the_path_is_named() {
        assert_eq!(located("f", None, "gone"), "f: gone");
    }
}
