//! The example shop (`examples/shop`) end to end on a real control plane with pods
//! (`../shared/k8s` and its podrunner; PODS.md): `helm install` the chart, then in a
//! namespace enforcing Pod Security "restricted", `kubectl apply -f
//! examples/shop/k8s.yaml` — a ConfigMap with the shop's name and a SessionCluster running
//! the shop's image (`scripts/images` builds it from examples/shop/Dockerfile; the pods
//! run inside it, as its non-root user, with a read-only root) with `spec.template.envFrom` that ConfigMap. One browser (one cookie jar) signs in
//! and keeps changing its cart through the ingress stand-in (127.0.0.1:18080) while
//! `kubectl scale` goes 3 → 5 → 2 and a pod is deleted. Asserted:
//!
//! - the pods are admitted under "restricted" (they exist and become Ready there);
//! - every form POST answers `303 See Other` to the page it names, every page and
//!   `/api/cart` answers 200: no error, no lost request;
//! - after every change the cart is exactly what the browser put in it (a model of the
//!   same `Cart` type) and the user is still signed in, whichever pod answers;
//! - the shop's name on the page comes from the ConfigMap;
//! - several pods served the browser, and signing out empties the session.
//!
//! Every wait is on an observed state (pods, the SessionCluster's status, the ingress
//! answering), bounded. Skipped (printed) without `../shared/k8s` or without root. Needs
//! the binaries next to the operator's (`cargo build --workspace --bins`), which
//! `scripts/images` packages.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tribe_shop::cart::{Cart, User};
use tribe_shop::catalog::PRODUCTS;
use tribe_shop::routes::CartView;

const RELEASE: &str = "tribe-operator";
const OPERATOR_NS: &str = "tribe-system";
/// Bound for one change (pods started, joined, ready, ingress updated).
const CHANGE: Duration = Duration::from_secs(150);
/// Spacing of the browser's cart changes (so they span every change of the cluster).
const PACE: Duration = Duration::from_millis(150);
/// Who signs in.
const USER: &str = "Ada";

#[test]
fn e2e_shop_sign_in_and_cart_survive_scaling_and_pod_loss_under_restricted() {
    let started = Instant::now();
    let log = |what: &str| eprintln!("[shop {:>6.1}s] {what}", started.elapsed().as_secs_f64());
    // The operator, node and shop images that scripts/images builds (support/images.rs).
    let Some(plane) = plane_with_pods("shop", |dir| oci_images_file(dir, &[])) else {
        return;
    };
    // The app namespace exists first: the chart grants Secrets there by a Role of its own.
    let ns = plane.ns("e2e-shop");
    plane.create_namespace(&ns);
    let secret_namespaces = format!("rbac.secretNamespaces={{{ns}}}");
    helm_install(&plane, RELEASE, OPERATOR_NS, &[&secret_namespaces], true);
    log("control plane, podrunner and operator up");

    let app = ShopApp::from_example();
    plane.enforce_restricted(&ns);
    plane.k(&["-n", &ns, "apply", "-f", app.file.to_str().unwrap()]);
    let cluster = Cluster {
        plane: &plane,
        ns: &ns,
        app: &app,
    };
    let first = cluster.settle(3, |_| true);
    log(&format!("3 shop pods ready under restricted: {first:?}"));

    // Sign in; the name on the page is the ConfigMap's.
    let mut browser = Browser::new(&app.host);
    let home = get_page(&mut browser, "/").unwrap();
    assert!(
        home.contains(&app.escaped_name()),
        "the shop's name from the ConfigMap ({:?}) is on the page:\n{home}",
        app.name
    );
    let home = post_form(&mut browser, "/signin", &format!("name={USER}"), "/").unwrap();
    assert!(home.contains(&signed_in_marker()), "{home}");
    assert!(browser.jar.contains_key("SESSIONID"), "{:?}", browser.jar);

    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, shop) = (stop.clone(), app.name.clone());
        std::thread::spawn(move || shop_drive(browser, &shop, &stop))
    };

    let scale = |n: usize| {
        plane.k(&[
            "-n",
            &ns,
            "scale",
            &format!("sessionclusters/{}", app.cluster),
            &format!("--replicas={n}"),
        ]);
    };
    scale(5);
    log(&format!("scaled to 5: {:?}", cluster.settle(5, |_| true)));
    scale(2);
    let two = cluster.settle(2, |_| true);
    log(&format!("scaled to 2: {two:?}"));
    let victim = two.iter().next().unwrap().clone();
    plane.k(&["-n", &ns, "delete", "pod", &victim, "--wait=false"]);
    let replaced = cluster.settle(2, |p| p != victim);
    log(&format!("{victim} deleted and replaced: {replaced:?}"));
    stop.store(true, Ordering::Relaxed);

    let drive = client.join().expect("client thread");
    let (mut browser, steps, nodes) = drive.unwrap_or_else(|e| panic!("browser: {e}"));
    log(&format!(
        "{steps} cart changes, each answered 303 then 200 with the expected cart, served by {nodes:?}"
    ));
    assert!(
        steps >= 30,
        "the browser kept shopping through the changes: {steps}"
    );
    assert!(
        nodes.len() >= 3,
        "several pods served the browser: {nodes:?}"
    );

    // Sign out: the browser's cookie is removed, and the session is gone from every node
    // (a copy of the old cookies finds nothing once the delete has replicated).
    let mut stale = Browser::new(&app.host);
    stale.jar = browser.jar.clone();
    let home = post_form(&mut browser, "/signout", "", "/").unwrap();
    assert!(!home.contains(&signed_in_marker()), "{home}");
    assert!(!browser.jar.contains_key("SESSIONID"), "{:?}", browser.jar);
    let view = api_cart(&mut browser).unwrap();
    assert_eq!((view.user, view.count), (None, 0), "after sign-out");
    let mut gone_on = BTreeSet::new();
    wait_for(
        "the signed-out session to be gone on every node",
        Duration::from_secs(30),
        || {
            let view = api_cart(&mut stale)?;
            if view.user.is_some() || view.count != 0 {
                gone_on.clear();
                return Err(format!("{} still has it", view.served_by));
            }
            gone_on.insert(view.served_by);
            if gone_on == replaced {
                Ok(())
            } else {
                Err(format!("gone on {gone_on:?} of {replaced:?}"))
            }
        },
    );
    log("signed out: the session is gone on every node");
}

/// The shop's manifest, `examples/shop/k8s.yaml`.
struct ShopApp {
    file: std::path::PathBuf,
    /// The SessionCluster's name.
    cluster: String,
    /// Its Ingress host.
    host: String,
    /// `SHOP_NAME` in its ConfigMap.
    name: String,
}

impl ShopApp {
    fn from_example() -> ShopApp {
        let file = repo_root().join("examples/shop/k8s.yaml");
        let docs = yaml_docs(&std::fs::read_to_string(&file).unwrap());
        let doc = |kind: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind)
                .unwrap_or_else(|| panic!("no {kind} in {}", file.display()))
        };
        let (cm, sc) = (doc("ConfigMap"), doc("SessionCluster"));
        let s = |v: &Value| v.as_str().unwrap_or_else(|| panic!("{v}")).to_string();
        assert_eq!(sc["spec"]["replicas"], 3);
        assert_eq!(
            sc["spec"]["template"]["envFrom"][0]["configMapRef"]["name"], cm["metadata"]["name"],
            "the shop's settings come from the ConfigMap"
        );
        assert!(
            s(&sc["spec"]["image"]).starts_with("tribe-shop"),
            "{}",
            sc["spec"]["image"]
        );
        ShopApp {
            cluster: s(&sc["metadata"]["name"]),
            host: s(&sc["spec"]["ingress"]["host"]),
            name: s(&cm["data"]["SHOP_NAME"]),
            file,
        }
    }

    /// The name as the HTML shows it.
    fn escaped_name(&self) -> String {
        self.name
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }
}

fn signed_in_marker() -> String {
    format!(r#"<strong id="user">{USER}</strong>"#)
}

/// The shop's SessionCluster in its namespace.
struct Cluster<'a> {
    plane: &'a ControlPlane,
    ns: &'a str,
    app: &'a ShopApp,
}

impl Cluster<'_> {
    /// Waits until exactly `n` pods exist, all Ready (so admitted under "restricted"),
    /// none terminating, all passing `want`; the SessionCluster's status says `n` ready
    /// members (the nodes found each other); and the ingress answers from exactly those
    /// pods. Their names.
    fn settle(&self, n: usize, want: impl Fn(&str) -> bool) -> BTreeSet<String> {
        let pods = wait_for(
            &format!("exactly {n} ready shop pods (none terminating)"),
            CHANGE,
            || {
                let list = self.plane.get_json(&[
                    "-n",
                    self.ns,
                    "pods",
                    &format!("--selector=app.kubernetes.io/instance={}", self.app.cluster),
                ])?;
                let items = list["items"].as_array().cloned().unwrap_or_default();
                let ready = |p: &Value| {
                    p["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                };
                let names: BTreeSet<String> = items
                    .iter()
                    .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
                    .filter(|p| ready(p))
                    .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
                    .filter(|name| want(name))
                    .collect();
                if items.len() == n && names.len() == n {
                    Ok(names)
                } else {
                    let states: Vec<String> = items.iter().map(pod_state).collect();
                    Err(format!(
                        "pods {states:?}, ready and wanted {names:?}; warnings: {}",
                        self.warnings()
                    ))
                }
            },
        );
        wait_for(
            &format!("the SessionCluster's status: {n} ready members"),
            CHANGE,
            || {
                let sc =
                    self.plane
                        .get_json(&["-n", self.ns, "sessionclusters", &self.app.cluster])?;
                let st = &sc["status"];
                if st["readyReplicas"] == n && st["members"] == n {
                    Ok(())
                } else {
                    Err(format!("status {st}"))
                }
            },
        );
        wait_ingress_answers_from(&pods, CHANGE, || {
            Ok(api_cart(&mut Browser::new(&self.app.host))?.served_by)
        });
        pods
    }

    /// The namespace's warning events (e.g. Pod Security refusing a pod), for a failure.
    fn warnings(&self) -> String {
        self.plane
            .try_k(&[
                "-n",
                self.ns,
                "get",
                "events",
                "--field-selector=type=Warning",
                "-o",
                "custom-columns=OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message",
            ])
            .unwrap_or_else(|e| e)
    }
}

/// A pod's name, phase and its containers' waiting or terminated reasons, for a failure.
fn pod_state(p: &Value) -> String {
    let reasons: Vec<&str> = p["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            c["state"]["waiting"]["reason"]
                .as_str()
                .or(c["state"]["terminated"]["reason"].as_str())
        })
        .collect();
    format!(
        "{} {} {reasons:?}",
        p["metadata"]["name"].as_str().unwrap_or("?"),
        p["status"]["phase"].as_str().unwrap_or("?")
    )
}

/// `GET path`: the page; anything but 200 is an error.
fn get_page(b: &mut Browser, path: &str) -> Result<String, String> {
    let r = b.request("GET", path)?;
    if r.status != 200 {
        return Err(format!("GET {path}: status {}: {}", r.status, r.body));
    }
    Ok(r.body)
}

/// A form POST, answered `303 See Other` to `to`, which is then fetched like a browser
/// does; that page.
fn post_form(b: &mut Browser, path: &str, form: &str, to: &str) -> Result<String, String> {
    let r = b.send("POST", path, Some(form))?;
    if r.status != 303 || r.header("location") != Some(to) {
        return Err(format!(
            "POST {path} {form}: status {}, location {:?}: {}",
            r.status,
            r.header("location"),
            r.body
        ));
    }
    get_page(b, to)
}

/// `GET /api/cart`.
fn api_cart(b: &mut Browser) -> Result<CartView, String> {
    let body = get_page(b, "/api/cart")?;
    serde_json::from_str(&body).map_err(|e| format!("/api/cart: {e}: {body}"))
}

/// The browser's part, until `stop`: one cart change after another (add, set a quantity,
/// remove, over every product), each checked against a model [`Cart`] on the cart page
/// and on `/api/cart`. (changes made, pods that answered).
fn shop_drive(
    mut b: Browser,
    shop: &str,
    stop: &AtomicBool,
) -> Result<(Browser, usize, BTreeSet<String>), String> {
    let user = User::new(USER).unwrap();
    let mut model = Cart::default();
    let mut nodes = BTreeSet::new();
    let mut step = 0;
    while !stop.load(Ordering::Relaxed) {
        let product = PRODUCTS[step % PRODUCTS.len()].id;
        let quantity = (step % 7) as u32 + 1;
        let (path, form) = match (step / PRODUCTS.len()) % 3 {
            0 => {
                model.add(product, quantity).unwrap();
                (
                    "/cart/add",
                    format!("product={product}&quantity={quantity}"),
                )
            }
            1 => {
                model.set(product, quantity).unwrap();
                (
                    "/cart/update",
                    format!("product={product}&quantity={quantity}"),
                )
            }
            _ => {
                model.remove(product).unwrap();
                ("/cart/remove", format!("product={product}"))
            }
        };
        let fail = |e: String| format!("change {step} ({path} {form}): {e}");
        let page = post_form(&mut b, path, &form, "/cart").map_err(fail)?;
        if !page.contains(&signed_in_marker()) {
            return Err(fail(format!("signed out on the cart page: {page}")));
        }
        let view = api_cart(&mut b).map_err(fail)?;
        let got: Vec<(&str, u32)> = view
            .items
            .iter()
            .map(|l| (l.id.as_str(), l.quantity))
            .collect();
        let want: Vec<(&str, u32)> = model
            .lines()
            .iter()
            .map(|l| (l.product.id, l.quantity))
            .collect();
        if got != want || view.user.as_deref() != Some(user.name.as_str()) || view.shop != shop {
            return Err(fail(format!(
                "from {}: user {:?}, shop {:?}, cart {got:?}; expected {USER}, {shop:?}, {want:?}",
                view.served_by, view.user, view.shop
            )));
        }
        nodes.insert(view.served_by);
        step += 1;
        std::thread::sleep(PACE);
    }
    Ok((b, step, nodes))
}
