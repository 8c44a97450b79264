//! Read-your-writes across nodes: a signed companion cookie carries the session version
//! the client last saw, and a node never runs a request on an older copy (it waits for
//! the delta, or fetches the session, first). See REPLICATION.md.
//!
//! The cookie is `<session cookie name>_V=<version>.<tag>`, where the tag is a truncated
//! HMAC over the session id and the version with a key derived from the cluster key. A
//! missing, malformed or tampered value counts as "nothing seen" (version 0): safe, since
//! it can only make the node wait less, never serve another session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{header, HeaderValue, Request, Response};
use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tower::{Layer, Service};

use crate::crypto::ClusterKey;
use crate::wire::SessionId;

const TAG_BYTES: usize = 12;

struct Ctx {
    sid: Option<SessionId>,
    min: u64,
    seen: Mutex<Option<(SessionId, u64)>>,
    /// The attributes this request loaded (then: last saved) of a session: the base its
    /// next save is diffed against.
    loaded: Mutex<Option<(SessionId, HashMap<String, Bytes>)>>,
    /// The request ran on an older copy than `min` (a rollback): the answer must lower
    /// the client's version cookie to what it got, or every later request would wait,
    /// fetch and count a rollback again for a version that no longer exists.
    rolled_back: AtomicBool,
}

tokio::task_local! {
    static CTX: Arc<Ctx>;
}

/// The version the current request's client has seen of `sid` (0 when unknown).
pub fn min_version(sid: SessionId) -> u64 {
    CTX.try_with(|c| if c.sid == Some(sid) { c.min } else { 0 })
        .unwrap_or(0)
}

/// Records that the current request read or wrote `sid` at `version`.
pub fn saw(sid: SessionId, version: u64) {
    let _ = CTX.try_with(|c| {
        let mut seen = c.seen.lock();
        match *seen {
            Some((s, v)) if s == sid && v >= version => {}
            _ => *seen = Some((sid, version)),
        }
    });
}

/// Records that the current request runs on an older version of `sid` than its client
/// had seen (that version is gone): its answer resets the version cookie.
pub fn rolled_back(sid: SessionId) {
    let _ = CTX.try_with(|c| {
        if c.sid == Some(sid) {
            c.rolled_back.store(true, Ordering::Relaxed);
        }
    });
}

/// Records the attributes (JSON bytes) the current request loaded or saved of `sid`.
pub fn set_loaded(sid: SessionId, attrs: HashMap<String, Bytes>) {
    let _ = CTX.try_with(|c| *c.loaded.lock() = Some((sid, attrs)));
}

/// The attributes the current request loaded or last saved of `sid`, if it did.
pub fn loaded(sid: SessionId) -> Option<HashMap<String, Bytes>> {
    CTX.try_with(|c| match &*c.loaded.lock() {
        Some((s, attrs)) if *s == sid => Some(attrs.clone()),
        _ => None,
    })
    .ok()
    .flatten()
}

/// [`loaded`] without the copy: takes them out (a save puts back what it wrote with
/// [`set_loaded`], or these again when it fails).
pub fn take_loaded(sid: SessionId) -> Option<HashMap<String, Bytes>> {
    CTX.try_with(|c| {
        let mut slot = c.loaded.lock();
        match &*slot {
            Some((s, _)) if *s == sid => slot.take().map(|(_, attrs)| attrs),
            _ => None,
        }
    })
    .ok()
    .flatten()
}

/// A key set and the cookie keys derived from it.
type DerivedKeys = (std::sync::Arc<crate::keyring::KeySet>, Vec<ClusterKey>);

/// Signs and checks version cookies.
#[derive(Clone, Debug)]
pub struct VersionCookie {
    key: ClusterKey,
    /// When set, cookies are signed with the current primary key and accepted under any
    /// key of the set (key rotation), instead of `key`.
    rotation: Option<crate::keyring::Keys>,
    /// The cookie keys derived from the key set last seen (primary first): derived once
    /// per key-file change, not per request.
    derived: std::sync::Arc<parking_lot::Mutex<Option<DerivedKeys>>>,
    session_cookie: String,
    name: String,
    secure: bool,
}

impl VersionCookie {
    /// Version cookies for the session cookie `session_cookie`.
    pub fn new(key: &ClusterKey, session_cookie: &str, secure: bool) -> Self {
        Self {
            key: key.derive(b"tribe-ryw-cookie", &[]),
            rotation: None,
            derived: Default::default(),
            session_cookie: session_cookie.to_string(),
            name: format!("{session_cookie}_V"),
            secure,
        }
    }

    /// Signs with the primary of `keys` and accepts any key of it, following reloads.
    pub fn with_rotation(mut self, keys: crate::keyring::Keys) -> Self {
        self.rotation = Some(keys);
        self
    }

    /// The keys cookies are checked with, the signing key first.
    fn signing_keys(&self) -> Vec<ClusterKey> {
        let Some(keys) = &self.rotation else {
            return vec![self.key.clone()];
        };
        let set = keys.current();
        let mut cache = self.derived.lock();
        match &*cache {
            Some((seen, derived)) if std::sync::Arc::ptr_eq(seen, &set) => derived.clone(),
            _ => {
                let mut out = vec![set.primary().key.derive(b"tribe-ryw-cookie", &[])];
                out.extend(
                    set.entries()
                        .iter()
                        .filter(|e| e.id != set.primary().id)
                        .map(|e| e.key.derive(b"tribe-ryw-cookie", &[])),
                );
                *cache = Some((set, out.clone()));
                out
            }
        }
    }

    fn tag(&self, sid: SessionId, version: u64) -> String {
        let key = match &self.rotation {
            None => self.key.clone(),
            Some(_) => self.signing_keys().swap_remove(0),
        };
        let t = key.tag(&[&sid.to_le_bytes(), &version.to_be_bytes()]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&t[..TAG_BYTES])
    }

    /// The cookie value for `version` of `sid`.
    pub fn value(&self, sid: SessionId, version: u64) -> String {
        format!("{version}.{}", self.tag(sid, version))
    }

    /// The version in `value`, if its tag is valid for `sid`.
    pub fn verify(&self, sid: SessionId, value: &str) -> Option<u64> {
        let (v, tag) = value.split_once('.')?;
        let version: u64 = v.parse().ok()?;
        let got = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .ok()?;
        if got.len() != TAG_BYTES {
            return None;
        }
        self.signing_keys()
            .iter()
            .any(|k| {
                let expected = k.tag(&[&sid.to_le_bytes(), &version.to_be_bytes()]);
                constant_time_eq(&got, &expected[..TAG_BYTES])
            })
            .then_some(version)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Tower layer that reads the version cookie before the request and sets it after.
/// Put it outside (before) tower-sessions' `SessionManagerLayer`.
#[derive(Clone, Debug)]
pub struct ReadYourWritesLayer {
    cookies: Arc<VersionCookie>,
}

impl ReadYourWritesLayer {
    /// A layer for the given cookie settings.
    pub fn new(cookies: VersionCookie) -> Self {
        Self {
            cookies: Arc::new(cookies),
        }
    }
}

impl<S> Layer<S> for ReadYourWritesLayer {
    type Service = ReadYourWrites<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ReadYourWrites {
            inner,
            cookies: self.cookies.clone(),
        }
    }
}

/// The service of [`ReadYourWritesLayer`].
#[derive(Clone, Debug)]
pub struct ReadYourWrites<S> {
    inner: S,
    cookies: Arc<VersionCookie>,
}

fn request_cookies<B>(
    req: &Request<B>,
    session_name: &str,
    version_name: &str,
) -> (Option<SessionId>, Option<String>) {
    let mut sid = None;
    let mut ver = None;
    for h in req.headers().get_all(header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for c in cookie::Cookie::split_parse(s).flatten() {
            if c.name() == session_name {
                sid = c
                    .value()
                    .parse::<tower_sessions::session::Id>()
                    .ok()
                    .map(|id| id.0);
            } else if c.name() == version_name {
                ver = Some(c.value().to_string());
            }
        }
    }
    (sid, ver)
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ReadYourWrites<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let cookies = self.cookies.clone();
        let (sid, ver) = request_cookies(&req, &cookies.session_cookie, &cookies.name);
        let min = match (sid, ver.as_deref()) {
            (Some(sid), Some(v)) => cookies.verify(sid, v).unwrap_or_else(|| {
                tracing::debug!("ignoring a version cookie with a bad signature");
                0
            }),
            _ => 0,
        };
        let ctx = Arc::new(Ctx {
            sid,
            min,
            seen: Mutex::new(None),
            loaded: Mutex::new(None),
            rolled_back: AtomicBool::new(false),
        });
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut res = CTX.scope(ctx.clone(), inner.call(req)).await?;
            let seen = *ctx.seen.lock();
            if let Some((s, v)) = seen {
                if Some(s) != sid || v > min || ctx.rolled_back.load(Ordering::Relaxed) {
                    let mut c = cookie::Cookie::new(cookies.name.clone(), cookies.value(s, v));
                    c.set_http_only(true);
                    c.set_same_site(cookie::SameSite::Lax);
                    c.set_path("/");
                    c.set_secure(cookies.secure);
                    if let Ok(h) = HeaderValue::from_str(&c.to_string()) {
                        res.headers_mut().append(header::SET_COOKIE, h);
                    }
                }
            }
            Ok(res)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_cookies_verify_only_for_their_session() {
        let vc = VersionCookie::new(&ClusterKey::new(b"k"), "SESSIONID", false);
        let v = vc.value(7, 42);
        assert_eq!(vc.verify(7, &v), Some(42));
        assert_eq!(vc.verify(8, &v), None, "bound to the session id");
        let tampered = v.replacen("42", "43", 1);
        assert_eq!(vc.verify(7, &tampered), None);
        for junk in [
            "",
            ".",
            "42",
            "42.",
            "x.y",
            "99999999999999999999999.abc",
            "42.!!!!",
        ] {
            assert_eq!(vc.verify(7, junk), None, "{junk:?}");
        }
        let other = VersionCookie::new(&ClusterKey::new(b"other"), "SESSIONID", false);
        assert_eq!(other.verify(7, &v), None, "bound to the cluster key");
    }
}
