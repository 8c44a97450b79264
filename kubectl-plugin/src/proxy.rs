//! Talking to the nodes of a SessionCluster through the API server's pod proxy
//! (`/api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH`): the user's kubeconfig and RBAC
//! decide, and no port is opened or forwarded.

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::client::Body;
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use tribe_operator::crd::SessionCluster;
use tribe_operator::resources::{selector_labels, selector_string, ADMIN_PORT};

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
        })
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
        let req = http::Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(http::header::ACCEPT, "application/json")
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
    fn session_ids_are_checked() {
        assert!(check_session_id("dMTI_Tjx6pJU5nnZdqfojQ").is_ok());
        for bad in ["", "../cluster", "a b", "x?values=true", "a/b"] {
            assert!(check_session_id(bad).is_err(), "{bad}");
        }
    }
}
