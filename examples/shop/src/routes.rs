//! The handlers. Pages are `GET`; every change is a form `POST` answered with
//! `303 See Other` to a page (redirect-after-POST), so a reload or the back button never
//! submits twice. `/api/cart` is the same cart as JSON, for scripts and tests.
//!
//! Nothing here keeps state between requests: the visitor's data lives in the session
//! (replicated by Tribe), so any node can answer any request.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tribe_node::axum::extract::rejection::FormRejection;
use tribe_node::axum::extract::State;
use tribe_node::axum::http::{header, StatusCode};
use tribe_node::axum::response::{Html, IntoResponse, Redirect, Response};
use tribe_node::axum::routing::{get, post};
use tribe_node::axum::{Form, Json, Router};

use crate::cart::{Cart, Line, Refused, User};
use crate::pages::{self, Frame};
use crate::session::ShopSession;
use crate::Shop;

/// The shop's routes, without the session layer (Tribe's node adds it; tests add a
/// `MemoryStore` one).
pub fn router(shop: Shop) -> Router {
    Router::new()
        .route("/", get(products))
        .route("/cart", get(cart_page))
        .route("/cart/add", post(add))
        .route("/cart/update", post(update))
        .route("/cart/remove", post(remove))
        .route("/signin", post(sign_in))
        .route("/signout", post(sign_out))
        .route("/api/cart", get(api_cart))
        .route("/shop.css", get(css))
        .with_state(Arc::new(shop))
}

type AppState = State<Arc<Shop>>;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// The session store failed (e.g. the cluster refused a write): worth a retry.
    #[error("the session store is unavailable: {0}")]
    Session(#[from] tribe_node::tower_sessions::session::Error),
    /// A change the shop refuses.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// A form that does not parse (axum's status and message).
    #[error("{1}")]
    Form(StatusCode, String),
}

impl From<FormRejection> for ShopError {
    fn from(r: FormRejection) -> Self {
        ShopError::Form(r.status(), r.body_text())
    }
}

/// A [`ShopError`] with the frame to render it in.
pub struct ErrorPage(Arc<Shop>, ShopError);

impl IntoResponse for ErrorPage {
    fn into_response(self) -> Response {
        let ErrorPage(shop, e) = self;
        let frame = Frame {
            shop: &shop,
            user: None,
            cart_count: 0,
        };
        let page = Html(pages::error(&frame, &e.to_string()).into_string());
        match e {
            ShopError::Session(_) => {
                tracing::warn!(error = %e, "session store failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    page,
                )
                    .into_response()
            }
            ShopError::Refused(_) => (StatusCode::BAD_REQUEST, page).into_response(),
            ShopError::Form(status, _) => (status, page).into_response(),
        }
    }
}

type Result<T, E = ErrorPage> = std::result::Result<T, E>;

/// Attaches the shop to an error, for `?`.
fn fail<E: Into<ShopError>>(shop: &Arc<Shop>) -> impl FnOnce(E) -> ErrorPage + '_ {
    move |e| ErrorPage(shop.clone(), e.into())
}

/// Renders a page inside the frame of this visitor.
async fn render(
    shop: &Arc<Shop>,
    session: &ShopSession,
    content: impl FnOnce(&Frame, &Cart) -> maud::Markup,
) -> Result<Html<String>> {
    let user = session.user().await.map_err(fail(shop))?;
    let cart = session.cart().await.map_err(fail(shop))?;
    let frame = Frame {
        shop,
        user: user.as_ref(),
        cart_count: cart.count(),
    };
    Ok(Html(content(&frame, &cart).into_string()))
}

async fn products(State(shop): AppState, session: ShopSession) -> Result<Html<String>> {
    render(&shop, &session, |f, _| pages::products(f)).await
}

async fn cart_page(State(shop): AppState, session: ShopSession) -> Result<Html<String>> {
    render(&shop, &session, pages::cart).await
}

/// The form of the cart's changes.
#[derive(Debug, Deserialize)]
pub struct Item {
    /// Product id.
    product: String,
    /// How many (add: how many more; update: the new quantity).
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

/// Reads the cart, applies `change`, stores it: `303` to the cart page.
async fn change_cart(
    shop: &Arc<Shop>,
    session: &ShopSession,
    form: Result<Form<Item>, FormRejection>,
    change: impl FnOnce(&mut Cart, &Item) -> Result<(), Refused>,
) -> Result<Redirect> {
    let Form(item) = form.map_err(fail(shop))?;
    let mut cart = session.cart().await.map_err(fail(shop))?;
    change(&mut cart, &item).map_err(fail(shop))?;
    session.set_cart(&cart).await.map_err(fail(shop))?;
    Ok(Redirect::to("/cart"))
}

async fn add(
    State(shop): AppState,
    session: ShopSession,
    form: Result<Form<Item>, FormRejection>,
) -> Result<Redirect> {
    change_cart(&shop, &session, form, |c, i| c.add(&i.product, i.quantity)).await
}

async fn update(
    State(shop): AppState,
    session: ShopSession,
    form: Result<Form<Item>, FormRejection>,
) -> Result<Redirect> {
    change_cart(&shop, &session, form, |c, i| c.set(&i.product, i.quantity)).await
}

async fn remove(
    State(shop): AppState,
    session: ShopSession,
    form: Result<Form<Item>, FormRejection>,
) -> Result<Redirect> {
    change_cart(&shop, &session, form, |c, i| c.remove(&i.product)).await
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct SignIn {
    /// Any name: the example has no passwords.
    name: String,
}

async fn sign_in(
    State(shop): AppState,
    session: ShopSession,
    form: Result<Form<SignIn>, FormRejection>,
) -> Result<Redirect> {
    let Form(form) = form.map_err(fail(&shop))?;
    let user = User::new(&form.name).map_err(fail(&shop))?;
    session.sign_in(&user).await.map_err(fail(&shop))?;
    Ok(Redirect::to("/"))
}

async fn sign_out(State(shop): AppState, session: ShopSession) -> Result<Redirect> {
    session.sign_out().await.map_err(fail(&shop))?;
    Ok(Redirect::to("/"))
}

/// `GET /api/cart`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CartView {
    /// The shop's name (`SHOP_NAME`).
    pub shop: String,
    /// The node that answered.
    pub served_by: String,
    /// Who is signed in.
    pub user: Option<String>,
    /// The cart's lines.
    pub items: Vec<CartLine>,
    /// Items in all.
    pub count: u32,
    /// What the cart costs, in cents.
    pub total_cents: u64,
}

/// One line of [`CartView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    /// Product id.
    pub id: String,
    /// Product name.
    pub name: String,
    /// How many.
    pub quantity: u32,
    /// Unit price, cents.
    pub unit_cents: u64,
    /// `quantity * unit`, cents.
    pub total_cents: u64,
}

impl From<Line> for CartLine {
    fn from(l: Line) -> Self {
        CartLine {
            id: l.product.id.into(),
            name: l.product.name.into(),
            quantity: l.quantity,
            unit_cents: l.product.price.0,
            total_cents: l.total().0,
        }
    }
}

async fn api_cart(State(shop): AppState, session: ShopSession) -> Result<Json<CartView>> {
    let user = session.user().await.map_err(fail(&shop))?;
    let cart = session.cart().await.map_err(fail(&shop))?;
    Ok(Json(CartView {
        shop: shop.name.clone(),
        served_by: shop.served_by.clone(),
        user: user.map(|u| u.name),
        items: cart.lines().into_iter().map(CartLine::from).collect(),
        count: cart.count(),
        total_cents: cart.total().0,
    }))
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        pages::CSS,
    )
}
