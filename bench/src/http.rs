//! A small, cheap HTTP/1.1 client on hyper's connection API: one keepalive connection per
//! [`Conn`], requests one after another on it, and a [`User`] (one browser: its cookies,
//! `SESSIONID` and the `SESSIONID_V` version cookie, and the counter it last saw).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// The session cookie's name (the node's default `--cookie-name`).
pub const SESSION_COOKIE: &str = "SESSIONID";
/// The read-your-writes version cookie (`<session cookie>_V`).
pub const VERSION_COOKIE: &str = "SESSIONID_V";

/// Bound on one request (connect included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer, body read in full.
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// One HTTP/1.1 keepalive connection to one address.
pub struct Conn {
    host: HeaderValue,
    tx: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Connects (bounded by the request timeout).
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let tcp = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        // The connection task ends when `tx` is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            host: HeaderValue::from_str(&addr.to_string())?,
            tx,
        })
    }

    /// Sends one request and reads the whole answer (bounded).
    pub async fn send(
        &mut self,
        method: Method,
        path: &'static str,
        cookie: Option<&HeaderValue>,
        body: Bytes,
    ) -> Result<Answer> {
        let has_body = !body.is_empty();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = hyper::Uri::from_static(path);
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        if let Some(c) = cookie {
            h.insert(COOKIE, c.clone());
        }
        if has_body {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let exchange = async {
            self.tx.ready().await?;
            let resp = self.tx.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("no answer within {REQUEST_TIMEOUT:?}"))?
    }
}

/// `GET path` on a fresh connection; the body as text (error unless 200).
pub async fn get_text(addr: SocketAddr, path: &'static str) -> Result<String> {
    let a = Conn::connect(addr)
        .await?
        .send(Method::GET, path, None, Bytes::new())
        .await?;
    if a.status != StatusCode::OK {
        bail!("GET http://{addr}{path}: {}", a.status);
    }
    Ok(String::from_utf8_lossy(&a.body).into_owned())
}

/// `GET path` on a fresh connection, parsed as JSON.
pub async fn get_json(addr: SocketAddr, path: &'static str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&get_text(addr, path).await?)?)
}

/// The integer after `"counter":` in a body, without a JSON parse per request.
pub fn counter_of(body: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"counter\":";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &body[at..];
    let end = rest
        .iter()
        .enumerate()
        .position(|(i, &b)| !(b.is_ascii_digit() || (i == 0 && b == b'-')))
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// `(name, value)` of a `Set-Cookie` header.
fn cookie_pair(set_cookie: &HeaderValue) -> Option<(&str, &str)> {
    let first = set_cookie.to_str().ok()?.split(';').next()?;
    let (k, v) = first.split_once('=')?;
    Some((k.trim(), v.trim()))
}

/// What one request's answer says about the session's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seq {
    /// As expected: a write is the previous value + 1, a read is not below the last write.
    InOrder,
    /// Not as expected (a lost or stale write seen by the client).
    OutOfSequence,
}

/// One user (one browser): a cookie jar and the last counter value it was acknowledged.
#[derive(Debug, Default, Clone)]
pub struct User {
    session: Option<String>,
    version: Option<String>,
    /// The `Cookie` header sent, rebuilt only when a cookie changes.
    cookie: Option<HeaderValue>,
    /// Send the version cookie (read-your-writes) or only the session cookie.
    pub without_version: bool,
    /// The last counter a write of this user was answered with.
    pub last: i64,
    /// Writes answered with a counter below the last one: the session went back (e.g.
    /// a store that answered "no such session" and the app started a fresh one).
    pub resets: u64,
}

impl User {
    /// A user who sends only the session cookie (reads from any replica at once).
    pub fn without_version() -> User {
        User {
            without_version: true,
            ..User::default()
        }
    }

    /// A copy of this user's session cookie alone (no version cookie): another browser
    /// tab reading the same session without read-your-writes.
    pub fn session_only(&self) -> User {
        let mut u = User {
            session: self.session.clone(),
            without_version: true,
            last: self.last,
            ..User::default()
        };
        u.rebuild();
        u
    }

    fn absorb(&mut self, headers: &HeaderMap) {
        let mut changed = false;
        for sc in headers.get_all(SET_COOKIE) {
            let Some((k, v)) = cookie_pair(sc) else {
                continue;
            };
            let slot = match k {
                SESSION_COOKIE => &mut self.session,
                VERSION_COOKIE => &mut self.version,
                _ => continue,
            };
            if slot.as_deref() != Some(v) {
                *slot = Some(v.to_string());
                changed = true;
            }
        }
        if changed {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        let mut c = String::new();
        if let Some(s) = &self.session {
            c = format!("{SESSION_COOKIE}={s}");
            if let (Some(v), false) = (&self.version, self.without_version) {
                c.push_str(&format!("; {VERSION_COOKIE}={v}"));
            }
        }
        self.cookie = HeaderValue::from_str(&c).ok().filter(|_| !c.is_empty());
    }

    /// A request with this user's cookies; cookies set by the answer are kept. Errors on a
    /// status other than 200.
    pub async fn request(
        &mut self,
        conn: &mut Conn,
        method: Method,
        path: &'static str,
        body: Bytes,
    ) -> Result<Answer> {
        let a = conn.send(method, path, self.cookie.as_ref(), body).await?;
        self.absorb(&a.headers);
        if a.status != StatusCode::OK {
            bail!(
                "{path}: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body[..a.body.len().min(200)])
            );
        }
        Ok(a)
    }

    /// `POST /counter`: in order when the answer is the last value + 1.
    pub async fn write(&mut self, conn: &mut Conn) -> Result<(i64, Seq)> {
        let a = self
            .request(conn, Method::POST, "/counter", Bytes::new())
            .await?;
        let n = counter_of(&a.body).context("no counter in the answer")?;
        if n < self.last {
            self.resets += 1;
        }
        let seq = if n == self.last + 1 {
            Seq::InOrder
        } else {
            Seq::OutOfSequence
        };
        self.last = n;
        Ok((n, seq))
    }

    /// `GET /counter`: in order when the answer is not below the last acknowledged write.
    pub async fn read(&mut self, conn: &mut Conn) -> Result<(i64, Seq)> {
        let a = self
            .request(conn, Method::GET, "/counter", Bytes::new())
            .await?;
        let n = counter_of(&a.body).context("no counter in the answer")?;
        let seq = if n >= self.last {
            Seq::InOrder
        } else {
            Seq::OutOfSequence
        };
        Ok((n, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_is_found_without_parsing_json() {
        assert_eq!(
            counter_of(br#"{"counter":42,"node":"n1","session":"x"}"#),
            Some(42)
        );
        assert_eq!(counter_of(br#"{"counter":-3}"#), Some(-3));
        assert_eq!(counter_of(br#"{"counter":}"#), None);
        assert_eq!(counter_of(b"{}"), None);
    }

    #[test]
    fn cookies_are_kept_and_the_version_cookie_follows_the_user_choice() {
        let mut h = HeaderMap::new();
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("SESSIONID=abc; Path=/; HttpOnly"),
        );
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("SESSIONID_V=7.tag; Path=/"),
        );
        h.append(SET_COOKIE, HeaderValue::from_static("other=1"));
        let mut u = User::default();
        u.absorb(&h);
        assert_eq!(
            u.cookie.as_ref().unwrap(),
            "SESSIONID=abc; SESSIONID_V=7.tag"
        );
        assert_eq!(u.session_only().cookie.unwrap(), "SESSIONID=abc");
        let mut plain = User::without_version();
        plain.absorb(&h);
        assert_eq!(plain.cookie.unwrap(), "SESSIONID=abc");
    }
}
