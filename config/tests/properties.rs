//! Property tests of the compiler's contract:
//! - the printed normalized form compiles back to the same snapshot;
//! - node order, comments and whitespace never change bytes or hashes;
//! - arbitrary input never panics the parser.

use proptest::prelude::*;
use proptest::sample::subsequence;

/// A KDL node with children, so that generated documents can be rendered
/// in any sibling order.
#[derive(Debug, Clone)]
struct Node {
    head: String,
    children: Vec<Node>,
}

fn leaf(head: impl Into<String>) -> Node {
    Node {
        head: head.into(),
        children: Vec::new(),
    }
}

fn block(head: impl Into<String>, children: Vec<Node>) -> Node {
    Node {
        head: head.into(),
        children,
    }
}

/// Renders `nodes`; `seed` permutes siblings and `noise` adds comments and
/// odd whitespace.
fn render(nodes: &[Node], seed: u64, noise: bool, depth: usize, out: &mut String) {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    if seed != 0 {
        let mut state = seed ^ (depth as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for i in (1..order.len()).rev() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            order.swap(i, (state >> 33) as usize % (i + 1));
        }
    }
    let pad = if noise {
        "\t ".repeat(depth)
    } else {
        "    ".repeat(depth)
    };
    for i in order {
        let n = &nodes[i];
        if noise {
            out.push_str(&format!("{pad}// comment {i}\n{pad}/* block */ "));
        } else {
            out.push_str(&pad);
        }
        out.push_str(&n.head);
        if n.children.is_empty() {
            out.push_str(if noise { "   \n\n" } else { "\n" });
        } else {
            out.push_str(" {\n");
            render(&n.children, seed.rotate_left(7), noise, depth + 1, out);
            out.push_str(&pad);
            out.push_str("}\n");
        }
    }
}

fn doc_text(nodes: &[Node], seed: u64, noise: bool) -> String {
    let mut s = String::new();
    render(nodes, seed, noise, 0, &mut s);
    s
}

fn upstream(index: usize) -> impl Strategy<Value = Node> {
    let targets = subsequence((1..=8u8).collect::<Vec<_>>(), 1..4);
    (
        targets,
        proptest::collection::vec(0u32..10, 4),
        any::<bool>(),
        prop_oneof![
            Just(None),
            Just(Some("\"round_robin\"".to_string())),
            Just(Some("\"weighted\"".to_string())),
            Just(Some("\"least_connections\"".to_string())),
            Just(Some("\"ip_hash\"".to_string())),
            Just(Some("\"random\"".to_string())),
            Just(Some("\"p2c\"".to_string())),
            prop_oneof![
                Just("cookie:sid"),
                Just("header:X-User"),
                Just("client-ip"),
                Just("path")
            ]
            .prop_map(|k| Some(format!("\"consistent_hash\" {{ key \"{k}\"; }}"))),
        ],
        proptest::option::of((1u64..20, 1u32..5, 1u32..5, any::<bool>())),
        proptest::option::of((1u32..5, subsequence(vec![500u32, 502, 503, 504], 0..3))),
        proptest::option::of((1u64..10_000, 1u64..60)),
        any::<bool>(),
        proptest::option::of((any::<bool>(), any::<bool>())),
    )
        .prop_map(
            move |(targets, weights, inline, lb, hc, retry, timeouts, breaker, tls)| {
                let mut children = Vec::new();
                let target_nodes: Vec<Node> = targets
                    .iter()
                    .zip(&weights)
                    .map(|(t, w)| {
                        if inline {
                            leaf(format!("target \"127.0.0.{t}:80{index}\" weight={w}"))
                        } else {
                            block(
                                "target",
                                vec![
                                    leaf(format!("address \"127.0.0.{t}:80{index}\"")),
                                    leaf(format!("weight {w}")),
                                ],
                            )
                        }
                    })
                    .collect();
                if inline {
                    children.extend(target_nodes);
                } else {
                    children.push(block("targets", target_nodes));
                }
                if let Some(lb) = lb {
                    children.push(leaf(format!("load-balancing {lb}")));
                }
                if let Some((interval, healthy, unhealthy, tcp)) = hc {
                    let mut h = vec![
                        leaf(format!("interval-secs {interval}")),
                        leaf(format!("timeout-secs {}", interval.min(3))),
                        leaf(format!("healthy-threshold {healthy}")),
                        leaf(format!("unhealthy-threshold {unhealthy}")),
                    ];
                    h.push(if tcp {
                        leaf("type \"tcp\"")
                    } else {
                        block(
                            "type \"http\"",
                            vec![leaf("path \"/ready\""), leaf("expected-status 204")],
                        )
                    });
                    children.push(block("health-check", h));
                }
                if let Some((attempts, statuses)) = retry {
                    let mut r = vec![leaf(format!("attempts {attempts}"))];
                    if !statuses.is_empty() {
                        r.push(leaf(format!(
                            "on-status {}",
                            statuses
                                .iter()
                                .map(u32::to_string)
                                .collect::<Vec<_>>()
                                .join(" ")
                        )));
                    }
                    children.push(block("retry", r));
                }
                if let Some((connect_ms, request_secs)) = timeouts {
                    children.push(block(
                        "timeouts",
                        vec![
                            leaf(format!("connect-ms {connect_ms}")),
                            leaf(format!("request-secs {request_secs}")),
                        ],
                    ));
                }
                if breaker {
                    children.push(block(
                        "circuit-breaker",
                        vec![leaf("failure-threshold 3"), leaf("timeout-seconds 7")],
                    ));
                }
                if let Some((h2, sni)) = tls {
                    let mut t = vec![leaf("ca-file \"${CERTS:-/etc/sentinel}/ca.pem\"")];
                    if h2 {
                        t.push(leaf("alpn \"h2\" \"http/1.1\""));
                    }
                    if sni {
                        t.push(leaf(format!("sni \"u{index}.internal\"")));
                    }
                    children.push(block("tls", t));
                }
                block(format!("upstream \"u{index}\""), children)
            },
        )
}

fn route(index: usize, upstreams: usize, filters: usize) -> impl Strategy<Value = Node> {
    (
        0..upstreams,
        prop_oneof![
            Just(None),
            Just(Some("\"high\"".to_string())),
            (0u32..2000).prop_map(|p| Some(p.to_string()))
        ],
        prop_oneof![
            Just(None),
            "[a-z]{1,8}".prop_map(|p| Some(format!("path-prefix \"/{p}\""))),
            "[a-z]{1,8}".prop_map(|p| Some(format!("path \"/{p}\""))),
            "[a-z]{1,8}".prop_map(|p| Some(format!("path-regex \"^/{p}/[0-9]+$\""))),
        ],
        subsequence(
            vec!["\"example.com\"", "\"*.example.org\"", "\"api.test\""],
            0..3,
        ),
        subsequence(vec!["\"GET\"", "\"POST\"", "\"delete\""], 0..3),
        proptest::option::of("[A-Za-z]{1,6}"),
        subsequence((0..filters).collect::<Vec<_>>(), 0..=filters.min(2)),
        proptest::option::of(("[a-z]{1,5}", "[ -~]{0,12}")),
    )
        .prop_map(
            move |(up, priority, path, hosts, methods, header, filters, set)| {
                let mut children = vec![leaf(format!("upstream \"u{up}\""))];
                if let Some(p) = priority {
                    children.push(leaf(format!("priority {p}")));
                }
                let mut m = Vec::new();
                if let Some(p) = path {
                    m.push(leaf(p));
                }
                if !hosts.is_empty() {
                    m.push(leaf(format!("host {}", hosts.join(" "))));
                }
                if !methods.is_empty() {
                    m.push(leaf(format!("method {}", methods.join(" "))));
                }
                if let Some(h) = header {
                    m.push(leaf(format!("header \"X-{h}\" \"v\"")));
                    m.push(leaf("query \"q\""));
                }
                if !m.is_empty() {
                    children.push(block("matches", m));
                }
                if !filters.is_empty() {
                    children.push(leaf(format!(
                        "filters {}",
                        filters
                            .iter()
                            .map(|f| format!("\"f{f}\""))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )));
                }
                if let Some((n, v)) = set {
                    let v = v.replace('\\', "\\\\").replace('"', "\\\"");
                    children.push(block(
                        "policies",
                        vec![
                            leaf("timeout-secs 9"),
                            block(
                                "request-headers",
                                vec![
                                    leaf(format!("set \"X-{n}\" \"{v}\"")),
                                    leaf("remove \"X-Debug\""),
                                ],
                            ),
                        ],
                    ));
                }
                block(format!("route \"r{index}\""), children)
            },
        )
}

fn filter(index: usize) -> impl Strategy<Value = Node> {
    (
        1u32..1000,
        proptest::option::of(1u32..5000),
        any::<bool>(),
        prop_oneof![
            Just("client-ip"),
            Just("path"),
            Just("header:X-Key,client-ip")
        ],
    )
        // `backend "redis"` is refused until issue 13 (compile/unsupported.rs);
        // that issue brings the Redis options back here.
        .prop_map(move |(rps, burst, explicit_backend, key)| {
            let mut c = vec![
                leaf("type \"rate-limit\""),
                leaf(format!("max-rps {rps}")),
                leaf(format!("key \"{key}\"")),
            ];
            if let Some(b) = burst {
                c.push(leaf(format!("burst {b}")));
            }
            if explicit_backend {
                c.push(leaf("backend \"local\""));
            }
            block(format!("filter \"f{index}\""), c)
        })
}

fn document() -> impl Strategy<Value = Vec<Node>> {
    (
        1usize..4,
        0usize..3,
        1usize..5,
        1usize..3,
        proptest::option::of((0u32..8, 1u64..60)),
    )
        .prop_flat_map(|(n_up, n_filters, n_routes, n_listeners, server)| {
            let ups: Vec<_> = (0..n_up).map(upstream).collect();
            let filters: Vec<_> = (0..n_filters).map(filter).collect();
            let routes: Vec<_> = (0..n_routes).map(|i| route(i, n_up, n_filters)).collect();
            (ups, filters, routes, Just(n_listeners), Just(server))
        })
        .prop_map(|(ups, filters, routes, n_listeners, server)| {
            let mut doc = vec![block("upstreams", ups), block("routes", routes)];
            if !filters.is_empty() {
                doc.push(block("filters", filters));
            }
            let listeners = (0..n_listeners)
                .map(|i| {
                    block(
                        format!("listener \"l{i}\""),
                        vec![
                            leaf(format!("address \"127.0.0.1:{}\"", 8000 + i)),
                            leaf("http2 #true"),
                        ],
                    )
                })
                .collect();
            doc.push(block("listeners", listeners));
            if let Some((threads, grace)) = server {
                doc.push(block(
                    "server",
                    vec![
                        leaf(format!("worker-threads {threads}")),
                        leaf(format!("graceful-shutdown-timeout-secs {grace}")),
                    ],
                ));
            }
            doc
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn printed_form_compiles_to_the_same_resources(doc in document()) {
        let text = doc_text(&doc, 0, false);
        let compiled = sentinel_config::compile("gen.kdl", &text).unwrap_or_else(|d| panic!("{}\n{text}", d.render(false)));
        let printed = sentinel_config::print(&compiled);
        let again = sentinel_config::compile("printed.kdl", &printed).unwrap_or_else(|d| panic!("{}\n{printed}", d.render(false)));
        prop_assert_eq!(&again, &compiled);
        prop_assert_eq!(again.resources(), compiled.resources());
        // Printing is a fixed point.
        prop_assert_eq!(sentinel_config::print(&again), printed);
    }

    #[test]
    fn node_order_comments_and_whitespace_do_not_change_hashes(doc in document(), seed in 1u64..u64::MAX) {
        let plain = sentinel_config::compile("a.kdl", &doc_text(&doc, 0, false)).unwrap();
        let shuffled_text = doc_text(&doc, seed, true);
        let shuffled = sentinel_config::compile("b.kdl", &shuffled_text).unwrap_or_else(|d| panic!("{}\n{shuffled_text}", d.render(false)));
        prop_assert_eq!(shuffled.config_hash(), plain.config_hash());
        prop_assert_eq!(shuffled.resources(), plain.resources());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = sentinel_config::compile("fuzz.kdl", &text);
    }

    #[test]
    fn mutated_valid_documents_never_panic(doc in document(), cut in any::<proptest::sample::Index>(), insert in "[{}\"=#;/ a-z0-9\\\\-]{0,6}") {
        let text = doc_text(&doc, 0, false);
        let at = cut.index(text.len() + 1);
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let mutated = format!("{}{}{}", &text[..at], insert, &text[at..]);
        if let Err(d) = sentinel_config::compile("m.kdl", &mutated) {
            prop_assert!(!d.is_empty());
            let _ = d.render(false);
        }
    }
}

#[test]
fn every_example_validates_and_round_trips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("kdl") {
            continue;
        }
        count += 1;
        let snapshot =
            sentinel_config::compile_file(&path).unwrap_or_else(|d| panic!("{}", d.render(false)));
        let printed = sentinel_config::print(&snapshot);
        let again = sentinel_config::compile("printed.kdl", &printed)
            .unwrap_or_else(|d| panic!("{}", d.render(false)));
        assert_eq!(
            again.config_hash(),
            snapshot.config_hash(),
            "{}",
            path.display()
        );
    }
    assert!(
        count >= 3,
        "expected at least 3 examples in {}",
        dir.display()
    );
}

/// Tidy: every node the compiler accepts is documented.
#[test]
fn every_accepted_node_is_documented() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let mut missing = Vec::new();
    for (block, nodes) in sentinel_config::schema() {
        for node in nodes {
            if !doc.contains(&format!("`{node}")) {
                missing.push(format!("{block} > {node}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
}
