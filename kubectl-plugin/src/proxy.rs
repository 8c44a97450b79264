//! Talking to the nodes of a SessionCluster through the API server's pod proxy
//! (`/api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH`): the user's kubeconfig and RBAC
//! decide, and no port is opened or forwarded. The nodes' session endpoints also want the
//! admin token derived from the cluster key, which is read from the Secret `<name>-key`
//! (so reading sessions takes the right to read that Secret).

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use kube::client::Body;
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use tribe_operator::crd::SessionCluster;
use tribe_operator::resources::{
    secret_name, selector_labels, selector_string, ADMIN_PORT, KEY_FILE_NAME,
};

/// The header the nodes' session endpoints check.
pub const TOKEN_HEADER: &str = "x-tribe-admin-token";
/// What the token authenticates (as the node's `http::sessions::TOKEN_LABEL`).
pub const TOKEN_LABEL: &[u8] = b"tribe-admin-sessions-v1";

/// The admin token for a cluster key file's content: hex HMAC-SHA256 of [`TOKEN_LABEL`]
/// under the key (surrounding whitespace ignored, as the node reads the file). A key file
/// in the multi-key format (`tribe-keys v1`, written by key rotation) uses its primary key.
pub fn admin_token(key_file: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let secret = primary_secret(key_file);
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&secret)
        .expect("HMAC takes any key length");
    mac.update(TOKEN_LABEL);
    hex::encode(mac.finalize().into_bytes())
}

/// The secret a key file authenticates with: the whole file (a text key without any
/// whitespace, a binary one trimmed, as the node's `KeySet::parse` reads it), or in the
/// multi-key format the primary key's secret (the only key when no `primary` line).
fn primary_secret(key_file: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let Ok(text) = std::str::from_utf8(key_file) else {
        return key_file.trim_ascii().into();
    };
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("tribe-keys v1") {
        return text
            .split_ascii_whitespace()
            .collect::<String>()
            .into_bytes()
            .into();
    }
    let mut primary = None;
    let mut keys = Vec::new();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["primary", id] => primary = Some(*id),
            ["key", id, secret] => keys.push((*id, *secret)),
            _ => {}
        }
    }
    keys.iter()
        .find(|(id, _)| primary.is_none_or(|p| p == *id))
        .map(|(_, s)| s.as_bytes())
        .unwrap_or_else(|| key_file.trim_ascii())
        .into()
}

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed.
    #[error("{0}")]
    Kube(#[from] kube::Error),
    /// The SessionCluster does not exist.
    #[error("no SessionCluster {name} in namespace {namespace}")]
    NoCluster {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A node answered with an error status.
    #[error("{pod}: {method} {path} answered {status}: {body}")]
    Status {
        /// The pod asked.
        pod: String,
        /// The method.
        method: String,
        /// The admin path.
        path: String,
        /// The HTTP status (404: the node holds no such session; 403: RBAC).
        status: u16,
        /// The body, cut short.
        body: String,
    },
    /// A node's answer was not the JSON expected.
    #[error("{pod}: unexpected answer to {path}: {msg}")]
    Decode {
        /// The pod asked.
        pod: String,
        /// The admin path.
        path: String,
        /// What was wrong.
        msg: String,
    },
    /// Bad input from the user.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The HTTP status of a node's (or the proxy's) refusal, if that is what this is.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A SessionCluster and its node pods.
pub struct Target {
    /// The client (the user's kubeconfig).
    pub client: Client,
    /// Namespace.
    pub namespace: String,
    /// The SessionCluster.
    pub cluster: SessionCluster,
    /// Its pods that have an IP (running), by name.
    pub pods: Vec<Pod>,
    /// The admin token, once read from the key Secret.
    token: tokio::sync::OnceCell<String>,
}

impl Target {
    /// Reads SessionCluster `name` in `namespace` and lists its pods.
    pub async fn load(client: Client, namespace: &str, name: &str) -> Result<Target, Error> {
        let api: Api<SessionCluster> = Api::namespaced(client.clone(), namespace);
        let cluster = api.get_opt(name).await?.ok_or_else(|| Error::NoCluster {
            namespace: namespace.into(),
            name: name.into(),
        })?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let selector = selector_string(&selector_labels(&cluster));
        let mut pods: Vec<Pod> = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .filter(|p| {
                p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
                    && p.metadata.deletion_timestamp.is_none()
            })
            .collect();
        pods.sort_by_key(|p| p.name_any());
        Ok(Target {
            client,
            namespace: namespace.into(),
            cluster,
            pods,
            token: tokio::sync::OnceCell::new(),
        })
    }

    /// The admin token, from the cluster key in the Secret `<name>-key`.
    pub async fn token(&self) -> Result<&str, Error> {
        let t = self
            .token
            .get_or_try_init(|| async {
                let name = secret_name(&self.cluster);
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
                let secret = api.get(&name).await.map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 403 || s.code == 404 => Error::Usage(format!(
                        "cannot read the cluster key Secret {}/{name} ({}): the session commands need `get` on it",
                        self.namespace, s.message
                    )),
                    other => Error::Kube(other),
                })?;
                let key = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(KEY_FILE_NAME))
                    .ok_or_else(|| {
                        Error::Usage(format!("Secret {name} has no {KEY_FILE_NAME}"))
                    })?;
                Ok::<_, Error>(admin_token(&key.0))
            })
            .await?;
        Ok(t.as_str())
    }

    /// Names of the pods.
    pub fn pod_names(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.name_any()).collect()
    }

    /// Sends `method` to `path` (with query) on `pod`'s admin port through the pod
    /// proxy; the body when the node answers 2xx.
    pub async fn call(
        &self,
        method: http::Method,
        pod: &str,
        path: &str,
    ) -> Result<Vec<u8>, Error> {
        let uri = proxy_path(&self.namespace, pod, path);
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(http::header::ACCEPT, "application/json");
        // Session paths carry the admin token.
        if path.starts_with("/sessions") {
            req = req.header(TOKEN_HEADER, self.token().await?);
        }
        let req = req
            .body(Body::empty())
            .map_err(|e| Error::Usage(format!("bad request path {path:?}: {e}")))?;
        let resp = self.client.send(req).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Decode {
                pod: pod.into(),
                path: path.into(),
                msg: e.to_string(),
            })?
            .to_bytes()
            .to_vec();
        if !status.is_success() {
            let mut text = String::from_utf8_lossy(&body).trim().to_string();
            if text.len() > 300 {
                let mut end = 300;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push('…');
            }
            return Err(Error::Status {
                pod: pod.into(),
                method: method.to_string(),
                path: path.into(),
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(body)
    }

    /// GET `path` on `pod`'s admin port, parsed as JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, pod: &str, path: &str) -> Result<T, Error> {
        let body = self.call(http::Method::GET, pod, path).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Decode {
            pod: pod.into(),
            path: path.into(),
            msg: e.to_string(),
        })
    }
}

/// The API server path of `path` on `pod`'s admin port.
pub fn proxy_path(namespace: &str, pod: &str, path: &str) -> String {
    let path = path.trim_start_matches('/');
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{ADMIN_PORT}/proxy/{path}")
}

/// Checks that `id` looks like a session id (the cookie's URL-safe base64), so it can
/// go into a URL path as it is.
pub fn check_session_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{id:?} is not a session id (the SESSIONID cookie's value: letters, digits, '-' and '_')"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths() {
        assert_eq!(
            proxy_path("web", "shop-1", "/sessions?limit=5"),
            "/api/v1/namespaces/web/pods/shop-1:9090/proxy/sessions?limit=5"
        );
        assert_eq!(
            proxy_path("web", "shop-1", "cluster"),
            "/api/v1/namespaces/web/pods/shop-1:9090/proxy/cluster"
        );
    }

    #[test]
    fn admin_token_is_the_hmac_of_the_label_under_the_trimmed_key() {
        let t = admin_token(b"  0123456789abcdef0123456789abcdef\n");
        assert_eq!(t.len(), 64);
        assert_eq!(t, admin_token(b"0123456789abcdef0123456789abcdef"));
        assert_ne!(t, admin_token(b"another key of sixteen bytes"));
    }

    /// A wrapped text key is the key without its whitespace, as the nodes read it (and as
    /// the operator writes it into the multi-key file when a rotation starts).
    #[test]
    fn a_wrapped_single_key_authenticates_without_its_whitespace() {
        assert_eq!(
            admin_token(b"0123456789abcdef\n 0123456789abcdef\r\n"),
            admin_token(b"0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            admin_token(b"0123456789abcdef\n0123456789abcdef\n"),
            admin_token(
                b"tribe-keys v1\nprimary default\nkey default 0123456789abcdef0123456789abcdef\n"
            )
        );
    }

    #[test]
    fn a_multi_key_file_authenticates_with_its_primary_key() {
        let file = b"tribe-keys v1\nprimary k2\nkey k1 0123456789abcdef0123\nkey k2 fedcba9876543210fedc\n";
        assert_eq!(admin_token(file), admin_token(b"fedcba9876543210fedc"));
        let one = b"tribe-keys v1\nkey k1 0123456789abcdef0123\n";
        assert_eq!(admin_token(one), admin_token(b"0123456789abcdef0123"));
    }

    #[test]
    fn session_ids_are_checked() {
        assert!(check_session_id("dMTI_Tjx6pJU5nnZdqfojQ").is_ok());
        for bad in ["", "../cluster", "a b", "x?values=true", "a/b"] {
            assert!(check_session_id(bad).is_err(), "{bad}");
        }
    }
}
