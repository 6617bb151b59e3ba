//! The design seeds' examples for rate limiting over Redis and service
//! discovery ("Distributed Deployment Patterns"), copied as written (KDL v1:
//! bare `true`), compile into what the proxies run.

use sentinel_config::proto as pb;

/// The examples, each completed with the listener/route it needs to be a
/// whole document.
const REDIS: &str = r#"
filters {
    filter "api-rate-limit" {
        type "rate-limit"
        max-rps 100
        burst 200
        key "client-ip"
        on-limit "reject"

        // Distributed backend configuration
        backend "redis"
        redis-url "redis://redis-cluster:6379"
        redis-prefix "sentinel:ratelimit:"
        redis-timeout-ms 50

        // Fallback behavior if Redis is unavailable
        fallback-to-local true
    }
    filter "global-rate-limit" {
        type "rate-limit"
        max-rps 1000
        burst 2000
        key "client-ip"

        backend "redis"
        // Redis Cluster endpoints
        redis-url "redis://redis-node-1:6379,redis-node-2:6379,redis-node-3:6379"
        redis-prefix "sentinel:rl:"
        redis-timeout-ms 100

        // Connection pool settings
        redis-pool-size 10
        redis-pool-timeout-ms 1000
    }
}
upstreams {
    upstream "api" {
        target "127.0.0.1:8080"
    }
}
routes {
    route "api" {
        upstream "api"
        filters "api-rate-limit" "global-rate-limit"
    }
}
"#;

const DISCOVERY: &str = r#"
upstreams {
    upstream "api-backend" {
        discovery "kubernetes" {
            namespace "default"
            service "api-service"
            port "http"
            refresh-interval-secs 30
        }

        load-balancing "least_connections"

        health-check {
            type "http" {
                path "/health"
                expected-status 200
            }
            interval-secs 10
        }
    }
    upstream "payment-service" {
        discovery "consul" {
            address "consul.service.consul:8500"
            service "payment-api"
            datacenter "dc1"
            tag "production"
            refresh-interval-secs 15

            // Only include healthy services
            healthy-only true
        }

        load-balancing "round_robin"
    }
    upstream "backend-pool" {
        discovery "dns" {
            hostname "backend.internal.example.com"
            port 8080
            refresh-interval-secs 60

            // Resolve A/AAAA records
            record-type "A"
        }

        load-balancing "round_robin"
    }
}
routes {
    route "api" {
        matches {
            path-prefix "/api"
        }
        upstream "api-backend"
    }
    route "pay" {
        matches {
            path-prefix "/pay"
        }
        upstream "payment-service"
    }
    route "rest" {
        upstream "backend-pool"
    }
}
"#;

fn compile(name: &str, text: &str) -> sentinel_config::Snapshot {
    sentinel_config::compile(name, text).unwrap_or_else(|d| panic!("{}", d.render(false)))
}

#[test]
fn the_seeds_redis_rate_limit_examples_compile() {
    let s = compile("redis.kdl", REDIS);
    let limit = |name: &str| {
        let f = s.filters.iter().find(|f| f.name == name).expect(name);
        match &f.kind {
            Some(pb::filter::Kind::RateLimit(rl)) => rl.clone(),
            _ => panic!("{name} is a rate limit"),
        }
    };
    let api = limit("api-rate-limit");
    assert_eq!(api.backend, pb::RateLimitBackend::Redis as i32);
    let redis = api.redis.unwrap();
    assert_eq!(redis.url, "redis://redis-cluster:6379");
    assert_eq!((redis.timeout_ms, redis.fallback_to_local), (50, true));
    let global = limit("global-rate-limit");
    let redis = global.redis.unwrap();
    assert_eq!(
        redis.url,
        "redis://redis-node-1:6379,redis-node-2:6379,redis-node-3:6379"
    );
    assert_eq!((redis.pool_size, redis.pool_timeout_ms), (10, 1000));
    assert_eq!(redis.prefix, "sentinel:rl:");
}

#[test]
fn the_seeds_discovery_examples_compile() {
    let s = compile("discovery.kdl", DISCOVERY);
    let source = |name: &str| {
        s.upstreams
            .iter()
            .find(|u| u.name == name)
            .and_then(|u| u.discovery.clone())
            .and_then(|d| d.source)
            .expect(name)
    };
    let pb::discovery::Source::Kubernetes(k) = source("api-backend") else {
        panic!("kubernetes")
    };
    assert_eq!(
        (k.namespace.as_str(), k.service.as_str(), k.port.as_str()),
        ("default", "api-service", "http")
    );
    let pb::discovery::Source::Consul(c) = source("payment-service") else {
        panic!("consul")
    };
    assert_eq!(
        (c.datacenter.as_str(), c.tag.as_str(), c.healthy_only),
        ("dc1", "production", true)
    );
    let pb::discovery::Source::Dns(d) = source("backend-pool") else {
        panic!("dns")
    };
    assert_eq!((d.port, d.refresh_interval_ms), (8080, 60_000));
}

/// The agent examples of "Why Sentinel Doesn't Manage Agents", as written
/// (KDL v2 `#true`), completed with what a whole document needs. The
/// seed's "Set Appropriate Timeouts" fragments (`agent "auth" { timeout-ms
/// 50 }`) have no transport and are not whole agents; they are covered by
/// the full examples' `timeout-ms`.
pub const AGENTS: &str = r#"
agents {
    // Unix socket (local)
    agent "auth" type="auth" {
        unix-socket "/run/sentinel/auth.sock"
        timeout-ms 100
        failure-mode "closed"

        health-check {
            enabled #true
            interval-ms 5000
            timeout-ms 100
            healthy-threshold 2
            unhealthy-threshold 3
        }

        circuit-breaker {
            failure-threshold 5
            success-threshold 3
            timeout-seconds 30
        }

        connect-timeout-ms 1000

        retry {
            attempts 2
            backoff-ms 10
        }
    }

    // gRPC (local or remote)
    agent "waf" type="waf" {
        grpc "http://waf-service:50051"
        timeout-ms 200
        failure-mode "open"
    }

    agent "metrics" type="custom" {
        grpc "http://localhost:50052"
        failure-mode "open"  // Observability: fail open
    }
}
upstreams {
    upstream "api" {
        target "127.0.0.1:8080"
    }
}
routes {
    route "api" {
        upstream "api"
        agents "auth" "waf" "metrics"
    }
}
"#;

#[test]
fn the_seeds_agent_examples_compile() {
    let s = compile("agents.kdl", AGENTS);
    let agent = |name: &str| {
        s.agents
            .iter()
            .find(|a| a.name == name)
            .expect(name)
            .clone()
    };
    let auth = agent("auth");
    assert_eq!(auth.agent_type, "auth");
    assert_eq!(
        auth.transport,
        Some(pb::agent::Transport::UnixSocket(
            "/run/sentinel/auth.sock".into()
        ))
    );
    assert_eq!((auth.timeout_ms, auth.connect_timeout_ms), (100, 1000));
    assert_eq!(auth.failure_mode, pb::FailureMode::Closed as i32);
    let h = auth.health_check.unwrap();
    assert_eq!(
        (
            h.enabled,
            h.interval_ms,
            h.timeout_ms,
            h.healthy_threshold,
            h.unhealthy_threshold
        ),
        (true, 5000, 100, 2, 3)
    );
    let cb = auth.circuit_breaker.unwrap();
    assert_eq!(
        (cb.failure_threshold, cb.success_threshold, cb.open_ms),
        (5, 3, 30_000)
    );
    let r = auth.retry.unwrap();
    assert_eq!((r.attempts, r.backoff_ms), (2, 10));
    let waf = agent("waf");
    assert_eq!(
        waf.transport,
        Some(pb::agent::Transport::Grpc(
            "http://waf-service:50051".into()
        ))
    );
    assert_eq!(
        (waf.timeout_ms, waf.failure_mode),
        (200, pb::FailureMode::Open as i32)
    );
    assert_eq!(agent("metrics").timeout_ms, 100, "the seed's default");
    let route = &s.routes[0];
    assert_eq!(route.agents, ["auth", "waf", "metrics"]);
}
