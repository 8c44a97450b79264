//! The README tells the truth about the things it lists, so they cannot drift apart:
//!
//! - its `tribe-node` flag table against `tribe-node --help` (each flag exists with the
//!   env var the README gives it; each flag of the binary is in that table or in
//!   node/README.md's);
//! - its SessionCluster field table against the CRD schema (each row exists; each spec
//!   field has a row, or is named in its parent's row; the `status` row names exactly the
//!   status fields);
//! - its `kubectl get sessionclusters` example against the CRD's printer columns.
//!
//! Generic on purpose: a new flag or field fails here until its row is added.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;
use support::{repo_root, run, workspace_bin};

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The text of the section under `heading` (a line starting with it), up to the next
/// heading of the same or a higher level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("README has no heading {heading:?}"))
        + 1;
    let level = heading.chars().take_while(|&c| c == '#').count();
    let rest = &text[start..];
    let body_start = rest.find('\n').map_or(rest.len(), |i| i + 1);
    let end = rest[body_start..]
        .lines()
        .scan(body_start, |pos, line| {
            let at = *pos;
            *pos += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| {
            let hashes = line.chars().take_while(|&c| c == '#').count();
            hashes > 0 && hashes <= level && line[hashes..].starts_with(' ')
        })
        .map_or(rest.len(), |(at, _)| at);
    &rest[..end]
}

/// The body rows of the first Markdown table in `text`, as cells.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2) // header and the |---| line
        .map(|l| {
            let l = l.trim().trim_start_matches('|').trim_end_matches('|');
            l.split('|').map(|c| c.trim().to_string()).collect()
        })
        .collect()
}

/// The `code` spans of a cell.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// `--flag` → its env var, from `tribe-node --help`.
fn help_flags() -> BTreeMap<String, Option<String>> {
    let bin = workspace_bin("tribe-node").unwrap_or_else(|e| panic!("{e}"));
    let help = run(Command::new(bin).arg("--help")).unwrap_or_else(|e| panic!("{e}"));
    let mut flags: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        let flag_line = t.starts_with("--") || (t.starts_with('-') && t.contains(", --"));
        if flag_line {
            let flag = t
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .unwrap()
                .trim_end_matches(',')
                .to_string();
            flags.insert(flag.clone(), None);
            current = Some(flag);
        } else if let (Some(f), Some(i)) = (&current, t.find("[env: ")) {
            // `[env: NAME]` (values hidden) or `[env: NAME=value]`.
            let env = t[i + 6..].split(['=', ']']).next().unwrap().to_string();
            flags.insert(f.clone(), Some(env));
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    assert!(flags.len() > 10, "could not parse the help:\n{help}");
    flags
}

#[test]
fn node_flag_tables_match_tribe_node_help() {
    let help = help_flags();
    let readme = read("README.md");
    let table = table_rows(section(&readme, "### tribe-node"));
    assert!(!table.is_empty(), "README's tribe-node section has a table");
    let mut documented = BTreeSet::new();
    for row in &table {
        let flags: Vec<String> = code_spans(&row[0])
            .into_iter()
            .filter(|s| s.starts_with("--"))
            .collect();
        let envs: Vec<String> = code_spans(&row[1])
            .into_iter()
            .filter(|s| s.starts_with("TRIBE_"))
            .collect();
        assert!(!flags.is_empty(), "a row without a flag: {row:?}");
        assert_eq!(flags.len(), envs.len(), "one env var per flag: {row:?}");
        for (flag, env) in flags.iter().zip(&envs) {
            let Some(want) = help.get(flag) else {
                panic!("README documents {flag}, which `tribe-node --help` does not have");
            };
            assert_eq!(
                want.as_deref(),
                Some(env.as_str()),
                "README gives {flag} the env var {env}"
            );
            documented.insert(flag.clone());
        }
    }
    // node/README.md's table holds the tuning flags; a row may name several flags and
    // their env vars in the same order.
    let node_readme = read("node/README.md");
    for row in table_rows(&node_readme) {
        let flags: Vec<String> = code_spans(&row[0])
            .into_iter()
            .filter(|s| s.starts_with("--"))
            .collect();
        let envs: Vec<String> = code_spans(row.get(1).map_or("", String::as_str))
            .into_iter()
            .filter(|s| s.starts_with("TRIBE_"))
            .collect();
        for (i, flag) in flags.into_iter().enumerate() {
            assert!(
                help.contains_key(&flag),
                "node/README.md documents {flag}, which `tribe-node --help` does not have"
            );
            if let Some(env) = envs.get(i).or(envs.first()) {
                assert_eq!(
                    help[&flag].as_deref(),
                    Some(env.as_str()),
                    "node/README.md: {flag}"
                );
            }
            documented.insert(flag);
        }
    }
    let missing: Vec<&String> = help.keys().filter(|f| !documented.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "flags of `tribe-node --help` in neither README.md's tribe-node table nor node/README.md's: {missing:?} (add a row)"
    );
}

/// Every property path under `schema` (`prefix.name`, recursively), with its schema.
fn paths(prefix: &str, schema: &Value, out: &mut BTreeMap<String, Value>) {
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            let p = format!("{prefix}.{name}");
            out.insert(p.clone(), sub.clone());
            paths(&p, sub, out);
        }
    }
}

fn crd_json() -> Value {
    serde_json::to_value(tribe_operator::crd::crd()).unwrap()
}

#[test]
fn session_cluster_field_table_matches_the_crd() {
    let crd = crd_json();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let mut spec = BTreeMap::new();
    paths("spec", &schema["spec"], &mut spec);
    let readme = read("README.md");
    let rows = table_rows(section(&readme, "### SessionCluster"));
    let mut row_paths = BTreeMap::new();
    let mut status_row = None;
    for row in &rows {
        let Some(first) = code_spans(&row[0]).into_iter().next() else {
            panic!("a row without a field: {row:?}");
        };
        if first == "status" {
            status_row = Some(row.clone());
            continue;
        }
        assert!(
            spec.contains_key(&first),
            "README documents {first}, which the CRD does not have"
        );
        row_paths.insert(first, row.last().cloned().unwrap_or_default());
    }
    for path in spec.keys() {
        // The fields of core/v1 types in `spec.template` are Kubernetes' own
        // (documented upstream): its row names the template's fields, not theirs.
        if let Some(rest) = path.strip_prefix("spec.template.") {
            if rest.contains('.') && !rest.starts_with("metadata.") {
                continue;
            }
        }
        // A row of its own, or an object whose fields have rows.
        if row_paths.contains_key(path)
            || row_paths.keys().any(|p| p.starts_with(&format!("{path}.")))
        {
            continue;
        }
        // A field without a row of its own is named in its nearest documented ancestor's row.
        let parent = row_paths
            .iter()
            .filter(|(p, _)| path.starts_with(&format!("{p}.")))
            .max_by_key(|(p, _)| p.len());
        let Some((parent, what)) = parent else {
            panic!("the CRD's {path} has no row in README's SessionCluster table (add one)");
        };
        let rel = &path[parent.len() + 1..];
        let named = code_spans(what);
        let is_prefix_of_named = named
            .iter()
            .any(|n| n == rel || n.starts_with(&format!("{rel}.")));
        assert!(
            is_prefix_of_named,
            "the CRD's {path} is neither a row nor named (`{rel}`) in the row of {parent}: {what:?}"
        );
    }
    let status_row = status_row.expect("a status row");
    let named: BTreeSet<String> = code_spans(status_row.last().unwrap()).into_iter().collect();
    let status: BTreeSet<String> = schema["status"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        named, status,
        "README's status row names exactly the status fields"
    );
}

#[test]
fn get_sessionclusters_example_has_the_printer_columns() {
    let crd = crd_json();
    let cols: Vec<String> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_ascii_uppercase())
        .collect();
    let mut want = vec!["NAME".to_string()];
    want.extend(cols);
    let readme = read("README.md");
    let header = readme
        .lines()
        .find(|l| l.starts_with("NAME "))
        .expect("README shows `kubectl get sessionclusters` output");
    let got: Vec<String> = header.split_whitespace().map(String::from).collect();
    assert_eq!(got, want, "README's example vs the CRD's printer columns");
}

#[test]
fn the_parsers_see_what_they_should() {
    let text = "# A\n\n## B\n| a | b |\n|---|---|\n| `x` | y |\n| `--f`, `--g` | `TRIBE_F`, `TRIBE_G` |\n\n## C\nz\n";
    let b = section(text, "## B");
    assert!(b.contains("`x`") && !b.contains('z'), "{b:?}");
    let rows = table_rows(b);
    assert_eq!(rows.len(), 2);
    assert_eq!(code_spans(&rows[1][0]), ["--f", "--g"]);
    assert_eq!(code_spans(&rows[1][1]), ["TRIBE_F", "TRIBE_G"]);
}
