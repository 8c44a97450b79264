//! The credential of a node's session endpoints (`/sessions`, `/sessions/{id}`): a
//! token with a **scope** and an **expiry**, authenticated by the cluster key.
//!
//! ```text
//! tribe-admin-v2.<scopes>.<expires>.<tag>
//!   scopes   comma-separated, from `read`, `read-values`, `delete` (canonical order)
//!   expires  unix seconds after which the token is refused
//!   tag      hex HMAC-SHA256 of everything before the last '.' under the admin key,
//!            where admin key = HMAC-SHA256(cluster key secret, "tribe-admin-token-v2")
//! ```
//!
//! What each scope opens:
//!
//! | request                              | scope needed                          |
//! |--------------------------------------|---------------------------------------|
//! | `GET /sessions`, `GET /sessions/{id}`| `read` (or `read-values`)             |
//! | `GET /sessions/{id}?values=true`     | `read-values`                         |
//! | `DELETE /sessions/{id}`              | `delete`                              |
//!
//! A node refuses a token that is malformed, not signed by a key of its key file, or
//! expired with 401, one that does not carry the scope the request needs with 403, and a
//! token whose expiry lies more than [`MAX_LIFETIME_SECS`] ahead of its clock with 401
//! (no long-lived credentials). `kubectl tribe` mints one token per request, with the
//! one scope it needs and [`CLI_LIFETIME_SECS`] to live.
//!
//! This module is the format and the rules (pure); the HMAC is computed by each side with
//! its own key type, and both test against the same vector.

use std::fmt;

/// The header that carries the token.
pub const HEADER: &str = "x-tribe-admin-token";
/// The token's first field (its version).
pub const PREFIX: &str = "tribe-admin-v2";
/// The label the admin key is derived from the cluster key with.
pub const KEY_LABEL: &[u8] = b"tribe-admin-token-v2";
/// The longest a node lets a token live (from its own clock).
pub const MAX_LIFETIME_SECS: u64 = 3600;
/// What `kubectl tribe` gives the token of one request.
pub const CLI_LIFETIME_SECS: u64 = 120;

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Session metadata and attribute names.
    Read,
    /// Attribute values too (implies [`Scope::Read`]).
    ReadValues,
    /// Expiring (invalidating) a session.
    Delete,
}

impl Scope {
    /// Every scope, in canonical order.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::ReadValues, Scope::Delete];

    /// The spelling in a token.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::ReadValues => "read-values",
            Scope::Delete => "delete",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::ReadValues => 2,
            Scope::Delete => 4,
        }
    }

    /// The scope a request needs: `DELETE` needs [`Scope::Delete`], a read with values
    /// [`Scope::ReadValues`], any other read [`Scope::Read`].
    pub fn needed(method_is_delete: bool, values: bool) -> Scope {
        match (method_is_delete, values) {
            (true, _) => Scope::Delete,
            (false, true) => Scope::ReadValues,
            (false, false) => Scope::Read,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// The set of `scopes`.
    pub fn of(scopes: &[Scope]) -> Scopes {
        Scopes(scopes.iter().fold(0, |b, s| b | s.bit()))
    }

    /// Whether a holder of this set may do what `need` allows (`read-values` covers `read`).
    pub fn allows(self, need: Scope) -> bool {
        self.0 & need.bit() != 0 || (need == Scope::Read && self.0 & Scope::ReadValues.bit() != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Scope::ALL
            .iter()
            .filter(|s| self.0 & s.bit() != 0)
            .map(|s| s.as_str())
            .collect();
        f.write_str(&names.join(","))
    }
}

/// What a token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// What it allows.
    pub scopes: Scopes,
    /// Unix seconds after which it is refused.
    pub expires: u64,
}

impl Claims {
    /// The text the tag covers: `tribe-admin-v2.<scopes>.<expires>`.
    pub fn payload(&self) -> String {
        format!("{PREFIX}.{}.{}", self.scopes, self.expires)
    }

    /// The token, given the tag of [`Claims::payload`] under the admin key.
    pub fn token(&self, tag: &[u8]) -> String {
        let mut t = self.payload();
        t.push('.');
        for b in tag {
            t.push_str(&format!("{b:02x}"));
        }
        t
    }
}

/// A token taken apart (its tag not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// What it claims.
    pub claims: Claims,
    /// The signed text.
    pub payload: &'a str,
    /// The tag, decoded.
    pub tag: Vec<u8>,
}

/// Why a request's token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token header.
    Missing,
    /// Not a token of this format (an old static token included).
    Malformed(String),
    /// Not signed by any key of the node's key file.
    BadSignature,
    /// Past its expiry, by this many seconds of the node's clock.
    Expired {
        /// Seconds since expiry.
        ago: u64,
    },
    /// Its expiry lies further ahead than [`MAX_LIFETIME_SECS`].
    TooLong {
        /// Seconds until its expiry.
        ahead: u64,
    },
    /// Valid, but without the scope this request needs.
    Scope {
        /// The scope needed.
        need: Scope,
        /// The token's scopes.
        have: Scopes,
    },
}

impl Refusal {
    /// The HTTP status: 403 for a missing scope, 401 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Scope { .. } => 403,
            _ => 401,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing => write!(
                f,
                "the session endpoints need the {HEADER} header: a token minted from the cluster key (kubectl tribe mints one per request from the Secret <name>-key)"
            ),
            Refusal::Malformed(why) => write!(
                f,
                "the {HEADER} header is not a {PREFIX} token ({why}); static admin tokens are no longer accepted: use a kubectl tribe of this release"
            ),
            Refusal::BadSignature => write!(
                f,
                "the admin token is not signed by a key of this node's key file"
            ),
            Refusal::Expired { ago } => write!(
                f,
                "the admin token expired {ago} s ago by this node's clock (mint a new one; a client clock behind the node's expires them early)"
            ),
            Refusal::TooLong { ahead } => write!(
                f,
                "the admin token expires {ahead} s from now, more than the {MAX_LIFETIME_SECS} s a token may live"
            ),
            Refusal::Scope { need, have } => write!(
                f,
                "the admin token's scope ({}) does not include {need}, which this request needs",
                if have.is_empty() { "none".to_string() } else { have.to_string() }
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// Takes a token apart; the tag is still to be checked by the caller.
pub fn parse(token: &str) -> Result<Parsed<'_>, Refusal> {
    let token = token.trim();
    let bad = |why: &str| Refusal::Malformed(why.to_string());
    let (payload, hex) = token.rsplit_once('.').ok_or_else(|| bad("no tag"))?;
    let mut fields = payload.split('.');
    if fields.next() != Some(PREFIX) {
        return Err(bad("wrong prefix"));
    }
    let (Some(scopes), Some(expires), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(bad("wrong number of fields"));
    };
    let mut set = Vec::new();
    for s in scopes.split(',').filter(|s| !s.is_empty()) {
        set.push(
            Scope::ALL
                .into_iter()
                .find(|k| k.as_str() == s)
                .ok_or_else(|| bad("unknown scope"))?,
        );
    }
    let expires: u64 = expires.parse().map_err(|_| bad("bad expiry"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the tag is not 64 hex digits"));
    }
    let tag = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    Ok(Parsed {
        claims: Claims {
            scopes: Scopes::of(&set),
            expires,
        },
        payload,
        tag,
    })
}

/// The rules once the tag is good: not expired, not too long-lived, the scope `need`.
pub fn check(claims: &Claims, need: Scope, now: u64) -> Result<(), Refusal> {
    if claims.expires <= now {
        return Err(Refusal::Expired {
            ago: now - claims.expires,
        });
    }
    let ahead = claims.expires - now;
    if ahead > MAX_LIFETIME_SECS {
        return Err(Refusal::TooLong { ahead });
    }
    if !claims.scopes.allows(need) {
        return Err(Refusal::Scope {
            need,
            have: claims.scopes,
        });
    }
    Ok(())
}

/// A test vector every implementation of the HMAC checks itself against (computed
/// independently): the cluster key secret, the claims (`read,read-values`, expiry
/// 1700000000) and the token.
#[doc(hidden)]
pub const TEST_VECTOR: (&[u8], &str) = (
    b"0123456789abcdef0123456789abcdef",
    "tribe-admin-v2.read,read-values.1700000000.7a3d4e6adbf004b8925ba6075a2c223177bbb37739dcbd54a8b791bba5be402f",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let c = Claims {
            scopes: Scopes::of(&[Scope::Delete, Scope::Read]),
            expires: 1_700_000_000,
        };
        assert_eq!(c.payload(), "tribe-admin-v2.read,delete.1700000000");
        let t = c.token(&[0xab; 32]);
        let p = parse(&t).unwrap();
        assert_eq!(p.claims, c);
        assert_eq!(p.payload, c.payload());
        assert_eq!(p.tag, vec![0xab; 32]);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let old_static = "a".repeat(64);
        for t in [
            old_static.as_str(),
            "",
            "tribe-admin-v2.read.1.zz",
            "tribe-admin-v1.read.1.00",
            "tribe-admin-v2.read.x.00",
            "tribe-admin-v2.write.1.00",
            "tribe-admin-v2.read.1.2.00",
        ] {
            assert!(matches!(parse(t), Err(Refusal::Malformed(_))), "{t}");
        }
    }

    #[test]
    fn expiry_lifetime_and_scope() {
        let now = 1_000_000;
        let c = |s: &[Scope], e: u64| Claims {
            scopes: Scopes::of(s),
            expires: e,
        };
        assert!(check(&c(&[Scope::Read], now + 60), Scope::Read, now).is_ok());
        let e = check(&c(&[Scope::Read], now), Scope::Read, now).unwrap_err();
        assert_eq!((e.status(), e.clone()), (401, Refusal::Expired { ago: 0 }));
        let e = check(
            &c(&[Scope::Read], now + MAX_LIFETIME_SECS + 1),
            Scope::Read,
            now,
        );
        assert_eq!(e.unwrap_err().status(), 401);
        // read does not open values or DELETE; read-values opens reads; delete only DELETE.
        let r = c(&[Scope::Read], now + 60);
        assert_eq!(check(&r, Scope::ReadValues, now).unwrap_err().status(), 403);
        assert_eq!(check(&r, Scope::Delete, now).unwrap_err().status(), 403);
        let v = c(&[Scope::ReadValues], now + 60);
        assert!(check(&v, Scope::Read, now).is_ok());
        assert!(check(&v, Scope::ReadValues, now).is_ok());
        assert!(check(&v, Scope::Delete, now).is_err());
        let d = c(&[Scope::Delete], now + 60);
        assert!(check(&d, Scope::Delete, now).is_ok());
        assert!(check(&d, Scope::Read, now).is_err());
        let msg = check(&d, Scope::ReadValues, now).unwrap_err().to_string();
        assert!(
            msg.contains("delete") && msg.contains("read-values"),
            "{msg}"
        );
    }

    #[test]
    fn needed_scopes() {
        assert_eq!(Scope::needed(true, false), Scope::Delete);
        assert_eq!(Scope::needed(false, true), Scope::ReadValues);
        assert_eq!(Scope::needed(false, false), Scope::Read);
    }
}
