variable "subscription_id" {
  description = "Azure subscription to deploy into."
  type        = string
}

variable "location" {
  description = "Azure region (with serverless GPUs for GPU manifests, e.g. swedencentral)."
  type        = string
  default     = "swedencentral"
}

variable "resource_group_name" {
  description = "Resource group to create for the function."
  type        = string
  default     = "realm"
}

variable "manifest_path" {
  description = "The function manifest to deploy."
  type        = string
  default     = "../../../functions/chat/realm.yaml"
}

variable "image" {
  description = "The Realm image (cpu, or cuda for GPU manifests)."
  type        = string
}

variable "registry_server" {
  description = "Registry host to pull from with the app's identity; null for a public image."
  type        = string
  default     = null
}

variable "api_keys" {
  description = "Bearer API keys for /v1/*."
  type        = list(string)
  default     = []
  sensitive   = true
}
