# Reads realm.yaml, checks it the way `realm function validate` does (functions/src/lib.rs and
# functions/realm.schema.json), and derives what every platform module needs: names, the
# container's REALM_* environment and the scaling settings.

locals {
  # realm_functions::EVENT_TYPES, MODEL_SCHEMES and the schema's enums.
  storage_events = ["google.cloud.storage.object.v1.finalized", "Microsoft.Storage.BlobCreated", "aws.s3.ObjectCreated", "aws.eventbridge.ObjectCreated"]
  event_types    = ["google.cloud.storage.object.v1.finalized", "Microsoft.Storage.BlobCreated", "aws.s3.ObjectCreated", "aws.eventbridge.ObjectCreated", "dev.realm.batch.v1.requested"]
  model_schemes  = ["s3", "gs", "az", "https", "file"]
  # realm_functions::OUTPUT_SCHEMES: where a batch route may write.
  output_schemes = ["s3", "gs", "az", "file"]
  backends       = ["auto", "cpu", "cuda", "wgpu"]
  precisions     = ["exact", "fast"]
  gpus           = ["none", "nvidia-l4", "nvidia-t4", "nvidia-a100", "nvidia-h100"]

  known_keys = {
    top        = ["name", "model", "runtime", "generation", "triggers", "scaling", "limits"]
    model      = ["uri", "sha256"]
    runtime    = ["backend", "context_length", "max_batch", "kv_cache_mib", "threads", "precision"]
    generation = ["temperature", "max_tokens", "top_p", "top_k", "min_p"]
    triggers   = ["http", "events", "batch"]
    route      = ["prefix", "events", "output"]
    scaling    = ["min_instances", "max_instances", "concurrency", "gpu"]
    limits     = ["requests_per_minute", "tokens_per_minute", "request_timeout_s", "max_tokens"]
  }

  # A file that is missing or not a YAML mapping is reported by manifest_path's validation
  # alone: {} keeps the rest defined and `problems` stays empty.
  text   = try(file(var.manifest_path), "")
  is_map = can(keys(yamldecode(local.text)))
  raw    = try(merge({}, yamldecode(local.text)), {}) # merge() refuses lists and scalars

  # Unknown keys are an error, with the key named (as the runtime's serde deny_unknown_fields).
  unknown_keys = concat(
    [for k in try(keys(local.raw), []) : k if !contains(local.known_keys.top, k)],
    [for k in try(keys(local.raw.model), []) : "model.${k}" if !contains(local.known_keys.model, k)],
    [for k in try(keys(local.raw.runtime), []) : "runtime.${k}" if !contains(local.known_keys.runtime, k)],
    [for k in try(keys(local.raw.generation), []) : "generation.${k}" if !contains(local.known_keys.generation, k)],
    [for k in try(keys(local.raw.triggers), []) : "triggers.${k}" if !contains(local.known_keys.triggers, k)],
    flatten([for i, r in try(tolist(local.raw.triggers.batch), []) : [for k in try(keys(r), []) : "triggers.batch[${i}].${k}" if !contains(local.known_keys.route, k)]]),
    [for k in try(keys(local.raw.scaling), []) : "scaling.${k}" if !contains(local.known_keys.scaling, k)],
    [for k in try(keys(local.raw.limits), []) : "limits.${k}" if !contains(local.known_keys.limits, k)],
  )

  # What the file says (null where it says nothing).
  given = {
    name                = try(local.raw.name, null)
    model_uri           = try(local.raw.model.uri, null)
    model_sha256        = try(local.raw.model.sha256, null)
    backend             = try(local.raw.runtime.backend, null)
    context_length      = try(local.raw.runtime.context_length, null)
    max_batch           = try(local.raw.runtime.max_batch, null)
    kv_cache_mib        = try(local.raw.runtime.kv_cache_mib, null)
    threads             = try(local.raw.runtime.threads, null)
    precision           = try(local.raw.runtime.precision, null)
    temperature         = try(local.raw.generation.temperature, null)
    max_tokens          = try(local.raw.generation.max_tokens, null)
    top_p               = try(local.raw.generation.top_p, null)
    top_k               = try(local.raw.generation.top_k, null)
    min_p               = try(local.raw.generation.min_p, null)
    http                = try(local.raw.triggers.http, null)
    events              = try(local.raw.triggers.events, null)
    batch               = try(local.raw.triggers.batch, null)
    min_instances       = try(local.raw.scaling.min_instances, null)
    max_instances       = try(local.raw.scaling.max_instances, null)
    concurrency         = try(local.raw.scaling.concurrency, null)
    gpu                 = try(local.raw.scaling.gpu, null)
    requests_per_minute = try(local.raw.limits.requests_per_minute, null)
    tokens_per_minute   = try(local.raw.limits.tokens_per_minute, null)
    request_timeout_s   = try(local.raw.limits.request_timeout_s, null)
    limit_max_tokens    = try(local.raw.limits.max_tokens, null)
  }

  # The manifest with the runtime's defaults filled in. A value of the wrong type becomes -1,
  # "" or null, which the checks below report together with the value as written.
  m = {
    name         = local.given.name == null ? "" : try(tostring(local.given.name), "")
    model_uri    = local.given.model_uri == null ? "" : try(tostring(local.given.model_uri), "")
    model_sha256 = local.given.model_sha256 == null ? null : try(tostring(local.given.model_sha256), "")

    backend        = local.given.backend == null ? "auto" : try(tostring(local.given.backend), "")
    context_length = local.given.context_length == null ? null : try(tonumber(local.given.context_length), -1)
    max_batch      = local.given.max_batch == null ? 16 : try(tonumber(local.given.max_batch), -1)
    kv_cache_mib   = local.given.kv_cache_mib == null ? 1024 : try(tonumber(local.given.kv_cache_mib), -1)
    threads        = local.given.threads == null ? 0 : try(tonumber(local.given.threads), -1)
    precision      = local.given.precision == null ? "fast" : try(tostring(local.given.precision), "")

    temperature = local.given.temperature == null ? null : try(tonumber(local.given.temperature), -1)
    max_tokens  = local.given.max_tokens == null ? null : try(tonumber(local.given.max_tokens), -1)
    top_p       = local.given.top_p == null ? null : try(tonumber(local.given.top_p), -1)
    top_k       = local.given.top_k == null ? null : try(tonumber(local.given.top_k), -1)
    min_p       = local.given.min_p == null ? null : try(tonumber(local.given.min_p), -1)

    http   = local.given.http == null ? true : try(tobool(local.given.http), null)
    events = local.given.events == null ? [] : try([for e in local.given.events : tostring(e)], null)
    batch = local.given.batch == null ? [] : try([for r in local.given.batch : {
      prefix = try(r.prefix, null) == null ? "" : tostring(r.prefix)
      events = try(r.events, null) == null ? [] : [for e in r.events : tostring(e)]
      output = try(r.output, null) == null ? null : tostring(r.output)
    }], null)

    min_instances = local.given.min_instances == null ? 0 : try(tonumber(local.given.min_instances), -1)
    max_instances = local.given.max_instances == null ? 10 : try(tonumber(local.given.max_instances), -1)
    concurrency   = local.given.concurrency == null ? 16 : try(tonumber(local.given.concurrency), -1)
    gpu           = local.given.gpu == null ? "none" : try(tostring(local.given.gpu), "")

    requests_per_minute = local.given.requests_per_minute == null ? null : try(tonumber(local.given.requests_per_minute), -1)
    tokens_per_minute   = local.given.tokens_per_minute == null ? null : try(tonumber(local.given.tokens_per_minute), -1)
    request_timeout_s   = local.given.request_timeout_s == null ? null : try(tonumber(local.given.request_timeout_s), -1)
    limit_max_tokens    = local.given.limit_max_tokens == null ? null : try(tonumber(local.given.limit_max_tokens), -1)
  }

  events = local.m.events == null ? [] : local.m.events
  batch  = local.m.batch == null ? [] : local.m.batch
  # Each route's output split as scheme and rest ("" and the output itself for a key prefix).
  route_outputs = [for r in local.batch : r.output == null ? null : {
    scheme = length(split("://", r.output)) > 1 ? split("://", r.output)[0] : ""
    rest   = length(split("://", r.output)) > 1 ? join("://", slice(split("://", r.output), 1, length(split("://", r.output)))) : r.output
  }]
  uri_scheme  = length(split("://", local.m.model_uri)) > 1 ? split("://", local.m.model_uri)[0] : ""
  uri_rest    = length(split("://", local.m.model_uri)) > 1 ? join("://", slice(split("://", local.m.model_uri), 1, length(split("://", local.m.model_uri)))) : ""
  is_int      = { for k in ["max_batch", "kv_cache_mib", "threads", "min_instances", "max_instances", "concurrency"] : k => floor(local.m[k]) == local.m[k] }
  opt_ints    = ["context_length", "max_tokens", "requests_per_minute", "tokens_per_minute", "request_timeout_s", "limit_max_tokens"]
  opt_int_bad = [for k in local.opt_ints : k if local.m[k] != null && try(floor(local.m[k]) != local.m[k] || local.m[k] < 1, true)]
  opt_int_path = {
    context_length      = "runtime.context_length"
    max_tokens          = "generation.max_tokens"
    requests_per_minute = "limits.requests_per_minute"
    tokens_per_minute   = "limits.tokens_per_minute"
    request_timeout_s   = "limits.request_timeout_s"
    limit_max_tokens    = "limits.max_tokens"
  }

  # Every problem, each naming the field and the value, as `realm function validate` does.
  problems = !local.is_map ? [] : concat(
    [for k in local.unknown_keys : "${k}: unknown key"],
    local.given.name == null ? ["name: missing (a DNS label naming the function)"] : [],
    local.given.name != null && !can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", local.m.name)) ? ["name: ${jsonencode(local.given.name)} is not a DNS label (lowercase letters, digits and '-', starting with a letter, at most 63)"] : [],
    local.given.model_uri == null ? ["model.uri: missing (default, a path, or an s3://, gs://, az://, https:// or file:// URI)"] : [],
    local.given.model_uri != null && local.m.model_uri == "" ? ["model.uri: is empty"] : [],
    local.uri_scheme != "" && (!contains(local.model_schemes, local.uri_scheme) || local.uri_rest == "") ? ["model.uri: ${jsonencode(local.m.model_uri)}: scheme ${jsonencode(local.uri_scheme)} is not one of ${join(", ", local.model_schemes)} (or names nothing)"] : [],
    local.m.model_sha256 != null && !can(regex("^[0-9a-fA-F]{64}$", coalesce(local.m.model_sha256, "-"))) ? ["model.sha256: ${jsonencode(local.given.model_sha256)} is not 64 hex digits"] : [],
    !contains(local.backends, local.m.backend) ? ["runtime.backend: ${jsonencode(local.given.backend)} is not one of ${join(", ", local.backends)}"] : [],
    !contains(local.precisions, local.m.precision) ? ["runtime.precision: ${jsonencode(local.given.precision)} is not one of ${join(", ", local.precisions)}"] : [],
    !(local.is_int.max_batch && local.m.max_batch >= 1 && local.m.max_batch <= 1024) ? ["runtime.max_batch: ${jsonencode(local.given.max_batch)} is out of range 1..=1024"] : [],
    !(local.is_int.threads && local.m.threads >= 0 && local.m.threads <= 1024) ? ["runtime.threads: ${jsonencode(local.given.threads)} is out of range 0..=1024"] : [],
    !(local.is_int.kv_cache_mib && local.m.kv_cache_mib >= 1) ? ["runtime.kv_cache_mib: ${jsonencode(local.given.kv_cache_mib)} leaves no room for the KV cache (at least 1)"] : [],
    [for k in local.opt_int_bad : "${local.opt_int_path[k]}: ${jsonencode(local.given[k])} is out of range (a whole number, at least 1; leave it out for none)"],
    local.m.temperature != null && try(!(local.m.temperature >= 0 && local.m.temperature <= 2), true) ? ["generation.temperature: ${jsonencode(local.given.temperature)} is out of range [0, 2]"] : [],
    local.m.top_k != null && try(floor(local.m.top_k) != local.m.top_k || local.m.top_k < 0, true) ? ["generation.top_k: ${jsonencode(local.given.top_k)} is not a whole number of at least 0"] : [],
    local.m.top_p != null && try(!(local.m.top_p > 0 && local.m.top_p <= 1), true) ? ["generation.top_p: ${jsonencode(local.given.top_p)} is out of range (0, 1]"] : [],
    local.m.min_p != null && try(!(local.m.min_p >= 0 && local.m.min_p <= 1), true) ? ["generation.min_p: ${jsonencode(local.given.min_p)} is out of range [0, 1]"] : [],
    local.m.http == null ? ["triggers.http: ${jsonencode(local.given.http)} is not true or false"] : [],
    local.m.events == null ? ["triggers.events: ${jsonencode(local.given.events)} is not a list of event types"] : [],
    [for i, e in local.events : "triggers.events[${i}]: ${jsonencode(e)} is not one of ${join(", ", local.event_types)}" if !contains(local.event_types, e)],
    local.m.batch == null ? ["triggers.batch: ${jsonencode(local.given.batch)} is not a list of routes ({prefix, events, output})"] : [],
    flatten([for i, r in local.batch : [for j, e in r.events : "triggers.batch[${i}].events[${j}]: ${jsonencode(e)} is not a storage event type listed in triggers.events" if !contains(local.storage_events, e) || (length(local.events) > 0 && !contains(local.events, e))]]),
    [for i, o in local.route_outputs : "triggers.batch[${i}].output: ${jsonencode(local.batch[i].output)}: scheme ${jsonencode(o.scheme)} is not one of ${join(", ", local.output_schemes)}" if o != null && o.scheme != "" && (!contains(local.output_schemes, o.scheme) || o.rest == "")],
    [for i, o in local.route_outputs : "triggers.batch[${i}].output: ${jsonencode(local.batch[i].output)} is not a key prefix (relative, without . or .. segments)" if o != null && o.scheme == "" && (o.rest == "" || startswith(o.rest, "/") || contains(split("/", o.rest), "..") || contains(split("/", o.rest), "."))],
    [for i, o in local.route_outputs : "triggers.batch[${i}].output: ${jsonencode(local.batch[i].output)} lies under the route's prefix ${jsonencode(local.batch[i].prefix)}: its results would start more jobs" if o != null && o.scheme == "" && o.rest != "" && startswith(o.rest, local.batch[i].prefix) && !startswith(o.rest, "/") && !contains(split("/", o.rest), "..") && !contains(split("/", o.rest), ".")],
    local.m.http == false && length(local.events) == 0 ? ["triggers: neither http nor any event: nothing would reach the function"] : [],
    !(local.is_int.max_instances && local.m.max_instances >= 1) ? ["scaling.max_instances: ${jsonencode(local.given.max_instances)} is out of range (at least 1)"] : [],
    !(local.is_int.min_instances && local.m.min_instances >= 0) ? ["scaling.min_instances: ${jsonencode(local.given.min_instances)} is out of range (at least 0)"] : [],
    local.m.min_instances > local.m.max_instances ? ["scaling.min_instances: ${local.m.min_instances} is above scaling.max_instances ${local.m.max_instances}"] : [],
    !(local.is_int.concurrency && local.m.concurrency >= 1 && local.m.concurrency <= 1000) ? ["scaling.concurrency: ${jsonencode(local.given.concurrency)} is out of range 1..=1000"] : [],
    !contains(local.gpus, local.m.gpu) ? ["scaling.gpu: ${jsonencode(local.given.gpu)} is not one of ${join(", ", local.gpus)}"] : [],
  )

  base_name = "${var.name_prefix}${local.m.name}"
  names = {
    # Kubernetes, Knative, Cloud Run: DNS labels of at most 63.
    service = replace(substr(local.base_name, 0, 63), "/-+$/", "")
    # Lambda function names: at most 64.
    lambda = replace(substr(local.base_name, 0, 64), "/-+$/", "")
    # Container Apps: at most 32.
    container_app = replace(substr(local.base_name, 0, 32), "/-+$/", "")
    # Service accounts (GCP account_id): 6 to 30.
    service_account = replace(substr("realm-${local.base_name}", 0, 30), "/-+$/", "")
  }

  # REALM_MODEL takes `default`, a path, or an object-store or https URI as written.
  model_env = local.uri_scheme == "file" ? local.uri_rest : local.m.model_uri

  # The container contract's variables (`realm serve --help`): what the manifest sets, so a
  # platform that cannot mount the file (Lambda without a baked manifest) still runs it. PORT
  # is not among them: Cloud Run and Knative reserve it and set it from the container port
  # (8080, the images' default, which every platform module uses).
  derived_env = merge(
    {
      REALM_MODEL        = local.model_env
      REALM_PRECISION    = local.m.precision
      REALM_THREADS      = tostring(local.m.threads)
      REALM_MAX_BATCH    = tostring(local.m.max_batch)
      REALM_KV_CACHE_MIB = tostring(local.m.kv_cache_mib)
    },
    local.m.requests_per_minute == null ? {} : { REALM_RATE_LIMIT_RPM = tostring(local.m.requests_per_minute) },
    local.m.tokens_per_minute == null ? {} : { REALM_RATE_LIMIT_TPM = tostring(local.m.tokens_per_minute) },
    local.m.request_timeout_s == null ? {} : { REALM_REQUEST_TIMEOUT = tostring(local.m.request_timeout_s) },
    local.m.limit_max_tokens == null ? {} : { REALM_MAX_TOKENS_LIMIT = tostring(local.m.limit_max_tokens) },
    local.m.max_tokens == null ? {} : { REALM_DEFAULT_MAX_TOKENS = tostring(local.m.max_tokens) },
  )
  base_env = merge({ for k, v in local.derived_env : k => tostring(v) }, var.extra_env)
  # Where the file is not mounted, its text travels whole, so triggers (batch routes among them)
  # reach the runtime too.
  env           = merge(local.base_env, { REALM_FUNCTION_YAML = local.text })
  function_env  = merge(local.base_env, { REALM_FUNCTION = var.container_manifest_path })
  request_limit = local.m.request_timeout_s == null ? 600 : local.m.request_timeout_s
}

# Advice, not errors: these plan and apply, but probably not as meant.
check "manifest_advice" {
  assert {
    condition     = !(local.m.gpu != "none" && local.m.backend == "cpu")
    error_message = "scaling.gpu asks for ${local.m.gpu} but runtime.backend is cpu: the GPU would sit idle."
  }
  assert {
    condition     = !(local.m.gpu == "none" && contains(["cuda"], local.m.backend))
    error_message = "runtime.backend is cuda but scaling.gpu is none: no platform module will attach a GPU."
  }
  assert {
    condition     = local.m.model_sha256 != null || local.m.model_uri == "default" || local.uri_scheme == "file" || local.uri_scheme == ""
    error_message = "model.uri fetches from ${local.uri_scheme}:// without model.sha256: the download is not verified."
  }
}
