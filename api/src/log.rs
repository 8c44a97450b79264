//! The log setup of `tribe-node` and `tribe-operator` (feature `log`): to stderr, JSON or
//! text as [`LogFormat::resolve`] decides, filtered by `RUST_LOG` (else a default), and
//! never with colour codes unless the text goes to a terminal (and `NO_COLOR` is unset).
//!
//! JSON lines carry the event's fields flattened next to `timestamp`, `level`, `target`
//! and `message`, and the fields of the spans it happened in (`spans`: e.g. the node's
//! `node` and `cluster`, a reconcile's `cluster`) so every line says where it came from.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::LogFormat;

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is unset or
/// invalid. Returns the format chosen. `Err` when a subscriber is already installed.
pub fn init(
    requested: Option<LogFormat>,
    default_filter: &str,
) -> Result<LogFormat, Box<dyn std::error::Error + Send + Sync>> {
    let terminal = std::io::stderr().is_terminal();
    let format = LogFormat::resolve(requested, terminal);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init()?,
        LogFormat::Text => builder
            .with_ansi(terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
            .try_init()?,
    }
    Ok(format)
}
