//! The agent's HTTP endpoints, each off unless configured: `GET /metrics` in the Prometheus
//! text format (`metrics_listen`), and the topology page (`web_listen`): `GET /`, the page
//! (embedded in the binary, no CDN), which polls `GET /topology.json`. hyper serves each
//! connection in a task of its own; a request asks the agent's loop, as the control socket
//! does (`control::ask`).

use std::convert::Infallible;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tracing::{debug, info};

use crate::ops::{
    control::{Query, ask},
    metrics,
};

/// The topology page: one file, its script and style inline.
const PAGE: &str = include_str!("web/index.html");

/// What one address serves.
#[derive(Debug, Clone, Copy)]
pub struct Routes {
    pub metrics: bool,
    pub web: bool,
}

/// The serving task; it stops when dropped.
pub struct HttpServer {
    pub listen: std::net::SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpServer {
    /// Listens on `listen` (an error if it cannot) and answers `routes` with what `queries`
    /// answers.
    pub async fn start(
        listen: std::net::SocketAddr,
        routes: Routes,
        queries: mpsc::Sender<Query>,
    ) -> Result<HttpServer> {
        let key = if routes.metrics { "metrics_listen" } else { "web_listen" };
        let listener = TcpListener::bind(listen).await.with_context(|| format!("{key} {listen}"))?;
        if routes.metrics {
            info!(%listen, "serving metrics on /metrics");
        }
        if routes.web {
            info!(%listen, "serving the topology page on /");
        }
        Ok(HttpServer { listen, task: tokio::spawn(accept(listener, routes, queries)) })
    }
}

async fn accept(listener: TcpListener, routes: Routes, queries: mpsc::Sender<Query>) {
    while let Ok((stream, peer)) = listener.accept().await {
        let queries = queries.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, routes, queries.clone()));
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(%peer, "HTTP connection: {e}");
            }
        });
    }
}

type Reply = Result<Response<Full<Bytes>>, Infallible>;

fn reply(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, kind.parse().expect("a header value"));
    // The page loads nothing from elsewhere, and nothing else may frame it.
    headers.insert(hyper::header::CONTENT_SECURITY_POLICY, CSP.parse().expect("a header value"));
    Ok(r)
}

const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'";

/// Whether a Host header names an address (or localhost), not a name. The page is read from
/// a browser, where a page from elsewhere could rebind its own name to this address (DNS
/// rebinding) and read the answers; naming the address defeats that. (Prometheus scrapes
/// by any name: /metrics takes every Host.)
fn host_is_address(host: Option<&str>) -> bool {
    let Some(host) = host else { return true };
    let name = match host.strip_prefix('[') {
        Some(v6) => return v6.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost" || name.parse::<std::net::Ipv4Addr>().is_ok()
}

async fn respond(req: Request<Incoming>, routes: Routes, queries: mpsc::Sender<Query>) -> Reply {
    let (get, path) = (req.method() == Method::GET, req.uri().path());
    let host = req.headers().get(hyper::header::HOST).map(|h| h.to_str().unwrap_or("?"));
    if path != "/metrics" && !host_is_address(host) {
        return reply(StatusCode::MISDIRECTED_REQUEST, "text/plain", "ask by address (http://127.0.0.1:8080/)\n");
    }
    let asked = match path {
        "/metrics" if routes.metrics => "status",
        "/topology.json" if routes.web => "topology",
        "/" if routes.web && get => return reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        _ => {
            let here = match (routes.metrics, routes.web) {
                (true, true) => "try /metrics or /",
                (true, false) => "try /metrics",
                _ => "try /",
            };
            return reply(StatusCode::NOT_FOUND, "text/plain", format!("not here: {here}\n"));
        }
    };
    if !get {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match ask(&queries, asked.into()).await {
        Some(doc) if asked == "status" => {
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics::render(doc))
        }
        Some(doc) => reply(StatusCode::OK, "application/json", doc.to_string()),
        None => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the agent is stopping\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_answers_to_addresses_not_names() {
        for ok in [None, Some("127.0.0.1:8080"), Some("10.0.3.1"), Some("localhost:8080"), Some("[::1]:8080")] {
            assert!(host_is_address(ok), "{ok:?}");
        }
        for bad in [Some("evil.example:8080"), Some("evil.example"), Some("[evil]:80"), Some("?")] {
            assert!(!host_is_address(bad), "{bad:?}");
        }
    }
}
