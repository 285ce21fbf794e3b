//! The benches' HTTP: their client — keep-alive HTTP/1.1 connections, the leanest client hyper
//! offers, so a client's own cost stays small beside the server's on the same cores (a
//! connection carries one request at a time; a pool keeps the idle ones of one server) — and
//! the loopback servers their participants answer on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};

/// How long any answer may take (a saga waited for included).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// One keep-alive connection to a server.
pub struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (send, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { send })
    }

    /// Sends `method path` with `body` (JSON, when given) and `headers`; the answer's status
    /// and body. An error means no answer came (the connection failed or the time ran out).
    pub async fn send(&mut self, method: Method, path: &str, body: Option<Bytes>, headers: &[(&str, &str)]) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut request = Request::builder().method(method).uri(path).header(hyper::header::HOST, "wasmtx");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        self.send.ready().await?;
        let answer = tokio::time::timeout(ANSWER_WITHIN, self.send.send_request(request)).await.context("no answer within 120 s")??;
        let status = answer.status();
        let body = answer.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// POSTs `body` (JSON) to `path` with `headers`; the answer's body, unless its status is
    /// not a success.
    pub async fn post(&mut self, path: &str, body: Bytes, headers: &[(&str, &str)]) -> anyhow::Result<Bytes> {
        let (status, body) = self.send(Method::POST, path, Some(body), headers).await?;
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {}", String::from_utf8_lossy(&body));
        Ok(body)
    }
}

/// The open connections to one server not in use: a caller takes one (or opens one) and
/// gives it back when its answer came.
#[derive(Clone)]
pub struct Pool {
    addr: SocketAddr,
    idle: Arc<Mutex<Vec<Conn>>>,
}

impl Pool {
    /// A pool of connections to `url` (`http://host:port`).
    pub fn new(url: &str) -> anyhow::Result<Pool> {
        let authority = url.strip_prefix("http://").context("the server's URL must be http://host:port")?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(authority.trim_end_matches('/'))?.next().context("the server's address does not resolve")?;
        Ok(Pool { addr, idle: Default::default() })
    }

    pub async fn take(&self) -> anyhow::Result<Conn> {
        let idle = self.idle.lock().unwrap().pop();
        match idle {
            Some(conn) if !conn.send.is_closed() => Ok(conn),
            _ => Conn::open(self.addr).await,
        }
    }

    pub fn give_back(&self, conn: Conn) {
        self.idle.lock().unwrap().push(conn);
    }

    /// Sends one request over a pooled connection (see `Conn::send`); the connection goes
    /// back to the pool only if an answer came over it.
    pub async fn send(&self, method: Method, path: &str, body: Option<Bytes>, headers: &[(&str, &str)]) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut conn = self.take().await?;
        let answer = conn.send(method, path, body, headers).await?;
        self.give_back(conn);
        Ok(answer)
    }
}

/// Serves `app` on a free loopback port in the background; its `http://` URL.
pub async fn serve_on_loopback(app: axum::Router) -> anyhow::Result<String> {
    let listener = super::serve::listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}
