//! The report: a header (date, cores, load, commit), one table per section with the
//! targets the issue names next to the figures, printed as Markdown or as one JSON document.

use std::fmt::Write as _;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

/// How a column's numbers are printed in Markdown (JSON keeps the full value).
#[derive(Debug, Clone, Copy)]
pub enum Fmt {
    /// As given (strings).
    Text,
    /// Rounded, with thousands separators.
    Int,
    /// Fixed number of decimals.
    Fixed(usize),
    /// Whole numbers with thousands separators, others with 3 significant digits
    /// (for a column whose rows hold different figures).
    Auto,
}

/// A column: JSON key, Markdown header, format.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    /// JSON key.
    pub key: &'static str,
    /// Markdown header.
    pub header: &'static str,
    /// Number format.
    pub fmt: Fmt,
}

/// Shorthand for a [`Col`].
pub const fn col(key: &'static str, header: &'static str, fmt: Fmt) -> Col {
    Col { key, header, fmt }
}

/// A target from the issue and whether the measurement meets it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is measured, e.g. "one-attribute delta on the wire".
    pub what: String,
    /// The target, e.g. "≤ 100 B".
    pub target: String,
    /// The measured figure, with its unit.
    pub measured: String,
    /// `Some(met)`, or `None` when this run cannot judge it (e.g. `--quick`).
    pub met: Option<bool>,
    /// The measured figure as a number, in `unit`.
    pub value: f64,
    /// The target's bound, in `unit`.
    pub limit: f64,
    /// Unit of `value` and `limit`.
    pub unit: String,
}

impl Check {
    /// A check of `value ≤ limit` (in `unit`, printed with `decimals`).
    pub fn at_most(what: &str, value: f64, limit: f64, unit: &str, decimals: usize) -> Check {
        Check {
            what: what.into(),
            target: format!("≤ {limit} {unit}"),
            measured: format!("{value:.decimals$} {unit}"),
            met: Some(value.is_finite() && value <= limit),
            value,
            limit,
            unit: unit.into(),
        }
    }

    /// A check of `value ≥ limit` (in `unit`, printed with `decimals`).
    pub fn at_least(what: &str, value: f64, limit: f64, unit: &str, decimals: usize) -> Check {
        Check {
            what: what.into(),
            target: format!("≥ {limit} {unit}"),
            measured: format!("{value:.decimals$} {unit}"),
            met: Some(value.is_finite() && value >= limit),
            value,
            limit,
            unit: unit.into(),
        }
    }

    /// The same figure, not judged (and why).
    pub fn not_judged(mut self, why: &str) -> Check {
        self.met = None;
        self.measured = format!("{} ({why})", self.measured);
        self
    }

    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "**met**",
            Some(false) => "**missed**",
            None => "not judged",
        }
    }
}

/// One section's table.
#[derive(Debug)]
pub struct Table {
    /// Section name (`--only`).
    pub section: &'static str,
    /// Heading.
    pub title: String,
    /// Load average when the section started, and what was run.
    pub notes: Vec<String>,
    /// Columns.
    pub cols: Vec<Col>,
    /// Rows, one value per column.
    pub rows: Vec<Vec<Value>>,
    /// Targets.
    pub checks: Vec<Check>,
}

impl Table {
    /// An empty table.
    pub fn new(section: &'static str, title: impl Into<String>, cols: &[Col]) -> Table {
        Table {
            section,
            title: title.into(),
            notes: vec![format!("load average at start: {}", load_average())],
            cols: cols.to_vec(),
            rows: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Adds a row (one value per column).
    pub fn row(&mut self, values: Vec<Value>) {
        debug_assert_eq!(values.len(), self.cols.len(), "{}", self.title);
        self.rows.push(values);
    }

    /// Adds a note line under the heading.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn markdown(&self, out: &mut String) {
        let _ = writeln!(out, "### {}\n", self.title);
        for n in &self.notes {
            let _ = writeln!(out, "{n}  ");
        }
        out.push('\n');
        if self.cols.is_empty() {
            return;
        }
        let headers: Vec<&str> = self.cols.iter().map(|c| c.header).collect();
        let _ = writeln!(out, "| {} |", headers.join(" | "));
        let aligns: Vec<&str> = self
            .cols
            .iter()
            .map(|c| match c.fmt {
                Fmt::Text => "---",
                _ => "---:",
            })
            .collect();
        let _ = writeln!(out, "|{}|", aligns.join("|"));
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&self.cols)
                .map(|(v, c)| format_cell(v, c.fmt))
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        if !self.checks.is_empty() {
            out.push('\n');
            for c in &self.checks {
                let _ = writeln!(
                    out,
                    "- target: {} {} — measured {}: {}",
                    c.what,
                    c.target,
                    c.measured,
                    c.verdict()
                );
            }
        }
        out.push('\n');
    }
}

impl Serialize for Table {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let rows: Vec<serde_json::Map<String, Value>> = self
            .rows
            .iter()
            .map(|r| {
                self.cols
                    .iter()
                    .zip(r)
                    .map(|(c, v)| (c.key.to_string(), v.clone()))
                    .collect()
            })
            .collect();
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("section", self.section)?;
        m.serialize_entry("title", &self.title)?;
        m.serialize_entry("notes", &self.notes)?;
        m.serialize_entry("rows", &rows)?;
        m.serialize_entry("checks", &self.checks)?;
        m.end()
    }
}

fn format_cell(v: &Value, fmt: Fmt) -> String {
    match (v, fmt) {
        (Value::Null, _) => "–".into(),
        (Value::Number(n), Fmt::Int) => thousands(n.as_f64().unwrap_or(0.0).round() as i64),
        (Value::Number(n), Fmt::Fixed(d)) => format!("{:.d$}", n.as_f64().unwrap_or(0.0)),
        (Value::Number(n), Fmt::Auto) => auto(n.as_f64().unwrap_or(0.0)),
        (Value::String(s), _) => s.clone(),
        (v, _) => v.to_string(),
    }
}

/// Whole numbers with separators; others with 3 significant digits (at least 0 decimals).
fn auto(x: f64) -> String {
    if x.fract() == 0.0 || x.abs() >= 100.0 {
        return thousands(x.round() as i64);
    }
    let decimals = if x == 0.0 {
        0
    } else {
        (2 - x.abs().log10().floor() as i64).clamp(0, 9) as usize
    };
    format!("{x:.decimals$}")
}

/// `12345` → `12,345`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` has them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The header of a run.
#[derive(Debug, Serialize)]
pub struct Header {
    /// UTC, RFC 3339.
    pub date: String,
    /// `nproc`.
    pub cores: usize,
    /// At the start of the run.
    pub load_average: String,
    /// `git describe --always --dirty` of the source tree.
    pub commit: String,
    /// `quick` or `full`.
    pub mode: &'static str,
    /// Runtime threads per node (`--worker-threads`).
    pub node_threads: u16,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Date, machine, commit.
    pub header: Header,
    /// One table per section.
    pub sections: Vec<Table>,
}

impl Report {
    /// Markdown: a header line, then each section's table and targets, then all targets.
    pub fn markdown(&self) -> String {
        let h = &self.header;
        let mut out = format!(
            "## Tribe benchmark ({} mode)\n\n{} · {} cores · load average {} · commit {} · \
             {} runtime thread(s) per node\n\n",
            h.mode, h.date, h.cores, h.load_average, h.commit, h.node_threads
        );
        for t in &self.sections {
            t.markdown(&mut out);
        }
        let checks: Vec<&Check> = self.sections.iter().flat_map(|t| &t.checks).collect();
        if !checks.is_empty() {
            out.push_str(
                "### Targets\n\n| figure | target | measured | verdict |\n|---|---|---|---|\n",
            );
            for c in checks {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    c.what,
                    c.target,
                    c.measured,
                    c.verdict()
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_render_as_markdown_and_json() {
        let mut t = Table::new(
            "wire",
            "Bytes",
            &[
                col("mode", "mode", Fmt::Text),
                col("bytes", "bytes per delta", Fmt::Int),
                col("ms", "p99 ms", Fmt::Fixed(2)),
            ],
        );
        t.row(vec![json!("async"), json!(93.4), json!(0.1234)]);
        t.row(vec![json!("sync"), json!(12345.0), Value::Null]);
        t.checks.push(Check::at_most("delta", 93.4, 100.0, "B", 0));
        t.checks
            .push(Check::at_most("lag", 3.0, 1.0, "ms", 2).not_judged("quick"));
        let mut md = String::new();
        t.markdown(&mut md);
        assert!(md.contains("| async | 93 | 0.12 |"), "{md}");
        assert!(md.contains("| sync | 12,345 | – |"), "{md}");
        assert!(md.contains("measured 93 B: **met**"), "{md}");
        assert!(md.contains("3.00 ms (quick): not judged"), "{md}");
        let j = serde_json::to_value(&t).unwrap();
        assert_eq!(j["rows"][0]["bytes"], json!(93.4));
        assert_eq!(j["checks"][0]["met"], json!(true));
        assert_eq!(j["checks"][1]["met"], Value::Null);
        assert_eq!(Check::at_most("x", 2.0, 1.0, "s", 1).met, Some(false));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-1234567), "-1,234,567");
        assert_eq!(auto(163_000_000.0), "163,000,000");
        assert_eq!(auto(1.234), "1.23");
        assert_eq!(auto(0.01234), "0.0123");
        assert_eq!(auto(12.0), "12");
    }
}
