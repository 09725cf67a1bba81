output "manifest" {
  description = "The manifest with the runtime's defaults filled in (fails the plan, listing every problem, when the manifest is invalid)."
  value = {
    name       = local.m.name
    model      = { uri = local.m.model_uri, sha256 = local.m.model_sha256 }
    runtime    = { backend = local.m.backend, context_length = local.m.context_length, max_batch = local.m.max_batch, kv_cache_mib = local.m.kv_cache_mib, threads = local.m.threads, precision = local.m.precision }
    generation = { temperature = local.m.temperature, max_tokens = local.m.max_tokens, top_p = local.m.top_p, top_k = local.m.top_k, min_p = local.m.min_p }
    triggers   = { http = local.m.http, events = local.events, batch = local.batch }
    scaling    = { min_instances = local.m.min_instances, max_instances = local.m.max_instances, concurrency = local.m.concurrency, gpu = local.m.gpu }
    limits     = { requests_per_minute = local.m.requests_per_minute, tokens_per_minute = local.m.tokens_per_minute, request_timeout_s = local.m.request_timeout_s, max_tokens = local.m.limit_max_tokens }
  }

  precondition {
    condition     = length(local.problems) == 0
    error_message = "The function manifest ${var.manifest_path} is invalid:\n  ${join("\n  ", local.problems)}"
  }
}

output "problems" {
  description = "Every problem found in the manifest, each naming the field and the value (empty when valid)."
  value       = local.problems
}

output "name" {
  description = "The function's name as the manifest gives it."
  value       = local.m.name
}

output "names" {
  description = "Derived resource names within each platform's limits: service (63), lambda (64), container_app (32), service_account (30)."
  value       = local.names
}

output "yaml" {
  description = "The manifest file's text, for a ConfigMap, a secret or a bucket object that the container reads through REALM_FUNCTION."
  value       = local.text
}

output "sha256" {
  description = "sha256 of the manifest's text, for a rollout annotation or an object name that changes with it."
  value       = sha256(local.text)
}

output "container_manifest_path" {
  description = "Where platform modules put the manifest in the container (REALM_FUNCTION)."
  value       = var.container_manifest_path
}

output "env" {
  description = "The container's environment derived from the manifest (REALM_*; PORT is left to the platform), with the manifest's text in REALM_FUNCTION_YAML for platforms that do not mount the file; extra_env merged over it."
  value       = local.env
}

output "function_env" {
  description = "The same REALM_* variables with REALM_FUNCTION (instead of REALM_FUNCTION_YAML), for platforms that mount the manifest at container_manifest_path."
  value       = local.function_env
}

output "model_uri" {
  description = "model.uri as written (default, a path, or an s3://, gs://, az://, https:// or file:// URI)."
  value       = local.m.model_uri
}

output "model_scheme" {
  description = "The scheme of model.uri (s3, gs, az, https, file) or \"\" for default and plain paths."
  value       = local.uri_scheme
}

output "model_location" {
  description = "For object-store URIs, the bucket (or container) and key of the model: { bucket, key }; nulls otherwise."
  value = {
    bucket = contains(["s3", "gs", "az"], local.uri_scheme) ? split("/", local.uri_rest)[0] : null
    key    = contains(["s3", "gs", "az"], local.uri_scheme) ? join("/", slice(split("/", local.uri_rest), 1, length(split("/", local.uri_rest)))) : null
  }
}

output "scaling" {
  description = "Scaling settings: min_instances, max_instances, concurrency, gpu, gpu_enabled."
  value = {
    min_instances = local.m.min_instances
    max_instances = local.m.max_instances
    concurrency   = local.m.concurrency
    gpu           = local.m.gpu
    gpu_enabled   = local.m.gpu != "none"
  }
}

output "triggers" {
  description = "http (serve the OpenAI API) and events, with one flag per storage event a platform module can wire."
  value = {
    http                 = local.m.http == true
    events               = local.events
    gcs_finalized        = contains(local.events, "google.cloud.storage.object.v1.finalized")
    blob_created         = contains(local.events, "Microsoft.Storage.BlobCreated")
    s3_object_created    = contains(local.events, "aws.s3.ObjectCreated") || contains(local.events, "aws.eventbridge.ObjectCreated")
    batch_requested      = contains(local.events, "dev.realm.batch.v1.requested")
    storage_events_count = length(local.events)
  }
}

output "request_timeout_s" {
  description = "The server's wall-time budget per request in seconds (limits.request_timeout_s, else the runtime's 600); platform timeouts are set at or above it."
  value       = local.request_limit
}
