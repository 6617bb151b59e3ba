//! The discovery options added with issue 12 (`empty-grace-secs`,
//! `nameserver`, consul `ca-file`, kubernetes `kubeconfig` / `ca-file`):
//! they compile into their proto fields and the printed form reads back.

use sentinel_config::proto as pb;

const DOC: &str = r#"
upstreams {
    upstream "dns" {
        discovery "dns" {
            hostname "api.internal"
            port 8080
            nameserver "127.0.0.1:5353"
            empty-grace-secs 0
        }
    }
    upstream "consul" {
        discovery "consul" {
            address "https://127.0.0.1:8501"
            service "web"
            ca-file "/etc/consul/ca.pem"
            token "${CONSUL_TOKEN}"
            empty-grace-secs 45
        }
    }
    upstream "kube" {
        discovery "kubernetes" {
            service "web"
            port "http"
            kubeconfig "/etc/sentinel/kubeconfig"
            ca-file "/etc/sentinel/k8s-ca.pem"
        }
    }
}
"#;

fn check(s: &sentinel_config::Snapshot) {
    let source = |name: &str| {
        s.upstreams
            .iter()
            .find(|u| u.name == name)
            .and_then(|u| u.discovery.clone())
            .and_then(|d| d.source)
            .unwrap()
    };
    let pb::discovery::Source::Dns(d) = source("dns") else {
        panic!("dns")
    };
    assert_eq!(d.resolver, "127.0.0.1:5353");
    assert_eq!(d.empty_grace_ms, Some(0));
    let pb::discovery::Source::Consul(c) = source("consul") else {
        panic!("consul")
    };
    assert_eq!(c.ca_file, "/etc/consul/ca.pem");
    assert_eq!(c.token, "${CONSUL_TOKEN}");
    assert_eq!(c.empty_grace_ms, Some(45_000));
    let pb::discovery::Source::Kubernetes(k) = source("kube") else {
        panic!("kube")
    };
    assert_eq!(k.kubeconfig, "/etc/sentinel/kubeconfig");
    assert_eq!(k.ca_file, "/etc/sentinel/k8s-ca.pem");
    assert_eq!(k.empty_grace_ms, None, "unset = the runner's default");
}

#[test]
fn discovery_options_compile_into_their_fields() {
    let s =
        sentinel_config::compile("d.kdl", DOC).unwrap_or_else(|d| panic!("{}", d.render(false)));
    check(&s);
}

#[test]
fn printed_discovery_options_read_back() {
    // A complete snapshot of three static upstreams, then their discovery
    // blocks swapped in.
    let mut snapshot = sentinel_config::compile(
        "static.kdl",
        r#"upstreams {
            upstream "consul" { target "127.0.0.1:1"; }
            upstream "dns" { target "127.0.0.1:1"; }
            upstream "kube" { target "127.0.0.1:1"; }
        }"#,
    )
    .unwrap();
    let sources = vec![
        (
            "consul",
            pb::discovery::Source::Consul(pb::ConsulDiscovery {
                address: "https://127.0.0.1:8501".into(),
                service: "web".into(),
                ca_file: "/etc/consul/ca.pem".into(),
                token: "${CONSUL_TOKEN}".into(),
                empty_grace_ms: Some(45_000),
                refresh_interval_ms: 15_000,
                ..Default::default()
            }),
        ),
        (
            "dns",
            pb::discovery::Source::Dns(pb::DnsDiscovery {
                hostname: "api.internal".into(),
                port: 8080,
                record_type: pb::DnsRecordType::A as i32,
                refresh_interval_ms: 30_000,
                resolver: "127.0.0.1:5353".into(),
                empty_grace_ms: Some(0),
            }),
        ),
        (
            "kube",
            pb::discovery::Source::Kubernetes(pb::KubernetesDiscovery {
                namespace: "default".into(),
                service: "web".into(),
                port: "http".into(),
                refresh_interval_ms: 30_000,
                kubeconfig: "/etc/sentinel/kubeconfig".into(),
                ca_file: "/etc/sentinel/k8s-ca.pem".into(),
                ..Default::default()
            }),
        ),
    ];
    for (name, source) in sources {
        let u = snapshot
            .upstreams
            .iter_mut()
            .find(|u| u.name == name)
            .unwrap();
        u.discovery = Some(pb::Discovery {
            source: Some(source),
        });
    }
    for e in &mut snapshot.endpoints {
        e.targets.clear();
    }
    let text = sentinel_config::print(&snapshot);
    for line in [
        "empty-grace-secs 0",
        "empty-grace-secs 45",
        "ca-file \"/etc/consul/ca.pem\"",
        "kubeconfig \"/etc/sentinel/kubeconfig\"",
        "ca-file \"/etc/sentinel/k8s-ca.pem\"",
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
    let s = sentinel_config::compile("printed.kdl", &text)
        .unwrap_or_else(|d| panic!("{}\n{text}", d.render(false)));
    check(&s);
}
