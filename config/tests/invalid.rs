//! Invalid documents: each must fail with a diagnostic at the right place.
//!
//! Each case marks the offending spot with `@@` in the text; the marker is
//! removed before compiling and its position gives the expected line and
//! column. The message must contain the expected fragment, and when a help
//! fragment is given, the help line must contain it.

struct Case {
    name: &'static str,
    doc: &'static str,
    message: &'static str,
    help: Option<&'static str>,
}

const BASE_UPSTREAM: &str = "upstreams {\n    upstream \"api\" { target \"127.0.0.1:9000\"; }\n}\n";

fn case(name: &'static str, doc: &'static str, message: &'static str) -> Case {
    Case {
        name,
        doc,
        message,
        help: None,
    }
}

fn with_help(
    name: &'static str,
    doc: &'static str,
    message: &'static str,
    help: &'static str,
) -> Case {
    Case {
        name,
        doc,
        message,
        help: Some(help),
    }
}

fn cases() -> Vec<Case> {
    vec![
        // --- two listeners that would bind the same socket (issue 11, defect 12)
        with_help(
            "duplicate listener address",
            "listeners {\n  listener \"a\" { address \"127.0.0.1:8080\"; }\n  listener \"b\" { address @@\"127.0.0.1:8080\"; }\n}\n",
            "listener `b` uses address `127.0.0.1:8080`, which listener `a` already uses",
            "listener `a` binds the same address on line 2",
        ),
        with_help(
            "listener address overlapping a wildcard",
            "listeners {\n  listener \"any\" { address \"0.0.0.0:8080\"; }\n  listener \"lo\" { address @@\"127.0.0.1:8080\"; }\n}\n",
            "listener `lo` uses address `127.0.0.1:8080`",
            "an overlapping address (`0.0.0.0:8080`) on line 2",
        ),
        // --- unknown nodes and properties, with suggestions
        with_help(
            "unknown top-level",
            "@@sever {\n}\n",
            "unknown node `sever` in `document`",
            "did you mean `server`?",
        ),
        with_help(
            "typo in matches",
            "routes {\n  route \"r\" {\n    matches { @@path-prefx \"/\"; }\n    upstream \"api\"\n  }\n}\n",
            "unknown node `path-prefx`",
            "did you mean `path-prefix`?",
        ),
        with_help(
            "typo in upstream",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\"\n    @@load-balancer \"random\"\n  }\n}\n",
            "unknown node `load-balancer`",
            "did you mean `load-balancing`?",
        ),
        with_help(
            "typo in health-check",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\"\n    health-check {\n      @@intervl-secs 5\n    }\n  }\n}\n",
            "unknown node `intervl-secs`",
            "did you mean `interval-secs`?",
        ),
        with_help(
            "typo in filter",
            "filters {\n  filter \"f\" {\n    type \"rate-limit\"\n    max-rps 5\n    @@brust 10\n  }\n}\n",
            "unknown node `brust`",
            "did you mean `burst`?",
        ),
        with_help(
            "typo in agent",
            "agents {\n  agent \"a\" {\n    unix-socket \"/run/a.sock\"\n    @@timeout-msec 5\n  }\n}\n",
            "unknown node `timeout-msec`",
            "did you mean `timeout-ms`?",
        ),
        with_help(
            "typo in server",
            "server {\n  @@max-conections 5\n}\n",
            "unknown node `max-conections`",
            "did you mean `max-connections`?",
        ),
        with_help(
            "unknown target property",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\" @@wieght=2\n  }\n}\n",
            "unknown property `wieght`",
            "did you mean `weight`?",
        ),
        case(
            "unknown listener child",
            "listeners {\n  listener \"l\" {\n    address \"127.0.0.1:1\"\n    @@backlog 5\n  }\n}\n",
            "unknown node `backlog` in `listener`",
        ),
        case(
            "wrong child of routes",
            "routes {\n  @@rout \"x\" { upstream \"api\"; }\n}\n",
            "unknown node `rout` in `routes`",
        ),
        case(
            "unknown observability block",
            "observability {\n  @@metrix { enabled #true; }\n}\n",
            "unknown node `metrix`",
        ),
        case(
            "property on server",
            "server @@foo=1 {\n}\n",
            "unknown property `foo`",
        ),
        // --- wrong types
        with_help(
            "string for integer",
            "server {\n  worker-threads @@\"4\"\n}\n",
            "must be an integer, found a string",
            "without quotes",
        ),
        case(
            "integer for string",
            "listeners {\n  listener \"l\" { address @@8080; }\n}\n",
            "`address` must be a string, found an integer",
        ),
        with_help(
            "string for boolean",
            "observability {\n  metrics { enabled @@\"yes\"; }\n}\n",
            "must be a boolean",
            "#true",
        ),
        case(
            "float for integer",
            "limits {\n  max-headers @@1.5\n}\n",
            "must be an integer, found a number",
        ),
        case(
            "missing value",
            "server {\n  @@worker-threads\n}\n",
            "`worker-threads` needs a value",
        ),
        case(
            "two values",
            "server {\n  worker-threads 4 @@8\n}\n",
            "`worker-threads` takes one value",
        ),
        case(
            "block on value node",
            "server {\n  @@worker-threads 4 { x 1; }\n}\n",
            "does not take a block",
        ),
        case(
            "non-string resource name",
            "upstreams {\n  upstream @@5 { target \"127.0.0.1:1\"; }\n}\n",
            "must be a string",
        ),
        // --- ranges and enums
        case(
            "worker threads out of range",
            "server {\n  worker-threads @@5000\n}\n",
            "between 0 and 1024, found 5000",
        ),
        case(
            "negative weight",
            "upstreams {\n  upstream \"a\" { target \"127.0.0.1:1\" @@weight=-1; }\n}\n",
            "between 0 and 10000, found -1",
        ),
        case(
            "sampling rate above one",
            "observability {\n  tracing {\n    backend \"otlp\" { endpoint \"http://127.0.0.1:4317\"; }\n    sampling-rate @@1.5\n  }\n}\n",
            "between 0 and 1",
        ),
        with_help(
            "unknown algorithm",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\"\n    load-balancing @@\"round-robin\"\n  }\n}\n",
            "unknown load-balancing algorithm `round-robin`",
            "did you mean `round_robin`?",
        ),
        case(
            "unknown log format",
            "observability {\n  logging { format @@\"xml\"; }\n}\n",
            "unknown format `xml`",
        ),
        with_help(
            "unknown priority",
            "routes {\n  route \"r\" {\n    priority @@\"urgent\"\n    upstream \"api\"\n  }\n}\n",
            "unknown priority `urgent`",
            "expected one of",
        ),
        case(
            "status outside 500s",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\"\n    retry { on-status 502 @@404; }\n  }\n}\n",
            "between 500 and 599, found 404",
        ),
        with_help(
            "bad method",
            "routes {\n  route \"r\" {\n    matches { method \"GET\" @@\"FETCH\"; }\n    upstream \"api\"\n  }\n}\n",
            "unknown HTTP method `FETCH`",
            "did you mean `PATCH`?",
        ),
        with_help(
            "bad rate-limit key",
            "filters {\n  filter \"f\" {\n    type \"rate-limit\"\n    max-rps 1\n    key @@\"client_ip\"\n  }\n}\n",
            "invalid rate-limit key `client_ip`",
            "did you mean `client-ip`?",
        ),
        // --- duplicates
        with_help(
            "duplicate upstream",
            "upstreams {\n  upstream \"a\" { target \"127.0.0.1:1\"; }\n  upstream @@\"a\" { target \"127.0.0.1:2\"; }\n}\n",
            "duplicate upstream name `a`",
            "line 2",
        ),
        case(
            "duplicate route",
            "routes {\n  route \"r\" { upstream \"api\"; }\n  route @@\"r\" { upstream \"api\"; }\n}\n",
            "duplicate route name `r`",
        ),
        case(
            "duplicate listener across blocks",
            "listeners {\n  listener \"l\" { address \"127.0.0.1:1\"; }\n}\nlisteners {\n  listener @@\"l\" { address \"127.0.0.1:2\"; }\n}\n",
            "duplicate listener name `l`",
        ),
        with_help(
            "duplicate property node",
            "server {\n  worker-threads 1\n  @@worker-threads 2\n}\n",
            "duplicate `worker-threads`",
            "line 2",
        ),
        case(
            "duplicate target",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\"\n    @@target \"127.0.0.1:1\"\n  }\n}\n",
            "duplicate target `127.0.0.1:1`",
        ),
        case(
            "duplicate server block",
            "server {\n}\n@@server {\n}\n",
            "duplicate `server`",
        ),
        // --- dangling references
        with_help(
            "unknown upstream",
            "routes {\n  route \"r\" { upstream @@\"apo\"; }\n}\n",
            "unknown upstream `apo`",
            "did you mean `api`?",
        ),
        case(
            "unknown filter",
            "routes {\n  route \"r\" {\n    upstream \"api\"\n    filters @@\"nope\"\n  }\n}\n",
            "unknown filter `nope`",
        ),
        case(
            "unknown agent",
            "routes {\n  route \"r\" {\n    upstream \"api\"\n    agents @@\"auth\"\n  }\n}\n",
            "unknown agent `auth`",
        ),
        case(
            "unknown default route",
            "listeners {\n  listener \"l\" {\n    address \"127.0.0.1:1\"\n    default-route @@\"home\"\n  }\n}\n",
            "unknown route `home`",
        ),
        // --- features proxies cannot run yet (config/src/compile/unsupported.rs)
        case(
            "redis sentinel url without a master",
            "filters {\n  filter \"f\" {\n    type \"rate-limit\"\n    max-rps 1\n    backend \"redis\"\n    redis-url @@\"redis+sentinel://127.0.0.1:26379\"\n  }\n}\n",
            "name the master after the hosts",
        ),
        with_help(
            "route failure-mode open without agents",
            "routes {\n  route \"r\" {\n    upstream \"api\"\n    policies {\n      @@failure-mode \"open\"\n    }\n  }\n}\n",
            "route `failure-mode \"open\"` needs agents",
            "list the route's `agents`",
        ),
        // --- agents (issue 14)
        with_help(
            "agent timeout on a route without agents",
            "routes {\n  route \"r\" {\n    upstream \"api\"\n    policies {\n      @@agent-timeout-ms 50\n    }\n  }\n}\n",
            "`agent-timeout-ms` on a route without agents",
            "list the route's `agents`",
        ),
        with_help(
            "unknown agent body mode",
            "agents {\n  agent \"a\" {\n    unix-socket \"/run/a.sock\"\n    body @@\"buffer\"\n  }\n}\n",
            "body",
            "did you mean `buffered`?",
        ),
        case(
            "agent over https",
            "agents {\n  agent \"a\" {\n    grpc @@\"https://127.0.0.1:50051\"\n  }\n}\n",
            "TLS to agents is not supported yet",
        ),
        case(
            "agent without transport",
            "agents {\n  @@agent \"a\" {\n    timeout-ms 5\n  }\n}\n",
            "agent `a` has no transport",
        ),
        case(
            "agent relative socket",
            "agents {\n  agent \"a\" {\n    unix-socket @@\"run/a.sock\"\n  }\n}\n",
            "must be absolute",
        ),
        case(
            "agent listed twice in a route",
            "agents {\n  agent \"a\" { unix-socket \"/run/a.sock\"; }\n}\nroutes {\n  route \"r\" {\n    upstream \"api\"\n    agents \"a\" @@\"a\"\n  }\n}\n",
            "agent `a` is listed twice",
        ),
        // --- conflicting or missing options
        case(
            "two path matchers",
            "routes {\n  route \"r\" {\n    matches {\n      path-prefix \"/a\"\n      @@path \"/b\"\n    }\n    upstream \"api\"\n  }\n}\n",
            "`path` conflicts with `path-prefix` on line 4",
        ),
        case(
            "targets with dns discovery",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\"\n    @@discovery \"dns\" { hostname \"x.internal\"; port 80; }\n  }\n}\n",
            "has both targets and discovery \"dns\"",
        ),
        case(
            "dns resolver by name",
            "upstreams {\n  upstream \"a\" {\n    discovery \"dns\" { hostname \"x.internal\"; port 80; resolver @@\"ns.internal:53\"; }\n  }\n}\n",
            "invalid resolver `ns.internal:53`: expected an IP address and port",
        ),
        with_help(
            "dns resolver and nameserver",
            "upstreams {\n  upstream \"a\" {\n    discovery \"dns\" {\n      hostname \"x.internal\"\n      port 80\n      resolver \"127.0.0.1:53\"\n      @@nameserver \"127.0.0.1:54\"\n    }\n  }\n}\n",
            "`nameserver` and `resolver` are the same option",
            "keep one",
        ),
        case(
            "negative empty grace",
            "upstreams {\n  upstream \"a\" {\n    discovery \"consul\" { address \"127.0.0.1:8500\"; service \"s\"; empty-grace-secs @@-1; }\n  }\n}\n",
            "empty-grace-secs",
        ),
        case(
            "no targets",
            "upstreams {\n  @@upstream \"a\" {\n  }\n}\n",
            "upstream `a` has no targets",
        ),
        case(
            "route without upstream",
            "routes {\n  @@route \"r\" {\n    matches { path \"/\"; }\n  }\n}\n",
            "route `r` has no `upstream`",
        ),
        case(
            "https without tls",
            "listeners {\n  listener \"l\" {\n    address \"127.0.0.1:1\"\n    @@protocol \"https\"\n  }\n}\n",
            "uses https but has no `tls` block",
        ),
        case(
            "redis option on local backend",
            "filters {\n  filter \"f\" {\n    type \"rate-limit\"\n    max-rps 1\n    @@redis-url \"redis://127.0.0.1:6379\"\n  }\n}\n",
            "Redis options need `backend \"redis\"`",
        ),
        case(
            "redis backend without url",
            "filters {\n  filter \"f\" {\n    type \"rate-limit\"\n    max-rps 1\n    @@backend \"redis\"\n  }\n}\n",
            "backend \"redis\" needs `redis-url`",
        ),
        case(
            "consistent hash without key",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\"\n    load-balancing @@\"consistent_hash\"\n  }\n}\n",
            "consistent_hash needs a `key`",
        ),
        case(
            "key on round robin",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\"\n    load-balancing \"round_robin\" {\n      @@key \"path\"\n    }\n  }\n}\n",
            "`key` only applies to consistent_hash",
        ),
        case(
            "agent with two transports",
            "agents {\n  agent \"a\" {\n    unix-socket \"/run/a.sock\"\n    @@grpc \"http://127.0.0.1:5\"\n  }\n}\n",
            "agent `a` has two transports",
        ),
        case(
            "agent without transport",
            "agents {\n  @@agent \"a\" {\n    timeout-ms 5\n  }\n}\n",
            "agent `a` has no transport",
        ),
        case(
            "filter without type",
            "filters {\n  @@filter \"f\" {\n    max-rps 1\n  }\n}\n",
            "filter `f` has no `type`",
        ),
        case(
            "unsupported filter type",
            "filters {\n  filter \"f\" {\n    type @@\"cors\"\n  }\n}\n",
            "filter type `cors` is not supported yet",
        ),
        with_help(
            "inline rate limit policy",
            "routes {\n  route \"r\" {\n    upstream \"api\"\n    policies {\n      @@rate-limit { requests-per-second 10; }\n    }\n  }\n}\n",
            "`rate-limit` is not supported yet",
            "filters",
        ),
        case(
            "tracing without endpoint",
            "observability {\n  @@tracing {\n    sampling-rate 0.5\n  }\n}\n",
            "tracing is enabled but has no collector endpoint",
        ),
        case(
            "health timeout above interval",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\"\n    @@health-check {\n      interval-secs 2\n      timeout-secs 5\n    }\n  }\n}\n",
            "longer than `interval-secs`",
        ),
        // --- addresses, URLs, regexes, names, durations
        case(
            "address without port",
            "upstreams {\n  upstream \"a\" { target @@\"127.0.0.1\"; }\n}\n",
            "expected host:port",
        ),
        case(
            "port out of range",
            "listeners {\n  listener \"l\" { address @@\"127.0.0.1:70000\"; }\n}\n",
            "is not a number 0-65535",
        ),
        case(
            "bad ip",
            "upstreams {\n  upstream \"a\" { target @@\"300.0.0.1:80\"; }\n}\n",
            "bad IP address",
        ),
        case(
            "bad redis url",
            "filters {\n  filter \"f\" {\n    type \"rate-limit\"\n    max-rps 1\n    backend \"redis\"\n    redis-url @@\"http://127.0.0.1:6379\"\n  }\n}\n",
            "scheme must be `redis` or `rediss`",
        ),
        case(
            "bad grpc url",
            "agents {\n  agent \"a\" { grpc @@\"not a url\"; }\n}\n",
            "invalid URL",
        ),
        case(
            "bad regex",
            "routes {\n  route \"r\" {\n    matches { path-regex @@\"^/(unclosed\"; }\n    upstream \"api\"\n  }\n}\n",
            "invalid regex",
        ),
        case(
            "path without slash",
            "routes {\n  route \"r\" {\n    matches { path-prefix @@\"api\"; }\n    upstream \"api\"\n  }\n}\n",
            "must start with `/`",
        ),
        case(
            "bad resource name",
            "upstreams {\n  upstream @@\"my upstream\" { target \"127.0.0.1:1\"; }\n}\n",
            "invalid name `my upstream`",
        ),
        case(
            "zero timeout",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\"\n    timeouts { @@connect-ms 0; }\n  }\n}\n",
            "must be greater than zero",
        ),
        case(
            "duration too long",
            "server {\n  graceful-shutdown-timeout-secs @@99999\n}\n",
            "between 0 and 3600",
        ),
        case(
            "timeout set twice",
            "upstreams {\n  upstream \"a\" {\n    target \"127.0.0.1:1\"\n    timeouts {\n      connect-secs 1\n      @@connect-ms 500\n    }\n  }\n}\n",
            "`connect` timeout is set twice",
        ),
        case(
            "bad env reference",
            "listeners {\n  listener \"l\" { address @@\"${ADDR\"; }\n}\n",
            "unterminated",
        ),
        case(
            "bad header name",
            "routes {\n  route \"r\" {\n    matches { header @@\"X Bad\"; }\n    upstream \"api\"\n  }\n}\n",
            "invalid header name",
        ),
        case(
            "bad host pattern",
            "routes {\n  route \"r\" {\n    matches { host @@\"exa mple.com\"; }\n    upstream \"api\"\n  }\n}\n",
            "not a valid host name",
        ),
        // --- KDL syntax errors
        case(
            "unclosed string",
            "routes {\n  route \"r\" {\n    upstream @@\"api\n  }\n}\n",
            "KDL syntax error",
        ),
        case(
            "unclosed block",
            "server @@{\n  worker-threads 1\n",
            "KDL syntax error",
        ),
        case(
            "bad number",
            "server {\n  worker-threads @@1x\n}\n",
            "KDL syntax error",
        ),
    ]
}

fn locate(marked: &str) -> (String, usize, usize) {
    let at = marked.find("@@").expect("case has a @@ marker");
    let text = marked.replacen("@@", "", 1);
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (text, line, column)
}

#[test]
fn every_invalid_document_fails_at_the_right_place() {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let (text, line, column) = locate(c.doc);
        // Most cases reference upstream "api"; give it to them so the only
        // error is the one under test.
        let doc = if text.contains("upstreams") {
            text.clone()
        } else {
            format!("{text}{BASE_UPSTREAM}")
        };
        let diagnostics = match sentinel_config::compile("case.kdl", &doc) {
            Ok(_) => {
                failures.push(format!("{}: compiled but should fail", c.name));
                continue;
            }
            Err(d) => d,
        };
        let hit = diagnostics.iter().find(|d| d.message.contains(c.message));
        let Some(d) = hit else {
            failures.push(format!(
                "{}: no diagnostic contains {:?}; got:\n{}",
                c.name, c.message, diagnostics
            ));
            continue;
        };
        if (d.line, d.column) != (line, column) {
            failures.push(format!(
                "{}: expected {}:{}, got {}:{} ({})",
                c.name, line, column, d.line, d.column, d.message
            ));
        }
        if let Some(help) = c.help
            && !d.help.as_deref().unwrap_or("").contains(help)
        {
            failures.push(format!("{}: help {:?} lacks {:?}", c.name, d.help, help));
        }
        let rendered = diagnostics.render(false);
        if !rendered.contains(&format!("case.kdl:{line}:{column}")) {
            failures.push(format!(
                "{}: rendering lacks file:line:column\n{rendered}",
                c.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn all_errors_are_reported_in_one_pass() {
    let doc = "server {\n  wokers 1\n}\nupstreams {\n  upstream \"a\" { target \"bad\"; }\n}\nroutes {\n  route \"r\" { upstream \"zzz\"; }\n}\n";
    let d = sentinel_config::compile("many.kdl", doc).unwrap_err();
    let lines: Vec<usize> = d.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![2, 5, 8], "{d}");
}

#[test]
fn kdl_v1_documents_are_accepted() {
    let v1 = "observability {\n  metrics { enabled true; }\n}\nlisteners {\n  listener \"l\" { address \"127.0.0.1:1\"; http2 false; }\n}\nupstreams {\n  upstream \"a\" { target \"127.0.0.1:2\" weight=2; }\n}\nroutes {\n  route \"r\" { upstream \"a\"; }\n}\n";
    let v2 = v1.replace(" true", " #true").replace(" false", " #false");
    let a = sentinel_config::compile("v1.kdl", v1).unwrap_or_else(|d| panic!("{d}"));
    let b = sentinel_config::compile("v2.kdl", &v2).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(a.config_hash(), b.config_hash());
}

#[test]
fn diagnostics_serialize_for_the_api() {
    let d = sentinel_config::compile("x.kdl", "sever {\n}\n").unwrap_err();
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["diagnostics"][0]["line"], 1);
    assert_eq!(json["diagnostics"][0]["column"], 1);
    assert_eq!(json["diagnostics"][0]["help"], "did you mean `server`?");
}

#[test]
fn the_seeds_tracing_example_compiles_and_propagation_is_w3c_or_b3() {
    // seeds/000: `observability { tracing { backend "otlp" { endpoint … }
    // sampling-rate service-name propagation "w3c" } }`, runnable since
    // issue 15.
    for propagation in ["w3c", "b3"] {
        let doc = format!(
            "observability {{\n  tracing {{\n    backend \"otlp\" {{\n      endpoint \"http://jaeger-collector:4317\"\n    }}\n    sampling-rate 0.01\n    service-name \"sentinel\"\n    propagation \"{propagation}\"\n  }}\n}}\nupstreams {{\n  upstream \"u\" {{ target \"127.0.0.1:1\"; }}\n}}\nroutes {{\n  route \"r\" {{ upstream \"u\"; }}\n}}\n"
        );
        let snapshot = sentinel_config::compile("seed.kdl", &doc)
            .unwrap_or_else(|d| panic!("{}", d.render(false)));
        let t = snapshot
            .settings
            .observability
            .and_then(|o| o.tracing)
            .expect("tracing settings");
        assert!(t.enabled);
        assert_eq!(t.otlp_endpoint, "http://jaeger-collector:4317");
        assert_eq!(t.sampling_rate, 0.01);
        assert_eq!(t.service_name, "sentinel");
        assert_eq!(t.propagation, propagation);
    }
    let d = sentinel_config::compile(
        "bad.kdl",
        "observability {\n  tracing {\n    backend \"otlp\" { endpoint \"http://c:4317\"; }\n    propagation \"jaeger\"\n  }\n}\n",
    )
    .unwrap_err();
    assert!(d.to_string().contains("jaeger"), "{d}");
}
