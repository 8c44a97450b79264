//! `spec.app`: the user's app container with tribe-node as its sidecar.
//!
//! The app reaches its sessions over the Redis protocol on `127.0.0.1:6379` (the node's
//! `--resp-addr`, loopback only), always with a password: the cluster Secret's
//! `resp.password`, which the node reads as its `--resp-password-file` (from the mounted
//! Secret) and the app gets as `REDIS_PASSWORD`, inside `REDIS_URL`
//! (`redis://:$(REDIS_PASSWORD)@127.0.0.1:6379`). Every container of the pod shares its
//! network namespace, so loopback alone would let any of them in. The pod's named `http` port — what the app Service and
//! the Ingress target — is the app's own port, or, with `spec.app.proxy`, the node's
//! read-your-writes proxy on 8080 in front of it. The node's demo app moves to loopback.
//! The pod is ready when both containers are: the node on `/readyz`, the app on its
//! `readinessPath`.

use super::*;
use crate::crd::{AppSpec, SessionCluster};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Probe, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Where the sidecar serves RESP (loopback: only the pod's containers reach it).
pub const RESP_ADDR: &str = "127.0.0.1:6379";
/// The app container's variable holding the Redis-protocol password.
pub const REDIS_PASSWORD_ENV: &str = "REDIS_PASSWORD";
/// Where the node's built-in demo app listens when the pod runs the user's app.
pub const NODE_DEMO_ADDR: &str = "127.0.0.1:18080";

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// The port clients reach in a pod (the `http` port): the proxy's, the app's, or the
/// node's demo app's when there is no `spec.app`.
pub fn exposed_http_port(sc: &SessionCluster) -> i32 {
    match &sc.spec.app {
        Some(app) if app.proxy.is_none() => app.port,
        _ => HTTP_PORT,
    }
}

/// The node container's extra environment for `spec.app` (none without it).
pub fn sidecar_env(sc: &SessionCluster) -> Vec<EnvVar> {
    let Some(app) = &sc.spec.app else {
        return Vec::new();
    };
    let mut out = vec![
        env(tribe_api::env::RESP_ADDR, RESP_ADDR),
        env(
            tribe_api::env::RESP_PASSWORD_FILE,
            format!("{KEY_DIR}/{RESP_PASSWORD_KEY}"),
        ),
        env(tribe_api::env::HTTP_ADDR, NODE_DEMO_ADDR),
    ];
    if let Some(p) = &app.proxy {
        out.push(env(
            tribe_api::env::PROXY_ADDR,
            format!("0.0.0.0:{HTTP_PORT}"),
        ));
        out.push(env(
            tribe_api::env::PROXY_UPSTREAM,
            format!("127.0.0.1:{}", app.port),
        ));
        out.push(env(tribe_api::env::PROXY_ADAPTER, p.adapter.as_str()));
        if let Some(c) = &p.cookie_name {
            out.push(env(tribe_api::env::PROXY_COOKIE, c.clone()));
        }
        if let Some(k) = &p.key_prefix {
            out.push(env(tribe_api::env::PROXY_KEY_PREFIX, k.clone()));
        }
    }
    out
}

/// The node container's ports: `http` (demo app or proxy) unless the app serves it.
pub fn node_ports(sc: &SessionCluster) -> Vec<ContainerPort> {
    let mut ports = Vec::new();
    if sc.spec.app.as_ref().is_none_or(|a| a.proxy.is_some()) {
        ports.push(port("http", HTTP_PORT));
    }
    ports.push(port("admin", ADMIN_PORT));
    ports.push(port("replication", REPLICATION_PORT));
    ports
}

/// The app container, if `spec.app` is set.
pub fn app_container(sc: &SessionCluster) -> Option<Container> {
    let app: &AppSpec = sc.spec.app.as_ref()?;
    let port_name = if app.proxy.is_some() { "app" } else { "http" };
    // REDIS_PASSWORD first: REDIS_URL refers to it (`$(VAR)` expands only variables
    // defined earlier in the list).
    let mut env_vars = vec![
        EnvVar {
            name: REDIS_PASSWORD_ENV.into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret_name(sc),
                    key: RESP_PASSWORD_KEY.into(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        },
        env(
            "REDIS_URL",
            format!("redis://:$({REDIS_PASSWORD_ENV})@{RESP_ADDR}"),
        ),
    ];
    env_vars.extend(
        app.env
            .iter()
            .filter(|(k, _)| k.as_str() != "REDIS_URL" && k.as_str() != REDIS_PASSWORD_ENV)
            .map(|(k, v)| env(k, v.clone())),
    );
    if let Some(url) = app.env.get("REDIS_URL") {
        env_vars[1] = env("REDIS_URL", url.clone());
    }
    Some(Container {
        name: "app".into(),
        image: Some(app.image.clone()),
        command: app.command.clone(),
        args: app.args.clone(),
        env: Some(env_vars),
        ports: Some(vec![port(port_name, app.port)]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(app.readiness_path.clone()),
                port: IntOrString::Int(app.port),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(2),
            failure_threshold: Some(3),
            timeout_seconds: Some(1),
            ..Probe::default()
        }),
        resources: app.resources.clone(),
        security_context: Some(super::template::container_security_context()),
        ..Container::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AppProxy, SessionAdapter};
    use crate::fixtures::cluster;

    fn with_app(proxy: bool) -> SessionCluster {
        let mut sc = cluster("shop", "web");
        sc.spec.app = Some(AppSpec {
            image: "shop:1".into(),
            port: 3000,
            command: None,
            args: Some(vec!["app.js".into()]),
            env: [("SESSION_SECRET".to_string(), "s".to_string())].into(),
            readiness_path: "/healthz".into(),
            proxy: proxy.then(|| AppProxy {
                adapter: SessionAdapter::ConnectRedis,
                cookie_name: None,
                key_prefix: Some("myapp:".into()),
            }),
            resources: None,
        });
        sc
    }

    fn envs(v: &[EnvVar]) -> BTreeMap<String, String> {
        v.iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    fn http_ports(d: &k8s_openapi::api::apps::v1::Deployment) -> Vec<(String, i32)> {
        d.spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .flat_map(|c| {
                c.ports
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| p.name.as_deref() == Some("http"))
                    .map(move |p| (c.name.clone(), p.container_port))
            })
            .collect()
    }

    #[test]
    fn without_app_nothing_changes() {
        let sc = cluster("shop", "web");
        assert!(app_container(&sc).is_none());
        assert!(sidecar_env(&sc).is_empty());
        assert_eq!(exposed_http_port(&sc), HTTP_PORT);
        let d = deployment(&sc);
        assert_eq!(d.spec.template.spec.as_ref().unwrap().containers.len(), 1);
        assert_eq!(http_ports(&d), vec![("node".to_string(), HTTP_PORT)]);
    }

    #[test]
    fn app_serves_http_and_reaches_resp_on_loopback() {
        let sc = with_app(false);
        let d = deployment(&sc);
        let pod = d.spec.template.spec.clone().unwrap();
        assert_eq!(pod.containers.len(), 2);
        let (node, app) = (&pod.containers[0], &pod.containers[1]);
        // The Service's named port `http` is the app's, on exactly one container.
        assert_eq!(http_ports(&d), vec![("app".to_string(), 3000)]);
        assert_eq!(exposed_http_port(&sc), 3000);
        let ne = envs(node.env.as_ref().unwrap());
        assert_eq!(ne[tribe_api::env::RESP_ADDR], "127.0.0.1:6379");
        assert_eq!(ne[tribe_api::env::HTTP_ADDR], NODE_DEMO_ADDR);
        assert!(!ne.contains_key(tribe_api::env::PROXY_ADDR));
        let ae = envs(app.env.as_ref().unwrap());
        assert_eq!(ae["REDIS_URL"], "redis://:$(REDIS_PASSWORD)@127.0.0.1:6379");
        assert_eq!(ae["SESSION_SECRET"], "s");
        // Both containers gate readiness.
        let probe = app
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(
            (probe.path.as_deref(), &probe.port),
            (Some("/healthz"), &IntOrString::Int(3000))
        );
        assert!(node.readiness_probe.is_some());
        assert_eq!(app.args.as_deref(), Some(&["app.js".to_string()][..]));
    }

    /// The sidecar's RESP endpoint always has a password, from the cluster Secret: the
    /// node reads it from the mounted Secret, the app gets the same Secret key, and
    /// `REDIS_URL` carries it (defined after it, so `$(REDIS_PASSWORD)` expands).
    #[test]
    fn the_resp_endpoint_always_has_the_secrets_password() {
        for proxy in [false, true] {
            let sc = with_app(proxy);
            let pod = deployment(&sc).spec.template.spec.unwrap();
            let node = &pod.containers[0];
            let ne = envs(node.env.as_ref().unwrap());
            let file = &ne[tribe_api::env::RESP_PASSWORD_FILE];
            assert_eq!(file, &format!("{KEY_DIR}/{RESP_PASSWORD_KEY}"));
            // The file is in the node's mount of the key Secret.
            let mount = node
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| file.starts_with(&format!("{}/", m.mount_path)))
                .expect("the password file is mounted");
            let vol = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .unwrap();
            let secret = vol.secret.as_ref().expect("a Secret volume");
            assert_eq!(secret.secret_name.as_deref(), Some("shop-key"));
            assert!(secret.items.is_none(), "every key of the Secret is mounted");
            let app = &pod.containers[1];
            let vars = app.env.as_ref().unwrap();
            let pw = vars
                .iter()
                .position(|e| e.name == REDIS_PASSWORD_ENV)
                .unwrap();
            let url = vars.iter().position(|e| e.name == "REDIS_URL").unwrap();
            assert!(
                pw < url,
                "REDIS_PASSWORD is defined before REDIS_URL uses it"
            );
            let from = vars[pw].value_from.as_ref().unwrap();
            let key = from.secret_key_ref.as_ref().unwrap();
            assert_eq!(
                (key.name.as_str(), key.key.as_str()),
                ("shop-key", RESP_PASSWORD_KEY)
            );
            assert_eq!(key.optional, None, "required: no pod starts without it");
            assert!(vars[url]
                .value
                .as_deref()
                .unwrap()
                .starts_with("redis://:$(REDIS_PASSWORD)@"));
        }
        // The user's own REDIS_PASSWORD cannot replace the Secret's.
        let mut sc = with_app(false);
        let app = sc.spec.app.as_mut().unwrap();
        app.env.insert(REDIS_PASSWORD_ENV.into(), "guess".into());
        let c = app_container(&sc).unwrap();
        let pw: Vec<_> = c
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == REDIS_PASSWORD_ENV)
            .collect();
        assert_eq!(pw.len(), 1);
        assert!(pw[0].value_from.is_some());
    }

    #[test]
    fn with_proxy_the_node_serves_http_in_front_of_the_app() {
        let sc = with_app(true);
        let d = deployment(&sc);
        assert_eq!(http_ports(&d), vec![("node".to_string(), HTTP_PORT)]);
        assert_eq!(exposed_http_port(&sc), HTTP_PORT);
        let pod = d.spec.template.spec.clone().unwrap();
        let ne = envs(pod.containers[0].env.as_ref().unwrap());
        assert_eq!(ne[tribe_api::env::PROXY_ADDR], "0.0.0.0:8080");
        assert_eq!(ne[tribe_api::env::PROXY_UPSTREAM], "127.0.0.1:3000");
        assert_eq!(ne[tribe_api::env::PROXY_ADAPTER], "connect-redis");
        assert_eq!(ne[tribe_api::env::PROXY_KEY_PREFIX], "myapp:");
        assert!(!ne.contains_key(tribe_api::env::PROXY_COOKIE));
        let app_ports = pod.containers[1].ports.clone().unwrap();
        assert_eq!(app_ports[0].name.as_deref(), Some("app"));
    }
}
