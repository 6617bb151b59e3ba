//! Logging and metrics set-up, and the names of every metric the proxy
//! exports (docs/operations.md lists them; a tidy test keeps them in sync).
//!
//! Logging is installed once at start and follows the live config from
//! then on: [`apply_logging`] runs whenever a config goes live (standalone
//! file, SIGHUP, control-plane response, last-good cache), so
//! `observability.logging` means the same in both modes. `RUST_LOG`, when
//! set, keeps deciding the level. The switch is two atomics read by every
//! log line; no lock is taken on the logging path.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sentinel_proto as pb;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber, span};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Every metric the proxy registers.
pub const METRICS: &[&str] = &[
    "sentinel_requests_total",
    "sentinel_request_duration_seconds",
    "sentinel_upstream_health",
    "sentinel_upstream_ejections_total",
    "sentinel_upstream_retries_total",
    "sentinel_upstream_requests_total",
    "sentinel_upstream_request_duration_seconds",
    "sentinel_circuit_breaker_state",
    "sentinel_circuit_breaker_trips_total",
    "sentinel_rate_limit_decisions_total",
    "sentinel_rate_limit_redis_decisions_total",
    "sentinel_rate_limit_backend_up",
    "sentinel_rate_limit_redis_latency_seconds",
    "sentinel_rate_limit_redis_errors_total",
    "sentinel_rate_limit_fallback_total",
    "sentinel_agent_health",
    "sentinel_agent_latency_seconds",
    "sentinel_agent_decisions_total",
    "sentinel_agent_errors_total",
    "sentinel_agent_retries_total",
    "sentinel_agent_circuit_breaker_state",
    "sentinel_open_connections",
    "sentinel_config_reloads_total",
    "sentinel_config_applies_total",
    "sentinel_config_nacks_total",
    "sentinel_build_info",
];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder once; later calls return it.
pub fn metrics() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ];
            // Agents answer in tens of microseconds to milliseconds.
            let agent_buckets = [
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("sentinel_request_duration_seconds".into()),
                    &buckets,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("sentinel_agent_latency_seconds".into()),
                        &agent_buckets,
                    )
                })
                .and_then(upstream_buckets)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (tests): render an empty one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Buckets of the per-upstream attempt histogram: the request histogram's,
/// so a route's latency and its upstream's compare bucket by bucket.
fn upstream_buckets(
    builder: PrometheusBuilder,
) -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    builder.set_buckets_for_metric(
        Matcher::Full("sentinel_upstream_request_duration_seconds".into()),
        &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ],
    )
}

/// Log levels the config may name, from quietest to loudest.
const LEVELS: [(&str, LevelFilter); 5] = [
    ("error", LevelFilter::ERROR),
    ("warn", LevelFilter::WARN),
    ("info", LevelFilter::INFO),
    ("debug", LevelFilter::DEBUG),
    ("trace", LevelFilter::TRACE),
];

/// What the live config says about logging, as installed by [`init_logging`]
/// and changed by [`apply_logging`]. Only atomics: every log line reads them.
struct LogSwitch {
    json: AtomicBool,
    /// Index into [`LEVELS`]; ignored when `RUST_LOG` decides.
    level: AtomicU8,
    /// `RUST_LOG` was set at start: it decides the level, not the config.
    env_filter: bool,
}

static LOG_SWITCH: OnceLock<LogSwitch> = OnceLock::new();

fn level_index(logging: Option<&pb::Logging>) -> u8 {
    let name = logging.map(|l| l.level.as_str()).unwrap_or("info");
    LEVELS
        .iter()
        .position(|(n, _)| *n == name)
        .unwrap_or(2)
        .try_into()
        .unwrap_or(2)
}

fn is_json(logging: Option<&pb::Logging>) -> bool {
    logging.is_some_and(|l| l.format == pb::LogFormat::Json as i32)
}

/// Installs logging: `RUST_LOG` (wins for the level) or the config's level,
/// JSON or text. Both can change later through [`apply_logging`] without
/// a lock on the logging path: a text and a JSON formatter are both
/// installed and an atomic picks the one that writes. In JSON the event's
/// own `target` field (the access log's upstream target) wins over the
/// tracing target; access lines carry `kind=access`.
pub fn init_logging(logging: Option<&pb::Logging>) {
    let env_filter = EnvFilter::try_from_default_env().ok();
    let switch = LOG_SWITCH.get_or_init(|| LogSwitch {
        json: AtomicBool::new(is_json(logging)),
        level: AtomicU8::new(level_index(logging)),
        env_filter: env_filter.is_some(),
    });
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_target(false)
        .with_writer(std::io::stderr);
    let gate = if env_filter.is_none() {
        Some(LevelGate { switch })
    } else {
        None
    };
    let result = tracing_subscriber::registry()
        .with(FormatSwitch { text, json, switch })
        .with(env_filter)
        .with(gate)
        .try_init();
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
}

/// Applies a live config's `observability.logging` (format and level) to
/// the running process, in standalone and control-plane mode alike. The
/// level is left to `RUST_LOG` when it was set at start.
pub fn apply_logging(logging: Option<&pb::Logging>) {
    let Some(switch) = LOG_SWITCH.get() else {
        return;
    };
    let json = is_json(logging);
    let was_json = switch.json.swap(json, Ordering::AcqRel);
    let level = level_index(logging);
    let was_level = switch.level.swap(level, Ordering::AcqRel);
    if was_level != level && !switch.env_filter {
        // Cached per-callsite interest and the global maximum level were
        // computed for the old level.
        tracing::callsite::rebuild_interest_cache();
    }
    if was_json != json || (was_level != level && !switch.env_filter) {
        tracing::info!(
            format = if json { "json" } else { "text" },
            level = if switch.env_filter {
                "RUST_LOG"
            } else {
                LEVELS[usize::from(level)].0
            },
            "logging settings applied"
        );
    }
}

/// What `/admin/config` shows about logging.
pub fn logging_view() -> serde_json::Value {
    match LOG_SWITCH.get() {
        Some(s) => serde_json::json!({
            "format": if s.json.load(Ordering::Acquire) { "json" } else { "text" },
            "level": if s.env_filter {
                "RUST_LOG".to_string()
            } else {
                LEVELS[usize::from(s.level.load(Ordering::Acquire)).min(4)].0.to_string()
            },
        }),
        None => serde_json::Value::Null,
    }
}

/// The config's level as a global filter (when `RUST_LOG` is not set).
struct LevelGate {
    switch: &'static LogSwitch,
}

impl LevelGate {
    fn current(&self) -> LevelFilter {
        LEVELS[usize::from(self.switch.level.load(Ordering::Acquire)).min(4)].1
    }
}

impl<S: Subscriber> Layer<S> for LevelGate {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.current() >= *meta.level() {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        self.current() >= *meta.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.current())
    }
}

/// Both formatters see every span (each keeps its own rendering of span
/// fields); the switch decides which one writes an event.
struct FormatSwitch<T, J> {
    text: T,
    json: J,
    switch: &'static LogSwitch,
}

impl<S, T, J> Layer<S> for FormatSwitch<T, J>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    T: Layer<S>,
    J: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.text.on_register_dispatch(subscriber);
        self.json.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.text.on_layer(subscriber);
        self.json.on_layer(subscriber);
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.text.on_new_span(attrs, id, ctx.clone());
        self.json.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.text.on_record(id, values, ctx.clone());
        self.json.on_record(id, values, ctx);
    }

    fn on_follows_from(&self, id: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.text.on_follows_from(id, follows, ctx.clone());
        self.json.on_follows_from(id, follows, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if self.switch.json.load(Ordering::Acquire) {
            self.json.on_event(event, ctx);
        } else {
            self.text.on_event(event, ctx);
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.text.on_enter(id, ctx.clone());
        self.json.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.text.on_exit(id, ctx.clone());
        self.json.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.text.on_close(id.clone(), ctx.clone());
        self.json.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.text.on_id_change(old, new, ctx.clone());
        self.json.on_id_change(old, new, ctx);
    }
}

/// The config version `sentinel_build_info` reports: exactly one series,
/// for the live config. It is rendered by [`render`] rather than registered
/// with the recorder, because the Prometheus recorder cannot remove a label
/// set: a gauge per config hash would keep one series per config ever
/// applied (unbounded memory, and stale `config_version`s in every scrape).
static BUILD_INFO: Mutex<String> = Mutex::new(String::new());

/// Records the live config version for `sentinel_build_info`. `previous` is
/// kept for callers; only the live version is ever exported.
pub fn build_info(config_version: &str, _previous: Option<&str>) {
    if let Ok(mut live) = BUILD_INFO.lock() {
        live.clear();
        live.push_str(config_version);
    }
}

/// The Prometheus text for `/metrics`: every registered metric, then the one
/// `sentinel_build_info` series.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    let live = BUILD_INFO.lock().map(|v| v.clone()).unwrap_or_default();
    if live.is_empty() {
        // No config is live yet: there is no config version to report.
        return out;
    }
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    out.push_str("# TYPE sentinel_build_info gauge\n");
    out.push_str(&format!(
        "sentinel_build_info{{version=\"{}\",config_version=\"{}\"}} 1\n",
        escape(env!("CARGO_PKG_VERSION")),
        escape(&live)
    ));
    out
}

/// Histograms keep raw samples until aggregated; aggregate them regularly
/// so memory stays bounded when nobody scrapes `/metrics`.
pub fn spawn_upkeep() -> tokio::task::JoinHandle<()> {
    let handle = metrics();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}
