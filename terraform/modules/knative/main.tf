# Realm on Knative: a Knative Service (GPU limits, nodeSelector and tolerations, autoscaling
# annotations from the manifest, scale to zero, a progress deadline long enough for model
# loads, probes on /ready and /health) with the manifest from a ConfigMap, and one Knative
# Eventing Trigger per event type in the manifest -> /events.

module "manifest" {
  source = "../manifest"

  manifest_path = var.manifest_path
  name_prefix   = var.name_prefix
}

locals {
  name     = module.manifest.names.service
  scaling  = module.manifest.scaling
  triggers = module.manifest.triggers
  gpu      = local.scaling.gpu_enabled
  has_keys = length(var.api_keys) > 0
  labels   = merge({ "app.kubernetes.io/name" = "realm", "app.kubernetes.io/instance" = local.name }, var.labels)

  select_gpu = local.gpu && var.select_gpu_nodes
  node_selector = merge(
    local.select_gpu ? { (var.gpu_node_label) = lookup(var.gpu_node_values, local.scaling.gpu, local.scaling.gpu) } : {},
    var.node_selector,
  )
  tolerations = concat(
    local.select_gpu ? [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }] : [],
    [for t in var.tolerations : { for k, v in t : k => v if v != null }],
  )

  # Knative caps revision timeouts at 600 s by default (max-revision-timeout-seconds).
  timeout_s = min(600, module.manifest.request_timeout_s + 30)

  env = merge(module.manifest.function_env, { REALM_PLATFORM = "auto" }, var.extra_env)

  container = {
    name            = "realm"
    image           = var.image
    ports           = [{ name = "http1", containerPort = 8080 }]
    env             = concat([for k, v in local.env : { name = k, value = v }], local.has_keys ? [{ name = "REALM_API_KEYS", valueFrom = { secretKeyRef = { name = "${local.name}-api-keys", key = "keys" } } }] : [])
    volumeMounts    = [{ name = "manifest", mountPath = dirname(module.manifest.container_manifest_path), readOnly = true }]
    readinessProbe  = { httpGet = { path = "/ready", port = 8080 }, periodSeconds = 5, failureThreshold = 3 }
    livenessProbe   = { httpGet = { path = "/health", port = 8080 }, periodSeconds = 15, failureThreshold = 3 }
    securityContext = { runAsNonRoot = true, allowPrivilegeEscalation = false, readOnlyRootFilesystem = false, capabilities = { drop = ["ALL"] }, seccompProfile = { type = "RuntimeDefault" } }
    resources = {
      requests = merge({ cpu = var.cpu, memory = var.memory }, local.gpu ? { (var.gpu_resource) = "1" } : {})
      limits   = merge({ memory = var.memory }, local.gpu ? { (var.gpu_resource) = "1" } : {})
    }
  }

  pod_spec = merge(
    {
      containerConcurrency = local.scaling.concurrency
      timeoutSeconds       = local.timeout_s
      containers           = [local.container]
      volumes              = [{ name = "manifest", configMap = { name = kubernetes_config_map_v1.manifest.metadata[0].name, items = [{ key = "realm.yaml", path = basename(module.manifest.container_manifest_path) }] } }]
    },
    length(local.node_selector) > 0 ? { nodeSelector = local.node_selector } : {},
    length(local.tolerations) > 0 ? { tolerations = local.tolerations } : {},
  )
}

resource "kubernetes_namespace_v1" "realm" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name   = var.namespace
    labels = local.labels
  }
}

locals {
  namespace = var.create_namespace ? kubernetes_namespace_v1.realm[0].metadata[0].name : var.namespace
}

resource "kubernetes_config_map_v1" "manifest" {
  metadata {
    name      = "${local.name}-manifest"
    namespace = local.namespace
    labels    = local.labels
  }

  data = {
    "realm.yaml" = module.manifest.yaml
  }
}

resource "kubernetes_secret_v1" "api_keys" {
  count = local.has_keys ? 1 : 0

  metadata {
    name      = "${local.name}-api-keys"
    namespace = local.namespace
    labels    = local.labels
  }

  data = {
    keys = join(",", var.api_keys)
  }
}

resource "kubernetes_manifest" "service" {
  manifest = {
    apiVersion = "serving.knative.dev/v1"
    kind       = "Service"
    metadata = {
      name      = local.name
      namespace = local.namespace
      labels    = local.labels
    }
    spec = {
      template = {
        metadata = {
          labels = local.labels
          annotations = {
            "autoscaling.knative.dev/metric"                             = "concurrency"
            "autoscaling.knative.dev/target-utilization-percentage"      = tostring(var.target_utilization_percent)
            "autoscaling.knative.dev/min-scale"                          = tostring(local.scaling.min_instances)
            "autoscaling.knative.dev/max-scale"                          = tostring(local.scaling.max_instances)
            "autoscaling.knative.dev/scale-to-zero-pod-retention-period" = var.scale_to_zero_retention
            "serving.knative.dev/progress-deadline"                      = var.progress_deadline
            "realm.dev/manifest-sha256"                                  = module.manifest.sha256
          }
        }
        spec = local.pod_spec
      }
    }
  }

  wait {
    condition {
      type   = "Ready"
      status = "True"
    }
  }

  timeouts {
    create = "20m"
    update = "20m"
  }
}

# Knative Eventing delivers events with POST; the Service accepts them on / and /events.
resource "kubernetes_manifest" "trigger" {
  for_each = toset(local.triggers.events)

  manifest = {
    apiVersion = "eventing.knative.dev/v1"
    kind       = "Trigger"
    metadata = {
      name      = "${substr(local.name, 0, 40)}-${substr(sha256(each.value), 0, 8)}"
      namespace = local.namespace
      labels    = local.labels
    }
    spec = {
      broker = var.broker
      filter = { attributes = { type = each.value } }
      subscriber = {
        ref = {
          apiVersion = "serving.knative.dev/v1"
          kind       = "Service"
          name       = local.name
        }
        uri = "/events"
      }
    }
  }

  depends_on = [kubernetes_manifest.service]
}
