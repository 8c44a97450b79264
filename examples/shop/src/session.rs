//! The shop's typed view of a session: a [`User`] and a [`Cart`] under fixed keys,
//! serialized by tower-sessions into the replicated store, instead of loose strings that
//! every handler would parse on its own.
//!
//! Sign-in cycles the session id (the id a visitor had before signing in, perhaps planted
//! by somebody else, is worthless afterwards: no session fixation) and keeps the cart;
//! sign-out flushes the session (deleted in the store, cookie removed).

use tribe_node::axum::extract::FromRequestParts;
use tribe_node::axum::http::request::Parts;
use tribe_node::tower_sessions::session::Error;
use tribe_node::tower_sessions::Session;

use crate::cart::{Cart, User};

/// Session key of the [`User`].
const USER: &str = "shop.user";
/// Session key of the [`Cart`].
const CART: &str = "shop.cart";

/// The current visitor's session, typed. An extractor: needs the session layer that
/// `tribe_node::Node::serve` puts on the router.
#[derive(Debug, Clone)]
pub struct ShopSession(Session);

impl<S: Send + Sync> FromRequestParts<S> for ShopSession {
    type Rejection = <Session as FromRequestParts<S>>::Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Session::from_request_parts(parts, state)
            .await
            .map(ShopSession)
    }
}

impl ShopSession {
    /// Who is signed in, if anybody.
    pub async fn user(&self) -> Result<Option<User>, Error> {
        self.0.get(USER).await
    }

    /// The cart (empty when there is none yet).
    pub async fn cart(&self) -> Result<Cart, Error> {
        Ok(self.0.get(CART).await?.unwrap_or_default())
    }

    /// Stores the cart; the session layer saves it (and replicates it) before the
    /// response leaves.
    pub async fn set_cart(&self, cart: &Cart) -> Result<(), Error> {
        self.0.insert(CART, cart).await
    }

    /// Signs `user` in under a new session id; the cart stays.
    pub async fn sign_in(&self, user: &User) -> Result<(), Error> {
        self.0.cycle_id().await?;
        self.0.insert(USER, user).await
    }

    /// Signs out: the whole session (user and cart) is deleted and its cookie removed.
    pub async fn sign_out(&self) -> Result<(), Error> {
        self.0.flush().await
    }
}
