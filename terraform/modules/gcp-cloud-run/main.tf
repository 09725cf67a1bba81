# Realm on Google Cloud Run: a v2 service (NVIDIA L4 when the manifest asks for a GPU, CPU
# always allocated), probes on /ready and /health, the model bucket mounted with Cloud Storage
# FUSE (which also carries the manifest), a dedicated least-privilege service account, an
# Eventarc trigger for finalized objects -> /events, and invoker IAM.

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
  events   = local.triggers.gcs_finalized

  # Cloud Run offers the NVIDIA L4 (the RTX PRO 6000 in preview): every GPU manifest gets an L4.
  accelerator = "nvidia-l4"

  cpu    = var.cpu != null ? var.cpu : (local.gpu ? "4" : "2")
  memory = var.memory != null ? var.memory : (local.gpu ? "16Gi" : "4Gi")

  model_bucket = var.create_model_bucket ? google_storage_bucket.models[0].name : var.model_bucket_name
  batch_bucket = local.events ? (var.batch_bucket_name != null ? var.batch_bucket_name : google_storage_bucket.batch[0].name) : null

  mount_path      = "/mnt/models"
  manifest_object = "realm/functions/${module.manifest.name}/realm.yaml"
  model_mounted   = var.model_access == "mount" && module.manifest.model_scheme == "gs" && module.manifest.model_location.bucket == local.model_bucket

  # The container contract: REALM_* from the manifest, the manifest itself through the mount.
  env = merge(
    module.manifest.env,
    {
      REALM_FUNCTION = "${local.mount_path}/${local.manifest_object}"
      REALM_PLATFORM = "auto"
    },
    local.model_mounted ? { REALM_MODEL = "${local.mount_path}/${module.manifest.model_location.key}" } : {},
    var.extra_env,
  )

  # Cloud Run's request timeout is at most 60 minutes; keep it above the server's own budget.
  timeout_s = min(3600, module.manifest.request_timeout_s + 30)
}

check "gpu_type" {
  assert {
    condition     = !local.gpu || local.scaling.gpu == "nvidia-l4"
    error_message = "Cloud Run offers the NVIDIA L4; scaling.gpu ${local.scaling.gpu} is deployed on an L4."
  }
}

# ---- identities ------------------------------------------------------------------------------

resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = module.manifest.names.service_account
  display_name = "Realm function ${module.manifest.name} (runtime)"
}

resource "google_service_account" "events" {
  count = local.events ? 1 : 0

  project      = var.project_id
  account_id   = replace(substr("${module.manifest.names.service_account}-ev", 0, 30), "/-+$/", "")
  display_name = "Realm function ${module.manifest.name} (Eventarc trigger)"
}

# ---- buckets ---------------------------------------------------------------------------------

resource "google_storage_bucket" "models" {
  count = var.create_model_bucket ? 1 : 0

  project                     = var.project_id
  name                        = coalesce(var.model_bucket_name, "${var.project_id}-${local.name}-models")
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection
  labels                      = var.labels

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      num_newer_versions = 3
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_storage_bucket" "batch" {
  count = local.events && var.batch_bucket_name == null ? 1 : 0

  project                     = var.project_id
  name                        = "${var.project_id}-${local.name}-batch"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection
  labels                      = var.labels

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }
}

# The manifest rides along in the model bucket and reaches the container through the mount.
resource "google_storage_bucket_object" "manifest" {
  bucket       = local.model_bucket
  name         = local.manifest_object
  content      = module.manifest.yaml
  content_type = "application/yaml"
}

# Least privilege: read the model bucket; read and write (results beside inputs) the batch bucket.
resource "google_storage_bucket_iam_member" "models_read" {
  bucket = local.model_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.runtime.member
}

resource "google_storage_bucket_iam_member" "batch_read" {
  count = local.events ? 1 : 0

  bucket = local.batch_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.runtime.member
}

resource "google_storage_bucket_iam_member" "batch_write" {
  count = local.events ? 1 : 0

  bucket = local.batch_bucket
  role   = "roles/storage.objectCreator"
  member = google_service_account.runtime.member
}

resource "google_secret_manager_secret_iam_member" "api_keys" {
  count = var.api_keys_secret == null ? 0 : 1

  project   = var.project_id
  secret_id = var.api_keys_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.runtime.member
}

# ---- the service -----------------------------------------------------------------------------

resource "google_cloud_run_v2_service" "realm" {
  project             = var.project_id
  name                = local.name
  location            = var.region
  ingress             = var.ingress
  deletion_protection = var.deletion_protection
  labels              = var.labels

  template {
    service_account                  = google_service_account.runtime.email
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    timeout                          = "${local.timeout_s}s"
    max_instance_request_concurrency = local.scaling.concurrency
    gpu_zonal_redundancy_disabled    = local.gpu ? var.gpu_zonal_redundancy_disabled : null
    annotations                      = { "realm.dev/manifest-sha256" = module.manifest.sha256 }

    scaling {
      min_instance_count = local.scaling.min_instances
      max_instance_count = local.scaling.max_instances
    }

    dynamic "node_selector" {
      for_each = local.gpu ? [local.accelerator] : []
      content {
        accelerator = node_selector.value
      }
    }

    volumes {
      name = "models"
      gcs {
        bucket    = local.model_bucket
        read_only = true
      }
    }

    containers {
      name  = "realm"
      image = var.image

      ports {
        container_port = 8080
      }

      dynamic "env" {
        for_each = local.env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = var.api_keys_secret == null ? [] : [var.api_keys_secret]
        content {
          name = "REALM_API_KEYS"
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest"
            }
          }
        }
      }

      resources {
        limits = merge(
          { cpu = local.cpu, memory = local.memory },
          local.gpu ? { "nvidia.com/gpu" = "1" } : {},
        )
        # CPU always allocated: GPU services require it, and the engine thread works between requests.
        cpu_idle          = false
        startup_cpu_boost = true
      }

      volume_mounts {
        name       = "models"
        mount_path = local.mount_path
      }

      # /ready answers 200 only once the model is loaded: no request reaches a loading instance.
      startup_probe {
        initial_delay_seconds = 0
        period_seconds        = 10
        timeout_seconds       = 5
        failure_threshold     = ceil(var.startup_timeout_s / 10)
        http_get {
          path = "/ready"
          port = 8080
        }
      }

      liveness_probe {
        period_seconds    = 15
        timeout_seconds   = 5
        failure_threshold = 3
        http_get {
          path = "/health"
          port = 8080
        }
      }
    }
  }

  depends_on = [
    google_storage_bucket_object.manifest,
    google_storage_bucket_iam_member.models_read,
    google_secret_manager_secret_iam_member.api_keys,
  ]
}

resource "google_cloud_run_v2_service_iam_member" "invokers" {
  for_each = toset(var.invoker_members)

  project  = var.project_id
  location = google_cloud_run_v2_service.realm.location
  name     = google_cloud_run_v2_service.realm.name
  role     = "roles/run.invoker"
  member   = each.value
}

# ---- Eventarc: finalized objects in the batch bucket -> POST /events -------------------------

data "google_project" "current" {
  project_id = var.project_id
}

data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

# Cloud Storage publishes its events through Pub/Sub.
resource "google_project_iam_member" "gcs_publishes" {
  count = local.events ? 1 : 0

  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = data.google_storage_project_service_account.gcs.member
}

resource "google_project_iam_member" "events_receiver" {
  count = local.events ? 1 : 0

  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.events[0].member
}

resource "google_cloud_run_v2_service_iam_member" "events_invoker" {
  count = local.events ? 1 : 0

  project  = var.project_id
  location = google_cloud_run_v2_service.realm.location
  name     = google_cloud_run_v2_service.realm.name
  role     = "roles/run.invoker"
  member   = google_service_account.events[0].member
}

resource "google_eventarc_trigger" "finalized" {
  count = local.events ? 1 : 0

  project         = var.project_id
  name            = "${local.name}-finalized"
  location        = var.region
  service_account = google_service_account.events[0].email
  labels          = var.labels

  matching_criteria {
    attribute = "type"
    value     = "google.cloud.storage.object.v1.finalized"
  }

  matching_criteria {
    attribute = "bucket"
    value     = local.batch_bucket
  }

  destination {
    cloud_run_service {
      service = google_cloud_run_v2_service.realm.name
      region  = var.region
      path    = "/events"
    }
  }

  depends_on = [
    google_project_iam_member.gcs_publishes,
    google_project_iam_member.events_receiver,
    google_cloud_run_v2_service_iam_member.events_invoker,
  ]
}
