//! The products on sale. A fixed list compiled into the binary: the example is about
//! sessions, not about a product database, and every node must offer the same catalog.

use std::fmt;

/// One product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Product {
    /// Stable id, used in forms, the cart and `/api/cart`.
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// One line for the product list.
    pub description: &'static str,
    /// Unit price.
    pub price: Money,
}

/// An amount in cents (no floating point for money).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Money(pub u64);

impl Money {
    /// `self * n`, saturating (a cart's quantities are bounded, so it never saturates).
    pub fn times(self, n: u32) -> Money {
        Money(self.0.saturating_mul(u64::from(n)))
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        Money(iter.map(|m| m.0).fold(0, u64::saturating_add))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "€{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// Everything on sale, in display order.
pub const PRODUCTS: &[Product] = &[
    Product {
        id: "espresso-beans",
        name: "Espresso beans",
        description: "1 kg, dark roast, from a small roaster.",
        price: Money(2450),
    },
    Product {
        id: "moka-pot",
        name: "Moka pot",
        description: "Six cups, aluminium, the classic.",
        price: Money(3200),
    },
    Product {
        id: "grinder",
        name: "Hand grinder",
        description: "Steel burrs, 40 settings.",
        price: Money(8900),
    },
    Product {
        id: "cup-set",
        name: "Cup set",
        description: "Four stoneware espresso cups.",
        price: Money(2800),
    },
    Product {
        id: "tamper",
        name: "Tamper",
        description: "58 mm, walnut handle.",
        price: Money(1990),
    },
];

/// The product with this id.
pub fn find(id: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_found() {
        for p in PRODUCTS {
            assert_eq!(find(p.id), Some(p));
        }
        let mut ids: Vec<_> = PRODUCTS.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), PRODUCTS.len());
        assert_eq!(find("nope"), None);
    }

    #[test]
    fn money_formats_cents() {
        assert_eq!(Money(2450).to_string(), "€24.50");
        assert_eq!(Money(5).to_string(), "€0.05");
        assert_eq!(Money(1990).times(3), Money(5970));
        assert_eq!([Money(1), Money(2)].into_iter().sum::<Money>(), Money(3));
    }
}
