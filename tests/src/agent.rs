//! A scriptable agent for tests, built on the agent SDK (`sentinel-agent`):
//! it answers with whatever decision the test sets, after an optional
//! delay, counts its calls, keeps the last event, and can be killed (every
//! connection dropped at once, as a crashed process) and started again on
//! the same socket or port.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentinel_agent::{
    Agent, BodyDecision, BodyEvent, Listen, RequestDecision, RequestEvent, ResponseDecision,
    ResponseEvent,
};

/// What the scripted agent answers.
#[derive(Clone, Debug)]
pub enum Script {
    /// This decision, as is (also garbage: a status the proxy must refuse).
    Decide(Box<RequestDecision>),
    /// Allow, telling the upstream what body the agent saw:
    /// `x-agent-body-len` and `x-agent-body-truncated`.
    ReportBody,
}

/// The agent's behaviour and what it observed.
#[derive(Debug)]
pub struct Scripted {
    pub script: Mutex<Script>,
    pub delay_ms: AtomicU64,
    pub calls: AtomicUsize,
    pub response_calls: AtomicUsize,
    pub serving: AtomicBool,
    pub last: Mutex<Option<RequestEvent>>,
    /// Response header mutations answered to `on_response`.
    pub on_response: Mutex<ResponseDecision>,
    /// `body "streamed"`: a piece containing these bytes is denied (403).
    pub body_marker: Mutex<Option<Vec<u8>>>,
    /// Every body event received, in order.
    pub body_events: Mutex<Vec<BodyEvent>>,
    /// Delay before answering a body event (to exceed `timeout-ms`).
    pub body_delay_ms: AtomicU64,
}

impl Default for Scripted {
    fn default() -> Self {
        Scripted {
            script: Mutex::new(Script::Decide(Box::new(sentinel_agent::decision::allow()))),
            delay_ms: AtomicU64::new(0),
            calls: AtomicUsize::new(0),
            response_calls: AtomicUsize::new(0),
            serving: AtomicBool::new(true),
            last: Mutex::new(None),
            on_response: Mutex::new(ResponseDecision::default()),
            body_marker: Mutex::new(None),
            body_events: Mutex::new(Vec::new()),
            body_delay_ms: AtomicU64::new(0),
        }
    }
}

impl Scripted {
    pub fn set(&self, script: Script) {
        *self.script.lock().unwrap_or_else(|p| p.into_inner()) = script;
    }

    pub fn decide(&self, d: RequestDecision) {
        self.set(Script::Decide(Box::new(d)));
    }

    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn last_event(&self) -> Option<RequestEvent> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Agent for Scripted {
    async fn on_request(&self, event: RequestEvent) -> RequestDecision {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let script = self
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let d = match script {
            Script::Decide(d) => *d,
            Script::ReportBody => {
                use sentinel_agent::decision::DecisionExt;
                sentinel_agent::decision::allow()
                    .set_request_header("x-agent-body-len", &event.body.len().to_string())
                    .set_request_header("x-agent-body-truncated", &event.body_truncated.to_string())
            }
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(event);
        d
    }

    async fn on_response(&self, _event: ResponseEvent) -> ResponseDecision {
        self.response_calls.fetch_add(1, Ordering::SeqCst);
        self.on_response
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn on_request_body(&self, event: BodyEvent) -> BodyDecision {
        let delay = self.body_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let marker = self
            .body_marker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let hit = marker.is_some_and(|m| event.chunk.windows(m.len()).any(|w| w == m));
        self.body_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
        if hit {
            sentinel_agent::decision::deny_body(403, "the body carries the marker")
        } else {
            BodyDecision::default()
        }
    }

    fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }
}

/// A [`Scripted`] agent served on a Unix socket or a loopback port.
pub struct TestAgent {
    pub agent: Arc<Scripted>,
    pub listen: Listen,
    server: Option<sentinel_agent::Server>,
    _dir: Option<tempfile::TempDir>,
}

impl TestAgent {
    /// A Unix socket path in a fresh temp dir (not listening yet).
    pub fn unix_path() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("sentinel-agent-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("agent.sock");
        (dir, path)
    }

    /// Serves on a new Unix socket in a temp dir.
    pub async fn unix() -> TestAgent {
        let (dir, path) = Self::unix_path();
        let mut a = Self::at(Listen::Unix(path));
        a._dir = Some(dir);
        a.start().await;
        a
    }

    /// Serves gRPC on a free loopback port.
    pub async fn tcp() -> TestAgent {
        let mut a = Self::at(Listen::Tcp(crate::loopback(crate::free_port())));
        a.start().await;
        a
    }

    /// An agent that will listen on `listen` once started.
    pub fn at(listen: Listen) -> TestAgent {
        TestAgent {
            agent: Arc::new(Scripted::default()),
            listen,
            server: None,
            _dir: None,
        }
    }

    /// Keeps `dir` alive as long as the agent (the socket's directory).
    pub fn keep_dir(&mut self, dir: tempfile::TempDir) {
        self._dir = Some(dir);
    }

    /// What to write in the proxy's config: `unix-socket "…"` or `grpc "…"`.
    pub fn transport(&self) -> String {
        match &self.listen {
            Listen::Unix(p) => format!("unix-socket \"{}\"", p.display()),
            Listen::Tcp(a) => format!("grpc \"http://{a}\""),
        }
    }

    /// (Re)starts serving on the same socket or port.
    pub async fn start(&mut self) {
        let mut last = None;
        for _ in 0..100 {
            match sentinel_agent::serve_shared(self.listen.clone(), Arc::clone(&self.agent)).await {
                Ok(s) => {
                    self.server = Some(s);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("agent cannot listen on {}: {last:?}", self.listen);
    }

    /// Drops every connection and stops listening, as a crash would.
    pub fn kill(&mut self) {
        if let Some(s) = self.server.take() {
            s.kill();
        }
    }

    /// Connections accepted by the current server.
    pub fn connections(&self) -> usize {
        self.server.as_ref().map_or(0, |s| s.connections())
    }
}
