//! `kubectl-tribe`: look at a Tribe SessionCluster from the nodes' point of view.
//! On PATH, `kubectl tribe ...` runs it. Every node call goes through the API
//! server's pod proxy with the user's kubeconfig and RBAC; nothing is port-forwarded.
#![forbid(unsafe_code)]

mod proxy;
mod render;

use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use proxy::{check_session_id, Error, Target};
use render::*;
use std::path::PathBuf;
use std::process::ExitCode;

/// Look at a Tribe SessionCluster: its nodes' view, its sessions (metadata only unless
/// --show-values), one session, or expire one.
///
/// The nodes' admin port is reached through the API server's pod proxy, so the user
/// needs `get` on sessionclusters.tribe.rs, `list` on pods and `get` (and for `expire`,
/// `delete`) on pods/proxy in the namespace.
#[derive(Parser, Debug)]
#[command(name = "kubectl-tribe", bin_name = "kubectl tribe", version)]
struct Cli {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The cluster as each node sees it: readiness, members, sessions by role.
    Status {
        /// The SessionCluster.
        name: String,
    },
    /// Sessions: id, size, attribute count, last access, owners, the pods holding a copy.
    Sessions {
        /// The SessionCluster.
        name: String,
        /// Only the sessions this pod holds.
        #[arg(long)]
        node: Option<String>,
        /// At most this many sessions.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Also print each session's attribute values.
        #[arg(long)]
        show_values: bool,
    },
    /// One session on every node that holds it.
    Inspect {
        /// The SessionCluster.
        name: String,
        /// The session id (the SESSIONID cookie's value; may start with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// Also print the attribute values.
        #[arg(long)]
        show_values: bool,
    },
    /// Expire (invalidate) a session on every node.
    Expire {
        /// The SessionCluster.
        name: String,
        /// The session id (the SESSIONID cookie's value; may start with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

async fn client(cli: &Cli) -> Result<Client, Error> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| Error::Usage(format!("kubeconfig {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| Error::Usage(format!("kubeconfig {}: {e}", path.display())))?
        }
        None if cli.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Usage(format!("kubeconfig: {e}")))?,
        None => Config::infer()
            .await
            .map_err(|e| Error::Usage(format!("no usable kubeconfig: {e}")))?,
    };
    Ok(Client::try_from(config)?)
}

fn now() -> u64 {
    jiff::Timestamp::now().as_second().max(0) as u64
}

async fn status(t: &Target) -> Result<String, Error> {
    let spec = &t.cluster.spec;
    let st = t.cluster.status.clone().unwrap_or_default();
    let mut out = format!(
        "SessionCluster {}/{}: {} replicas ({} ready, {} members in status), {} / {} ({} backups), image {}\n",
        t.namespace,
        kube::ResourceExt::name_any(&t.cluster),
        spec.replicas,
        st.ready_replicas.unwrap_or(0),
        st.members.map_or("?".into(), |m| m.to_string()),
        spec.replication.mode.as_str(),
        spec.replication.send_mode.as_str(),
        spec.replication.backups,
        // The image the operator applies (status), else the pinned one, else unknown yet.
        st.image
            .as_deref()
            .or(spec.image.as_deref())
            .unwrap_or("(the operator's)"),
    );
    if t.pods.is_empty() {
        out.push_str("no running pods\n");
        return Ok(out);
    }
    let mut views = vec![];
    for pod in t.pod_names() {
        let v = t.get_json::<ClusterView>(&pod, "/cluster").await;
        views.push((pod, v.map_err(|e| e.to_string())));
    }
    out.push_str(&table(&STATUS_HEADER, &status_rows(&views)));
    Ok(out)
}

/// Up to `limit` sessions of `pod`, following the node's pages.
async fn list_pod(t: &Target, pod: &str, limit: usize) -> Result<Vec<SessionMeta>, Error> {
    let mut all = vec![];
    let mut after: Option<String> = None;
    while all.len() < limit {
        let page_size = (limit - all.len()).min(500);
        let path = match &after {
            Some(a) => format!("/sessions?limit={page_size}&after={a}"),
            None => format!("/sessions?limit={page_size}"),
        };
        let page: SessionPage = t.get_json(pod, &path).await?;
        all.extend(page.sessions);
        match page.next {
            Some(n) => {
                check_session_id(&n)?;
                after = Some(n);
            }
            None => break,
        }
    }
    all.truncate(limit);
    Ok(all)
}

fn values_block(id: &str, d: &SessionDetail) -> String {
    let values = d.values.clone().unwrap_or_default();
    let mut out = format!("{id} (from {}):\n", d.node);
    for (k, v) in values {
        out.push_str(&format!("  {k} = {v}\n"));
    }
    out
}

async fn sessions(
    t: &Target,
    node: Option<&str>,
    limit: usize,
    show_values: bool,
) -> Result<String, Error> {
    let pods: Vec<String> = match node {
        Some(n) => {
            if !t.pod_names().iter().any(|p| p == n) {
                return Err(Error::Usage(format!(
                    "{n} is not a running pod of this cluster (pods: {})",
                    t.pod_names().join(", ")
                )));
            }
            vec![n.to_string()]
        }
        None => t.pod_names(),
    };
    // Without the key there is nothing to ask any node: say so at once.
    t.token().await?;
    let mut per_pod = vec![];
    let mut warnings = String::new();
    let mut last_err = None;
    for pod in &pods {
        match list_pod(t, pod, limit).await {
            Ok(list) => per_pod.push((pod.clone(), list)),
            Err(e) => {
                warnings.push_str(&format!("warning: {e}\n"));
                last_err = Some(e);
            }
        }
    }
    if per_pod.is_empty() {
        if let Some(e) = last_err {
            return Err(e);
        }
    }
    let mut rows = merge_sessions(&per_pod);
    rows.truncate(limit);
    let mut out = table(&SESSIONS_HEADER, &session_rows(&rows, now()));
    if show_values {
        for r in &rows {
            let pod = &r.held_by[0];
            let d: SessionDetail = t
                .get_json(pod, &format!("/sessions/{}?values=true", r.meta.id))
                .await?;
            out.push_str(&values_block(&r.meta.id, &d));
        }
    }
    out.push_str(&warnings);
    Ok(out)
}

async fn inspect(t: &Target, id: &str, show_values: bool) -> Result<String, Error> {
    check_session_id(id)?;
    t.token().await?;
    let mut out = String::new();
    let mut found: Option<SessionDetail> = None;
    let mut rows = vec![];
    for pod in t.pod_names() {
        let path = format!(
            "/sessions/{id}{}",
            if show_values { "?values=true" } else { "" }
        );
        match t.get_json::<SessionDetail>(&pod, &path).await {
            Ok(d) => {
                rows.push(vec![
                    pod.clone(),
                    d.node.clone(),
                    d.meta.role.clone(),
                    d.meta.version.to_string(),
                    d.meta.size.to_string(),
                    age(now(), d.meta.last_access),
                ]);
                if found
                    .as_ref()
                    .is_none_or(|f| d.meta.version > f.meta.version)
                {
                    found = Some(d);
                }
            }
            Err(e) if e.status() == Some(404) => {}
            Err(e) => out.push_str(&format!("warning: {e}\n")),
        }
    }
    let Some(d) = found else {
        return Err(Error::Usage(format!("no node holds session {id}\n{out}")));
    };
    let expires = jiff::Timestamp::from_second(d.meta.expires as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| d.meta.expires.to_string());
    let mut head = format!(
        "session {id}\n  attributes: {} ({})\n  size: {} B\n  owners: {}\n  expires: {expires}\n",
        d.meta.attributes,
        d.attribute_names.join(", "),
        d.meta.size,
        d.meta.owners.join(", "),
    );
    head.push_str(&table(
        &["POD", "NODE", "ROLE", "VERSION", "SIZE", "LAST ACCESS"],
        &rows,
    ));
    if show_values {
        head.push_str(&values_block(id, &d));
    }
    head.push_str(&out);
    Ok(head)
}

async fn expire(t: &Target, id: &str) -> Result<String, Error> {
    check_session_id(id)?;
    t.token().await?;
    let mut last = None;
    for pod in t.pod_names() {
        match t
            .call(http::Method::DELETE, &pod, &format!("/sessions/{id}"))
            .await
        {
            Ok(_) => return Ok(format!("session {id} expired (through {pod})\n")),
            Err(e) if e.status() == Some(404) => {}
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Usage(format!("no node holds session {id}"))))
}

async fn main_inner(cli: Cli) -> Result<String, Error> {
    let client = client(&cli).await?;
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let name = match &cli.command {
        Cmd::Status { name }
        | Cmd::Sessions { name, .. }
        | Cmd::Inspect { name, .. }
        | Cmd::Expire { name, .. } => name.clone(),
    };
    let t = Target::load(client, &ns, &name).await?;
    match &cli.command {
        Cmd::Status { .. } => status(&t).await,
        Cmd::Sessions {
            node,
            limit,
            show_values,
            ..
        } => sessions(&t, node.as_deref(), (*limit).max(1), *show_values).await,
        Cmd::Inspect {
            id, show_values, ..
        } => inspect(&t, id, *show_values).await,
        Cmd::Expire { id, .. } => expire(&t, id).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match main_inner(cli).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kubectl tribe: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Ids are URL-safe base64: one in 64 starts with `-`, and must still be an id.
    #[test]
    fn ids_may_start_with_a_dash() {
        let c = Cli::parse_from(["kubectl-tribe", "inspect", "shop", "-tSMxS8S1meEOWVVlEW00Q"]);
        match c.command {
            Cmd::Inspect { id, .. } => assert_eq!(id, "-tSMxS8S1meEOWVVlEW00Q"),
            other => panic!("{other:?}"),
        }
        let c = Cli::parse_from(["kubectl-tribe", "expire", "shop", "-x_y"]);
        assert!(matches!(c.command, Cmd::Expire { id, .. } if id == "-x_y"));
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let c = Cli::parse_from([
            "kubectl-tribe",
            "-n",
            "web",
            "sessions",
            "shop",
            "--node",
            "p1",
        ]);
        assert_eq!(c.namespace.as_deref(), Some("web"));
        match c.command {
            Cmd::Sessions {
                name,
                node,
                limit,
                show_values,
            } => {
                assert_eq!((name.as_str(), node.as_deref()), ("shop", Some("p1")));
                assert_eq!(limit, 100);
                assert!(!show_values, "values are never shown by default");
            }
            other => panic!("{other:?}"),
        }
    }
}
