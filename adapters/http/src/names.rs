//! Route and metric names in one place. Metric names follow vLLM's (`vllm:x` → `realm_x`) so its
//! dashboards and queue-depth autoscalers (KEDA, HPA) carry over; units are in the names.

pub const ROUTE_HEALTH: &str = "/health";
pub const ROUTE_READY: &str = "/ready";
pub const ROUTE_METRICS: &str = "/metrics";
pub const ROUTE_MODELS: &str = "/v1/models";
pub const ROUTE_CHAT: &str = "/v1/chat/completions";
pub const ROUTE_COMPLETIONS: &str = "/v1/completions";
pub const ROUTE_BATCH: &str = "/v1/batches/{id}";
/// CloudEvents: Knative delivers to `/`, the other triggers are pointed at `/events`.
pub const ROUTE_EVENTS: &str = "/events";
pub const ROUTE_ROOT: &str = "/";

/// Counter (`_total` is appended on exposition), labels `route`, `status`, `error_type`.
pub const METRIC_REQUESTS: &str = "realm_requests";
/// Counter by `finished_reason`: stop, length, and cancelled (the client went away).
pub const METRIC_REQUEST_FINISHED: &str = "realm_request_finished";
pub const METRIC_PROMPT_TOKENS: &str = "realm_prompt_tokens";
pub const METRIC_GENERATION_TOKENS: &str = "realm_generation_tokens";
pub const METRIC_TTFT: &str = "realm_time_to_first_token_seconds";
pub const METRIC_ITL: &str = "realm_inter_token_latency_seconds";
pub const METRIC_E2E: &str = "realm_e2e_request_latency_seconds";
pub const METRIC_RUNNING: &str = "realm_num_requests_running";
pub const METRIC_WAITING: &str = "realm_num_requests_waiting";
pub const METRIC_IN_FLIGHT: &str = "realm_num_requests_in_flight";
pub const METRIC_KV_BLOCKS_USED: &str = "realm_kv_cache_blocks_in_use";
pub const METRIC_KV_BLOCKS_TOTAL: &str = "realm_kv_cache_blocks_total";
pub const METRIC_KV_USAGE: &str = "realm_kv_cache_usage_perc";
pub const METRIC_PREEMPTIONS: &str = "realm_num_preemptions";
pub const METRIC_STEPS: &str = "realm_engine_steps";
pub const METRIC_MODEL_LOADED: &str = "realm_model_loaded";
/// Gauge by `phase`: model_fetch, model_load (their durations) and ready, first_token
/// (seconds from process start), so a cold start reads off one panel.
pub const METRIC_STARTUP: &str = "realm_startup_seconds";
