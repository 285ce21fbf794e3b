//! The benches' HTTP: their client — keep-alive HTTP/1.1 connections that write each request
//! in one call and read its answer in the same task, so a client's own cost stays small beside
//! the server's on the same cores (a connection carries one request at a time; a pool keeps
//! the idle ones of one server) — and the loopback servers their participants answer on.
//!
//! The client is written for the benches, not on hyper's: hyper's client connection runs in a
//! task of its own, which every request wakes and which wakes the caller back, and that cost
//! half the client's CPU on these cores. Answers are parsed by `httparse` (hyper's own parser);
//! a body comes with a `Content-Length` or chunked, and may be at most `MAX_ANSWER_BYTES`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long any answer may take (a saga waited for included).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);
/// The largest answer (head and body) a bench reads; a larger one fails the request.
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// The most header lines an answer may have.
const MAX_ANSWER_HEADERS: usize = 64;

/// One keep-alive connection to a server.
pub struct Conn {
    stream: tokio::net::TcpStream,
    /// Bytes read and not yet consumed (an answer's head arrives in pieces).
    read: BytesMut,
    /// The request being written (its buffer reused).
    write: Vec<u8>,
    /// The server said it closes the connection after this answer.
    closing: bool,
    /// How long an answer may take, from the request sent to its last byte.
    answer_within: Duration,
    /// The server's `host:port`, as the `Host` header names it.
    host: Arc<str>,
}

/// What an answer's head says about its body.
enum Framing {
    Length(usize),
    Chunked,
    /// To the end of the connection (no length, no chunks).
    UntilClose,
}

impl Conn {
    async fn open(addr: SocketAddr, host: Arc<str>, answer_within: Duration) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, read: BytesMut::with_capacity(8 << 10), write: Vec::with_capacity(2 << 10), closing: false, answer_within, host })
    }

    /// Whether the connection can carry another request: the server has not closed it (nor
    /// said it would), and nothing unasked-for is waiting on it. Asks the socket itself (one
    /// system call), not the runtime's last word on it, which may predate the server's close.
    fn reusable(&self) -> bool {
        use std::os::fd::AsRawFd;
        if self.closing || !self.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        // SAFETY: `probe` is a live buffer of the length given, and the descriptor is this
        // connection's own open socket; MSG_PEEK leaves any byte where it is.
        let n = unsafe { libc::recv(self.stream.as_raw_fd(), probe.as_mut_ptr().cast(), probe.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }

    /// Sends `method path` with `body` (JSON, when given) and `headers`; the answer's status
    /// and body. An error means no answer came (the connection failed, the answer was not
    /// HTTP, or the time ran out); the connection is then not to be used again.
    pub async fn send(&mut self, method: Method, path: &str, body: Option<Bytes>, headers: &[(&str, &str)]) -> anyhow::Result<(StatusCode, Bytes)> {
        self.encode(&method, path, body.as_deref(), headers)?;
        let within = self.answer_within;
        tokio::time::timeout(within, self.exchange(&method)).await.with_context(|| format!("no answer within {} ms", within.as_millis()))?
    }

    /// POSTs `body` (JSON) to `path` with `headers`; the answer's body, unless its status is
    /// not a success.
    pub async fn post(&mut self, path: &str, body: Bytes, headers: &[(&str, &str)]) -> anyhow::Result<Bytes> {
        let (status, body) = self.send(Method::POST, path, Some(body), headers).await?;
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {}", String::from_utf8_lossy(&body));
        Ok(body)
    }

    /// Writes the request into `self.write`, refusing a path or header that would break its
    /// framing (a line break in an API key given on the command line, say).
    fn encode(&mut self, method: &Method, path: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> anyhow::Result<()> {
        let visible = |s: &str| s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        anyhow::ensure!(path.starts_with('/') && visible(path) && !path.contains(' '), "not a request path: {path:?}");
        let w = &mut self.write;
        w.clear();
        write!(w, "{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host)?;
        for (name, value) in headers {
            anyhow::ensure!(http::HeaderName::from_bytes(name.as_bytes()).is_ok() && visible(value), "not a valid header: {name}");
            write!(w, "{name}: {value}\r\n")?;
        }
        match body {
            Some(body) => {
                write!(w, "content-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len())?;
                w.extend_from_slice(body);
            }
            None if matches!(*method, Method::POST | Method::PUT | Method::PATCH) => w.extend_from_slice(b"content-length: 0\r\n\r\n"),
            None => w.extend_from_slice(b"\r\n"),
        }
        Ok(())
    }

    async fn exchange(&mut self, method: &Method) -> anyhow::Result<(StatusCode, Bytes)> {
        self.stream.write_all(&self.write).await.context("sending the request")?;
        let (status, framing) = loop {
            match self.head()? {
                // An interim answer (100 Continue, say) comes before the answer.
                Some((status, _)) if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS => {}
                Some(head) => break head,
                None => anyhow::ensure!(self.fill().await?, "the server closed the connection without answering"),
            }
        };
        let no_body = *method == Method::HEAD || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let body = match framing {
            _ if no_body => Bytes::new(),
            Framing::Length(n) => self.take(n).await?,
            Framing::Chunked => self.chunked().await?,
            Framing::UntilClose => {
                self.closing = true;
                while self.fill().await? {}
                self.read.split().freeze()
            }
        };
        Ok((status, body))
    }

    /// The answer's status and framing once its head is read (and consumed).
    fn head(&mut self) -> anyhow::Result<Option<(StatusCode, Framing)>> {
        let mut lines = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
        let mut answer = httparse::Response::new(&mut lines);
        let httparse::Status::Complete(len) = answer.parse(&self.read).context("the answer is not HTTP/1.1")? else {
            return Ok(None);
        };
        let status = StatusCode::from_u16(answer.code.unwrap_or(0)).context("the answer's status is not valid")?;
        let (mut length, mut coding, mut closing) = (None::<usize>, None::<bool>, answer.version == Some(0));
        for h in answer.headers.iter() {
            let value = std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = value.parse().context("the answer's Content-Length is not a number")?;
                anyhow::ensure!(length.is_none_or(|l| l == n), "the answer has conflicting Content-Lengths");
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // The last coding decides: chunked, or anything else (the body runs to the end).
                coding = Some(value.rsplit(',').next().is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked")));
            } else if h.name.eq_ignore_ascii_case("connection") {
                closing = closing || value.split(',').any(|v| v.trim().eq_ignore_ascii_case("close"));
            }
        }
        // RFC 9112 6.3: a Transfer-Encoding overrides a Content-Length, in whichever order they
        // came; an answer with both is suspect, so its connection is not used again.
        let framing = match (coding, length) {
            (Some(true), _) => Framing::Chunked,
            (None, Some(n)) => Framing::Length(n),
            (Some(false), _) | (None, None) => Framing::UntilClose,
        };
        self.closing = closing || (coding.is_some() && length.is_some());
        self.read.advance(len);
        Ok(Some((status, framing)))
    }

    /// Reads more of the answer; false at the end of the connection.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        anyhow::ensure!(self.read.len() < MAX_ANSWER_BYTES, "the answer is larger than {MAX_ANSWER_BYTES} bytes");
        self.read.reserve(8 << 10);
        let n = self.stream.read_buf(&mut self.read).await.context("reading the answer")?;
        Ok(n > 0)
    }

    /// Reads more of an answer that has not ended: the end of the connection is an error.
    async fn more(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.fill().await?, "the server closed the connection within an answer");
        Ok(())
    }

    /// The next `n` bytes of the answer.
    async fn take(&mut self, n: usize) -> anyhow::Result<Bytes> {
        anyhow::ensure!(n <= MAX_ANSWER_BYTES, "the answer is larger than {MAX_ANSWER_BYTES} bytes");
        while self.read.len() < n {
            self.more().await?;
        }
        Ok(self.read.split_to(n).freeze())
    }

    /// A chunked body, its chunks joined (trailers read and dropped).
    async fn chunked(&mut self) -> anyhow::Result<Bytes> {
        let mut body = BytesMut::new();
        loop {
            let (len, size) = loop {
                match httparse::parse_chunk_size(&self.read) {
                    Ok(httparse::Status::Complete(sized)) => break sized,
                    Ok(httparse::Status::Partial) => self.more().await?,
                    Err(_) => anyhow::bail!("the answer's chunk size is not valid"),
                }
            };
            self.read.advance(len);
            let size = usize::try_from(size)
                .ok()
                .filter(|s| s.checked_add(body.len()).is_some_and(|total| total <= MAX_ANSWER_BYTES))
                .with_context(|| format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"))?;
            if size == 0 {
                // Trailer lines, up to an empty one.
                loop {
                    match self.read.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            self.read.advance(2);
                            return Ok(body.freeze());
                        }
                        Some(line) => self.read.advance(line + 2),
                        None => self.more().await?,
                    }
                }
            }
            body.extend_from_slice(&self.take(size + 2).await?[..size]);
        }
    }
}

/// The open connections to one server not in use: a caller takes one (or opens one) and
/// gives it back when its answer came.
#[derive(Clone)]
pub struct Pool {
    addr: SocketAddr,
    host: Arc<str>,
    idle: Arc<Mutex<Vec<Conn>>>,
    answer_within: Duration,
}

impl Pool {
    /// A pool of connections to `url` (`http://host:port`).
    pub fn new(url: &str) -> anyhow::Result<Pool> {
        let authority = url.strip_prefix("http://").context("the server's URL must be http://host:port")?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(authority.trim_end_matches('/'))?.next().context("the server's address does not resolve")?;
        let host = authority.trim_end_matches('/').into();
        Ok(Pool { addr, host, idle: Default::default(), answer_within: ANSWER_WITHIN })
    }

    /// The same pool, its answers allowed `within` each (instead of `ANSWER_WITHIN`): for
    /// tests, which cannot wait that out.
    #[cfg(test)]
    pub fn answering_within(self, within: Duration) -> Pool {
        Pool { answer_within: within, ..self }
    }

    pub async fn take(&self) -> anyhow::Result<Conn> {
        let idle = self.idle.lock().unwrap().pop();
        match idle {
            Some(conn) if conn.reusable() => Ok(conn),
            _ => Conn::open(self.addr, self.host.clone(), self.answer_within).await,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A server on a free loopback port. Connection k (counted from 0) answers its requests
    /// with `answers[k]` in turn, each written in the pieces given, then is closed; the URL, how
    /// many connections it accepted, and a message as each is closed.
    async fn canned(answers: Vec<Vec<Vec<&'static [u8]>>>) -> (String, Arc<AtomicUsize>, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (counted, (closed_tx, closed)) = (accepted.clone(), tokio::sync::mpsc::unbounded_channel());
        tokio::spawn(async move {
            for connection in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                for answer in connection {
                    read_request(&mut stream).await;
                    for piece in answer {
                        stream.write_all(piece).await.unwrap();
                        stream.flush().await.unwrap();
                        tokio::task::yield_now().await;
                    }
                }
                drop(stream);
                let _ = closed_tx.send(());
            }
        });
        (url, accepted, closed)
    }

    /// Reads one request (its head and its Content-Length body).
    async fn read_request(stream: &mut tokio::net::TcpStream) {
        let mut seen = Vec::new();
        let head = loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut piece = [0u8; 1024];
            let n = stream.read(&mut piece).await.unwrap();
            assert!(n > 0, "the client hung up within a request");
            seen.extend_from_slice(&piece[..n]);
        };
        let text = String::from_utf8_lossy(&seen[..head]).to_ascii_lowercase();
        let length: usize = text.split("content-length: ").nth(1).and_then(|v| v.split("\r\n").next()).map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0u8; (head + length).saturating_sub(seen.len())];
        stream.read_exact(&mut body).await.unwrap();
    }

    #[tokio::test]
    async fn answers_in_pieces_chunked_or_sized_are_read_whole_over_one_connection() {
        let (url, accepted, _) = canned(vec![vec![
            vec![b"HTTP/1.1 200 OK\r\ntransfer-enc", b"oding: chunked\r\n\r\n5\r\nhel", b"lo\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n"],
            vec![b"HTTP/1.1 201 Created\r\ncontent-length: 7\r\n\r\n{\"a\":", b"1}"],
            vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"],
        ]])
        .await;
        let pool = Pool::new(&url).unwrap();
        let (status, body) = pool.send(Method::GET, "/one", None, &[]).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello world"[..]));
        let (status, body) = pool.send(Method::POST, "/two", Some(Bytes::from_static(b"{}")), &[("x-key", "k")]).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"{\"a\":1}"[..]));
        let (status, body) = pool.send(Method::POST, "/three", None, &[]).await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "the three requests shared one connection");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_or_will_close_is_not_used_again() {
        let (url, accepted, mut closed) = canned(vec![
            // Closed after its answer, without a word.
            vec![vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"]],
            // Says it closes (and then does).
            vec![vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\nb"]],
            // An answer without a length ends with its connection.
            vec![vec![b"HTTP/1.1 200 OK\r\n\r\nto the end"]],
            vec![vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nd"]],
        ])
        .await;
        let pool = Pool::new(&url).unwrap();
        let mut bodies = Vec::new();
        for _ in 0..4 {
            let (_, body) = pool.send(Method::GET, "/", None, &[]).await.unwrap();
            bodies.push(String::from_utf8(body.to_vec()).unwrap());
            // The server has closed that connection before the next request is sent.
            closed.recv().await.unwrap();
        }
        assert_eq!(bodies, ["a", "b", "to the end", "d"]);
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_transfer_encoding_overrides_a_content_length_and_ends_the_connections_use() {
        let both: [&'static [u8]; 2] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ];
        for answer in both {
            let (url, _, _) = canned(vec![vec![vec![answer]]]).await;
            let pool = Pool::new(&url).unwrap();
            let mut conn = pool.take().await.unwrap();
            let (status, body) = conn.send(Method::GET, "/", None, &[]).await.unwrap();
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]), "{}", String::from_utf8_lossy(answer));
            assert!(conn.closing, "an answer framed two ways is not followed by another on its connection");
        }
    }

    #[tokio::test]
    async fn a_server_that_never_answers_or_stalls_within_an_answer_fails_the_request_in_time() {
        // One connection is read and never answered; the other gets half an answer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            for half in [&b""[..], b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"] {
                let (mut stream, _) = listener.accept().await.unwrap();
                read_request(&mut stream).await;
                stream.write_all(half).await.unwrap();
                held.push(stream);
            }
            std::future::pending::<()>().await;
        });
        let pool = Pool::new(&url).unwrap().answering_within(Duration::from_millis(200));
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let err = pool.send(Method::GET, "/", None, &[]).await.unwrap_err();
            assert!(format!("{err:#}").contains("no answer within 200 ms"), "{err:#}");
            assert!(started.elapsed() < Duration::from_secs(5), "it waited {:?}", started.elapsed());
        }
    }

    #[tokio::test]
    async fn garbage_oversized_or_cut_answers_fail_their_request() {
        let cases: [(&[u8], &str); 7] = [
            (b"SMTP ready\r\n\r\n", "not HTTP"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n", "larger than"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", "closed the connection within an answer"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\n", "larger than"),
            (b"", "without answering"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab", "conflicting Content-Lengths"),
        ];
        for (answer, expected) in cases {
            let (url, _, _) = canned(vec![vec![vec![answer]]]).await;
            let err = Pool::new(&url).unwrap().send(Method::GET, "/", None, &[]).await.unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{}: {err:#}", String::from_utf8_lossy(answer));
        }
    }

    #[tokio::test]
    async fn a_header_or_path_that_would_break_the_request_is_refused_before_sending() {
        // A server that records how many bytes each connection sent before hanging up.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let received = tokio::spawn(async move {
            let mut sizes = Vec::new();
            for _ in 0..3 {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut all = Vec::new();
                stream.read_to_end(&mut all).await.unwrap();
                sizes.push(all.len());
            }
            sizes
        });
        for (path, header) in [("/", ("authorization", "Bearer k\r\nx-admin: 1")), ("/a b", ("x", "y")), ("/", ("bad name", "v"))] {
            let err = pool.send(Method::GET, path, None, &[header]).await.unwrap_err();
            assert!(err.to_string().contains("not a"), "{path} {header:?}: {err}");
        }
        assert_eq!(received.await.unwrap(), [0, 0, 0], "nothing was sent");
    }
}
