variable "manifest_path" {
  description = "Path of the function manifest (realm.yaml); name, model, runtime settings, scaling, GPU and triggers come from it."
  type        = string
}

variable "name_prefix" {
  description = "Prepended to the manifest's name in resource names."
  type        = string
  default     = ""
}

variable "resource_group_name" {
  description = "Existing resource group to deploy into."
  type        = string
}

variable "location" {
  description = "Azure region (serverless GPUs are offered in a subset, e.g. westus3, swedencentral, australiaeast)."
  type        = string
}

variable "image" {
  description = "The Realm image (cuda target for GPU manifests, cpu otherwise), e.g. myregistry.azurecr.io/realm:cuda."
  type        = string
}

variable "registry_server" {
  description = "Container registry host to pull from with the app's identity (e.g. myregistry.azurecr.io; give the identity AcrPull there); null for a public image."
  type        = string
  default     = null
}

variable "gpu_profile_type" {
  description = "Serverless GPU workload profile for GPU manifests: Consumption-GPU-NC8as-T4 or Consumption-GPU-NC24-A100. Null: from scaling.gpu (nvidia-t4 -> T4, nvidia-a100 -> A100)."
  type        = string
  default     = null

  validation {
    condition     = var.gpu_profile_type == null || contains(["Consumption-GPU-NC8as-T4", "Consumption-GPU-NC24-A100"], coalesce(var.gpu_profile_type, "-"))
    error_message = "gpu_profile_type must be Consumption-GPU-NC8as-T4 or Consumption-GPU-NC24-A100."
  }
}

variable "cpu" {
  description = "vCPUs of the container; null: 8 on T4, 24 on A100, 4 on the Consumption (CPU) profile."
  type        = number
  default     = null
}

variable "memory" {
  description = "Memory of the container (e.g. 8Gi); null: 56Gi on T4, 220Gi on A100, 8Gi on the Consumption profile."
  type        = string
  default     = null
}

variable "external_ingress" {
  description = "Expose the app outside the environment (needed for Event Grid webhooks and public clients)."
  type        = bool
  default     = true
}

variable "api_keys" {
  description = "Bearer API keys for /v1/*, kept as a Container Apps secret and read through REALM_API_KEYS_FILE; empty: no authentication."
  type        = list(string)
  default     = []
  sensitive   = true
}

variable "create_storage_account" {
  description = "Create the storage account holding the model (and batch) containers; false uses storage_account_id."
  type        = bool
  default     = true
}

variable "storage_account_name" {
  description = "Name of the storage account to create (3-24 lowercase letters and digits); null: derived from the function's name."
  type        = string
  default     = null
}

variable "storage_account_id" {
  description = "Existing storage account's resource id (create_storage_account = false)."
  type        = string
  default     = null
}

variable "model_container_name" {
  description = "Blob container holding models; the app's identity gets Storage Blob Data Reader on it alone."
  type        = string
  default     = "models"
}

variable "batch_container_name" {
  description = "Blob container whose new blobs start batch jobs (manifest event Microsoft.Storage.BlobCreated); results are written beside each input."
  type        = string
  default     = "batch"
}

variable "log_analytics_workspace_id" {
  description = "Existing Log Analytics workspace for the environment's logs; null: one is created."
  type        = string
  default     = null
}

variable "log_retention_days" {
  description = "Retention of the created Log Analytics workspace, in days (30 to 730)."
  type        = number
  default     = 30
}

variable "startup_timeout_s" {
  description = "How long the startup probe on /ready waits for the model fetch and load, in seconds (10 s periods, at most 240 of them)."
  type        = number
  default     = 600

  validation {
    condition     = var.startup_timeout_s >= 10 && var.startup_timeout_s <= 2400
    error_message = "startup_timeout_s must be from 10 to 2400."
  }
}

variable "extra_env" {
  description = "More environment variables for the container; they win over the ones derived from the manifest."
  type        = map(string)
  default     = {}
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
