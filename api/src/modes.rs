//! The mode enums: one spelling each (lowercase) for flags, environment variables, JSON
//! and the CRD.

use std::fmt;
use std::str::FromStr;

/// A value that is not one of a mode's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseModeError {
    /// What was being parsed (`replication mode`, ...).
    pub what: &'static str,
    /// The rejected input.
    pub value: String,
    /// The accepted values.
    pub expected: &'static [&'static str],
}

impl fmt::Display for ParseModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} {:?}: expected one of {}",
            self.what,
            self.value,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for ParseModeError {}

/// Declares a unit enum with one spelling per value (`VALUES`, `as_str`, `Display`,
/// `FromStr`, serde) and a one-line help per value (`CHOICES`, also its rustdoc).
macro_rules! mode {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal, default $default:ident {
            $( $variant:ident => $text:literal: $help:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
        pub enum $name {
            $( #[doc = $help] #[serde(rename = $text)] $variant, )*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// Every value's spelling, in declaration order.
            pub const VALUES: &'static [&'static str] = &[$($text),*];
            /// Every value's spelling and one-line help, in declaration order.
            pub const CHOICES: &'static [(&'static str, &'static str)] = &[$(($text, $help)),*];

            /// The spelling used in flags, environment variables and JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseModeError;

            /// Case-insensitive.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|m| m.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| ParseModeError {
                        what: $what,
                        value: s.to_string(),
                        expected: $name::VALUES,
                    })
            }
        }
    };
}

mode! {
    /// Who holds a session.
    ReplicationMode, "replication mode", default Delta {
        Delta => "delta": "Every node holds every session (Tomcat DeltaManager).",
        Backup => "backup": "A primary and `--backups` backups per session, by rendezvous hashing (BackupManager).",
    }
}

mode! {
    /// When a write is acknowledged to the client.
    SendMode, "send mode", default Async {
        Async => "async": "The response goes out; the delta is queued.",
        Sync => "sync": "The response waits for acks from the replicas, up to `--sync-timeout`.",
    }
}

mode! {
    /// When a write is answered, with persistence (`--data-dir` or `--postgres-url`).
    Durability, "durability", default WriteBehind {
        WriteBehind => "write-behind": "Answered at once; persisted within `--flush-interval` (batched).",
        Sync => "sync": "Answered once the local write is durable (concurrent writes share one fsync).",
    }
}

mode! {
    /// How peers are found.
    MembershipMode, "membership mode", default Auto {
        Auto => "auto": "Multicast, and DNS too when `--dns-name` is given.",
        Multicast => "multicast": "UDP multicast heartbeats.",
        Dns => "dns": "Re-resolve `--dns-name` on an interval; every A record is a peer.",
        Static => "static": "The fixed `--peers` list.",
    }
}

mode! {
    /// The session adapter of the HTTP front proxy (`--proxy-adapter`): which cookie
    /// names an app's session and which store key holds it.
    SessionAdapter, "session adapter", default ConnectRedis {
        ConnectRedis => "connect-redis": "express-session + connect-redis: cookie `connect.sid` = `s:<id>.<signature>` (URL-encoded), key `sess:<id>`.",
        FlaskSession => "flask-session": "Flask-Session: cookie `session` = `<id>`, key `session:<id>`.",
        PhpRedis => "php-redis": "PHP `session.save_handler = redis`: cookie `PHPSESSID` = `<id>`, key `PHPREDIS_SESSION:<id>`.",
    }
}

mode! {
    /// How a process writes its log (`--log-format`); unset: [`LogFormat::resolve`].
    LogFormat, "log format", default Json {
        Json => "json": "One JSON object per line (what log pipelines on Kubernetes read); never colour codes.",
        Text => "text": "Human-readable lines; coloured only on a terminal.",
    }
}

impl LogFormat {
    /// The format when none is asked for: text on a terminal, JSON otherwise (a pod's
    /// log, a file, a pipe).
    pub fn resolve(requested: Option<LogFormat>, stderr_is_terminal: bool) -> LogFormat {
        requested.unwrap_or(if stderr_is_terminal {
            LogFormat::Text
        } else {
            LogFormat::Json
        })
    }
}

impl SessionAdapter {
    /// The app's default session cookie name.
    pub fn cookie(self) -> &'static str {
        match self {
            SessionAdapter::ConnectRedis => "connect.sid",
            SessionAdapter::FlaskSession => "session",
            SessionAdapter::PhpRedis => "PHPSESSID",
        }
    }

    /// The app's default store key prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            SessionAdapter::ConnectRedis => "sess:",
            SessionAdapter::FlaskSession => "session:",
            SessionAdapter::PhpRedis => "PHPREDIS_SESSION:",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelling_round_trips_through_str_and_json() {
        for m in ReplicationMode::ALL {
            assert_eq!(m.as_str().parse::<ReplicationMode>(), Ok(*m));
            assert_eq!(serde_json::to_string(m).unwrap(), format!("\"{m}\""));
        }
        assert_eq!("SYNC".parse::<SendMode>(), Ok(SendMode::Sync));
        assert_eq!(
            MembershipMode::VALUES,
            ["auto", "multicast", "dns", "static"]
        );
        assert_eq!("php-redis".parse(), Ok(SessionAdapter::PhpRedis));
        assert_eq!(SessionAdapter::default().as_str(), "connect-redis");
    }

    #[test]
    fn log_format_is_json_unless_on_a_terminal_or_asked() {
        assert_eq!(LogFormat::resolve(None, false), LogFormat::Json);
        assert_eq!(LogFormat::resolve(None, true), LogFormat::Text);
        assert_eq!(
            LogFormat::resolve(Some(LogFormat::Text), false),
            LogFormat::Text
        );
        assert_eq!(
            LogFormat::resolve(Some(LogFormat::Json), true),
            LogFormat::Json
        );
        assert_eq!(LogFormat::VALUES, ["json", "text"]);
    }

    #[test]
    fn bad_value_names_it_and_the_choices() {
        let e = "both".parse::<ReplicationMode>().unwrap_err().to_string();
        assert_eq!(
            e,
            r#"invalid replication mode "both": expected one of delta, backup"#
        );
    }
}
