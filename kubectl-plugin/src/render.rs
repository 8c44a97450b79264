//! What the nodes answer, and the tables printed from it. Pure: no I/O.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use tribe_api::{ClusterView, MemberState};

/// One session's metadata as a node lists it.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct SessionMeta {
    /// The cookie's id.
    pub id: String,
    /// Version.
    pub version: u64,
    /// Live attributes.
    pub attributes: u64,
    /// Bytes of names and values.
    pub size: u64,
    /// Unix seconds.
    pub last_access: u64,
    /// Unix seconds.
    pub expires: u64,
    /// This node's role for it.
    pub role: String,
    /// Primary first, then backups (backup mode); every member (delta mode).
    pub owners: Vec<String>,
}

/// A page of a node's `/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SessionPage {
    /// Live sessions the node holds.
    pub total: u64,
    /// This page.
    pub sessions: Vec<SessionMeta>,
    /// Cursor of the next page.
    pub next: Option<String>,
}

/// A node's `/sessions/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SessionDetail {
    /// The node that answered.
    pub node: String,
    /// The metadata.
    #[serde(flatten)]
    pub meta: SessionMeta,
    /// Attribute names.
    pub attribute_names: Vec<String>,
    /// Values, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<BTreeMap<String, serde_json::Value>>,
}

/// How a command prints its answer (`-o`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns, as `kubectl get` prints them.
    #[default]
    Table,
    /// The answer as JSON (the nodes' own documents, merged).
    Json,
    /// The same document as YAML.
    Yaml,
}

/// A command's answer: the text of the table form and the document of `-o json|yaml`.
#[derive(Debug, Clone)]
pub struct Report {
    /// What `-o table` prints.
    pub text: String,
    /// What `-o json` and `-o yaml` print.
    pub data: serde_json::Value,
}

impl Report {
    /// The answer in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.text.clone(),
            Format::Json => {
                let mut s = serde_json::to_string_pretty(&self.data)
                    .expect("a JSON value always serializes");
                s.push('\n');
                s
            }
            Format::Yaml => {
                serde_saphyr::to_string(&self.data).expect("a JSON value always serializes")
            }
        }
    }
}

/// Formats rows as columns separated by three spaces (like `kubectl get`).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                let pad = widths[i] - c.chars().count() + 3;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `12s`, `5m`, `3h`, `2d` since `then` (unix seconds); `-` when unknown.
pub fn age(now: u64, then: u64) -> String {
    if then == 0 {
        return "-".into();
    }
    let d = now.saturating_sub(then);
    match d {
        0..=119 => format!("{d}s"),
        120..=7199 => format!("{}m", d / 60),
        7200..=172_799 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86_400),
    }
}

/// The `status` table: one row per pod, as that node sees the cluster.
pub fn status_rows(views: &[(String, Result<ClusterView, String>)]) -> Vec<Vec<String>> {
    views
        .iter()
        .map(|(pod, v)| match v {
            Ok(v) => {
                let alive: Vec<&str> = v
                    .members
                    .iter()
                    .filter(|m| m.state == MemberState::Alive)
                    .map(|m| m.node.as_str())
                    .collect();
                let suspect = v.members.len() - alive.len();
                vec![
                    pod.clone(),
                    v.node.clone(),
                    v.ready.to_string(),
                    (alive.len() + 1).to_string(),
                    suspect.to_string(),
                    v.sessions.to_string(),
                    v.primary.to_string(),
                    v.backup.to_string(),
                    v.rereplication_backlog.to_string(),
                ]
            }
            Err(e) => {
                let mut row = vec![pod.clone(), "-".into(), "unreachable".into()];
                row.extend(std::iter::repeat_n("-".to_string(), 5));
                row.push(e.clone());
                row
            }
        })
        .collect()
}

/// Header of [`status_rows`].
pub const STATUS_HEADER: [&str; 9] = [
    "POD", "NODE", "READY", "MEMBERS", "SUSPECT", "SESSIONS", "PRIMARY", "BACKUP", "BACKLOG",
];

/// A session and the pods that returned it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionRow {
    /// The metadata (from the first pod that listed it).
    #[serde(flatten)]
    pub meta: SessionMeta,
    /// Pods whose node holds a copy.
    pub held_by: Vec<String>,
}

/// Merges the per-pod listings into one row per session id, by id.
pub fn merge_sessions(per_pod: &[(String, Vec<SessionMeta>)]) -> Vec<SessionRow> {
    let mut by_id: BTreeMap<String, SessionRow> = BTreeMap::new();
    for (pod, list) in per_pod {
        for s in list {
            let row = by_id.entry(s.id.clone()).or_insert_with(|| SessionRow {
                meta: s.clone(),
                held_by: vec![],
            });
            // The newest copy's figures.
            if s.version > row.meta.version {
                row.meta = s.clone();
            }
            row.held_by.push(pod.clone());
        }
    }
    by_id.into_values().collect()
}

/// The `sessions` table rows (no attribute values, ever).
pub fn session_rows(rows: &[SessionRow], now: u64) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            vec![
                r.meta.id.clone(),
                r.meta.size.to_string(),
                r.meta.attributes.to_string(),
                age(now, r.meta.last_access),
                r.meta.owners.join(","),
                r.held_by.join(","),
            ]
        })
        .collect()
}

/// Header of [`session_rows`].
pub const SESSIONS_HEADER: [&str; 6] = ["ID", "SIZE", "ATTRS", "LAST ACCESS", "OWNERS", "HELD BY"];

#[cfg(test)]
mod tests {
    use super::*;

    /// `-o json` and `-o yaml` print the same document, which parses back whole; the
    /// session fields keep the nodes' names (`id`, `version`, …, and `held_by`).
    #[test]
    fn json_and_yaml_print_the_same_document() {
        let rows = merge_sessions(&[
            ("p0".into(), vec![meta("a", 2)]),
            ("p1".into(), vec![meta("a", 3)]),
        ]);
        let r = Report {
            text: "table\n".into(),
            data: serde_json::json!({ "sessions": rows, "warnings": ["p2: down"] }),
        };
        assert_eq!(r.render(Format::Table), "table\n");
        let json: serde_json::Value = serde_json::from_str(&r.render(Format::Json)).unwrap();
        assert_eq!(json, r.data);
        assert_eq!(json["sessions"][0]["id"], "a");
        assert_eq!(json["sessions"][0]["version"], 3);
        assert_eq!(
            json["sessions"][0]["held_by"],
            serde_json::json!(["p0", "p1"])
        );
        let yaml: serde_json::Value = serde_saphyr::from_str(&r.render(Format::Yaml)).unwrap();
        assert_eq!(yaml, r.data);
        // A node's detail without values prints no `values` key.
        let d = SessionDetail {
            node: "n1".into(),
            meta: meta("a", 1),
            attribute_names: vec!["x".into()],
            values: None,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert!(v.get("values").is_none(), "{v}");
        assert_eq!(v["id"], "a");
    }
    use tribe_api::MemberView;

    fn meta(id: &str, version: u64) -> SessionMeta {
        SessionMeta {
            id: id.into(),
            version,
            attributes: 2,
            size: 40,
            last_access: 1000,
            expires: 2800,
            role: "replica".into(),
            owners: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A     LONGER\nxyz   1\n");
    }

    #[test]
    fn ages() {
        assert_eq!(age(100, 0), "-");
        assert_eq!(age(100, 90), "10s");
        assert_eq!(age(1000, 100), "15m");
        assert_eq!(age(100_000, 1), "27h");
        assert_eq!(age(1_000_000, 1), "11d");
        assert_eq!(age(5, 10), "0s", "clock skew is not negative");
    }

    #[test]
    fn sessions_merge_by_id_and_keep_the_newest() {
        let rows = merge_sessions(&[
            ("p1".into(), vec![meta("B", 1), meta("A", 3)]),
            ("p2".into(), vec![meta("A", 4)]),
        ]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].meta.id, "A");
        assert_eq!(rows[0].meta.version, 4);
        assert_eq!(rows[0].held_by, ["p1", "p2"]);
        assert_eq!(rows[1].held_by, ["p1"]);
        let printed = session_rows(&rows, 1010);
        assert_eq!(printed[0], ["A", "40", "2", "10s", "a,b", "p1,p2"]);
    }

    #[test]
    fn status_counts_this_node_as_a_member() {
        let v = ClusterView {
            node: "n1".into(),
            ready: true,
            sessions: 7,
            members: vec![
                MemberView {
                    node: "n2".into(),
                    addr: "10.0.0.2:4000".into(),
                    state: MemberState::Alive,
                    incarnation: 1,
                },
                MemberView {
                    node: "n3".into(),
                    addr: "10.0.0.3:4000".into(),
                    state: MemberState::Suspect,
                    incarnation: 1,
                },
            ],
            ..ClusterView::default()
        };
        let rows = status_rows(&[
            ("pod-1".into(), Ok(v)),
            ("pod-2".into(), Err("refused".into())),
        ]);
        assert_eq!(rows[0][..6], ["pod-1", "n1", "true", "2", "1", "7"]);
        assert_eq!(rows[1][2], "unreachable");
        assert_eq!(rows[1].last().unwrap(), "refused");
    }
}
