//! The outbound policy: every HTTP request the coordinator makes on a tenant's behalf (an HTTP
//! participant's phase) and every request a tenant's plugin makes over wasi:http leaves
//! through [`Outbound`], under one set of rules:
//!
//! - the host (and port) must be on the tenant's allowlist, where the tenant has one
//!   ([`HostRule`]: `host`, `host:port`, `*.domain`, `*.domain:port`);
//! - the addresses it resolves to must be public: loopback, private, link-local,
//!   unique-local, carrier-grade NAT, multicast, broadcast, unspecified, documentation and
//!   other special-purpose ranges (IPv4 and IPv6, IPv4-mapped, -compatible, 6to4 and NAT64
//!   forms included) are refused unless the operator allows them ([`Reach`]). The check runs
//!   on the resolved addresses at connect time, inside the HTTP client's resolver, so a name
//!   that resolves to 127.0.0.1 is refused however often it is re-resolved; an IP literal is
//!   checked before the request is sent;
//! - redirects are never followed (a 3xx is the answer);
//! - answers are read up to a cap and refused beyond it, never buffered whole.
//!
//! This module must never know about engines, stores or tenants' data: it gets a [`Scope`]
//! and a request, and answers or refuses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// Default cap on an answer's body (HTTP participants' answers, plugins' outputs).
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 1 << 20;
/// Largest answer cap a tenant may be given.
pub const MAX_ANSWER_BYTES_LIMIT: usize = 16 << 20;
/// Largest request body a plugin may send over wasi:http (it is read before sending, on the
/// host, outside the plugin's memory cap).
const MAX_PLUGIN_REQUEST_BYTES: usize = 2 << 20;

/// Which special-purpose addresses a request may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Public addresses only.
    Public,
    /// Public addresses and loopback (single-tenant local development).
    Loopback,
    /// Anything (`serve --allow-private-endpoints`).
    Any,
}

impl Reach {
    pub fn permits(self, ip: IpAddr) -> Result<(), &'static str> {
        match (self, special_purpose(ip)) {
            (_, None) | (Reach::Any, _) | (Reach::Loopback, Some("loopback")) => Ok(()),
            (_, Some(class)) => Err(class),
        }
    }
}

/// What one tenant's request may reach: the address classes and, where the tenant has an
/// allowlist, the hosts. `hosts: None` means any (public) host.
#[derive(Debug, Clone)]
pub struct Scope {
    pub reach: Reach,
    pub hosts: Option<Arc<[HostRule]>>,
}

impl Scope {
    /// Nothing at all: no host is allowed.
    pub fn none() -> Scope {
        Scope { reach: Reach::Public, hosts: Some(Arc::from(Vec::new())) }
    }
}

impl Default for Scope {
    fn default() -> Self {
        Scope::none()
    }
}

/// One entry of a tenant's `allowed_hosts`: `api.example.com` (any port), `api.example.com:8443`,
/// `*.example.com` (any subdomain, not the domain itself), `[2001:db8::1]:443`, `203.0.113.7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostRule {
    pub fn parse(entry: &str) -> Result<HostRule, String> {
        let bad = || format!("allowed_hosts entry {entry:?} is not `host`, `host:port`, `*.domain` or `*.domain:port`");
        if entry.is_empty() || entry.len() > 255 || entry.contains(|c: char| c.is_whitespace() || c.is_control() || "/@?#\\".contains(c)) {
            return Err(bad());
        }
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
            let v6 = v6.parse::<Ipv6Addr>().map_err(|_| bad())?.to_string();
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?.parse::<u16>().map_err(|_| bad())?),
            };
            (format!("[{}]", v6.to_ascii_lowercase()), port)
        } else {
            // `example.com.` (fully qualified) names the same host as `example.com`.
            match entry.rsplit_once(':') {
                Some((h, p)) => (h.trim_end_matches('.').to_ascii_lowercase(), Some(p.parse::<u16>().map_err(|_| bad())?)),
                None => (entry.trim_end_matches('.').to_ascii_lowercase(), None),
            }
        };
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, host),
        };
        let label_ok = |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name.starts_with('[') && !name.split('.').all(label_ok) {
            return Err(bad());
        }
        if port == Some(0) {
            return Err(bad());
        }
        Ok(HostRule { host: name, wildcard, port })
    }

    /// Whether `host` (as the URL spells it, lowercase, IPv6 in brackets) on `port` matches.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host_ok = if self.wildcard {
            host.strip_suffix(self.host.as_str()).is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
        } else {
            host == self.host
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }
}

/// Parses a tenant's `allowed_hosts`.
pub fn parse_rules(entries: &[String]) -> Result<Vec<HostRule>, String> {
    if entries.len() > 100 {
        return Err("allowed_hosts has at most 100 entries".into());
    }
    entries.iter().map(|e| HostRule::parse(e)).collect()
}

/// The special-purpose class of `ip`, or `None` for a public address.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (127, _, _) => "loopback",
        (0, _, _) => "unspecified",
        (10, _, _) | (192, 168, _) => "private",
        (172, b, _) if (16..32).contains(&b) => "private",
        (169, 254, _) => "link-local",
        (100, b, _) if (64..128).contains(&b) => "shared (carrier-grade NAT)",
        (192, 0, 0) | (192, 88, 99) => "special-purpose",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18 | 19, _) => "benchmarking",
        (a, _, _) if (224..240).contains(&a) => "multicast",
        (a, _, _) if a >= 240 => "reserved or broadcast",
        _ => return None,
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    // Forms that embed an IPv4 address are judged by it: mapped (::ffff:a.b.c.d), compatible
    // (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::).
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return v4_class(embedded(s[6], s[7])).or(Some("IPv4-compatible"));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..2] == [0x64, 0xff9b] {
        return v4_class(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return v4_class(embedded(s[1], s[2]));
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "unique-local",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation",
        0x0100 if s[1..4] == [0, 0, 0] => "discard-only",
        _ => return None,
    })
}

/// Why a request was not sent, or not answered within the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("host {host} is not on the tenant's allowed_hosts")]
    NotAllowed { host: String },
    #[error("{host} is a {class} address; the coordinator calls only public addresses (serve --allow-private-endpoints)")]
    Address { host: String, class: &'static str },
}

/// Why an exchange gave no answer to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// The policy refused the request: nothing was sent, so nothing happened.
    Refused(String),
    /// It may have been received and acted on: a timeout, a lost connection, an answer too
    /// large to read.
    Unclear(String),
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoAnswer::Refused(s) | NoAnswer::Unclear(s) => f.write_str(s),
        }
    }
}

/// The outbound HTTP client. Cheap to clone; connections are pooled per [`Reach`].
#[derive(Clone)]
pub struct Outbound {
    clients: Arc<[reqwest::Client; 3]>,
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound::new()
    }
}

impl Outbound {
    pub fn new() -> Self {
        let client = |reach: Reach| {
            let mut b = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .pool_idle_timeout(Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::none())
                // The proxy settings of the environment would route around the address check.
                .no_proxy();
            if reach != Reach::Any {
                b = b.dns_resolver(Arc::new(Guard { reach }));
            }
            b.build().expect("building the HTTP client")
        };
        Outbound { clients: Arc::new([client(Reach::Public), client(Reach::Loopback), client(Reach::Any)]) }
    }

    fn client(&self, reach: Reach) -> &reqwest::Client {
        &self.clients[match reach {
            Reach::Public => 0,
            Reach::Loopback => 1,
            Reach::Any => 2,
        }]
    }

    /// Checks what can be checked before connecting: the scheme, the allowlist, an IP
    /// literal's class. Names are checked again, on their addresses, when connecting.
    pub fn check(&self, scope: &Scope, url: &str) -> Result<reqwest::Url, Refusal> {
        check(scope, url)
    }

    /// POSTs a JSON body and reads the answer, at most `max_answer` bytes of it, within
    /// `timeout` for the whole exchange. Errors are sentences for the step's record.
    pub async fn post_json(
        &self,
        scope: &Scope,
        url: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
        timeout: Duration,
        max_answer: usize,
    ) -> Result<(u16, String), NoAnswer> {
        let target = self.check(scope, url).map_err(|r| NoAnswer::Refused(format!("POST {url} refused: {r}")))?;
        let mut request = self.client(scope.reach).post(target).timeout(timeout).json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.map_err(|e| match is_refused(&e) {
            // Refused in the resolver: no connection was made.
            true => NoAnswer::Refused(describe(&e, url, timeout)),
            false => NoAnswer::Unclear(describe(&e, url, timeout)),
        })?;
        let status = response.status().as_u16();
        let text = read_capped(response, max_answer).await.map_err(|e| NoAnswer::Unclear(format!("POST {url}: {e}")))?;
        Ok((status, text))
    }

    /// Sends a plugin's wasi:http request under the same rules; the answer streams back.
    pub(crate) async fn send_plugin_request(
        &self,
        scope: &Scope,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        timeout: Duration,
    ) -> wasmtime_wasi_http::Result<http::Response<wasmtime_wasi_http::WasiBody>> {
        use http_body_util::BodyExt;
        use wasmtime_wasi_http::Error as HttpError;
        let url = request.uri().to_string();
        let target = self.check(scope, &url).map_err(|r| match r {
            Refusal::Address { .. } => HttpError::DestinationIpProhibited,
            _ => HttpError::HttpRequestDenied,
        })?;
        let (parts, body) = request.into_parts();
        let body = http_body_util::Limited::new(body, MAX_PLUGIN_REQUEST_BYTES)
            .collect()
            .await
            .map_err(|_| HttpError::HttpRequestBodySize(None))?
            .to_bytes();
        let mut builder = self.client(scope.reach).request(parts.method, target).timeout(timeout);
        for (name, value) in parts.headers.iter().filter(|(n, _)| *n != http::header::HOST) {
            builder = builder.header(name, value);
        }
        let response = builder.body(body).send().await.map_err(|e| {
            if is_refused(&e) {
                HttpError::DestinationIpProhibited
            } else if e.is_timeout() {
                HttpError::ConnectionTimeout
            } else if e.is_connect() {
                HttpError::ConnectionRefused
            } else {
                HttpError::HttpProtocolError
            }
        })?;
        let response: http::Response<reqwest::Body> = response.into();
        Ok(response.map(|b| b.map_err(|_| HttpError::HttpProtocolError).boxed_unsync()))
    }
}

fn check(scope: &Scope, url: &str) -> Result<reqwest::Url, Refusal> {
    let parsed = reqwest::Url::parse(url).map_err(|_| Refusal::BadUrl(url.into()))?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Refusal::BadUrl(url.into()));
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        None => return Err(Refusal::BadUrl(url.into())),
    };
    let port = parsed.port_or_known_default().unwrap_or(80);
    if let Some(rules) = &scope.hosts
        && !rules.iter().any(|r| r.matches(&host, port))
    {
        return Err(Refusal::NotAllowed { host: format!("{host}:{port}") });
    }
    let literal = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    // A name is judged by the addresses it resolves to, when connecting (`Guard`).
    if let Some(ip) = literal {
        scope.reach.permits(ip).map_err(|class| Refusal::Address { host, class })?;
    }
    Ok(parsed)
}

/// Reads at most `cap` bytes of an answer; a longer one is refused without reading the rest.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<String, String> {
    if let Some(length) = response.content_length()
        && length > cap as u64
    {
        return Err(format!("the answer is {length} bytes, more than the {cap} accepted"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading the answer: {}", chain(&e)))? {
        if body.len() + chunk.len() > cap {
            return Err(format!("the answer is larger than the {cap} bytes accepted"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&Bytes::from(body)).into_owned())
}

fn describe(e: &reqwest::Error, url: &str, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("POST {url}: no answer within {timeout:?}");
    }
    format!("POST {url}: {}", chain(e))
}

/// An error and its sources, one sentence.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = s.source();
    }
    text
}

fn is_refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<AddressRefused>().is_some() {
            return true;
        }
        source = s.source();
    }
    false
}

#[derive(Debug, thiserror::Error)]
#[error("refused: {host} resolves to {ip}, a {class} address; the coordinator calls only public addresses (serve --allow-private-endpoints)")]
struct AddressRefused {
    host: String,
    ip: IpAddr,
    class: &'static str,
}

/// The resolver of the guarded clients: resolves, then refuses the name if any of its
/// addresses is outside the reach, so the connection can only go to checked addresses.
struct Guard {
    reach: Reach,
}

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let reach = self.reach;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for a in &addrs {
                if let Err(class) = reach.permits(a.ip()) {
                    return Err(Box::new(AddressRefused { host, ip: a.ip(), class }) as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_purpose_addresses_are_classified_in_every_form() {
        for (addr, class) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved or broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:a9fe:a9fe::", "link-local"),
            ("fd00::1", "unique-local"),
            ("fc12::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
        ] {
            assert_eq!(special_purpose(ip(addr)), Some(class), "{addr}");
        }
        for public in ["93.184.216.34", "172.32.0.1", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(special_purpose(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn reach_permits_loopback_only_when_asked_and_anything_when_told() {
        assert!(Reach::Public.permits(ip("127.0.0.1")).is_err());
        assert!(Reach::Loopback.permits(ip("127.0.0.1")).is_ok());
        assert!(Reach::Loopback.permits(ip("::1")).is_ok());
        assert!(Reach::Loopback.permits(ip("10.0.0.1")).is_err());
        assert!(Reach::Any.permits(ip("10.0.0.1")).is_ok());
        assert!(Reach::Public.permits(ip("8.8.8.8")).is_ok());
    }

    #[test]
    fn urls_are_checked_against_the_allowlist_and_literal_addresses() {
        let rules: Arc<[HostRule]> = parse_rules(&["api.example.com".into(), "*.corp.example:8443".into()]).unwrap().into();
        let scope = Scope { reach: Reach::Public, hosts: Some(rules) };
        assert!(check(&scope, "https://api.example.com/x").is_ok());
        assert!(check(&scope, "http://API.example.com:9000/x").is_ok(), "no port in the rule: any port");
        assert!(check(&scope, "https://a.corp.example:8443/").is_ok());
        assert!(matches!(check(&scope, "https://a.corp.example/"), Err(Refusal::NotAllowed { .. })), "wrong port");
        assert!(matches!(check(&scope, "https://corp.example:8443/"), Err(Refusal::NotAllowed { .. })), "a wildcard needs a subdomain");
        assert!(matches!(check(&scope, "https://evilapi.example.com/"), Err(Refusal::NotAllowed { .. })));
        assert!(matches!(check(&scope, "file:///etc/passwd"), Err(Refusal::BadUrl(_))));
        assert!(matches!(check(&scope, "http://user:pw@api.example.com/"), Err(Refusal::BadUrl(_))));

        let open = Scope { reach: Reach::Public, hosts: None };
        for internal in [
            "http://127.0.0.1:8080/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0/",
            "http://[fd00::1]/",
        ] {
            assert!(matches!(check(&open, internal), Err(Refusal::Address { .. })), "{internal}");
        }
        assert!(check(&open, "https://93.184.216.34/").is_ok());
        assert!(check(&open, "http://localhost:8080/").is_ok(), "names are checked on their addresses, when connecting");
        let local = Scope { reach: Reach::Loopback, hosts: None };
        assert!(check(&local, "http://127.0.0.1:8080/").is_ok());
        assert!(check(&local, "http://10.0.0.1/").is_err());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_when_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });
        let outbound = Outbound::new();
        let open = Scope { reach: Reach::Public, hosts: None };
        let url = format!("http://localhost:{port}/x");
        let refused = outbound.post_json(&open, &url, &[], &serde_json::json!({}), Duration::from_secs(5), 1000).await;
        let error = refused.unwrap_err();
        assert!(matches!(&error, NoAnswer::Refused(_)), "refused before connecting: {error:?}");
        let error = error.to_string();
        assert!(error.contains("resolves to") && error.contains("loopback"), "{error}");
        assert!(!accepted.is_finished(), "no connection reached the listener");
        let local = Scope { reach: Reach::Loopback, hosts: None };
        let reached = outbound.post_json(&local, &url, &[], &serde_json::json!({}), Duration::from_secs(5), 1000).await;
        assert!(accepted.await.unwrap(), "with loopback allowed the same name connects ({reached:?})");
    }

    #[test]
    fn allowlist_entries_parse_or_say_why_not() {
        assert!(HostRule::parse("api.example.com").is_ok());
        assert!(HostRule::parse("api.example.com:443").is_ok());
        assert!(HostRule::parse("*.example.com").is_ok());
        assert!(HostRule::parse("[2001:db8::1]:443").is_ok());
        assert!(HostRule::parse("127.0.0.1:8080").is_ok());
        for bad in ["", "http://x/y", "a b", "x:99999", "x:0", "user@host", "*.", "[::1", "a..b", "x\u{0}y"] {
            assert!(HostRule::parse(bad).is_err(), "{bad:?}");
        }
        let v6 = HostRule::parse("[2001:DB8:0::1]:443").unwrap();
        assert!(v6.matches("[2001:db8::1]", 443), "IPv6 entries match in their normal form");
        let rules: Arc<[HostRule]> = parse_rules(&["api.example.com.".into()]).unwrap().into();
        let scope = Scope { reach: Reach::Public, hosts: Some(rules) };
        assert!(check(&scope, "https://api.example.com./x").is_ok() && check(&scope, "https://api.example.com/x").is_ok());
    }
}
