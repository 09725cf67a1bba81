# Realm on Azure Container Apps: a workload-profiles environment with a serverless GPU profile
# (T4 or A100) next to Consumption (CPU), a container app with ingress on 8080, an HTTP scale
# rule and min/max replicas from the manifest, probes on /ready and /health, a user-assigned
# identity with Storage Blob Data Reader on the model container, and an Event Grid subscription
# (BlobCreated, CloudEvents v1.0 schema) -> /events.

module "manifest" {
  source = "../manifest"

  manifest_path = var.manifest_path
  name_prefix   = var.name_prefix
  # Container Apps mounts each secret of a Secret volume as a file named after the secret.
  container_manifest_path = "/etc/realm/realm-manifest"
}

locals {
  name     = module.manifest.names.container_app
  scaling  = module.manifest.scaling
  triggers = module.manifest.triggers
  gpu      = local.scaling.gpu_enabled
  events   = local.triggers.blob_created

  gpu_profiles = {
    "nvidia-t4"   = "Consumption-GPU-NC8as-T4"
    "nvidia-a100" = "Consumption-GPU-NC24-A100"
  }
  gpu_profile_type = var.gpu_profile_type != null ? var.gpu_profile_type : lookup(local.gpu_profiles, local.scaling.gpu, "")
  profile_name     = local.gpu ? "gpu" : "Consumption"

  sizes = {
    "Consumption-GPU-NC8as-T4"  = { cpu = 8, memory = "56Gi" }
    "Consumption-GPU-NC24-A100" = { cpu = 24, memory = "220Gi" }
    ""                          = { cpu = 4, memory = "8Gi" }
  }
  size   = local.sizes[local.gpu ? local.gpu_profile_type : ""]
  cpu    = var.cpu != null ? var.cpu : local.size.cpu
  memory = var.memory != null ? var.memory : local.size.memory

  storage_account_id   = var.create_storage_account ? azurerm_storage_account.realm[0].id : var.storage_account_id
  storage_account_name = try(reverse(split("/", local.storage_account_id))[0], "")
  account_name         = var.storage_account_name != null ? var.storage_account_name : substr(replace("realm${local.name}", "-", ""), 0, 24)

  has_keys = length(var.api_keys) > 0

  # The container contract: REALM_* from the manifest plus the manifest file and the keys file
  # from the Secret volume; AZURE_* select the user-assigned identity for az:// model reads.
  env = merge(
    module.manifest.function_env,
    {
      PORT                       = "8080"
      REALM_PLATFORM             = "auto"
      AZURE_CLIENT_ID            = azurerm_user_assigned_identity.realm.client_id
      AZURE_STORAGE_ACCOUNT_NAME = local.storage_account_name
    },
    var.extra_env,
  )
}

# ---- identity and storage --------------------------------------------------------------------

resource "azurerm_user_assigned_identity" "realm" {
  name                = "${local.name}-id"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
}

resource "azurerm_storage_account" "realm" {
  count = var.create_storage_account ? 1 : 0

  name                              = local.account_name
  resource_group_name               = var.resource_group_name
  location                          = var.location
  account_tier                      = "Standard"
  account_replication_type          = "ZRS"
  min_tls_version                   = "TLS1_2"
  https_traffic_only_enabled        = true
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  local_user_enabled                = false
  cross_tenant_replication_enabled  = false
  infrastructure_encryption_enabled = true
  tags                              = var.tags

  blob_properties {
    versioning_enabled = true

    delete_retention_policy {
      days = 7
    }

    container_delete_retention_policy {
      days = 7
    }
  }

  sas_policy {
    expiration_period = "01.00:00:00"
  }
}

resource "azurerm_storage_container" "models" {
  name                  = var.model_container_name
  storage_account_id    = local.storage_account_id
  container_access_type = "private"

  lifecycle {
    precondition {
      condition     = var.create_storage_account || var.storage_account_id != null
      error_message = "Set storage_account_id to an existing account when create_storage_account is false."
    }
  }
}

resource "azurerm_storage_container" "batch" {
  count = local.events ? 1 : 0

  name                  = var.batch_container_name
  storage_account_id    = local.storage_account_id
  container_access_type = "private"
}

# Least privilege: read models (one container); read and write batch inputs and results.
resource "azurerm_role_assignment" "models_read" {
  scope                = azurerm_storage_container.models.id
  role_definition_name = "Storage Blob Data Reader"
  principal_id         = azurerm_user_assigned_identity.realm.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "batch_write" {
  count = local.events ? 1 : 0

  scope                = azurerm_storage_container.batch[0].id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.realm.principal_id
  principal_type       = "ServicePrincipal"
}

# ---- environment -----------------------------------------------------------------------------

resource "azurerm_log_analytics_workspace" "realm" {
  count = var.log_analytics_workspace_id == null ? 1 : 0

  name                = "${local.name}-logs"
  resource_group_name = var.resource_group_name
  location            = var.location
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = var.tags
}

resource "azurerm_container_app_environment" "realm" {
  name                       = "${local.name}-env"
  resource_group_name        = var.resource_group_name
  location                   = var.location
  log_analytics_workspace_id = var.log_analytics_workspace_id != null ? var.log_analytics_workspace_id : azurerm_log_analytics_workspace.realm[0].id
  logs_destination           = "log-analytics"
  tags                       = var.tags

  # A workload-profiles environment: profiles cannot be added to one created without them.
  workload_profile {
    name                  = "Consumption"
    workload_profile_type = "Consumption"
  }

  dynamic "workload_profile" {
    for_each = local.gpu ? [local.gpu_profile_type] : []
    content {
      name                  = "gpu"
      workload_profile_type = workload_profile.value
    }
  }

  lifecycle {
    precondition {
      condition     = !local.gpu || local.gpu_profile_type != ""
      error_message = "scaling.gpu ${local.scaling.gpu} has no serverless GPU on Container Apps (T4 or A100): set gpu_profile_type."
    }
  }
}

# ---- the app ---------------------------------------------------------------------------------

resource "azurerm_container_app" "realm" {
  name                         = local.name
  resource_group_name          = var.resource_group_name
  container_app_environment_id = azurerm_container_app_environment.realm.id
  revision_mode                = "Single"
  workload_profile_name        = local.profile_name
  tags                         = var.tags

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.realm.id]
  }

  dynamic "registry" {
    for_each = var.registry_server == null ? [] : [var.registry_server]
    content {
      server   = registry.value
      identity = azurerm_user_assigned_identity.realm.id
    }
  }

  secret {
    name  = "realm-manifest"
    value = module.manifest.yaml
  }

  dynamic "secret" {
    for_each = local.has_keys ? [1] : []
    content {
      name  = "realm-api-keys"
      value = join("\n", var.api_keys)
    }
  }

  ingress {
    external_enabled = var.external_ingress
    target_port      = 8080
    transport        = "http"

    traffic_weight {
      latest_revision = true
      percentage      = 100
    }
  }

  template {
    min_replicas                     = local.scaling.min_instances
    max_replicas                     = local.scaling.max_instances
    termination_grace_period_seconds = 30

    http_scale_rule {
      name                = "concurrency"
      concurrent_requests = tostring(local.scaling.concurrency)
    }

    volume {
      name         = "realm-config"
      storage_type = "Secret"
    }

    container {
      name   = "realm"
      image  = var.image
      cpu    = local.cpu
      memory = local.memory

      dynamic "env" {
        for_each = local.env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = local.has_keys ? ["/etc/realm/realm-api-keys"] : []
        content {
          name  = "REALM_API_KEYS_FILE"
          value = env.value
        }
      }

      volume_mounts {
        name = "realm-config"
        path = "/etc/realm"
      }

      # 200 only once the model is loaded; without it ingress routes to a loading replica.
      startup_probe {
        transport               = "HTTP"
        port                    = 8080
        path                    = "/ready"
        interval_seconds        = 10
        timeout                 = 5
        failure_count_threshold = min(240, ceil(var.startup_timeout_s / 10))
      }

      readiness_probe {
        transport               = "HTTP"
        port                    = 8080
        path                    = "/ready"
        interval_seconds        = 10
        timeout                 = 5
        failure_count_threshold = 3
        success_count_threshold = 1
      }

      liveness_probe {
        transport               = "HTTP"
        port                    = 8080
        path                    = "/health"
        interval_seconds        = 15
        timeout                 = 5
        failure_count_threshold = 3
      }
    }
  }

  depends_on = [azurerm_role_assignment.models_read]
}

# ---- Event Grid: BlobCreated in the batch container -> POST /events (CloudEvents v1.0) --------

resource "azurerm_eventgrid_system_topic" "storage" {
  count = local.events ? 1 : 0

  name                = "${local.name}-storage"
  resource_group_name = var.resource_group_name
  location            = var.location
  source_resource_id  = local.storage_account_id
  topic_type          = "Microsoft.Storage.StorageAccounts"
  tags                = var.tags
}

resource "azurerm_eventgrid_system_topic_event_subscription" "blob_created" {
  count = local.events ? 1 : 0

  name                  = "${local.name}-blob-created"
  system_topic          = azurerm_eventgrid_system_topic.storage[0].name
  resource_group_name   = var.resource_group_name
  event_delivery_schema = "CloudEventSchemaV1_0"
  included_event_types  = ["Microsoft.Storage.BlobCreated"]

  subject_filter {
    subject_begins_with = "/blobServices/default/containers/${var.batch_container_name}/blobs/"
  }

  # The app answers the CloudEvents abuse-protection handshake (OPTIONS) on /events.
  webhook_endpoint {
    url = "https://${azurerm_container_app.realm.ingress[0].fqdn}/events"
  }

  retry_policy {
    max_delivery_attempts = 10
    event_time_to_live    = 1440
  }

  lifecycle {
    precondition {
      condition     = var.external_ingress
      error_message = "Event Grid delivers to a public webhook: the BlobCreated trigger needs external_ingress = true."
    }
  }
}
