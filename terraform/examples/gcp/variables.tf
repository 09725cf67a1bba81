variable "project_id" {
  description = "Google Cloud project (with the run, eventarc, pubsub, storage and secretmanager APIs enabled)."
  type        = string
}

variable "region" {
  description = "Region with NVIDIA L4 GPUs for GPU manifests (e.g. us-central1, europe-west4)."
  type        = string
  default     = "europe-west4"
}

variable "manifest_path" {
  description = "The function manifest to deploy."
  type        = string
  default     = "../../../functions/chat/realm.yaml"
}

variable "image" {
  description = "The Realm image in Artifact Registry (cpu, or cuda for GPU manifests)."
  type        = string
}

variable "invoker_members" {
  description = "Who may call the service (roles/run.invoker), e.g. [\"user:me@example.com\"]."
  type        = list(string)
  default     = []
}
