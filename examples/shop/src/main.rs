//! `tribe-shop`: the example shop as a Tribe node. The node's settings come from the
//! `TRIBE_*` environment (what the operator sets on every pod), the shop's own from
//! `SHOP_NAME`; then the shop's router is served until SIGTERM, with the node's drain
//! and hand-off.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use tribe_shop::Shop;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_sessions=warn,tower_sessions_core=warn".into()),
        )
        .init();
    let config = match tribe_node::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tribe-shop: {e}");
            return ExitCode::from(2);
        }
    };
    let node = match tribe_node::Node::bind(config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("tribe-shop: {e}");
            return ExitCode::from(1);
        }
    };
    let shop = Shop::from_env(node.node_id());
    tracing::info!(shop = %shop.name, node = %shop.served_by, "serving the shop");
    match node.serve(tribe_shop::router(shop)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tribe-shop: {e}");
            ExitCode::from(1)
        }
    }
}
