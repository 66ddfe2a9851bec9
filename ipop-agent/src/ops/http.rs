//! The agent's HTTP endpoint (`metrics_listen`): `GET /metrics` in the Prometheus text format.
//! Off unless configured. hyper serves each connection in a task of its own; a scrape asks
//! the agent's loop for its status, as the control socket does (`control::ask`).

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

/// The serving task; it stops when dropped.
pub struct HttpServer {
    task: JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpServer {
    /// Listens on `listen` (an error if it cannot) and answers with what `queries` answers.
    pub async fn start(listen: std::net::SocketAddr, queries: mpsc::Sender<Query>) -> Result<HttpServer> {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("metrics_listen {listen}"))?;
        info!(%listen, "serving metrics on /metrics");
        Ok(HttpServer { task: tokio::spawn(accept(listener, queries)) })
    }
}

async fn accept(listener: TcpListener, queries: mpsc::Sender<Query>) {
    while let Ok((stream, peer)) = listener.accept().await {
        let queries = queries.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, queries.clone()));
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(%peer, "HTTP connection: {e}");
            }
        });
    }
}

async fn respond(req: Request<Incoming>, queries: mpsc::Sender<Query>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, kind: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, kind.parse().expect("a header value"));
        Ok(r)
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => match ask(&queries, "status".into()).await {
            Some(status) => reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics::render(status)),
            None => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the agent is stopping\n".into()),
        },
        (_, "/metrics") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not here: try /metrics\n".into()),
    }
}
