//! Logging, installed once at start and following the live config from
//! then on: [`apply`] runs whenever a config goes live (the proxy's
//! standalone file, SIGHUP, control-plane response, last-good cache), so
//! `observability.logging` means the same in every mode. `RUST_LOG`, when
//! set, keeps deciding the level. The switch is two atomics read by every
//! log line; no lock is taken on the logging path.
//!
//! [`init`] can also install the OpenTelemetry layer of a
//! [`crate::trace::Pipeline`], so `tracing` spans of Sentinel's own code
//! become exported spans (the control plane's config-change spans).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber, span};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// What a config says about logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings<'a> {
    /// `error`, `warn`, `info`, `debug` or `trace`; anything else is `info`.
    pub level: &'a str,
    pub json: bool,
}

impl Default for LogSettings<'_> {
    fn default() -> Self {
        LogSettings {
            level: "info",
            json: false,
        }
    }
}

/// A layer installed under the formatters (the OpenTelemetry export).
pub type Extra = Box<dyn Layer<Registry> + Send + Sync>;

/// Log levels the config may name, from quietest to loudest.
const LEVELS: [(&str, LevelFilter); 5] = [
    ("error", LevelFilter::ERROR),
    ("warn", LevelFilter::WARN),
    ("info", LevelFilter::INFO),
    ("debug", LevelFilter::DEBUG),
    ("trace", LevelFilter::TRACE),
];

/// What the live config says about logging, as installed by [`init`]
/// and changed by [`apply`]. Only atomics: every log line reads them.
struct LogSwitch {
    json: AtomicBool,
    /// Index into [`LEVELS`]; ignored when `RUST_LOG` decides.
    level: AtomicU8,
    /// `RUST_LOG` was set at start: it decides the level, not the config.
    env_filter: bool,
}

static LOG_SWITCH: OnceLock<LogSwitch> = OnceLock::new();

fn level_index(settings: LogSettings<'_>) -> u8 {
    let name = settings.level;
    LEVELS
        .iter()
        .position(|(n, _)| *n == name)
        .unwrap_or(2)
        .try_into()
        .unwrap_or(2)
}

/// Installs logging: `RUST_LOG` (wins for the level) or the config's level,
/// JSON or text, and `extra` (the OpenTelemetry layer) when given. Level
/// and format can change later through [`apply`] without
/// a lock on the logging path: a text and a JSON formatter are both
/// installed and an atomic picks the one that writes. In JSON the event's
/// own `target` field (the access log's upstream target) wins over the
/// tracing target; access lines carry `kind=access`.
pub fn init(settings: LogSettings<'_>, extra: Option<Extra>) {
    let env_filter = EnvFilter::try_from_default_env().ok();
    let switch = LOG_SWITCH.get_or_init(|| LogSwitch {
        json: AtomicBool::new(settings.json),
        level: AtomicU8::new(level_index(settings)),
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
        .with(extra)
        .with(FormatSwitch { text, json, switch })
        .with(env_filter)
        .with(gate)
        .try_init();
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
}

/// Applies a live config's logging (format and level) to the running
/// process. The level is left to `RUST_LOG` when it was set at start.
pub fn apply(settings: LogSettings<'_>) {
    let Some(switch) = LOG_SWITCH.get() else {
        return;
    };
    let json = settings.json;
    let was_json = switch.json.swap(json, Ordering::AcqRel);
    let level = level_index(settings);
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

/// What the running process logs, for an admin view.
pub fn view() -> serde_json::Value {
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
