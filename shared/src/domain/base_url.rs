//! User-chosen base URLs (gateway only): `https` on a public host, no
//! credentials, no literal loopback, private, link-local or metadata address.
//! Saving does no DNS lookup; resolved addresses are checked when connecting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

/// A base URL that passed the save-time checks, normalised (no trailing `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserBaseUrl(String);

/// Why a base URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseUrlError {
    #[error("baseUrl is not a valid absolute URL")]
    Invalid,
    #[error("baseUrl must use https")]
    NotHttps,
    #[error("baseUrl must not contain credentials")]
    Credentials,
    #[error("baseUrl must not contain a query or fragment")]
    QueryOrFragment,
    #[error("baseUrl must name a public host, not a local, private or metadata address")]
    NonPublicHost,
}

const MAX_LEN: usize = 2048;

impl UserBaseUrl {
    pub fn parse(raw: &str) -> Result<Self, BaseUrlError> {
        if raw.len() > MAX_LEN {
            return Err(BaseUrlError::Invalid);
        }
        let url = Url::parse(raw.trim()).map_err(|_| BaseUrlError::Invalid)?;
        if url.scheme() != "https" {
            return Err(BaseUrlError::NotHttps);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(BaseUrlError::Credentials);
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(BaseUrlError::QueryOrFragment);
        }
        match url.host() {
            None => return Err(BaseUrlError::Invalid),
            Some(Host::Ipv4(ip)) if !is_public_ip(IpAddr::V4(ip)) => {
                return Err(BaseUrlError::NonPublicHost);
            }
            Some(Host::Ipv6(ip)) if !is_public_ip(IpAddr::V6(ip)) => {
                return Err(BaseUrlError::NonPublicHost);
            }
            Some(Host::Domain(name)) if !is_public_name(name) => {
                return Err(BaseUrlError::NonPublicHost);
            }
            Some(_) => {}
        }
        Ok(Self(url.as_str().trim_end_matches('/').to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `host` or `host:port` when the port is not the scheme's default.
    pub fn host(&self) -> String {
        url_host(&self.0).unwrap_or_default()
    }
}

/// The host of a URL with `:port` when the port is not the scheme's default;
/// never the credentials, path or query.
pub fn url_host(raw: &str) -> Option<String> {
    // Every request names its upstream's host: the plain `http(s)://host
    // [:port]/…` of the configured base URLs is read directly, anything
    // else (credentials, upper case, IDNA, IPv6, odd ports) by the parser.
    if let Some(host) = plain_url_host(raw) {
        return Some(host);
    }
    let url = Url::parse(raw).ok()?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// [`url_host`] of an `http://` or `https://` URL whose authority is only
/// lower-case letters, digits, `.` and `-`, with an optional port of digits;
/// `None` for anything else.
fn plain_url_host(raw: &str) -> Option<String> {
    let (rest, default_port) = if let Some(rest) = raw.strip_prefix("https://") {
        (rest, "443")
    } else {
        (raw.strip_prefix("http://")?, "80")
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && !host.starts_with(['.', '-'])
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    // Leading zeros, empty or huge ports and all-digit hosts (IPv4 forms the
    // parser rewrites) go to the parser.
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && !p.starts_with('0')
            && p.parse::<u16>().is_ok()
    });
    let all_digits = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !host_ok || !port_ok || all_digits && !is_dotted_quad(host) {
        return None;
    }
    Some(match port {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    })
}

/// Four decimal numbers 0-255 without leading zeros: an IPv4 address as
/// the parser writes it.
fn is_dotted_quad(host: &str) -> bool {
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && (p.len() == 1 || !p.starts_with('0'))
                && p.parse::<u8>().is_ok()
        })
}

/// Host names that never name a public host, and names with an empty label
/// (`.example.com`, `a..b`), which name none at all.
fn is_public_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    const PRIVATE_SUFFIXES: [&str; 5] = [".localhost", ".local", ".internal", ".lan", ".home.arpa"];
    name.contains('.')
        && name.split('.').all(|label| !label.is_empty())
        && name != "localhost"
        && !PRIVATE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// True for addresses on the public internet; false for loopback, private,
/// link-local (incl. the 169.254.169.254 metadata service), shared, unspecified,
/// multicast, documentation and unique-local ranges.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            is_public_v6(v6)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (RFC 7526)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

/// An allow list, not a deny list: public IPv6 unicast is global unicast
/// (`2000::/3`) outside its special-purpose blocks (IANA's IPv6
/// Special-Purpose Address Registry). Everything else is refused, which
/// covers every form that embeds or maps an IPv4 address (`::a.b.c.d`,
/// `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`), site-local
/// `fec0::/10`, unique local, link-local, loopback and multicast. Inside
/// `2000::/3`, 6to4 (`2002::/16`) and Teredo (`2001::/32`) also carry an IPv4
/// address and are refused whole. (The standard library's `is_global` is
/// not stable yet.)
fn is_public_v6(ip: Ipv6Addr) -> bool {
    let [first, second, ..] = ip.segments();
    let global_unicast = (first & 0xe000) == 0x2000;
    // 2001::/23: IETF protocol assignments (Teredo, benchmarking, ORCHID…).
    let ietf = first == 0x2001 && second < 0x0200;
    let documentation = (first == 0x2001 && second == 0x0db8) || (first & 0xfff0) == 0x3ff0;
    let six_to_four = first == 0x2002;
    global_unicast && !(ietf || documentation || six_to_four)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_public_https() {
        let cases = [
            ("https://my-gateway.vercel.sh/v1", "my-gateway.vercel.sh"),
            ("https://gw.example.com:8443/v1/", "gw.example.com:8443"),
            ("https://gw.example.com:443/v1", "gw.example.com"),
            ("https://8.8.8.8/v1", "8.8.8.8"),
            ("https://[2606:4700::1111]/v1", "[2606:4700::1111]"),
            (
                "https://[2001:4860:4860::8888]/v1",
                "[2001:4860:4860::8888]",
            ),
        ];
        for (raw, host) in cases {
            let url = UserBaseUrl::parse(raw).expect(raw);
            assert_eq!(url.host(), host, "{raw}");
            assert!(!url.as_str().ends_with('/'));
        }
    }

    #[test]
    fn refuses_unsafe_urls() {
        use BaseUrlError as E;
        let cases = [
            ("not a url", E::Invalid),
            ("http://gw.example.com/v1", E::NotHttps),
            ("ftp://gw.example.com/v1", E::NotHttps),
            ("https://user:pass@gw.example.com/v1", E::Credentials),
            ("https://user@gw.example.com/v1", E::Credentials),
            ("https://gw.example.com/v1?x=1", E::QueryOrFragment),
            ("https://localhost/v1", E::NonPublicHost),
            ("https://LOCALHOST./v1", E::NonPublicHost),
            ("https://api.localhost/v1", E::NonPublicHost),
            ("https://intranet/v1", E::NonPublicHost),
            ("https://metadata.google.internal/v1", E::NonPublicHost),
            ("https://127.0.0.1/v1", E::NonPublicHost),
            ("https://2130706433/v1", E::NonPublicHost),
            ("https://0x7f.1/v1", E::NonPublicHost),
            ("https://10.0.0.5/v1", E::NonPublicHost),
            ("https://172.16.0.1/v1", E::NonPublicHost),
            ("https://192.168.1.1/v1", E::NonPublicHost),
            ("https://169.254.169.254/latest", E::NonPublicHost),
            ("https://100.64.0.1/v1", E::NonPublicHost),
            ("https://0.0.0.0/v1", E::NonPublicHost),
            ("https://[::1]/v1", E::NonPublicHost),
            ("https://[::ffff:127.0.0.1]/v1", E::NonPublicHost),
            ("https://[fd00:ec2::254]/v1", E::NonPublicHost),
            ("https://[fe80::1]/v1", E::NonPublicHost),
            ("https://[::127.0.0.1]/v1", E::NonPublicHost),
            ("https://.a/@", E::NonPublicHost),
            ("https://gw..example.com/v1", E::NonPublicHost),
            ("https://[::ffff:0:127.0.0.1]/v1", E::NonPublicHost),
            ("https://[2002:7f00:1::]/v1", E::NonPublicHost),
            ("https://[fec0::1]/v1", E::NonPublicHost),
            ("https://[64:ff9b::7f00:1]/v1", E::NonPublicHost),
            ("https://[64:ff9b:1::a00:1]/v1", E::NonPublicHost),
            (
                "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/v1",
                E::NonPublicHost,
            ),
            ("https://[2001:2::1]/v1", E::NonPublicHost),
            ("https://[3fff::1]/v1", E::NonPublicHost),
            ("https://[100::1]/v1", E::NonPublicHost),
            ("https://[::]/v1", E::NonPublicHost),
            ("https://192.88.99.1/v1", E::NonPublicHost),
        ];
        for (raw, want) in cases {
            assert_eq!(UserBaseUrl::parse(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn host_of_operator_urls() {
        assert_eq!(
            url_host("http://127.0.0.1:9999/v1").as_deref(),
            Some("127.0.0.1:9999")
        );
        assert_eq!(
            url_host("https://api.openai.com/v1").as_deref(),
            Some("api.openai.com")
        );
        assert_eq!(
            url_host("https://u:p@h.example/v1").as_deref(),
            Some("h.example")
        );
        assert_eq!(url_host("nope"), None);
        // The direct reading agrees with the parser wherever it answers.
        for raw in [
            "https://api.openai.com/v1",
            "https://api.openai.com:443/v1",
            "http://api.openai.com:80/v1",
            "https://api.openai.com:8443",
            "http://127.0.0.1:9999/v1",
            "http://127.000.0.1:9999/v1",
            "http://2130706433/v1",
            "http://127.1/v1",
            "https://bedrock-runtime.us-east-1.amazonaws.com",
            "https://host.example?x=1",
            "https://host.example#f",
            "https://a.example:0/",
            "https://a.example:099/",
            "https://a.example:99999/",
            "https://a.example:/",
            "https://.a.example/",
            "https://a..example/",
            "https://a-.example./v1",
        ] {
            let parsed = Url::parse(raw).ok().and_then(|url| {
                let host = url.host_str()?.to_owned();
                Some(match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            });
            if let Some(direct) = plain_url_host(raw) {
                assert_eq!(Some(direct), parsed, "{raw}");
            }
            assert_eq!(url_host(raw), parsed, "{raw}");
        }
    }
}
