//! The `tls` block on upstreams: what it compiles to, what it refuses (with
//! located diagnostics), and that the printed form round-trips.

use sentinel_config::proto as pb;

fn doc(tls: &str) -> String {
    format!(
        "upstreams {{\n  upstream \"api\" {{\n    target \"127.0.0.1:8443\"\n    {tls}\n  }}\n}}\n"
    )
}

fn compile_tls(tls: &str) -> Option<pb::UpstreamTls> {
    let s = sentinel_config::compile("t.kdl", &doc(tls)).unwrap_or_else(|d| panic!("{d}"));
    s.upstreams[0].tls.clone()
}

/// The first diagnostic, with its line and column.
fn error(tls: &str) -> (String, Option<String>, usize, usize) {
    let d = sentinel_config::compile("t.kdl", &doc(tls)).expect_err("should not compile");
    let first = d.iter().next().expect("at least one diagnostic");
    (
        first.message.clone(),
        first.help.clone(),
        first.line,
        first.column,
    )
}

#[test]
fn no_tls_block_means_plaintext() {
    assert_eq!(compile_tls(""), None);
}

#[test]
fn an_empty_tls_block_uses_system_roots_and_http1() {
    let t = compile_tls("tls {}").unwrap();
    assert_eq!(t.sni, "");
    assert_eq!(t.ca_file, "");
    assert!(!t.insecure_skip_verify);
    assert_eq!(t.alpn, vec!["http/1.1".to_string()]);
}

#[test]
fn every_field_compiles_and_env_references_stay_unresolved() {
    let t = compile_tls(
        r#"tls {
      sni "api.internal"
      ca-file "${CERTS:-/etc/sentinel}/ca.pem"
      client-cert "/etc/sentinel/client.pem"
      client-key "${CLIENT_KEY}"
      alpn "h2" "http/1.1"
    }"#,
    )
    .unwrap();
    assert_eq!(t.sni, "api.internal");
    assert_eq!(t.ca_file, "${CERTS:-/etc/sentinel}/ca.pem");
    assert_eq!(t.client_cert_file, "/etc/sentinel/client.pem");
    assert_eq!(t.client_key_file, "${CLIENT_KEY}");
    assert_eq!(t.alpn, vec!["h2".to_string(), "http/1.1".to_string()]);
}

#[test]
fn printed_form_round_trips_with_the_same_hash() {
    let text = doc(r#"tls {
      sni "api.internal"
      ca-file "/ca.pem"
      client-cert "/c.pem"
      client-key "/c.key"
      alpn "h2"
    }"#);
    let a = sentinel_config::compile("a.kdl", &text).unwrap_or_else(|d| panic!("{d}"));
    let printed = sentinel_config::print(&a);
    assert!(printed.contains("tls {"), "{printed}");
    assert!(printed.contains("insecure-skip-verify #false"), "{printed}");
    let b =
        sentinel_config::compile("b.kdl", &printed).unwrap_or_else(|d| panic!("{d}\n{printed}"));
    assert_eq!(a.config_hash(), b.config_hash());
    assert_eq!(a.upstreams[0].tls, b.upstreams[0].tls);

    let skip = sentinel_config::compile("s.kdl", &doc("tls { insecure-skip-verify #true; }"))
        .unwrap_or_else(|d| panic!("{d}"));
    let printed = sentinel_config::print(&skip);
    let again = sentinel_config::compile("s2.kdl", &printed).unwrap_or_else(|d| panic!("{d}"));
    assert!(
        again.upstreams[0]
            .tls
            .as_ref()
            .unwrap()
            .insecure_skip_verify
    );
}

#[test]
fn client_cert_without_key_is_refused_where_it_is_written() {
    let (message, help, line, column) = error("tls { client-cert \"/c.pem\"; }");
    assert!(
        message.contains("`client-cert` without `client-key`"),
        "{message}"
    );
    assert!(help.unwrap_or_default().contains("client-key"));
    assert_eq!((line, column), (4, 11));
    let (message, ..) = error("tls { client-key \"/c.key\"; }");
    assert!(
        message.contains("`client-key` without `client-cert`"),
        "{message}"
    );
}

#[test]
fn unknown_alpn_and_bad_sni_are_located_errors() {
    let (message, help, line, column) = error("tls { alpn \"h3\"; }");
    assert!(message.contains("unknown ALPN protocol `h3`"), "{message}");
    assert!(help.unwrap_or_default().contains("h2"));
    assert_eq!((line, column), (4, 16));

    let (message, _, line, column) = error("tls { sni \"bad name!\"; }");
    assert!(message.contains("not a valid host name"), "{message}");
    assert_eq!((line, column), (4, 15));

    let (message, ..) = error("tls { sni \"10.0.0.1\"; }");
    assert!(message.contains("DNS name"), "{message}");

    let (message, ..) = error("tls { ca-file \"\"; }");
    assert!(message.contains("file path"), "{message}");
}

#[test]
fn ca_file_with_insecure_skip_verify_is_contradictory() {
    let (message, _, line, column) =
        error("tls { ca-file \"/ca.pem\"; insecure-skip-verify #true; }");
    assert!(message.contains("no effect"), "{message}");
    assert_eq!((line, column), (4, 11));
}

#[test]
fn unknown_nodes_in_tls_get_a_suggestion() {
    let (message, help, ..) = error("tls { ca-fil \"/ca.pem\"; }");
    assert!(message.contains("unknown node `ca-fil`"), "{message}");
    assert!(help.unwrap_or_default().contains("ca-file"));
}
