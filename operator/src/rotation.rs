//! Cluster key rotation on request, and the `KeysAgree` condition.
//!
//! Rotation is asked for by setting the annotation [`ROTATE_ANNOTATION`] on the
//! SessionCluster to a new value (any string, e.g. a date). The operator then walks the
//! `<name>-key` Secret through three writes, each only once every node reports (admin
//! `GET /cluster`, field `keys`, primary first) that it loaded the previous one — the
//! nodes re-read the mounted file without a restart:
//!
//! 1. add a new random key, the old one stays primary (nodes accept both);
//! 2. make the new key primary (nodes dial with it, still accept the old one);
//! 3. drop the old key.
//!
//! Connections already set up keep their per-connection keys, and every node accepts
//! what every other node dials with at each step: no request fails and the cluster never
//! splits. Progress lives in annotations of the Secret, so an operator restart resumes.
//!
//! `KeysAgree` is `False` (reason `KeyMismatch`) when a pod has no live member while the
//! peers it discovered refuse its key: e.g. the Secret was deleted and recreated with a
//! new key, so new pods hold a key the running ones do not. Such pods also report not
//! ready, so a rollout stops instead of building a second, empty cluster behind the same
//! Service.

use crate::crd::{Condition, SessionCluster};
use crate::probe::Prober;
use crate::resources::{self, KEY_FILE_NAME};
use crate::Result;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Set on a SessionCluster (to a new value each time) to rotate its cluster key.
pub const ROTATE_ANNOTATION: &str = "tribe.rs/rotate-key";
/// On the Secret: the request value being (or last) handled.
pub const REQUEST_ANNOTATION: &str = "tribe.rs/rotation-request";
/// On the Secret: `added`, `promoted`, `dropped` or `done`.
pub const PHASE_ANNOTATION: &str = "tribe.rs/rotation-phase";
/// On the Secret: the id of the key being rolled in.
pub const NEW_KEY_ANNOTATION: &str = "tribe.rs/rotation-new-key";
/// Condition type.
pub const CONDITION: &str = "KeysAgree";
const HEADER: &str = "tribe-keys v1";
/// Id the nodes give the key of a single-key file.
const DEFAULT_ID: &str = "default";

/// The key file as the nodes read it (`tribe-keys v1`, or one bare secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFile {
    /// Id of the key nodes dial with.
    pub primary: String,
    /// (id, secret), in file order.
    pub keys: Vec<(String, String)>,
}

impl KeyFile {
    /// Parses either format; `None` when it is neither. A single secret is read as the
    /// nodes read it (`node/src/keyring.rs`, `KeySet::parse`): every ASCII whitespace
    /// character in it is dropped, surrounding or inside, so a base64 key wrapped over
    /// lines (or pasted with a trailing newline) is one token again, which the
    /// multi-key format can carry (`key default <secret>`).
    pub fn parse(text: &str) -> Option<KeyFile> {
        if text.lines().next().map(str::trim) != Some(HEADER) {
            let secret: String = text.split_ascii_whitespace().collect();
            return (!secret.is_empty()).then(|| KeyFile {
                primary: DEFAULT_ID.into(),
                keys: vec![(DEFAULT_ID.into(), secret)],
            });
        }
        let mut primary = None;
        let mut keys = Vec::new();
        for line in text.lines().skip(1).map(str::trim) {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                [] => {}
                [c, ..] if c.starts_with('#') => {}
                ["primary", id] => primary = Some(id.to_string()),
                ["key", id, secret] => keys.push((id.to_string(), secret.to_string())),
                _ => return None,
            }
        }
        let primary = match primary {
            Some(p) => p,
            None if keys.len() == 1 => keys[0].0.clone(),
            None => return None,
        };
        keys.iter()
            .any(|(id, _)| *id == primary)
            .then_some(KeyFile { primary, keys })
    }

    /// The multi-key format.
    pub fn render(&self) -> String {
        let mut out = format!("{HEADER}\nprimary {}\n", self.primary);
        for (id, secret) in &self.keys {
            out.push_str(&format!("key {id} {secret}\n"));
        }
        out
    }

    /// A fresh id: `k<n>` above every `k<n>` in the file.
    pub fn next_id(&self) -> String {
        let n = self
            .keys
            .iter()
            .filter_map(|(id, _)| id.strip_prefix('k')?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        format!("k{}", n + 1)
    }

    fn ids(&self) -> Vec<String> {
        let mut ids = vec![self.primary.clone()];
        ids.extend(
            self.keys
                .iter()
                .map(|(id, _)| id.clone())
                .filter(|id| *id != self.primary),
        );
        ids
    }
}

/// What one node says about its keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeKeys {
    /// Node id.
    pub node: String,
    /// Key ids it holds, primary first (empty: a node too old to say).
    pub keys: Vec<String>,
    /// Peers that refused its key lately.
    pub refusing_peers: usize,
    /// Members it sees.
    pub members: usize,
    /// Peers it refused (or that refused it) for speaking no common protocol version:
    /// `addr: detail` (see [`crate::skew`]).
    pub version_skew: Vec<String>,
    /// The protocol versions it speaks (`(0, 0)`: a node too old to say).
    pub protocol: (u8, u8),
}

impl From<tribe_api::ClusterView> for NodeKeys {
    /// The key fields of a node's `/cluster` document.
    fn from(v: tribe_api::ClusterView) -> Self {
        NodeKeys {
            node: v.node,
            keys: v.keys,
            refusing_peers: v.refusing_peers.len(),
            members: v.members.len(),
            version_skew: v
                .peer_problems
                .iter()
                .filter(|p| p.reason == "version_skew")
                .map(|p| format!("{}: {}", p.addr, p.detail))
                .collect(),
            protocol: (v.protocol_min, v.protocol_max),
        }
    }
}

/// The next write of a rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    Idle,
    /// Waiting for the nodes (the text says for what).
    Wait(String),
    /// Write `file` with the annotations `phase` and `new_key` (and `request`).
    Write {
        /// The new key file.
        file: KeyFile,
        /// The phase it starts.
        phase: &'static str,
        /// The key being rolled in.
        new_key: String,
    },
}

/// What the Secret says about a rotation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretState {
    /// The request value handled last (or being handled).
    pub request: Option<String>,
    /// The phase reached.
    pub phase: Option<String>,
    /// The key being rolled in.
    pub new_key: Option<String>,
}

/// Decides the next step. `requested`: the SessionCluster's annotation; `nodes`: the
/// reports of every pod probed, `probed`: how many pods were probed (all must answer).
/// `secret`: a fresh random secret for a new key.
pub fn decide(
    file: &KeyFile,
    requested: Option<&str>,
    state: &SecretState,
    nodes: &[NodeKeys],
    probed: usize,
    secret: impl FnOnce() -> String,
) -> Decision {
    let phase = state.phase.as_deref().unwrap_or("done");
    let new_key = state.new_key.clone().unwrap_or_default();
    let all = |f: &dyn Fn(&NodeKeys) -> bool| -> bool {
        probed > 0 && nodes.len() == probed && nodes.iter().all(f)
    };
    let waiting = |what: &str| {
        Decision::Wait(format!(
            "waiting for every node to {what} (keys seen: {})",
            nodes
                .iter()
                .map(|n| format!("{}={}", n.node, n.keys.join("+")))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    match phase {
        "added" => {
            if all(&|n| n.keys.contains(&new_key)) {
                let file = KeyFile {
                    primary: new_key.clone(),
                    keys: file.keys.clone(),
                };
                Decision::Write {
                    file,
                    phase: "promoted",
                    new_key,
                }
            } else {
                waiting(&format!("load key {new_key}"))
            }
        }
        "promoted" => {
            if all(&|n| n.keys.first() == Some(&new_key)) {
                let file = KeyFile {
                    primary: new_key.clone(),
                    keys: file
                        .keys
                        .iter()
                        .filter(|(id, _)| *id == new_key)
                        .cloned()
                        .collect(),
                };
                Decision::Write {
                    file,
                    phase: "dropped",
                    new_key,
                }
            } else {
                waiting(&format!("dial with key {new_key}"))
            }
        }
        "dropped" => {
            if all(&|n| n.keys == [new_key.clone()]) {
                Decision::Write {
                    file: file.clone(),
                    phase: "done",
                    new_key,
                }
            } else {
                waiting(&format!("drop every key but {new_key}"))
            }
        }
        _ => match requested {
            Some(r) if Some(r) != state.request.as_deref() => {
                let id = file.next_id();
                let mut keys = file.keys.clone();
                keys.push((id.clone(), secret()));
                Decision::Write {
                    file: KeyFile {
                        primary: file.primary.clone(),
                        keys,
                    },
                    phase: "added",
                    new_key: id,
                }
            }
            _ => Decision::Idle,
        },
    }
}

/// The `KeysAgree` condition from the nodes' reports (`None`: no node answered).
pub fn condition(
    nodes: &[NodeKeys],
    rotating: Option<&str>,
    secret_name: &str,
    generation: Option<i64>,
) -> Option<Condition> {
    if nodes.is_empty() {
        return None;
    }
    let isolated: Vec<&str> = nodes
        .iter()
        .filter(|n| n.members == 0 && n.refusing_peers > 0)
        .map(|n| n.node.as_str())
        .collect();
    let (ok, reason, message) = if !isolated.is_empty() {
        (
            false,
            "KeyMismatch",
            format!(
                "pods {} cannot authenticate with any peer: their cluster key differs from the \
                 running pods' (was the Secret {secret_name} deleted or replaced?). They stay \
                 not ready until all pods hold the same key: running pods re-read the Secret \
                 (within a minute or two of a change); to keep the old key, put it back",
                isolated.join(", ")
            ),
        )
    } else if let Some(progress) = rotating {
        (
            true,
            "Rotating",
            format!("key rotation in progress: {progress}"),
        )
    } else {
        (
            true,
            "Agreed",
            "every node authenticates with its peers".to_string(),
        )
    };
    Some(crate::status::condition(
        CONDITION, ok, reason, message, generation,
    ))
}

/// Admin addresses of every running pod of the cluster, ready or not.
async fn pod_addrs(client: &kube::Client, sc: &SessionCluster, ns: &str) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = resources::selector_string(&resources::selector_labels(sc));
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let st = p.status.as_ref()?;
            (st.phase.as_deref() == Some("Running"))
                .then(|| {
                    st.pod_ip
                        .as_ref()
                        .map(|ip| format!("{ip}:{}", resources::ADMIN_PORT))
                })
                .flatten()
        })
        .collect())
}

/// Probes every running pod's keys; returns (reports, pods probed).
pub async fn probe(
    client: &kube::Client,
    prober: &Prober,
    sc: &SessionCluster,
    ns: &str,
) -> (Vec<NodeKeys>, usize) {
    let addrs = match pod_addrs(client, sc, ns).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "could not list pods; key status unknown");
            return (Vec::new(), 0);
        }
    };
    let reports = prober
        .reports(&addrs)
        .await
        .into_iter()
        .map(NodeKeys::from)
        .collect();
    (reports, addrs.len())
}

/// Why a rotation of a binary (non-UTF-8) key does not start.
fn binary_key_note(secret: &str) -> String {
    format!(
        "not started: the key in Secret {secret} is binary, and a rotation writes the text \
         key file; put a text key there (e.g. `openssl rand -hex 32`) to rotate"
    )
}

/// Runs one step of a requested rotation against the Secret. Returns the progress text
/// while a rotation is under way (for the condition), and an Event note when it wrote.
pub async fn step(
    client: &kube::Client,
    sc: &SessionCluster,
    ns: &str,
    nodes: &[NodeKeys],
    probed: usize,
) -> Result<(Option<String>, Option<String>)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = resources::secret_name(sc);
    let Some(mut secret) = api.get_opt(&name).await? else {
        return Ok((None, None));
    };
    let requested = sc.annotations().get(ROTATE_ANNOTATION).cloned();
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_FILE_NAME))
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let Ok(text) = std::str::from_utf8(&raw) else {
        // A binary key cannot be written into the text format: never rewrite it (a
        // lossy conversion would hand the nodes a different key).
        return Ok((requested.map(|_| binary_key_note(&name)), None));
    };
    let Some(file) = KeyFile::parse(text) else {
        return Ok((None, None));
    };
    let ann = secret.annotations();
    let state = SecretState {
        request: ann.get(REQUEST_ANNOTATION).cloned(),
        phase: ann.get(PHASE_ANNOTATION).cloned(),
        new_key: ann.get(NEW_KEY_ANNOTATION).cloned(),
    };
    match decide(
        &file,
        requested.as_deref(),
        &state,
        nodes,
        probed,
        resources::random_key,
    ) {
        Decision::Idle => Ok((None, None)),
        Decision::Wait(why) => Ok((Some(why), None)),
        Decision::Write {
            file: new_file,
            phase,
            new_key,
        } => {
            let data = secret.data.get_or_insert_with(BTreeMap::new);
            data.insert(
                KEY_FILE_NAME.to_string(),
                ByteString(new_file.render().into_bytes()),
            );
            let ann = secret.annotations_mut();
            if state.phase.as_deref().unwrap_or("done") == "done" {
                if let Some(r) = &requested {
                    ann.insert(REQUEST_ANNOTATION.into(), r.clone());
                }
            }
            ann.insert(PHASE_ANNOTATION.into(), phase.into());
            ann.insert(NEW_KEY_ANNOTATION.into(), new_key.clone());
            // A replace carries the resourceVersion read above: two writers cannot both
            // advance the same step.
            api.replace(&name, &PostParams::default(), &secret).await?;
            let note = format!(
                "key rotation: {} (keys now {})",
                match phase {
                    "added" => format!("added key {new_key}"),
                    "promoted" => format!("key {new_key} is primary"),
                    "dropped" => format!("dropped every key but {new_key}"),
                    _ => format!("done, key {new_key} in use"),
                },
                new_file.ids().join(", ")
            );
            tracing::info!(secret = %name, "{note}");
            let progress = (phase != "done").then(|| note.clone());
            Ok((progress, Some(note)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str, keys: &[&str]) -> NodeKeys {
        NodeKeys {
            node: n.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            refusing_peers: 0,
            members: 2,
            ..NodeKeys::default()
        }
    }

    fn state(req: &str, phase: &str, new: &str) -> SecretState {
        SecretState {
            request: Some(req.into()),
            phase: Some(phase.into()),
            new_key: Some(new.into()),
        }
    }

    #[test]
    fn key_files_round_trip_in_both_formats() {
        let legacy = KeyFile::parse("abcdef0123456789\n").unwrap();
        assert_eq!(legacy.primary, "default");
        let multi = KeyFile {
            primary: "k2".into(),
            keys: vec![("k1".into(), "aaa".into()), ("k2".into(), "bbb".into())],
        };
        assert_eq!(KeyFile::parse(&multi.render()), Some(multi.clone()));
        assert_eq!(multi.next_id(), "k3");
        assert_eq!(legacy.next_id(), "k1");
        assert_eq!(
            KeyFile::parse("tribe-keys v1\nprimary x\nkey y zzz\n"),
            None
        );
    }

    /// A single key with whitespace in it (a base64 key wrapped at 76 columns, a
    /// trailing newline, indentation) is one secret with the whitespace dropped, as the
    /// nodes read it, and the first rotation step writes it on one `key` line the nodes
    /// parse: before, the wrapped lines were copied into the file and every node
    /// refused the new file (and new pods exited).
    #[test]
    fn a_wrapped_single_key_is_rewritten_as_one_token() {
        let wrapped = "  QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2\n\
                       d3h5ejAxMjM0NTY3ODk=\r\n\n";
        let unwrapped =
            "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODk=";
        let file = KeyFile::parse(wrapped).unwrap();
        assert_eq!(
            file.keys,
            vec![(DEFAULT_ID.to_string(), unwrapped.to_string())]
        );
        let Decision::Write { file: added, .. } =
            decide(&file, Some("r1"), &SecretState::default(), &[], 0, || {
                "0123456789abcdef0123456789abcdef".into()
            })
        else {
            panic!("a new request writes")
        };
        let text = added.render();
        // Every line is one the nodes accept: the header, `primary <id>`, `key <id> <secret>`.
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(HEADER));
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(
                matches!(words.as_slice(), ["primary", _] | ["key", _, _]),
                "a line the nodes refuse: {line:?}\n{text}"
            );
        }
        assert!(
            text.contains(&format!("key default {unwrapped}\n")),
            "{text}"
        );
        assert_eq!(KeyFile::parse(&text), Some(added));
        // Spaces inside (a key pasted in groups) are dropped the same way.
        assert_eq!(
            KeyFile::parse("0123 4567\t89ab cdef\n").unwrap().keys[0].1,
            "0123456789abcdef"
        );
    }

    #[test]
    fn a_rotation_advances_only_when_every_node_followed() {
        let legacy = KeyFile::parse("old-secret-0123456789").unwrap();
        // A new request: add k1, the old key stays primary.
        let d = decide(&legacy, Some("r1"), &SecretState::default(), &[], 0, || {
            "new".into()
        });
        let Decision::Write {
            file,
            phase,
            new_key,
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!(
            (phase, new_key.as_str(), file.primary.as_str()),
            ("added", "k1", "default")
        );
        assert_eq!(file.keys.len(), 2);
        // Not every node has it yet (one still on the old file, or one did not answer).
        let st = state("r1", "added", "k1");
        let partial = [node("a", &["default", "k1"]), node("b", &["default"])];
        assert!(matches!(
            decide(&file, Some("r1"), &st, &partial, 2, String::new),
            Decision::Wait(_)
        ));
        let one_silent = [node("a", &["default", "k1"])];
        assert!(matches!(
            decide(&file, Some("r1"), &st, &one_silent, 2, String::new),
            Decision::Wait(_)
        ));
        // Everyone has it: promote.
        let all = [node("a", &["default", "k1"]), node("b", &["default", "k1"])];
        let Decision::Write { file, phase, .. } =
            decide(&file, Some("r1"), &st, &all, 2, String::new)
        else {
            panic!()
        };
        assert_eq!((phase, file.primary.as_str()), ("promoted", "k1"));
        // Everyone dials with it: drop the old one.
        let st = state("r1", "promoted", "k1");
        let all = [node("a", &["k1", "default"]), node("b", &["k1", "default"])];
        let Decision::Write { file, phase, .. } =
            decide(&file, Some("r1"), &st, &all, 2, String::new)
        else {
            panic!()
        };
        assert_eq!(phase, "dropped");
        assert_eq!(file.keys, vec![("k1".to_string(), "new".to_string())]);
        // Everyone dropped it: done; the same request does not start again.
        let st = state("r1", "dropped", "k1");
        let all = [node("a", &["k1"]), node("b", &["k1"])];
        let Decision::Write { phase, .. } = decide(&file, Some("r1"), &st, &all, 2, String::new)
        else {
            panic!()
        };
        assert_eq!(phase, "done");
        let st = state("r1", "done", "k1");
        assert_eq!(
            decide(&file, Some("r1"), &st, &all, 2, String::new),
            Decision::Idle
        );
        // A new request value starts a new rotation with k2.
        let Decision::Write { new_key, .. } =
            decide(&file, Some("r2"), &st, &all, 2, || "x".into())
        else {
            panic!()
        };
        assert_eq!(new_key, "k2");
    }

    #[test]
    fn isolated_pods_make_the_condition_false() {
        let mut lonely = node("new-pod", &["default"]);
        lonely.members = 0;
        lonely.refusing_peers = 2;
        let c = condition(
            &[node("a", &["default"]), lonely],
            None,
            "shop-key",
            Some(1),
        )
        .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "KeyMismatch")
        );
        assert!(c.message.contains("new-pod") && c.message.contains("shop-key"));
        let ok = condition(&[node("a", &["default"])], None, "shop-key", None).unwrap();
        assert_eq!(ok.status, "True");
        assert!(condition(&[], None, "shop-key", None).is_none());
    }

    #[test]
    fn parses_the_nodes_key_fields() {
        let body = br#"{"node":"shop-1","cluster":"c","replication":"delta","send_mode":"async",
            "ready":true,"sessions":1,"keys":["k2","k1"],"refusing_peers":["10.0.0.9:4000"],
            "members":[{"node":"shop-2","addr":"10.0.0.2:4000","state":"alive","incarnation":1}]}"#;
        let n = NodeKeys::from(crate::probe::parse_report(body).unwrap());
        assert_eq!(n.keys, vec!["k2", "k1"]);
        assert_eq!((n.refusing_peers, n.members), (1, 1));
    }
}
