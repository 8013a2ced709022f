//! Finding the binaries the tests need: one way, for every test (the
//! `support` module includes this file too). A missing binary fails the
//! test with what to install: tests never skip silently.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A tool the tests need, from `$var` or `default` (a path, or a name looked
/// up on `PATH` and the sbin directories). Fails the test with a clear
/// message naming `hint` when it is missing.
pub fn tool(var: &str, default: &str, hint: &str) -> PathBuf {
    let name = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let p = PathBuf::from(&name);
    if p.components().count() > 1 {
        assert!(
            p.is_file(),
            "{} not found (set {var}); install it with {hint}",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let c = Path::new(&dir).join(&name);
        if c.is_file() {
            return c;
        }
    }
    panic!("required binary `{name}` not found (set {var}); install it with {hint}");
}

/// A binary from the Debian `package` (listed in `.ci/apt-packages.txt`).
pub fn require_bin(var: &str, default: &str, package: &str) -> PathBuf {
    tool(
        var,
        default,
        &format!("`apt-get install {package}` (.ci/test installs it)"),
    )
}

/// promtool, from the Debian `prometheus` package.
pub fn promtool() -> PathBuf {
    require_bin("PULLAHEAD_PROMTOOL", "promtool", "prometheus")
}
