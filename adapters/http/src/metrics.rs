//! Prometheus metrics (OpenMetrics text on `GET /metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use realm_engine::worker::{EngineHandle, LoadState};

use crate::names::*;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
    pub error_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishLabels {
    finished_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// When the process started and how long its cold-start phases took. The binary fills in the
/// model fetch and load; the server adds readiness and the first token.
#[derive(Debug)]
pub struct Startup {
    pub process_start: Instant,
    pub model_fetch: OnceLock<Duration>,
    pub model_load: OnceLock<Duration>,
    pub ready: OnceLock<Duration>,
    pub first_token: OnceLock<Duration>,
}

impl Startup {
    pub fn new(process_start: Instant) -> Self {
        Self {
            process_start,
            model_fetch: OnceLock::new(),
            model_load: OnceLock::new(),
            ready: OnceLock::new(),
            first_token: OnceLock::new(),
        }
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    finished: Family<FinishLabels, Counter>,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    running: Gauge,
    waiting: Gauge,
    in_flight: Gauge,
    kv_used: Gauge,
    kv_total: Gauge,
    kv_usage: FloatGauge,
    preemptions: Counter,
    steps: Counter,
    model_loaded: Gauge,
    startup: Family<PhaseLabels, FloatGauge>,
    /// One render at a time, so counters caught up from the engine are never counted twice.
    render_lock: Mutex<()>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let finished = Family::<FinishLabels, Counter>::default();
        let (prompt_tokens, generation_tokens, preemptions, steps) =
            (Counter::default(), Counter::default(), Counter::default(), Counter::default());
        // 1 ms .. ~33 s and 1 ms .. ~1 min.
        let ttft = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let itl = Histogram::new(exponential_buckets(0.001, 2.0, 12));
        let e2e = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let (running, waiting, in_flight, kv_used, kv_total, model_loaded) = Default::default();
        let kv_usage = FloatGauge::default();
        let startup = Family::<PhaseLabels, FloatGauge>::default();
        r.register(METRIC_REQUESTS, "HTTP requests by route, status and error type", requests.clone());
        r.register(METRIC_REQUEST_FINISHED, "Generations finished, by reason", finished.clone());
        r.register(METRIC_PROMPT_TOKENS, "Prompt tokens processed", prompt_tokens.clone());
        r.register(METRIC_GENERATION_TOKENS, "Tokens generated", generation_tokens.clone());
        r.register(METRIC_TTFT, "Time from request to first generated token", ttft.clone());
        r.register(METRIC_ITL, "Time between generated tokens of one stream", itl.clone());
        r.register(METRIC_E2E, "Time from request to its last token", e2e.clone());
        r.register(METRIC_RUNNING, "Sequences in the running batch", Gauge::clone(&running));
        r.register(METRIC_WAITING, "Sequences queued for admission", Gauge::clone(&waiting));
        r.register(METRIC_IN_FLIGHT, "Requests accepted and not yet finished", Gauge::clone(&in_flight));
        r.register(METRIC_KV_BLOCKS_USED, "KV cache blocks held by sequences", Gauge::clone(&kv_used));
        r.register(METRIC_KV_BLOCKS_TOTAL, "KV cache blocks in all", Gauge::clone(&kv_total));
        r.register(METRIC_KV_USAGE, "Share of KV cache blocks in use (0..1)", kv_usage.clone());
        r.register(METRIC_PREEMPTIONS, "Sequences preempted for KV cache space", preemptions.clone());
        r.register(METRIC_STEPS, "Forward steps run by the engine", steps.clone());
        r.register(METRIC_MODEL_LOADED, "1 once the model is loaded", Gauge::clone(&model_loaded));
        r.register(METRIC_STARTUP, "Cold-start phases in seconds", startup.clone());
        Self {
            registry: r,
            requests,
            finished,
            prompt_tokens,
            generation_tokens,
            ttft,
            itl,
            e2e,
            running,
            waiting,
            in_flight,
            kv_used,
            kv_total,
            kv_usage,
            preemptions,
            steps,
            model_loaded,
            startup,
            render_lock: Mutex::new(()),
        }
    }

    pub fn finished(&self, reason: &'static str) {
        self.finished.get_or_create(&FinishLabels { finished_reason: reason }).inc();
    }

    /// Reads the engine's counters and renders everything.
    pub fn render(&self, engine: &EngineHandle, startup: &Startup) -> String {
        let _one = self.render_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let s = engine.stats();
        let get = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
        self.running.set(get(&s.running) as i64);
        self.waiting.set(get(&s.waiting) as i64);
        self.in_flight.set(engine.in_flight() as i64);
        let (used, total) = (get(&s.blocks_in_use), get(&s.blocks_total));
        self.kv_used.set(used as i64);
        self.kv_total.set(total as i64);
        self.kv_usage.set(if total == 0 { 0.0 } else { used as f64 / total as f64 });
        catch_up(&self.preemptions, get(&s.preemptions));
        catch_up(&self.steps, get(&s.steps));
        catch_up(&self.finished.get_or_create(&FinishLabels { finished_reason: "cancelled" }), get(&s.cancelled));
        self.model_loaded.set(i64::from(matches!(engine.state(), LoadState::Ready(_))));
        for (phase, value) in [
            ("model_fetch", &startup.model_fetch),
            ("model_load", &startup.model_load),
            ("ready", &startup.ready),
            ("first_token", &startup.first_token),
        ] {
            if let Some(d) = value.get() {
                self.startup.get_or_create(&PhaseLabels { phase }).set(d.as_secs_f64());
            }
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Brings a counter up to a running total kept elsewhere.
fn catch_up(counter: &Counter, total: usize) {
    let seen = counter.get();
    if total as u64 > seen {
        counter.inc_by(total as u64 - seen);
    }
}
