variable "manifest_path" {
  description = "Path of the function manifest (realm.yaml); name, model, runtime settings, scaling, GPU and triggers come from it."
  type        = string
}

variable "name_prefix" {
  description = "Prepended to the manifest's name in resource names."
  type        = string
  default     = ""
}

variable "project_id" {
  description = "Google Cloud project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the service, the buckets and the Eventarc trigger (NVIDIA L4 GPUs are offered in a subset, e.g. us-central1, europe-west4)."
  type        = string
}

variable "image" {
  description = "The Realm image in Artifact Registry: the cuda target for GPU manifests, cpu otherwise."
  type        = string
}

variable "cpu" {
  description = "CPU limit of an instance (1, 2, 4, 6 or 8); null: 4 with a GPU (Cloud Run's minimum), else 2."
  type        = string
  default     = null

  validation {
    condition     = var.cpu == null || contains(["1", "2", "4", "6", "8"], coalesce(var.cpu, "-"))
    error_message = "cpu must be one of 1, 2, 4, 6, 8."
  }
}

variable "memory" {
  description = "Memory limit of an instance (e.g. 16Gi); null: 16Gi with a GPU (Cloud Run's minimum), else 4Gi. The in-memory filesystem (model cache) counts against it."
  type        = string
  default     = null
}

variable "gpu_zonal_redundancy_disabled" {
  description = "With a GPU: true runs without zonal redundancy (cheaper, best-effort failover)."
  type        = bool
  default     = true
}

variable "ingress" {
  description = "Who may reach the service: INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  type        = string
  default     = "INGRESS_TRAFFIC_ALL"

  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.ingress)
    error_message = "ingress must be INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  }
}

variable "invoker_members" {
  description = "IAM members given roles/run.invoker (e.g. \"user:me@example.com\", \"serviceAccount:...\"); \"allUsers\" makes the API public (then set api_keys_secret)."
  type        = list(string)
  default     = []
}

variable "api_keys_secret" {
  description = "Secret Manager secret id holding the API keys (comma-separated) exposed as REALM_API_KEYS; null: no keys."
  type        = string
  default     = null
}

variable "create_model_bucket" {
  description = "Create the model bucket; false uses model_bucket_name as it is."
  type        = bool
  default     = true
}

variable "model_bucket_name" {
  description = "Name of the model bucket to create (null: <project>-<name>-models) or of an existing one."
  type        = string
  default     = null
}

variable "model_access" {
  description = "mount: the model bucket is mounted read-only with Cloud Storage FUSE and REALM_MODEL points into it when model.uri names that bucket; download: REALM_MODEL stays gs://... and the runtime fetches it into its cache."
  type        = string
  default     = "mount"

  validation {
    condition     = contains(["mount", "download"], var.model_access)
    error_message = "model_access must be mount or download."
  }
}

variable "batch_bucket_name" {
  description = "Existing bucket whose finalized objects start batch jobs (manifest event google.cloud.storage.object.v1.finalized); null: the module creates one."
  type        = string
  default     = null
}

variable "startup_timeout_s" {
  description = "How long the startup probe on /ready waits for the model fetch and load, in seconds (at most 240 periods of 240 s; period 10 s)."
  type        = number
  default     = 600

  validation {
    condition     = var.startup_timeout_s >= 10 && var.startup_timeout_s <= 3600
    error_message = "startup_timeout_s must be from 10 to 3600."
  }
}

variable "deletion_protection" {
  description = "Refuse to destroy the service and force_destroy nothing (set false for throwaway deployments)."
  type        = bool
  default     = true
}

variable "extra_env" {
  description = "More environment variables for the container; they win over the ones derived from the manifest."
  type        = map(string)
  default     = {}
}

variable "labels" {
  description = "Labels for every resource that takes them."
  type        = map(string)
  default     = {}
}
