//! `--help` is a manual, and its hand-set parts (tables of settings and sources, example
//! commands) must not be re-wrapped at clap's 100 columns: a wrapped row loses its column and a
//! wrapped example splits a command mid-argument.

mod common;

use std::process::Command;

use common::BIN;

fn help(args: &[&str], columns: Option<&str>) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("COLUMNS");
    if let Some(c) = columns {
        cmd.env("COLUMNS", c);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{args:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// The indented lines of the hand-set parts: before `Usage:`, and from `Examples:` on.
fn hand_set(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut inside = true;
    for line in text.lines() {
        if line.starts_with("Usage:") {
            inside = false;
        } else if line == "Examples:" {
            inside = true;
        } else if inside && line.starts_with(' ') {
            out.push(line);
        }
    }
    out
}

#[test]
fn hand_set_help_is_not_rewrapped() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["start-pixie", "--help"],
        &["boot", "--help"],
        &["api", "--help"],
        &["ipxe-iso", "--help"],
        &["netboot", "--help"],
        &["cache", "--help"],
        &["machines", "--help"],
    ] {
        // Unwrapped (very wide) against the width users get when not on a terminal.
        let wide = help(args, Some("1000"));
        let narrow = help(args, None);
        let narrow_lines: Vec<&str> = narrow.lines().collect();
        for line in hand_set(&wide) {
            assert!(
                narrow_lines.contains(&line),
                "{args:?}: this line is re-wrapped at 100 columns:\n{line}"
            );
        }
    }
    // The table of sources keeps its second column on continuation lines.
    let text = help(&["netboot", "--help"], None);
    assert!(
        text.contains(&format!("\n{}and docker://", " ".repeat(33))),
        "{text}"
    );
}
