//! The live table of `local`: one row per node, redrawn in place on a terminal, printed
//! as plain lines when it changes otherwise; and the tail of the log shown under it.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What a node slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// The process runs; its admin port does not answer yet.
    Starting,
    /// The admin port answers; the join (state transfer) is not done.
    Joining,
    /// Ready: in the front door's rotation.
    Ready,
    /// SIGTERM sent; handing over and exiting.
    Draining,
    /// The process exited; it is started again in the given time.
    Restarting(Duration),
    /// Not running and not to be restarted (shutting down, or scaled away).
    Stopped,
}

impl NodeState {
    /// The state without the countdown (what counts as a change in plain output).
    fn kind(self) -> NodeState {
        match self {
            NodeState::Restarting(_) => NodeState::Restarting(Duration::ZERO),
            s => s,
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeState::Starting => f.write_str("starting"),
            NodeState::Joining => f.write_str("joining"),
            NodeState::Ready => f.write_str("ready"),
            NodeState::Draining => f.write_str("draining"),
            NodeState::Stopped => f.write_str("stopped"),
            NodeState::Restarting(d) => {
                write!(
                    f,
                    "exited, restarting in {}s",
                    d.as_secs_f64().ceil() as u64
                )
            }
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The node id.
    pub node: String,
    /// Its state.
    pub state: NodeState,
    /// Members it sees, itself included (from its `/cluster`).
    pub members: Option<usize>,
    /// Sessions it holds (from its `/cluster`).
    pub sessions: Option<usize>,
    /// Requests the front door sent it.
    pub requests: u64,
    /// Its app address.
    pub http: String,
    /// Its process id while it runs.
    pub pid: Option<u32>,
}

/// The line above the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The SessionCluster's name.
    pub cluster: String,
    /// The front door's URL.
    pub url: String,
    /// The file being followed.
    pub file: String,
    /// `spec.replicas`.
    pub replicas: usize,
    /// Where the logs are (shown on a terminal).
    pub logs: String,
}

fn opt(v: Option<usize>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The table as lines of text (no escape codes): a header line, then columns.
pub fn render(header: &Header, rows: &[Row]) -> Vec<String> {
    let ready = rows.iter().filter(|r| r.state == NodeState::Ready).count();
    let mut lines = vec![format!(
        "SessionCluster {}: {ready}/{} ready; open {} (following {})",
        header.cluster, header.replicas, header.url, header.file
    )];
    let mut cells = vec![[
        "NODE", "STATE", "MEMBERS", "SESSIONS", "REQUESTS", "HTTP", "PID",
    ]
    .map(String::from)];
    for r in rows {
        cells.push([
            r.node.clone(),
            r.state.to_string(),
            opt(r.members),
            opt(r.sessions),
            r.requests.to_string(),
            r.http.clone(),
            r.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        lines.push(line.join("  ").trim_end().to_string());
    }
    lines
}

/// The last lines of the operator's log, for the terminal view (a `MakeWriter`).
#[derive(Clone, Default)]
pub struct LogTail {
    inner: Arc<Mutex<Tail>>,
}

#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    /// The text after the last newline.
    partial: String,
}

/// Lines the tail keeps.
const TAIL_LINES: usize = 200;

impl LogTail {
    /// The last `n` lines.
    pub fn last(&self, n: usize) -> Vec<String> {
        let tail = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let lines = &tail.lines;
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

impl Write for LogTail {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut tail = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        tail.partial.push_str(&String::from_utf8_lossy(buf));
        while let Some(end) = tail.partial.find('\n') {
            let line: String = tail.partial.drain(..=end).collect();
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if tail.lines.len() == TAIL_LINES {
                tail.lines.pop_front();
            }
            tail.lines.push_back(line.to_string());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogTail {
    type Writer = LogTail;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// How often plain output repeats a table whose only changes are counters.
pub const PLAIN_COUNTER_INTERVAL: Duration = Duration::from_secs(10);

/// What makes a plain table worth printing at once when it changes: a node, its state
/// (without the countdown), its process.
type Shape = (String, NodeState, Option<u32>);

/// Draws the table: in place on a terminal (with the log tail under it), else as plain
/// lines on stdout when it changes.
pub struct Display {
    tty: Option<LogTail>,
    /// What plain output printed last: its shape, rows and header.
    last: Option<(Vec<Shape>, Vec<Row>, Header)>,
    last_at: Option<Instant>,
}

impl Display {
    /// A terminal view when `tail` is given (stdout is a terminal), else plain output.
    pub fn new(tail: Option<LogTail>) -> Self {
        if tail.is_some() {
            // The alternate screen: the shell's screen comes back on exit.
            print!("\x1b[?1049h\x1b[?25l");
            let _ = std::io::stdout().flush();
        }
        Display {
            tty: tail,
            last: None,
            last_at: None,
        }
    }

    /// Shows the current table (on a terminal: always; plain: when it changed).
    pub fn show(&mut self, header: &Header, rows: &[Row]) {
        let mut out = std::io::stdout().lock();
        if let Some(tail) = &self.tty {
            let (cols, lines_available) = terminal_size::terminal_size()
                .map(|(w, h)| (usize::from(w.0), usize::from(h.0)))
                .unwrap_or((120, 40));
            let mut screen = render(header, rows);
            screen.push(String::new());
            screen.push(format!(
                "Ctrl-C stops the cluster. Logs: {}. Recent:",
                header.logs
            ));
            let room = lines_available.saturating_sub(screen.len() + 1);
            screen.extend(tail.last(room));
            let mut text = String::from("\x1b[H");
            for line in screen {
                let line: String = line.chars().take(cols.max(1)).collect();
                text.push_str(&line);
                text.push_str("\x1b[K\n");
            }
            text.push_str("\x1b[J");
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
            return;
        }
        let shape: Vec<_> = rows
            .iter()
            .map(|r| (r.node.clone(), r.state.kind(), r.pid))
            .collect();
        let print = match (&self.last, self.last_at) {
            (Some((last_shape, last_rows, last_header)), Some(at)) => {
                last_shape != &shape
                    || last_header != header
                    || (last_rows != rows && at.elapsed() >= PLAIN_COUNTER_INTERVAL)
            }
            _ => true,
        };
        if !print {
            return;
        }
        let now = jiff::Timestamp::now().strftime("%H:%M:%S");
        let mut text = String::new();
        for (i, line) in render(header, rows).into_iter().enumerate() {
            if i == 0 {
                text.push_str(&format!("[{now}] "));
            }
            text.push_str(&line);
            text.push('\n');
        }
        text.push('\n');
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        self.last = Some((shape, rows.to_vec(), header.clone()));
        self.last_at = Some(Instant::now());
    }

    /// Leaves the terminal as it was; prints the final table and log tail there.
    pub fn finish(&mut self, header: &Header, rows: &[Row]) {
        if let Some(tail) = self.tty.take() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
            let mut text = render(header, rows).join("\n");
            text.push_str(&format!("\nLogs: {}\n", header.logs));
            for line in tail.last(10) {
                text.push_str(&line);
                text.push('\n');
            }
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        } else {
            self.show(header, rows);
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        if self.tty.is_some() {
            print!("\x1b[?25h\x1b[?1049l");
            let _ = std::io::stdout().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(node: &str, state: NodeState, sessions: Option<usize>) -> Row {
        Row {
            node: node.into(),
            state,
            members: Some(2),
            sessions,
            requests: 7,
            http: "127.0.0.1:18100".into(),
            pid: Some(42),
        }
    }

    #[test]
    fn table_lines_line_up() {
        let header = Header {
            cluster: "demo".into(),
            url: "http://127.0.0.1:8000/".into(),
            file: "demo.yaml".into(),
            replicas: 2,
            logs: "/tmp/x".into(),
        };
        let lines = render(
            &header,
            &[
                row("demo-0", NodeState::Ready, Some(3)),
                row(
                    "demo-1",
                    NodeState::Restarting(Duration::from_millis(1500)),
                    None,
                ),
            ],
        );
        assert_eq!(
            lines[0],
            "SessionCluster demo: 1/2 ready; open http://127.0.0.1:8000/ (following demo.yaml)"
        );
        assert!(lines[1].starts_with("NODE    STATE"), "{lines:?}");
        assert!(lines[2].starts_with("demo-0  ready "), "{lines:?}");
        assert!(
            lines[3].starts_with("demo-1  exited, restarting in 2s  2        -  "),
            "{lines:?}"
        );
        let col = lines[1].find("SESSIONS").unwrap();
        assert_eq!(&lines[2][col..col + 1], "3");
        assert!(lines.iter().all(|l| !l.contains('\x1b')));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let mut tail = LogTail::default();
        for i in 0..(TAIL_LINES + 5) {
            writeln!(tail, "line {i}").unwrap();
        }
        assert_eq!(
            tail.last(2),
            vec![
                format!("line {}", TAIL_LINES + 3),
                format!("line {}", TAIL_LINES + 4)
            ]
        );
    }
}
