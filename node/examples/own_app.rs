//! Your own axum app on a Tribe node: a shopping list kept in a replicated session.
//!
//! ```sh
//! TRIBE_INSECURE=true TRIBE_HTTP_ADDR=127.0.0.1:8080 cargo run -p tribe-node --example own_app
//! curl -c jar -b jar -X POST localhost:8080/items/milk; curl -b jar localhost:8080/items
//! ```
//! Settings come from the `TRIBE_*` variables, exactly as the operator sets them.
use tribe_node::axum::{
    extract::Path,
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use tribe_node::tower_sessions::Session;
use tribe_node::{Config, Node};

const ITEMS: &str = "items";

async fn list(session: Session) -> Result<Json<Vec<String>>, StatusCode> {
    let items = session
        .get(ITEMS)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(Json(items.unwrap_or_default()))
}

async fn add(session: Session, Path(item): Path<String>) -> Result<Json<Vec<String>>, StatusCode> {
    let unavailable = |_| StatusCode::SERVICE_UNAVAILABLE;
    let mut items: Vec<String> = session
        .get(ITEMS)
        .await
        .map_err(unavailable)?
        .unwrap_or_default();
    items.push(item);
    session.insert(ITEMS, &items).await.map_err(unavailable)?;
    Ok(Json(items))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node = Node::bind(Config::from_env()?).await?;
    println!(
        "serving on http://{} as node {}",
        node.http_addr(),
        node.node_id()
    );
    let app = Router::new()
        .route("/items", get(list))
        .route("/items/{item}", post(add));
    node.serve(app).await?;
    Ok(())
}
