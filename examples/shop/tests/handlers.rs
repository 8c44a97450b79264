//! The shop's handlers over HTTP semantics, with tower-sessions' `MemoryStore` in place of
//! Tribe's replicated store (the session layer is the same; the node tests cover the
//! store): a browser-like client keeps the session cookie across requests.

use http_body_util::BodyExt;
use tower::ServiceExt;
use tribe_node::axum::body::Body;
use tribe_node::axum::http::{header, Request, StatusCode};
use tribe_node::axum::Router;
use tribe_node::tower_sessions::{MemoryStore, SessionManagerLayer};
use tribe_shop::routes::CartView;
use tribe_shop::Shop;

const COOKIE: &str = "SESSIONID";

fn shop() -> Shop {
    Shop {
        name: "Beans <&> Co".into(),
        served_by: "node-a".into(),
    }
}

/// One visitor: the app and a one-cookie jar.
struct Browser {
    app: Router,
    session: Option<String>,
}

/// An answer: status, `Location`, body.
struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

impl Browser {
    fn new() -> Browser {
        let layer = SessionManagerLayer::new(MemoryStore::default())
            .with_name(COOKIE)
            .with_secure(false);
        Browser {
            app: tribe_shop::router(shop()).layer(layer),
            session: None,
        }
    }

    async fn send(&mut self, method: &str, path: &str, form: Option<&str>) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(id) = &self.session {
            req = req.header(header::COOKIE, format!("{COOKIE}={id}"));
        }
        let body = match form {
            Some(f) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Body::from(f.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        for c in resp.headers().get_all(header::SET_COOKIE) {
            let c = cookie_pair(c.to_str().unwrap());
            if let Some((COOKIE, v)) = c {
                // A removal cookie (sign-out) has an empty value and Max-Age=0.
                self.session = (!v.is_empty()).then(|| v.to_string());
            }
        }
        let status = resp.status();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            location,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        let a = self.send("GET", path, None).await;
        assert_eq!(a.status, StatusCode::OK, "GET {path}: {}", a.body);
        a
    }

    /// A form POST: must redirect (303) to `to`, which is then fetched like a browser does.
    async fn post(&mut self, path: &str, form: &str, to: &str) -> Answer {
        let a = self.send("POST", path, Some(form)).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "POST {path}: {}", a.body);
        assert_eq!(a.location.as_deref(), Some(to));
        self.get(to).await
    }

    async fn cart(&mut self) -> CartView {
        serde_json::from_str(&self.get("/api/cart").await.body).unwrap()
    }
}

fn cookie_pair(set_cookie: &str) -> Option<(&str, &str)> {
    set_cookie.split(';').next()?.split_once('=')
}

#[tokio::test]
async fn a_visit_signs_in_fills_the_cart_and_signs_out() {
    let mut b = Browser::new();
    let home = b.get("/").await;
    assert!(
        home.body.contains("Beans &lt;&amp;&gt; Co"),
        "the name, escaped"
    );
    assert!(home.body.contains(r#"action="/signin""#));
    assert!(home.body.contains("Espresso beans"));
    assert!(b.session.is_none(), "looking creates no session");

    let page = b.post("/signin", "name=Ada", "/").await;
    assert!(
        page.body.contains(r#"<strong id="user">Ada</strong>"#),
        "{}",
        page.body
    );
    let signed_in = b.session.clone().expect("a session after sign-in");

    let page = b
        .post("/cart/add", "product=tamper&quantity=2", "/cart")
        .await;
    assert!(page.body.contains("Tamper"));
    b.post("/cart/add", "product=moka-pot", "/cart").await;
    b.post("/cart/add", "product=tamper&quantity=1", "/cart")
        .await;
    let page = b
        .post("/cart/update", "product=moka-pot&quantity=4", "/cart")
        .await;
    assert!(
        page.body.contains(r#"<th id="total">€187.70</th>"#),
        "{}",
        page.body
    );
    assert_eq!(
        b.session.as_ref(),
        Some(&signed_in),
        "the id changes only at sign-in"
    );

    let cart = b.cart().await;
    assert_eq!(cart.user.as_deref(), Some("Ada"));
    assert_eq!(cart.shop, "Beans <&> Co");
    assert_eq!(cart.served_by, "node-a");
    let lines: Vec<_> = cart
        .items
        .iter()
        .map(|l| (l.id.as_str(), l.quantity))
        .collect();
    assert_eq!(lines, [("moka-pot", 4), ("tamper", 3)]);
    assert_eq!((cart.count, cart.total_cents), (7, 4 * 3200 + 3 * 1990));

    b.post("/cart/remove", "product=tamper", "/cart").await;
    b.post("/cart/update", "product=moka-pot&quantity=0", "/cart")
        .await;
    let page = b.get("/cart").await;
    assert!(page.body.contains("Your cart is empty"));
    assert_eq!(b.cart().await.count, 0);

    b.post("/cart/add", "product=grinder", "/cart").await;
    let page = b.post("/signout", "", "/").await;
    assert!(b.session.is_none(), "sign-out removes the cookie");
    assert!(page.body.contains(r#"action="/signin""#));
    let cart = b.cart().await;
    assert_eq!((cart.user, cart.count), (None, 0));
}

#[tokio::test]
async fn sign_in_cycles_the_session_id_and_keeps_the_cart() {
    let mut b = Browser::new();
    b.post("/cart/add", "product=cup-set&quantity=2", "/cart")
        .await;
    let anonymous = b.session.clone().expect("a cart makes a session");
    b.post("/signin", "name=Grace", "/").await;
    let signed_in = b.session.clone().unwrap();
    assert_ne!(signed_in, anonymous, "a new id at sign-in (no fixation)");
    let cart = b.cart().await;
    assert_eq!((cart.user.as_deref(), cart.count), (Some("Grace"), 2));

    // Whoever held the old id (planted, or read off the visitor before sign-in) has
    // nothing: the old session is gone from the store.
    let mut attacker = Browser::new();
    attacker.app = b.app.clone();
    attacker.session = Some(anonymous);
    let cart = attacker.cart().await;
    assert_eq!((cart.user, cart.count), (None, 0));
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let mut b = Browser::new();
    b.post("/signin", "name=Ada", "/").await;
    b.post("/cart/add", "product=tamper", "/cart").await;
    for (path, form, status, says) in [
        ("/cart/add", "product=caviar", 400, "there is no product"),
        (
            "/cart/add",
            "product=tamper&quantity=100",
            400,
            "at most 99",
        ),
        ("/cart/add", "product=tamper&quantity=-1", 422, "quantity"),
        ("/cart/update", "quantity=2", 422, "product"),
        ("/signin", "name=%20%20", 400, "a name is 1 to 40"),
        ("/signin", "name=a%0Ab", 400, "a name is 1 to 40"),
    ] {
        let a = b.send("POST", path, Some(form)).await;
        assert_eq!(a.status.as_u16(), status, "{path} {form}: {}", a.body);
        assert!(a.body.contains(says), "{path} {form}: {}", a.body);
        assert!(a.body.contains("Back to the products"));
    }
    let a = b.send("POST", "/cart/add", None).await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", a.body);
    let cart = b.cart().await;
    assert_eq!((cart.user.as_deref(), cart.count), (Some("Ada"), 1));
}

#[tokio::test]
async fn markup_in_a_name_is_escaped() {
    let mut b = Browser::new();
    let page = b
        .post("/signin", "name=%3Cscript%3Ex%3C%2Fscript%3E", "/")
        .await;
    assert!(!page.body.contains("<script>x"), "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;x&lt;/script&gt;"));
}

#[tokio::test]
async fn the_style_sheet_is_served() {
    let mut b = Browser::new();
    let a = b.send("GET", "/shop.css", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("ul.products"));
    assert_eq!(b.session, None);
}
