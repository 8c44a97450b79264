//! `tribe-operator check URL...`: GETs each URL and succeeds only when every one answers
//! 200 in time. The chart's `helm test` pod runs it, so testing a release needs no image
//! besides the operator's own.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// How long each URL gets, connect included.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per URL (a Service's endpoints may lag the pod's readiness briefly).
pub const ATTEMPTS: u32 = 5;

/// GET `url` (plain `http://`), with retries; `Err` says what was wrong.
pub async fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// URLs are checked"));
    }
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CHECK_TIMEOUT));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let fetch = async {
            let resp = client
                .get(uri.clone())
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|e| format!("{url}: body: {e}"))?
                .to_bytes();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!(
                    "{url}: status {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ))
            }
        };
        match tokio::time::timeout(CHECK_TIMEOUT, fetch).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("{url}: no answer within {CHECK_TIMEOUT:?}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve(reply: &'static str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        format!("http://{addr}/readyz")
    }

    #[tokio::test]
    async fn ok_and_refusals() {
        let ok =
            serve("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n").await;
        check_url(&ok).await.unwrap();
        assert!(check_url("https://x/")
            .await
            .unwrap_err()
            .contains("only http"));
        assert!(check_url("::bad").await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_503_fails_after_the_retries() {
        let bad = serve("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\nconnection: close\r\n\r\nnot ready\n").await;
        let e = check_url(&bad).await.unwrap_err();
        assert!(e.contains("503"), "{e}");
    }
}
