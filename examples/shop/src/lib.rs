//! An example shop on Tribe: sign in with a name, put products in a cart, sign out.
//!
//! It is written the way any axum app on Tribe is: an ordinary [`axum::Router`] whose
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
//! [`Session`]: tower_sessions::Session
#![forbid(unsafe_code)]

pub mod cart;
pub mod catalog;
pub mod pages;
pub mod routes;
pub mod session;

pub use routes::router;

/// The shop's own settings, from the environment (in Kubernetes: the SessionCluster's
/// `spec.template.env` / `envFrom`, e.g. a ConfigMap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shop {
    /// Shown in the header and the title: `SHOP_NAME`.
    pub name: String,
    /// The node answering, shown in the footer and `/api/cart`: `TRIBE_NODE_ID` (the pod
    /// name under the operator), else `HOSTNAME`.
    pub served_by: String,
}

/// The name when `SHOP_NAME` is unset.
pub const DEFAULT_NAME: &str = "Tribe Coffee";

impl Shop {
    /// The settings from these variables (see the fields).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Shop {
        let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        Shop {
            name: set("SHOP_NAME").unwrap_or_else(|| DEFAULT_NAME.into()),
            served_by: set("TRIBE_NODE_ID")
                .or_else(|| set("HOSTNAME"))
                .unwrap_or_else(|| "this node".into()),
        }
    }

    /// The settings from the process environment.
    pub fn from_env() -> Shop {
        Shop::from_vars(|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_variables() {
        let shop = Shop::from_vars(|k| match k {
            "SHOP_NAME" => Some("Beans & Co".into()),
            "TRIBE_NODE_ID" => Some("shop-7d9f-abcde".into()),
            "HOSTNAME" => Some("ignored".into()),
            _ => None,
        });
        assert_eq!(shop.name, "Beans & Co");
        assert_eq!(shop.served_by, "shop-7d9f-abcde");
        let shop = Shop::from_vars(|k| (k == "SHOP_NAME").then(|| " ".into()));
        assert_eq!(shop.name, DEFAULT_NAME, "blank is unset");
    }
}
