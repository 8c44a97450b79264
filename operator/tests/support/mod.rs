//! Test fixtures shared by `cluster.rs`, `e2e.rs`, `shop.rs` and `chart.rs`: the real tools (helm, kubectl,
//! kubernetes-validate), a real control plane from `../shared/k8s` (or the one named by
//! `TRIBE_TEST_KUBECONFIG`), the podrunner, operator processes, and bounded waits.
//!
//! Every fixture cleans up in `Drop` (control plane `down`, operator SIGTERM then SIGKILL),
//! and prints its logs when the test that owns it is panicking.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

mod images;
#[allow(unused_imports)] // not every test binary uses the images
pub use images::*;

/// The repository root (the workspace), found from this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

/// A tool from `<repo>/.tools/bin` (where `scripts/install-test-deps` puts it), else from PATH.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let local = repo_root().join(".tools/bin").join(name);
    if is_executable(&local) {
        return Some(local);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Like [`find_tool`], but a missing tool fails the test with what to do about it.
pub fn require_tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed (looked in {}/.tools/bin and PATH): run `bash scripts/install-test-deps` \
             (CI runs it through scripts/test)",
            repo_root().display()
        )
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A fresh, empty scratch directory for one test.
pub fn scratch_dir(tag: &str) -> PathBuf {
    fresh_dir(&std::env::temp_dir(), tag)
}

/// A fresh, empty directory `tribe-<tag>-<pid>-<n>` in `base`.
fn fresh_dir(base: &Path, tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = base.join(format!(
        "tribe-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Whether this is a CI run (`CI=true`, as CI services set it): there a missing
/// precondition (control plane, root, a built binary, a tool) fails the test.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// For a test that cannot run here: fails it in CI ([`in_ci`]); elsewhere prints a
/// banner that cannot be missed in `cargo test` output and lets the test skip.
pub fn skipped(test: &str, why: &str) {
    if in_ci() {
        panic!("{test} cannot run: {why} (CI=true: a missing precondition fails the test)");
    }
    eprintln!("\n==================== SKIPPED {test} ====================");
    eprintln!("{why}");
    eprintln!("==========================================================\n");
}

/// Runs a command to completion; `Err` carries stdout+stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs a command with `input` on stdin.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Polls `probe` every 250 ms until it returns `Some`, for at most `timeout`; then panics
/// naming `what` and the last observation.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let mut last;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a test process).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// Parses every YAML document of a stream into JSON values (empty documents are dropped).
pub fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("invalid YAML: {e}\n{text}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// A minimal HTTP/1.0 exchange with `addr` (no TLS, `Connection: close`).
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines as (lower-case name, value).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request and reads the whole response, within `timeout`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {raw:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

/// The podrunner's ingress stand-in, published on the root namespace's loopback.
pub const INGRESS: &str = "127.0.0.1:18080";

/// A browser through the ingress stand-in: one Host, one cookie jar (e.g. the session
/// cookie and the node's read-your-writes version cookie).
pub struct Browser {
    /// The Host header (the Ingress rule's host).
    pub host: String,
    /// Cookie name → value.
    pub jar: std::collections::BTreeMap<String, String>,
}

impl Browser {
    /// A browser with an empty jar.
    pub fn new(host: &str) -> Self {
        Browser {
            host: host.to_string(),
            jar: Default::default(),
        }
    }

    /// One request with the jar's cookies; keeps the cookies the answer sets.
    pub fn request(&mut self, method: &str, path: &str) -> Result<HttpResponse, String> {
        self.send(method, path, None)
    }

    /// One request, with a form body (`application/x-www-form-urlencoded`) if given.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        form: Option<&str>,
    ) -> Result<HttpResponse, String> {
        let cookie: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let cookie = cookie.join("; ");
        let mut headers = vec![("Host", self.host.as_str())];
        if !cookie.is_empty() {
            headers.push(("Cookie", cookie.as_str()));
        }
        if form.is_some() {
            headers.push(("Content-Type", "application/x-www-form-urlencoded"));
        }
        let r = http(
            INGRESS.parse().unwrap(),
            method,
            path,
            &headers,
            form.unwrap_or(""),
            // Longer than the ingress may take (3 upstream tries, 5 s connect timeout
            // each): the answer is the ingress's, not a client-side give-up.
            Duration::from_secs(30),
        )?;
        for (_, value) in r.headers.iter().filter(|(n, _)| n == "set-cookie") {
            let pair = value.split(';').next().unwrap_or("");
            let expired = value.to_ascii_lowercase().contains("max-age=0");
            if let Some((k, v)) = pair.split_once('=') {
                let (k, v) = (k.trim().to_string(), v.trim().to_string());
                if expired || v.is_empty() {
                    self.jar.remove(&k);
                } else {
                    self.jar.insert(k, v);
                }
            }
        }
        Ok(r)
    }
}

/// Waits until the ingress answers from exactly `pods` (endpoints follow readiness with a
/// lag: EndpointSlice, then an nginx reload). `answer` sends one request and names the pod
/// that answered; nginx goes round-robin, so the last `4 n` answers come from every
/// backend it has.
pub fn wait_ingress_answers_from(
    pods: &std::collections::BTreeSet<String>,
    timeout: Duration,
    mut answer: impl FnMut() -> Result<String, String>,
) {
    let n = pods.len();
    let mut seen: Vec<String> = vec![];
    wait_for(
        &format!("the ingress to answer from exactly {pods:?}"),
        timeout,
        || {
            for _ in 0..n {
                seen.push(answer()?);
            }
            let window = seen.len().saturating_sub(4 * n);
            let recent: std::collections::BTreeSet<String> =
                seen[window..].iter().cloned().collect();
            if seen.len() >= 4 * n && &recent == pods {
                Ok(())
            } else {
                Err(format!("recent answers from {recent:?}"))
            }
        },
    );
}

/// A real Kubernetes control plane: started by `../shared/k8s/up` in a scratch directory
/// (stopped by `down` on drop), or an existing one named by `TRIBE_TEST_KUBECONFIG`.
pub struct ControlPlane {
    /// The scratch directory (`up DIR`), or the kubeconfig's directory for an external one.
    pub dir: PathBuf,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Whether this fixture started the control plane (and so stops it).
    owned: bool,
    /// `../shared/k8s`.
    k8s: Option<PathBuf>,
    kubectl: PathBuf,
    /// Appended to namespace names on a shared (external) cluster, so runs never collide.
    suffix: String,
    /// Namespaces this fixture created (deleted again on a shared cluster).
    namespaces: Mutex<Vec<String>>,
    /// On a shared cluster the tests take turns: cluster-wide operators of two tests
    /// would reconcile each other's objects.
    _turn: Option<MutexGuard<'static, ()>>,
}

/// Taken by each test that uses the shared cluster of `TRIBE_TEST_KUBECONFIG`.
static EXTERNAL_TURN: Mutex<()> = Mutex::new(());

/// Where the shared control-plane scripts live: `$TRIBE_SHARED_K8S`, else
/// `<repo>/../shared/k8s`, else `/work/shared/k8s` (for a clone made elsewhere on a
/// machine of this workplace, e.g. a fresh clone in /tmp).
pub fn shared_k8s() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("TRIBE_SHARED_K8S").map(PathBuf::from),
        repo_root().parent().map(|p| p.join("shared/k8s")),
        Some(PathBuf::from("/work/shared/k8s")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("up").is_file())
}

impl ControlPlane {
    /// Starts (or attaches to) a control plane for `test`; `None` when neither
    /// `TRIBE_TEST_KUBECONFIG` nor `../shared/k8s/up` exists (the skip is printed).
    pub fn start(test: &str) -> Option<ControlPlane> {
        if let Some(kc) = std::env::var_os("TRIBE_TEST_KUBECONFIG").filter(|v| !v.is_empty()) {
            let kubeconfig = PathBuf::from(kc);
            assert!(
                kubeconfig.is_file(),
                "TRIBE_TEST_KUBECONFIG={} is not a file",
                kubeconfig.display()
            );
            let dir = kubeconfig
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            eprintln!(
                "[{test}] using the control plane of TRIBE_TEST_KUBECONFIG={}",
                kubeconfig.display()
            );
            let kubectl = require_tool("kubectl");
            let turn = EXTERNAL_TURN.lock().unwrap_or_else(|p| p.into_inner());
            static RUN: AtomicU32 = AtomicU32::new(0);
            let suffix = format!(
                "-{}-{}",
                std::process::id(),
                RUN.fetch_add(1, Ordering::Relaxed)
            );
            return Some(ControlPlane {
                dir,
                kubeconfig,
                owned: false,
                k8s: shared_k8s(),
                kubectl,
                suffix,
                namespaces: Mutex::default(),
                _turn: Some(turn),
            });
        }
        let Some(k8s) = shared_k8s() else {
            skipped(
                test,
                &format!(
                    "no Kubernetes control plane: TRIBE_TEST_KUBECONFIG is unset and no shared/k8s/up (TRIBE_SHARED_K8S, {}/../shared/k8s, /work/shared/k8s)",
                    repo_root().display()
                ),
            );
            return None;
        };
        let kubectl = require_tool("kubectl");
        let dir = scratch_dir(&format!("k8s-{test}"));
        eprintln!("[{test}] starting a control plane in {}", dir.display());
        let started = Instant::now();
        let plane = ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            owned: true,
            k8s: Some(k8s.clone()),
            kubectl,
            suffix: String::new(),
            namespaces: Mutex::default(),
            _turn: None,
        };
        if let Err(e) = run(Command::new(k8s.join("up")).arg(&plane.dir)) {
            plane.dump_logs();
            panic!("../shared/k8s/up failed: {e}");
        }
        eprintln!("[{test}] control plane up in {:?}", started.elapsed());
        Some(plane)
    }

    /// Whether this fixture owns the control plane (and so may run a podrunner on it).
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// A `kubectl` command for this control plane.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=30s");
        c
    }

    /// Runs kubectl; `Err` when it fails.
    pub fn try_k(&self, args: &[&str]) -> Result<String, String> {
        run(self.kubectl().args(args))
    }

    /// Runs kubectl and fails the test when it fails.
    pub fn k(&self, args: &[&str]) -> String {
        self.try_k(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs kubectl with `yaml` on stdin (e.g. `apply -f -`).
    pub fn k_stdin(&self, args: &[&str], yaml: &str) -> Result<String, String> {
        run_with_stdin(self.kubectl().args(args), yaml)
    }

    /// Server-side applies `yaml` (field manager `tribe-test`); `Err` with kubectl's
    /// output when the API server refuses it.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        self.k_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=tribe-test",
                "-f",
                "-",
            ],
            yaml,
        )
    }

    /// `kubectl get ... -o json`, parsed; `Err` when the get fails (e.g. not found).
    pub fn get_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let out = self.try_k(&a)?;
        serde_json::from_str(&out).map_err(|e| format!("kubectl output is not JSON: {e}: {out}"))
    }

    /// Labels namespace `ns` to enforce Pod Security "restricted" (latest).
    pub fn enforce_restricted(&self, ns: &str) {
        self.k(&[
            "label",
            "namespace",
            ns,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        ]);
    }

    /// Creates a namespace (and waits until it is usable).
    pub fn create_namespace(&self, ns: &str) {
        self.k(&["create", "namespace", ns]);
        self.namespaces.lock().unwrap().push(ns.to_string());
        wait_for(
            &format!("service account default in {ns}"),
            Duration::from_secs(60),
            || {
                self.try_k(&["-n", ns, "get", "serviceaccount", "default"])
                    .map(|_| ())
            },
        );
    }

    /// The name to use for namespace `base`: itself on a control plane of this test's
    /// own, made unique on a shared one.
    pub fn ns(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }

    /// Applies the repository's CRD and waits until it is Established.
    pub fn install_crd(&self) {
        let crd = repo_root().join("crds/sessioncluster.yaml");
        self.k(&[
            "apply",
            "--server-side",
            "--field-manager=tribe-test",
            "-f",
            crd.to_str().unwrap(),
        ]);
        self.wait_condition("crd/sessionclusters.tribe.rs", "Established", SHORT_WAIT);
        // Discovery can lag behind Established by a moment.
        wait_for(
            "sessionclusters in discovery",
            Duration::from_secs(30),
            || self.try_k(&["get", "sessionclusters", "-A"]).map(|_| ()),
        );
    }

    /// Waits until `object` (`kind/name`, with `-n NS` in `namespace` if given) has the
    /// condition `condition` with status `True`. Polls `kubectl get` instead of `kubectl
    /// wait`, which fails at once (`.status.conditions accessor error: <nil>`) while the
    /// API server has not set any condition yet: a missing status is "not yet".
    pub fn wait_condition(&self, object: &str, condition: &str, timeout: Duration) {
        wait_for(&format!("{object} to be {condition}"), timeout, || {
            let v = self.get_json(&[object])?;
            condition_status(&v, condition)
                .filter(|s| s == "True")
                .map(|_| ())
                .ok_or_else(|| format!("conditions: {}", v["status"]["conditions"]))
        });
    }

    /// Starts the podrunner with `images` (`../shared/k8s/pods DIR IMAGES`); `Err` with the
    /// reason when pods cannot run here (not our control plane, not root, no `pods` script).
    pub fn start_pods(&self, images: &Path) -> Result<(), String> {
        if !self.owned {
            return Err(
                "pods need a control plane this test started (TRIBE_TEST_KUBECONFIG is set)".into(),
            );
        }
        let k8s = self.k8s.as_ref().ok_or("no ../shared/k8s")?;
        if !k8s.join("pods").is_file() {
            return Err(format!("{}/pods does not exist", k8s.display()));
        }
        if !is_root() {
            return Err("the podrunner needs root (network namespaces)".into());
        }
        run(Command::new(k8s.join("pods")).arg(&self.dir).arg(images))
            .map(|_| ())
            .map_err(|e| {
                self.dump_logs();
                format!("../shared/k8s/pods failed: {e}")
            })
    }

    /// Prints the tails of the control plane's and the podrunner's logs, and of every pod's
    /// container logs.
    pub fn dump_logs(&self) {
        if !self.owned {
            return;
        }
        for name in ["apiserver", "kcm", "podrunner"] {
            print_tail(&self.dir.join("logs").join(format!("{name}.log")), 40);
        }
        if let Ok(pods) = std::fs::read_dir(self.dir.join("podrunner/pods")) {
            for pod in pods.flatten() {
                if let Ok(files) = std::fs::read_dir(pod.path()) {
                    for f in files.flatten() {
                        if f.path().extension().is_some_and(|e| e == "log") {
                            print_tail(&f.path(), 30);
                        }
                    }
                }
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if self.owned {
            if let Some(k8s) = &self.k8s {
                if let Err(e) = run(Command::new(k8s.join("down")).arg(&self.dir)) {
                    eprintln!("down {} failed: {e}", self.dir.display());
                }
            }
            // Keep the logs of a failed test for a post-mortem; drop those of a passed one.
            if !std::thread::panicking() {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        } else {
            for ns in self
                .namespaces
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                let _ = self.try_k(&["delete", "namespace", ns, "--wait=false"]);
            }
        }
    }
}

/// How long [`ControlPlane::wait_condition`] waits for a CRD (seconds on an idle
/// machine; generous for a loaded one).
pub const SHORT_WAIT: Duration = Duration::from_secs(120);

/// The status (`True`, `False`, `Unknown`) of condition `type` in an object's
/// `.status.conditions`; `None` while the status or the condition is not there yet.
pub fn condition_status(object: &Value, type_: &str) -> Option<String> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
        .map(String::from)
}

/// Prints the last `n` lines of a log file.
pub fn print_tail(path: &Path, n: usize) {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "----- {} (last {} of {} lines)",
                path.display(),
                n.min(lines.len()),
                lines.len()
            );
            for l in &lines[lines.len().saturating_sub(n)..] {
                eprintln!("{l}");
            }
        }
        Err(e) => eprintln!("----- {}: {e}", path.display()),
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    run(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// The operator binary this test build produced.
pub fn operator_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tribe-operator"))
}

/// A binary of another workspace crate, built into the same target directory as the
/// operator (`target/<profile>/`); `Err` says how to build it.
pub fn workspace_bin(name: &str) -> Result<PathBuf, String> {
    let dir = operator_bin().parent().expect("binary dir").to_path_buf();
    let bin = dir.join(name);
    if is_executable(&bin) {
        Ok(bin)
    } else {
        Err(format!(
            "{} is not built: run `cargo build --workspace --bins` first",
            bin.display()
        ))
    }
}

/// One `tribe-operator run` process, its output in a log file.
pub struct Operator {
    /// A name for messages (also its leader-election identity).
    pub name: String,
    child: Option<Child>,
    /// stdout + stderr of the process.
    pub log: PathBuf,
    /// Its admin server (/healthz, /readyz, /metrics).
    pub admin: SocketAddr,
}

impl Operator {
    /// Starts `tribe-operator run` against `kubeconfig`; its Lease lives in `lease_ns`.
    /// `env` is added to (and overrides) the defaults.
    pub fn start(name: &str, kubeconfig: &Path, lease_ns: &str, env: &[(&str, &str)]) -> Operator {
        let dir = scratch_dir(&format!("op-{name}"));
        let log = dir.join("operator.log");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let out = std::fs::File::create(&log).expect("create log");
        let mut cmd = Command::new(operator_bin());
        cmd.arg("run")
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,tribe_operator=debug")
            .env("POD_NAMESPACE", lease_ns)
            .env("POD_NAME", name)
            .env("TRIBE_OPERATOR_ADMIN_ADDR", admin.to_string())
            .env("TRIBE_OPERATOR_LEASE_NAME", "tribe-operator")
            .env_remove("WATCH_NAMESPACE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", operator_bin().display()));
        let mut op = Operator {
            name: name.to_string(),
            child: Some(child),
            log,
            admin,
        };
        let admin = op.admin;
        // Ok(Ok): healthy. Ok(Err): stop waiting, it exited. Err: not yet.
        wait_for(
            &format!("operator {name} /healthz on {admin}"),
            Duration::from_secs(30),
            || {
                if !op.running() {
                    return Ok(Err(format!("operator {name} exited:\n{}", op.log_text())));
                }
                match http(admin, "GET", "/healthz", &[], "", Duration::from_secs(2)) {
                    Ok(r) if r.status == 200 => Ok(Ok(())),
                    Ok(r) => Err(format!("status {}", r.status)),
                    Err(e) => Err(e),
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        op
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET an admin path; the body when 200.
    pub fn admin_get(&self, path: &str) -> Result<String, String> {
        let r = http(self.admin, "GET", path, &[], "", Duration::from_secs(3))?;
        if r.status == 200 {
            Ok(r.body)
        } else {
            Err(format!("GET {path}: status {}: {}", r.status, r.body))
        }
    }

    /// The sum of every sample of the metrics whose name starts with `prefix` (and whose
    /// label set contains `label`, when given); 0 when there is none.
    pub fn metric_sum(&self, prefix: &str, label: Option<&str>) -> Result<f64, String> {
        let text = self.admin_get("/metrics")?;
        Ok(sum_metric(&text, prefix, label))
    }

    /// SIGTERM, then SIGKILL after `grace`; returns whether it exited by itself in time.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Kills the process at once (SIGKILL): a crash, with no chance to release its Lease.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_tail(&self.log, 80);
        }
        self.stop(Duration::from_secs(10));
        if !std::thread::panicking() {
            if let Some(dir) = self.log.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Sums the samples of Prometheus text whose metric name starts with `prefix`.
pub fn sum_metric(text: &str, prefix: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter(|l| label.is_none_or(|lbl| l.contains(lbl)))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        })
        .sum()
}

/// A kubeconfig for `namespace/serviceaccount` with a real token from the TokenRequest API
/// (so the API server authenticates and authorizes the ServiceAccount itself).
pub fn service_account_kubeconfig(plane: &ControlPlane, namespace: &str, sa: &str, out: &Path) {
    let token = plane
        .k(&["-n", namespace, "create", "token", sa, "--duration=2h"])
        .trim()
        .to_string();
    assert!(!token.is_empty(), "empty token for {namespace}/{sa}");
    let admin: Value =
        serde_json::from_str(&plane.k(&["config", "view", "--raw", "-o", "json"])).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().expect("server");
    let ca = cluster["certificate-authority-data"]
        .as_str()
        .expect("ca data");
    let kc = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: test, cluster: {{server: \"{server}\", certificate-authority-data: {ca}}}}}]\n\
         users: [{{name: sa, user: {{token: \"{token}\"}}}}]\n\
         contexts: [{{name: sa, context: {{cluster: test, user: sa, namespace: {namespace}}}}}]\n\
         current-context: sa\n"
    );
    std::fs::write(out, kc).expect("write kubeconfig");
}

// ---------------------------------------------------------------------------------------
// Helm releases and pods (shared by `cluster.rs` and `e2e.rs`)

/// Installs the chart as release `release` in `ns` with `sets`, against `plane`.
pub fn helm_install(plane: &ControlPlane, release: &str, ns: &str, sets: &[&str], wait: bool) {
    let chart = repo_root().join("charts/tribe-operator");
    let mut args = vec![
        "install",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        ns,
        "--create-namespace",
        "--timeout",
        "180s",
    ];
    if wait {
        args.push("--wait");
    }
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    let mut cmd = Command::new(require_tool("helm"));
    cmd.args(&args).env("KUBECONFIG", &plane.kubeconfig);
    let out = run(&mut cmd).unwrap_or_else(|e| panic!("helm install {release} failed: {e}"));
    assert!(out.contains("STATUS: deployed"), "{out}");
}

pub fn helm_uninstall(plane: &ControlPlane, release: &str, ns: &str) {
    let mut cmd = Command::new(require_tool("helm"));
    cmd.args([
        "uninstall",
        release,
        "--namespace",
        ns,
        "--wait",
        "--timeout",
        "120s",
    ])
    .env("KUBECONFIG", &plane.kubeconfig);
    run(&mut cmd).unwrap_or_else(|e| panic!("helm uninstall {release} failed: {e}"));
}

/// Waits until none of the objects `helm template` renders for this release exist.
pub fn assert_release_gone(plane: &ControlPlane, release: &str, ns: &str, namespaced: bool) {
    let kinds: &[&str] = if namespaced {
        &["serviceaccount", "role", "rolebinding", "deployment"]
    } else {
        &[
            "serviceaccount",
            "clusterrole",
            "clusterrolebinding",
            "role",
            "rolebinding",
            "deployment",
        ]
    };
    wait_for(
        &format!("everything of release {release} to be gone"),
        Duration::from_secs(120),
        || {
            let mut left = vec![];
            for kind in kinds {
                let out = plane.try_k(&[
                    "-n",
                    ns,
                    "get",
                    kind,
                    "-l",
                    &format!("app.kubernetes.io/instance={release}"),
                    "-o",
                    "name",
                ])?;
                left.extend(out.lines().map(String::from));
            }
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("left: {left:?}"))
            }
        },
    );
    // Helm never deletes CRDs from crds/: the SessionClusters of users survive an uninstall.
    assert!(
        plane
            .try_k(&["get", "crd", "sessionclusters.tribe.rs"])
            .is_ok(),
        "the CRD stays"
    );
}

/// images.yaml for the podrunner: the image names of the chart and of the SessionCluster
/// default mapped to the binaries of this build.
pub fn images_file(dir: &Path, node: Option<&Path>) -> PathBuf {
    let mut text = format!("tribe-operator: {}\n", operator_bin().display());
    if let Some(node) = node {
        text.push_str(&format!("tribe-node: {}\n", node.display()));
    }
    let file = dir.join("images.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// A control plane with a podrunner, or `None` (printed) when pods cannot run here.
pub fn plane_with_pods(test: &str, images: impl FnOnce(&Path) -> PathBuf) -> Option<ControlPlane> {
    let plane = ControlPlane::start(test)?;
    let file = images(&plane.dir);
    if let Err(why) = plane.start_pods(&file) {
        skipped(test, &format!("cannot run pods: {why}"));
        return None;
    }
    Some(plane)
}

/// The Lease the operators elect on: (holder, name).
pub fn lease_holder(plane: &ControlPlane, ns: &str) -> Result<(String, String), String> {
    let leases = plane.get_json(&["-n", ns, "leases"])?;
    let items = leases["items"].as_array().cloned().unwrap_or_default();
    let lease = items.first().ok_or("no Lease yet")?;
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .ok_or("no holder")?;
    Ok((
        holder.to_string(),
        lease["metadata"]["name"].as_str().unwrap().to_string(),
    ))
}

/// The demo app's requests, for the [`Browser`] of the support module.
pub trait Counter {
    /// `POST /counter`: (counter, node that answered); any status but 200 is an error.
    fn post_counter(&mut self) -> Result<(i64, String), String>;
    /// `GET /counter` without a session (creates none): the node that answered.
    fn get_counter_node(&mut self) -> Result<String, String>;
}

impl Counter for Browser {
    fn post_counter(&mut self) -> Result<(i64, String), String> {
        let r = self.request("POST", "/counter")?;
        if r.status != 200 {
            return Err(format!("status {}: {}", r.status, r.body));
        }
        counter_reply(&r)
    }

    fn get_counter_node(&mut self) -> Result<String, String> {
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
