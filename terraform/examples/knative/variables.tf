variable "kubeconfig" {
  description = "Kubeconfig of a cluster with Knative Serving (and Eventing for event triggers)."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "Context in the kubeconfig; null: the current one."
  type        = string
  default     = null
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

variable "namespace" {
  description = "Namespace to create and deploy into."
  type        = string
  default     = "realm"
}
