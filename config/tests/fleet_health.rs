//! `fleet-health` on upstreams: compiled to `Upstream.fleet_health`, off by
//! default, refused when not a boolean, and printed so it round-trips.

fn doc(extra: &str) -> String {
    format!(
        "upstreams {{\n  upstream \"api\" {{\n    target \"127.0.0.1:8080\"\n    {extra}\n  }}\n}}\n"
    )
}

fn fleet_health(extra: &str) -> bool {
    let s = sentinel_config::compile("t.kdl", &doc(extra)).unwrap_or_else(|d| panic!("{d}"));
    s.upstreams[0].fleet_health
}

#[test]
fn fleet_health_is_off_unless_asked_for() {
    assert!(!fleet_health(""));
    assert!(!fleet_health("fleet-health #false"));
    assert!(fleet_health("fleet-health #true"));
    // KDL 1.0 spelling.
    let v1 = "upstreams {\n  upstream \"api\" {\n    target \"127.0.0.1:8080\"\n    fleet-health true\n  }\n}\n";
    assert!(sentinel_config::compile("t.kdl", v1).unwrap().upstreams[0].fleet_health);
}

#[test]
fn fleet_health_must_be_a_boolean() {
    let d = sentinel_config::compile("t.kdl", &doc("fleet-health \"yes\""))
        .expect_err("a string is not a boolean");
    let first = d.iter().next().unwrap();
    assert_eq!(first.line, 4, "{}", first.message);
}

#[test]
fn fleet_health_round_trips_through_print() {
    let s = sentinel_config::compile("t.kdl", &doc("fleet-health #true")).unwrap();
    let printed = sentinel_config::print(&s);
    assert!(printed.contains("fleet-health #true"), "{printed}");
    let again =
        sentinel_config::compile("p.kdl", &printed).unwrap_or_else(|d| panic!("{d}\n{printed}"));
    assert_eq!(again.config_hash(), s.config_hash());
}
