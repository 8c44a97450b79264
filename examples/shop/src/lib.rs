//! An example shop on Tribe: sign in with a name, put products in a cart, sign out.
//!
//! It is written the way any axum app on Tribe is: an ordinary [`Router`](tribe_node::axum::Router) whose
//! handlers keep everything about the visitor in the tower-sessions [`Session`]
//! (typed: [`cart::User`] and [`cart::Cart`], see [`session`]), and nothing in the
//! process between requests. `main.rs` hands the router to `tribe_node::Node::serve`,
//! which puts the replicated session store, read-your-writes and the node's admin and
//! replication listeners around it; any node can then answer any request, through
//! scaling, pod loss and rolling updates.
//!
//! - [`catalog`] — the products.
//! - [`cart`] — the cart and the user: pure values and their rules.
//! - [`session`] — the typed session (sign-in cycles the id, sign-out flushes).
//! - [`pages`] — the HTML pages.
//! - [`routes`] — the handlers and the router.
//!
//! [`Session`]: tribe_node::tower_sessions::Session
#![forbid(unsafe_code)]

pub mod cart;
pub mod catalog;
pub mod pages;
pub mod routes;
pub mod session;

pub use routes::router;

/// The shop's own settings: its name from the environment (in Kubernetes: the
/// SessionCluster's `spec.template.env` / `envFrom`, e.g. a ConfigMap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shop {
    /// Shown in the header and the title: `SHOP_NAME`.
    pub name: String,
    /// The node answering (its id: the pod name under the operator), shown in the
    /// footer and `/api/cart`.
    pub served_by: String,
}

/// The name when `SHOP_NAME` is unset or blank.
pub const DEFAULT_NAME: &str = "Tribe Coffee";

impl Shop {
    /// The shop on node `served_by`, named `name` (blank or unset: [`DEFAULT_NAME`]).
    pub fn new(name: Option<String>, served_by: &str) -> Shop {
        Shop {
            name: name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_NAME.into()),
            served_by: served_by.to_string(),
        }
    }

    /// The shop on node `served_by`, named by `SHOP_NAME`.
    pub fn from_env(served_by: &str) -> Shop {
        Shop::new(std::env::var("SHOP_NAME").ok(), served_by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_defaults_when_unset_or_blank() {
        assert_eq!(
            Shop::new(Some("Beans & Co".into()), "n1").name,
            "Beans & Co"
        );
        assert_eq!(Shop::new(Some("  ".into()), "n1").name, DEFAULT_NAME);
        assert_eq!(Shop::new(None, "n1").served_by, "n1");
    }
}
