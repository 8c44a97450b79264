//! A browser of the demo app through the podrunner's ingress stand-in (127.0.0.1:18080):
//! one Host, one cookie jar; and the wait for the ingress to route to a set of pods.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use super::{http, wait_for, HttpResponse};

/// The podrunner's ingress stand-in, published on the root namespace's loopback.
pub const INGRESS: &str = "127.0.0.1:18080";

/// A browser of the demo app through the ingress: one Host, one cookie jar (the session
/// cookie and the node's read-your-writes version cookie).
pub struct Browser {
    host: String,
    /// The cookies it holds: name → value.
    pub jar: BTreeMap<String, String>,
}

impl Browser {
    pub fn new(host: &str) -> Self {
        Browser {
            host: host.to_string(),
            jar: BTreeMap::new(),
        }
    }

    /// One request with the jar's cookies; keeps the cookies the answer sets.
    pub fn request(&mut self, method: &str, path: &str) -> Result<HttpResponse, String> {
        let cookie: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let cookie = cookie.join("; ");
        let mut headers = vec![("Host", self.host.as_str())];
        if !cookie.is_empty() {
            headers.push(("Cookie", cookie.as_str()));
        }
        let r = http(
            INGRESS.parse().unwrap(),
            method,
            path,
            &headers,
            "",
            // Longer than the ingress may take (3 upstream tries, 5 s connect timeout
            // each): the answer is the ingress's, not a client-side give-up.
            Duration::from_secs(30),
        )?;
        for (_, value) in r.headers.iter().filter(|(n, _)| n == "set-cookie") {
            let pair = value.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                self.jar.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        Ok(r)
    }

    /// `POST /counter`: (counter, node that answered); any status but 200 is an error.
    pub fn post_counter(&mut self) -> Result<(i64, String), String> {
        let r = self.request("POST", "/counter")?;
        if r.status != 200 {
            return Err(format!("status {}: {}", r.status, r.body));
        }
        counter_reply(&r)
    }

    /// `GET /counter` without a session (creates none): the node that answered.
    pub fn get_counter_node(&mut self) -> Result<String, String> {
        let r = self.request("GET", "/counter")?;
        if r.status != 200 {
            return Err(format!("status {}: {}", r.status, r.body));
        }
        Ok(counter_reply(&r)?.1)
    }
}

/// The counter in a `/counter` answer, and the node that answered.
pub fn counter_reply(r: &HttpResponse) -> Result<(i64, String), String> {
    let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
    let n = v["counter"]
        .as_i64()
        .ok_or(format!("no counter in {}", r.body))?;
    let node = v["node"].as_str().ok_or(format!("no node in {}", r.body))?;
    Ok((n, node.to_string()))
}

/// Waits until the ingress for `host` answers from exactly `pods` (by node id, the pod
/// name): endpoints follow readiness with a lag (EndpointSlice, then an nginx reload).
pub fn wait_ingress_answers_from(host: &str, pods: &BTreeSet<String>, timeout: Duration) {
    let n = pods.len();
    let mut seen: Vec<String> = vec![];
    wait_for(
        &format!("the ingress to answer from exactly {pods:?}"),
        timeout,
        || {
            // Round-robin: the last 4n answers come from every backend nginx has.
            for _ in 0..n {
                seen.push(Browser::new(host).get_counter_node()?);
            }
            let window = seen.len().saturating_sub(4 * n);
            let recent: BTreeSet<String> = seen[window..].iter().cloned().collect();
            if seen.len() >= 4 * n && &recent == pods {
                Ok(())
            } else {
                Err(format!("recent answers from {recent:?}"))
            }
        },
    );
}
