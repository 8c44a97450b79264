//! The cart and the signed-in user: the typed session data. Pure values (serde), no I/O,
//! so the rules are tested without a server; [`crate::session`] stores them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{self, Money, Product};

/// Most of one product a cart holds.
pub const MAX_QUANTITY: u32 = 99;
/// Longest user name, in characters.
pub const MAX_NAME: usize = 40;

/// Why a cart or sign-in change was refused (shown to the user as is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The product id is not in the catalog.
    #[error("there is no product {0:?}")]
    UnknownProduct(String),
    /// A quantity above [`MAX_QUANTITY`].
    #[error("at most {MAX_QUANTITY} of one product")]
    TooMany,
    /// An empty or unprintable name.
    #[error("a name is 1 to {MAX_NAME} printable characters")]
    BadName,
}

/// Who is signed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The name they signed in with (trimmed, validated).
    pub name: String,
}

impl User {
    /// A user from what they typed: trimmed, 1 to [`MAX_NAME`] characters, no control
    /// characters.
    pub fn new(name: &str) -> Result<User, Refused> {
        let name = name.trim();
        let len = name.chars().count();
        if len == 0 || len > MAX_NAME || name.chars().any(char::is_control) {
            return Err(Refused::BadName);
        }
        Ok(User {
            name: name.to_string(),
        })
    }
}

/// Product id → quantity; every id is in the catalog and every quantity is 1 to
/// [`MAX_QUANTITY`] (the methods keep it so, which also bounds the session's size).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    items: BTreeMap<String, u32>,
}

/// One line of a cart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// The product.
    pub product: &'static Product,
    /// How many.
    pub quantity: u32,
}

impl Line {
    /// `quantity * unit price`.
    pub fn total(&self) -> Money {
        self.product.price.times(self.quantity)
    }
}

fn product(id: &str) -> Result<&'static Product, Refused> {
    catalog::find(id).ok_or_else(|| Refused::UnknownProduct(id.to_string()))
}

impl Cart {
    /// Adds `quantity` of a product (capped at [`MAX_QUANTITY`] in all).
    pub fn add(&mut self, id: &str, quantity: u32) -> Result<(), Refused> {
        let p = product(id)?;
        if quantity > MAX_QUANTITY {
            return Err(Refused::TooMany);
        }
        if quantity == 0 {
            return Ok(());
        }
        let q = self.items.entry(p.id.to_string()).or_default();
        *q = (*q + quantity).min(MAX_QUANTITY);
        Ok(())
    }

    /// Sets a product's quantity; 0 removes it.
    pub fn set(&mut self, id: &str, quantity: u32) -> Result<(), Refused> {
        let p = product(id)?;
        if quantity > MAX_QUANTITY {
            return Err(Refused::TooMany);
        }
        if quantity == 0 {
            self.items.remove(p.id);
            return Ok(());
        }
        self.items.insert(p.id.to_string(), quantity);
        Ok(())
    }

    /// Removes a product (nothing if it is not in the cart).
    pub fn remove(&mut self, id: &str) -> Result<(), Refused> {
        self.set(id, 0)
    }

    /// The lines, in id order. A product no longer in the catalog (a session written
    /// by an older release) is left out.
    pub fn lines(&self) -> Vec<Line> {
        self.items
            .iter()
            .filter_map(|(id, &quantity)| {
                Some(Line {
                    product: catalog::find(id)?,
                    quantity,
                })
            })
            .collect()
    }

    /// Items in all.
    pub fn count(&self) -> u32 {
        self.lines().iter().map(|l| l.quantity).sum()
    }

    /// What the cart costs.
    pub fn total(&self) -> Money {
        self.lines().iter().map(Line::total).sum()
    }

    /// Nothing in it.
    pub fn is_empty(&self) -> bool {
        self.lines().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_accumulates_and_caps() {
        let mut c = Cart::default();
        c.add("tamper", 2).unwrap();
        c.add("tamper", 3).unwrap();
        assert_eq!(c.count(), 5);
        c.add("tamper", MAX_QUANTITY).unwrap();
        assert_eq!(c.count(), MAX_QUANTITY);
        assert_eq!(c.add("tamper", MAX_QUANTITY + 1), Err(Refused::TooMany));
        c.add("moka-pot", 0).unwrap();
        assert_eq!(c.lines().len(), 1, "adding 0 adds no line");
    }

    #[test]
    fn set_and_remove() {
        let mut c = Cart::default();
        c.set("grinder", 2).unwrap();
        c.set("cup-set", 1).unwrap();
        assert_eq!(c.total(), Money(2 * 8900 + 2800));
        c.set("grinder", 0).unwrap();
        assert_eq!(
            c.lines().iter().map(|l| l.product.id).collect::<Vec<_>>(),
            ["cup-set"]
        );
        c.remove("cup-set").unwrap();
        c.remove("cup-set").unwrap();
        assert!(c.is_empty());
    }

    #[test]
    fn unknown_products_are_refused_and_change_nothing() {
        let mut c = Cart::default();
        c.add("tamper", 1).unwrap();
        let before = c.clone();
        assert_eq!(
            c.add("<script>", 1),
            Err(Refused::UnknownProduct("<script>".into()))
        );
        assert!(c.set("nope", 1).is_err());
        assert!(c.remove("nope").is_err());
        assert_eq!(c, before);
    }

    #[test]
    fn stale_products_in_a_stored_cart_are_ignored() {
        let c: Cart = serde_json::from_str(r#"{"items":{"tamper":2,"gone":5}}"#).unwrap();
        assert_eq!(c.count(), 2);
        assert_eq!(c.total(), Money(2 * 1990));
    }

    #[test]
    fn the_cart_round_trips_through_json() {
        let mut c = Cart::default();
        c.add("espresso-beans", 3).unwrap();
        let back: Cart = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(User::new("  Ada ").unwrap().name, "Ada");
        assert_eq!(User::new("   "), Err(Refused::BadName));
        assert_eq!(User::new("a\nb"), Err(Refused::BadName));
        assert_eq!(User::new(&"x".repeat(MAX_NAME + 1)), Err(Refused::BadName));
        assert!(User::new(&"é".repeat(MAX_NAME)).is_ok());
    }
}
