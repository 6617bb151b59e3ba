//! Checks for the kinds of string value the language uses: resource names,
//! socket addresses, URLs, regexes, header names, paths.
//!
//! Each check returns a human message on failure; the caller attaches it to
//! the span of the value. Strings holding `${VAR}` references are checked in
//! the form they take with defaults applied, or only for reference syntax
//! when a reference has no default (the proxy checks them when it resolves).

use std::net::{IpAddr, SocketAddr};

use crate::env;

/// What a resource name may look like: used in URLs, metrics labels and logs.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name cannot be empty".into());
    }
    if name.len() > 128 {
        return Err("a name is at most 128 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "invalid name `{name}`: use letters, digits, `-`, `_` and `.` only"
        ));
    }
    Ok(())
}

/// Resolves references with their defaults for checking; `Ok(None)` means the
/// value can only be checked on the node that resolves it.
fn checkable(value: &str) -> Result<Option<String>, String> {
    env::references(value).map_err(|e| e.to_string())?;
    Ok(env::with_defaults(value))
}

/// `host:port`, `[v6]:port` or `ip:port`. `allow_zero_port` for listeners.
pub fn check_address(value: &str, allow_zero_port: bool) -> Result<(), String> {
    let Some(value) = checkable(value)? else {
        return Ok(());
    };
    if value.parse::<SocketAddr>().is_ok() {
        let port = value.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        if port == Some(0) && !allow_zero_port {
            return Err(format!(
                "invalid address `{value}`: port 0 is not allowed here"
            ));
        }
        return Ok(());
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("invalid address `{value}`: expected host:port"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid address `{value}`: port `{port}` is not a number 0-65535"))?;
    if port == 0 && !allow_zero_port {
        return Err(format!(
            "invalid address `{value}`: port 0 is not allowed here"
        ));
    }
    let looks_numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if host.starts_with('[') || host.contains(':') || looks_numeric {
        return Err(format!(
            "invalid address `{value}`: bad IP address `{host}`"
        ));
    }
    check_hostname(host).map_err(|e| format!("invalid address `{value}`: {e}"))
}

/// A DNS name: labels of letters, digits and `-`, separated by dots.
pub fn check_hostname(host: &str) -> Result<(), String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err("empty or too long host name".into());
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(format!("`{host}` is not a valid host name"));
        }
    }
    Ok(())
}

/// A host pattern for route matching: a host name, optionally starting with
/// `*.`, optionally with a port.
pub fn check_host_pattern(value: &str) -> Result<(), String> {
    let host = value.strip_prefix("*.").unwrap_or(value);
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => host,
    };
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    check_hostname(host)
}

/// A URL with one of `schemes` and a host.
pub fn check_url(value: &str, schemes: &[&str]) -> Result<(), String> {
    let Some(value) = checkable(value)? else {
        return Ok(());
    };
    let url = url::Url::parse(&value).map_err(|e| format!("invalid URL `{value}`: {e}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "invalid URL `{value}`: scheme must be {}",
            schemes
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("invalid URL `{value}`: missing host"));
    }
    Ok(())
}

/// A Redis URL, a comma-separated list of cluster nodes where the first
/// carries the scheme (`redis://a:6379,b:6379`), or Redis Sentinels and the
/// master they name (`redis+sentinel://[:password@]s1:26379,s2:26379/mymaster`).
pub fn check_redis_url(value: &str) -> Result<(), String> {
    let Some(resolved) = checkable(value)? else {
        return Ok(());
    };
    if let Some(rest) = resolved
        .strip_prefix("redis+sentinel://")
        .or_else(|| resolved.strip_prefix("rediss+sentinel://"))
    {
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let Some((hosts, master)) = rest.split_once('/') else {
            return Err(format!(
                "invalid sentinel URL `{resolved}`: name the master after the hosts (`…:26379/mymaster`)"
            ));
        };
        if master.trim_matches('/').is_empty() {
            return Err(format!("invalid sentinel URL `{resolved}`: no master name"));
        }
        for host in hosts.split(',') {
            check_address(host.trim(), false)?;
        }
        return Ok(());
    }
    let mut nodes = resolved.split(',');
    let first = nodes.next().unwrap_or_default().trim();
    check_url(first, &["redis", "rediss"])?;
    for node in nodes {
        let node = node.trim();
        if node.contains("://") {
            check_url(node, &["redis", "rediss"])?;
        } else {
            check_address(node, false)?;
        }
    }
    Ok(())
}

pub fn check_regex(value: &str) -> Result<(), String> {
    regex::Regex::new(value)
        .map(|_| ())
        .map_err(|e| format!("invalid regex: {e}"))
}

/// An HTTP header field name (RFC 9110 token).
pub fn check_header_name(value: &str) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if value.is_empty() || !value.chars().all(token) {
        return Err(format!("invalid header name `{value}`"));
    }
    Ok(())
}

/// A request path used for matching or checks: must start with `/`.
pub fn check_path(value: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!("path `{value}` must start with `/`"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "path `{value}` contains whitespace or control characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(check_address("127.0.0.1:8080", false).is_ok());
        assert!(check_address("[::1]:8080", false).is_ok());
        assert!(check_address("backend.internal:80", false).is_ok());
        assert!(check_address("${ADDR:-127.0.0.1:0}", true).is_ok());
        assert!(check_address("${ADDR}", false).is_ok());
        assert!(check_address("127.0.0.1", false).is_err());
        assert!(check_address("127.0.0.1:99999", false).is_err());
        assert!(check_address("300.1.1.1:80", false).is_err());
        assert!(check_address("bad host:80", false).is_err());
        assert!(check_address("127.0.0.1:0", false).is_err());
        assert!(check_address("${ADDR", false).is_err());
    }

    #[test]
    fn urls() {
        assert!(check_redis_url("redis://a:6379,b:6379,c:6379").is_ok());
        assert!(check_redis_url("redis://:${REDIS_PASSWORD}@redis:6379").is_ok());
        assert!(check_redis_url("http://a:6379").is_err());
        assert!(check_url("http://waf:50051", &["http", "https"]).is_ok());
        assert!(check_url("waf:50051", &["http", "https"]).is_err());
    }

    #[test]
    fn hosts_and_names() {
        assert!(check_host_pattern("*.example.com").is_ok());
        assert!(check_host_pattern("api.example.com:8443").is_ok());
        assert!(check_host_pattern("bad..host").is_err());
        assert!(check_name("api-v1.main").is_ok());
        assert!(check_name("has space").is_err());
    }
}
