//! HTTP: the demo application and the admin endpoints.

pub mod admin;
pub mod app;
pub(crate) mod layers;
pub mod process;
pub mod sessions;
