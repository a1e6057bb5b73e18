//! The configuration reference says what the code reads, and nothing more: every key the code
//! accepts in each section is described in `resque.toml(5)` (`man/resque.toml.5`) and in the
//! README's tables, and neither documents a key the code would reject.
//!
//! The keys in the code are taken from the code itself: each section rejects an unknown key with
//! serde's "unknown field `x`, expected one of `a`, `b`, …", which lists exactly the keys it reads.

use std::collections::BTreeSet;
use std::path::Path;

/// The keys a section of the file accepts, as the parser lists them.
fn code_keys(section_header: &str) -> BTreeSet<String> {
    let text = format!("{section_header}\nno_such_key_xyz = 1\n");
    let none = resque::config::Overrides::default();
    let e = resque::config::from_str(&text, Path::new("/t.toml"), None, &none, &none)
        .expect_err("an unknown key is rejected");
    let message = e.message;
    let (_, list) = message
        .split_once("expected one of ")
        .or_else(|| message.split_once("expected "))
        .unwrap_or_else(|| panic!("no key list in {message:?}"));
    list.split(',')
        .map(|k| k.trim().trim_matches('`').to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// Keys documented in resque.toml(5): `.TP` then `.B key`, under `.SS <section>`.
fn man_keys(man: &str, heading: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut inside = false;
    let mut after_tp = false;
    for line in man.lines() {
        if let Some(h) = line.strip_prefix(".SS ") {
            inside = h.trim() == heading;
        } else if line.starts_with(".SH ") {
            inside = false;
        } else if inside && line == ".TP" {
            after_tp = true;
            continue;
        } else if inside && after_tp {
            if let Some(key) = line.strip_prefix(".B ") {
                keys.insert(key.trim().to_string());
            }
        }
        after_tp = false;
    }
    keys
}

/// Keys in the first column of the README's table under `### <heading>`.
fn readme_keys(readme: &str, heading: &str) -> BTreeSet<String> {
    let start = readme
        .find(&format!("### {heading}\n"))
        .unwrap_or_else(|| panic!("README has no ### {heading}"));
    let section = &readme[start..];
    let mut keys = BTreeSet::new();
    let mut in_table = false;
    for line in section.lines().skip(1) {
        if line.starts_with("### ") || line.starts_with("## ") {
            break;
        }
        if let Some(rest) = line.strip_prefix('|') {
            let first = rest.split('|').next().unwrap_or_default();
            if first.trim() == "key" {
                in_table = true;
                continue;
            }
            if in_table && !first.trim().starts_with("---") {
                for (i, part) in first.split('`').enumerate() {
                    if i % 2 == 1 {
                        keys.insert(part.to_string());
                    }
                }
            }
        } else if in_table {
            break;
        }
    }
    keys
}

#[test]
fn every_config_key_is_documented_and_nothing_more() {
    let man = read("man/resque.toml.5");
    let readme = read("README.md");
    let sections = [
        ("[redis]", "[redis]", "`[redis]`"),
        (
            "[worker]",
            "[worker] and [instance.NAME]",
            "`[worker]` and `[instance.NAME]`",
        ),
        (
            "[[handler]]\nclass = \"*\"\ntype = \"exec\"",
            "[[handler]]",
            "`[[handler]]`",
        ),
    ];
    for (header, man_heading, readme_heading) in sections {
        let code = code_keys(header);
        assert!(code.len() > 5, "{header}: {code:?}");
        let in_man = man_keys(&man, man_heading);
        assert_eq!(
            in_man, code,
            "resque.toml(5) {man_heading}: documented vs read by the code"
        );
        let in_readme = readme_keys(&readme, readme_heading);
        assert_eq!(
            in_readme, code,
            "README {readme_heading}: documented vs read by the code"
        );
    }
    // [instance.NAME] takes exactly the keys of [worker].
    assert_eq!(code_keys("[instance.x]"), code_keys("[worker]"));
    // The sections themselves.
    let top = code_keys("");
    assert_eq!(
        top,
        [
            "handler",
            "instance",
            "redis",
            "schedule",
            "scheduler",
            "worker"
        ]
        .into_iter()
        .map(String::from)
        .collect::<BTreeSet<_>>()
    );
    let headings: BTreeSet<&str> = man.lines().filter_map(|l| l.strip_prefix(".SS ")).collect();
    assert_eq!(
        headings,
        [
            "[redis]",
            "[worker] and [instance.NAME]",
            "[[handler]]",
            "[scheduler]",
            "[[schedule]]"
        ]
        .into_iter()
        .collect()
    );
}

/// resque(1) has the sections an operator looks for, and the units point at both pages.
#[test]
fn man_pages_and_units_point_at_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_resque"))
        .args(["generate", "man", "--out", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(dir.path().join("resque.1")).unwrap();
    for section in [
        "SYNOPSIS",
        "OPTIONS",
        "CONFIGURATION",
        "ENVIRONMENT",
        "SIGNALS",
        "SYSTEMD",
        "FILES",
        "EXIT STATUS",
        "SEE ALSO",
    ] {
        assert!(
            page.contains(&format!(".SH {section}")),
            "resque.1 lacks {section}"
        );
    }
    for needle in [
        "resque@.service",
        "resque.service",
        "QUEUE",
        "REDIS_BACKEND",
        "SIGHUP",
        "78",
        "69",
        "77",
        "resque.toml (5)",
        "\\fB\\-\\-count\\fR \\fIN\\fR",
    ] {
        assert!(page.contains(needle), "resque.1 lacks {needle:?}");
    }
    assert!(
        !page.contains("generate"),
        "the hidden generate command is in resque.1"
    );
    let toml5 = std::fs::read_to_string(dir.path().join("resque.toml.5")).unwrap();
    assert_eq!(toml5, read("man/resque.toml.5"));
    for unit in ["systemd/resque@.service", "systemd/resque.service"] {
        let text = read(unit);
        assert!(
            text.contains("Documentation=man:resque(1) man:resque.toml(5)"),
            "{unit}"
        );
    }
}
