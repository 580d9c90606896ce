//! Where a service is reached: the value of a `*_SERVICE_URL` setting, parsed once at the
//! edge. One setting may name several replicas, as a comma-separated list of URLs
//! (`http://10.0.0.5:50052,http://10.0.0.6:50052`) or as one URL whose host is a DNS name
//! resolving to several addresses (a Kubernetes headless Service); the balancer
//! (`platform::balance`) spreads calls over all of them. `https://` URLs are reached over
//! TLS (`platform::tls`); one setting is all `http://` or all `https://`.

use std::{fmt, net::IpAddr, str::FromStr};

/// One URL of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An IP literal: exactly one endpoint.
    Addr { ip: IpAddr, port: u16 },
    /// A DNS name, resolved (and re-resolved) to every address it has.
    Name { host: String, port: u16 },
}

impl Target {
    /// `host:port` as the URL gave it.
    pub fn authority(&self) -> String {
        match self {
            Self::Addr {
                ip: IpAddr::V6(ip),
                port,
            } => format!("[{ip}]:{port}"),
            Self::Addr { ip, port } => format!("{ip}:{port}"),
            Self::Name { host, port } => format!("{host}:{port}"),
        }
    }

    /// The name a server's TLS certificate must carry for this target: the DNS name, or
    /// the IP address.
    pub fn tls_name(&self) -> String {
        match self {
            Self::Addr { ip, .. } => ip.to_string(),
            Self::Name { host, .. } => host.clone(),
        }
    }
}

/// A parsed `*_SERVICE_URL`: one or more gRPC targets, duplicates removed, reached over
/// plain HTTP/2 (h2c) or, for `https://`, over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrls {
    targets: Vec<Target>,
    tls: bool,
}

impl ServiceUrls {
    /// Parses `http://host:port[,http://host:port...]` (or the same with `https://`). The
    /// error says which URL is wrong and why; clap prefixes it with the setting's name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut targets = Vec::new();
        let mut scheme: Option<bool> = None;
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                if s.trim().is_empty() {
                    return Err(
                        "no URL given (expected http://host:port, or several separated by commas)"
                            .into(),
                    );
                }
                return Err(format!("empty entry in the list {s:?}"));
            }
            let (t, tls) = parse_one(part)?;
            if scheme.is_some_and(|first| first != tls) {
                return Err(format!(
                    "{s:?} mixes http:// and https:// (a service is reached one way)"
                ));
            }
            scheme = Some(tls);
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        Ok(Self {
            targets,
            tls: scheme.unwrap_or(false),
        })
    }

    /// The plaintext URL of each of `addrs` (tests, scripts).
    pub fn of_addrs(addrs: &[std::net::SocketAddr]) -> Self {
        Self {
            tls: false,
            targets: addrs
                .iter()
                .map(|a| Target::Addr {
                    ip: a.ip(),
                    port: a.port(),
                })
                .collect(),
        }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Whether the URLs are `https://`.
    pub fn uses_tls(&self) -> bool {
        self.tls
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The one URL of a setting that names exactly one IP address, if it does: such a
    /// setting needs no balancer.
    pub fn single_addr(&self) -> Option<String> {
        match self.targets.as_slice() {
            [t @ Target::Addr { .. }] => Some(format!("{}://{}", self.scheme(), t.authority())),
            _ => None,
        }
    }
}

impl From<std::net::SocketAddr> for ServiceUrls {
    fn from(addr: std::net::SocketAddr) -> Self {
        Self::of_addrs(&[addr])
    }
}

impl FromStr for ServiceUrls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for ServiceUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self
            .targets
            .iter()
            .map(|t| format!("{}://{}", self.scheme(), t.authority()))
            .collect();
        f.write_str(&urls.join(","))
    }
}

/// One URL: its target, and whether it is `https://`.
fn parse_one(url: &str) -> Result<(Target, bool), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(format!(
                "{url:?}: scheme {other:?} is not supported (use http:// or, over TLS, https://)"
            ));
        }
        None => return Err(format!("{url:?} has no scheme (expected http://host:port)")),
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{url:?} has a path; give only http://host:port"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: user info is not supported"));
    }
    let port = authority
        .port_u16()
        .ok_or_else(|| format!("{url:?} has no port (expected http://host:port)"))?;
    if port == 0 {
        return Err(format!("{url:?}: port 0 cannot be dialled"));
    }
    let host = authority.host();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok((Target::Addr { ip, port }, tls));
    }
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid_name {
        return Err(format!(
            "{url:?}: {host:?} is neither an IP address nor a DNS name"
        ));
    }
    Ok((
        Target::Name {
            host: host.to_ascii_lowercase(),
            port,
        },
        tls,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_one_address() {
        let u = ServiceUrls::parse("http://127.0.0.1:50052").expect("valid");
        assert_eq!(
            u.targets(),
            &[Target::Addr {
                ip: [127, 0, 0, 1].into(),
                port: 50052
            }]
        );
        assert_eq!(u.single_addr().as_deref(), Some("http://127.0.0.1:50052"));
        assert_eq!(u.to_string(), "http://127.0.0.1:50052");
    }

    #[test]
    fn a_list_keeps_its_order_drops_duplicates_and_blanks_around_entries() {
        let u = ServiceUrls::parse(
            " http://127.0.0.1:1/ , http://[::1]:2,http://item.shop.svc.cluster.local:50052,http://127.0.0.1:1",
        )
        .expect("valid");
        assert_eq!(
            u.targets(),
            &[
                Target::Addr {
                    ip: [127, 0, 0, 1].into(),
                    port: 1
                },
                Target::Addr {
                    ip: "::1".parse().expect("ip"),
                    port: 2
                },
                Target::Name {
                    host: "item.shop.svc.cluster.local".into(),
                    port: 50052
                },
            ]
        );
        assert_eq!(u.single_addr(), None);
        assert_eq!(
            u.to_string(),
            "http://127.0.0.1:1,http://[::1]:2,http://item.shop.svc.cluster.local:50052"
        );
    }

    #[test]
    fn a_dns_name_is_a_name_even_alone() {
        let u = ServiceUrls::parse("http://Item-Service:50052").expect("valid");
        assert_eq!(
            u.targets(),
            &[Target::Name {
                host: "item-service".into(),
                port: 50052
            }]
        );
        assert_eq!(u.single_addr(), None, "a name may stand for several pods");
    }

    #[test]
    fn https_urls_are_reached_over_tls() {
        let u =
            ServiceUrls::parse("https://item-service:50052,https://127.0.0.1:1").expect("valid");
        assert!(u.uses_tls());
        assert_eq!(
            u.to_string(),
            "https://item-service:50052,https://127.0.0.1:1"
        );
        let one = ServiceUrls::parse("https://127.0.0.1:1").expect("valid");
        assert_eq!(one.single_addr().as_deref(), Some("https://127.0.0.1:1"));
        assert!(
            !ServiceUrls::parse("http://127.0.0.1:1")
                .expect("valid")
                .uses_tls()
        );
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        for (input, needle) in [
            ("", "no URL"),
            ("http://a:1,,http://b:2", "empty entry"),
            ("http://a:1,", "empty entry"),
            ("127.0.0.1:50052", "scheme"),
            ("grpc://a:1", "\"grpc\" is not supported"),
            ("http://a:1,https://b:2", "mixes"),
            ("http://a", "no port"),
            ("http://a:0", "port 0"),
            ("http://a:1/v1", "path"),
            ("http://u:p@a:1", "user info"),
            ("http://a_b:1", "neither an IP address nor a DNS name"),
            ("http://a:1,not a url", "not a URL"),
        ] {
            let err = ServiceUrls::parse(input).expect_err(input);
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }
}
