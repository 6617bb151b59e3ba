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
