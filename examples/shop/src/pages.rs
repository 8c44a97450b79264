//! The HTML pages, rendered on the server with maud (which escapes every interpolated
//! value, so a user's name cannot inject markup). Every change is a `<form method=post>`
//! answered by a redirect (see [`crate::routes`]), so reloading a page never repeats it.

use maud::{html, Markup, DOCTYPE};

use crate::cart::{Cart, User, MAX_NAME, MAX_QUANTITY};
use crate::catalog::PRODUCTS;
use crate::Shop;

/// What every page shows around its content.
pub struct Frame<'a> {
    /// The shop's configuration.
    pub shop: &'a Shop,
    /// Who is signed in.
    pub user: Option<&'a User>,
    /// Items in the cart (for the header).
    pub cart_count: u32,
}

impl Frame<'_> {
    fn page(&self, title: &str, content: Markup) -> Markup {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · " (self.shop.name) }
                    link rel="stylesheet" href="/shop.css";
                }
                body {
                    header {
                        a.brand href="/" { (self.shop.name) }
                        nav {
                            a href="/" { "Products" }
                            a href="/cart" { "Cart (" span #cart-count { (self.cart_count) } ")" }
                        }
                        (self.account())
                    }
                    main { (content) }
                    footer { "Served by " span #served-by { (self.shop.served_by) } }
                }
            }
        }
    }

    fn account(&self) -> Markup {
        match self.user {
            Some(u) => html! {
                form.account method="post" action="/signout" {
                    "Signed in as " strong #user { (u.name) } " "
                    button type="submit" { "Sign out" }
                }
            },
            None => html! {
                form.account method="post" action="/signin" {
                    label for="name" { "Name" }
                    input #name type="text" name="name" required maxlength=(MAX_NAME)
                        autocomplete="username" placeholder="Your name";
                    button type="submit" { "Sign in" }
                }
            },
        }
    }
}

/// `GET /`: the products, each with an "add to cart" form.
pub fn products(frame: &Frame) -> Markup {
    frame.page(
        "Products",
        html! {
            h1 { "Products" }
            ul.products {
                @for p in PRODUCTS {
                    li.product {
                        h2 { (p.name) }
                        p { (p.description) }
                        p.price { (p.price) }
                        form method="post" action="/cart/add" {
                            input type="hidden" name="product" value=(p.id);
                            input type="number" name="quantity" value="1" min="1"
                                max=(MAX_QUANTITY) aria-label="Quantity";
                            button type="submit" { "Add to cart" }
                        }
                    }
                }
            }
        },
    )
}

/// `GET /cart`: the lines with quantity and remove forms, and the total.
pub fn cart(frame: &Frame, cart: &Cart) -> Markup {
    let lines = cart.lines();
    frame.page(
        "Cart",
        html! {
            h1 { "Your cart" }
            @if lines.is_empty() {
                p.empty { "Your cart is empty. " a href="/" { "Browse the products" } "." }
            } @else {
                table.cart {
                    thead { tr { th { "Product" } th { "Price" } th { "Quantity" } th { "Total" } th {} } }
                    tbody {
                        @for l in &lines {
                            tr {
                                td { (l.product.name) }
                                td { (l.product.price) }
                                td {
                                    form.inline method="post" action="/cart/update" {
                                        input type="hidden" name="product" value=(l.product.id);
                                        input type="number" name="quantity" value=(l.quantity)
                                            min="0" max=(MAX_QUANTITY) aria-label="Quantity";
                                        button type="submit" { "Update" }
                                    }
                                }
                                td { (l.total()) }
                                td {
                                    form.inline method="post" action="/cart/remove" {
                                        input type="hidden" name="product" value=(l.product.id);
                                        button.secondary type="submit" { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                    tfoot { tr { th colspan="3" { "Total" } th #total { (cart.total()) } th {} } }
                }
                @if frame.user.is_none() {
                    p.hint { "Sign in above to keep your cart when you come back." }
                }
            }
        },
    )
}

/// A refused change or a malformed form: what went wrong, and the way back.
pub fn error(frame: &Frame, message: &str) -> Markup {
    frame.page(
        "Sorry",
        html! {
            h1 { "Sorry" }
            p.error { (message) }
            p { a href="/" { "Back to the products" } }
        },
    )
}

/// The style sheet (`GET /shop.css`).
pub const CSS: &str = include_str!("../static/shop.css");
