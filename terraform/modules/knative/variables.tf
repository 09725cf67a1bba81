variable "manifest_path" {
  description = "Path of the function manifest (realm.yaml); name, model, runtime settings, scaling, GPU and event triggers come from it."
  type        = string
}

variable "name_prefix" {
  description = "Prepended to the manifest's name in resource names."
  type        = string
  default     = ""
}

variable "namespace" {
  description = "Namespace of the Knative Service, its ConfigMap, Secret and Triggers."
  type        = string
  default     = "realm"
}

variable "create_namespace" {
  description = "Create the namespace (false: it exists already)."
  type        = bool
  default     = true
}

variable "image" {
  description = "The Realm image (cuda target for GPU manifests, cpu otherwise)."
  type        = string
}

variable "cpu" {
  description = "CPU request of the container."
  type        = string
  default     = "2"
}

variable "memory" {
  description = "Memory request and limit of the container (model, KV cache and runtime must fit)."
  type        = string
  default     = "4Gi"
}

variable "gpu_resource" {
  description = "Extended resource name of the GPU, requested (1) when the manifest's scaling.gpu is not none."
  type        = string
  default     = "nvidia.com/gpu"
}

variable "node_selector" {
  description = "More nodeSelector entries for the pods (needs Knative's kubernetes.podspec-nodeselector feature); merged over the GPU selector."
  type        = map(string)
  default     = {}
}

variable "select_gpu_nodes" {
  description = "With a GPU manifest, select nodes whose gpu_node_label names the manifest's GPU and tolerate the nvidia.com/gpu taint."
  type        = bool
  default     = true
}

variable "gpu_node_label" {
  description = "Node label whose value names the GPU (e.g. cloud.google.com/gke-accelerator on GKE); used with select_gpu_nodes."
  type        = string
  default     = "nvidia.com/gpu.product"
}

variable "gpu_node_values" {
  description = "Value of gpu_node_label for each manifest GPU."
  type        = map(string)
  default = {
    "nvidia-l4"   = "NVIDIA-L4"
    "nvidia-t4"   = "Tesla-T4"
    "nvidia-a100" = "NVIDIA-A100-SXM4-80GB"
    "nvidia-h100" = "NVIDIA-H100-80GB-HBM3"
  }
}

variable "tolerations" {
  description = "More tolerations for the pods (needs Knative's kubernetes.podspec-tolerations feature)."
  type = list(object({
    key      = string
    operator = string
    value    = optional(string)
    effect   = string
  }))
  default = []
}

variable "target_utilization_percent" {
  description = "Knative autoscaler target, as a percentage of containerConcurrency (the manifest's scaling.concurrency)."
  type        = number
  default     = 70

  validation {
    condition     = var.target_utilization_percent >= 1 && var.target_utilization_percent <= 100
    error_message = "target_utilization_percent must be from 1 to 100."
  }
}

variable "scale_to_zero_retention" {
  description = "How long the last pod stays after traffic stops (autoscaling.knative.dev/scale-to-zero-pod-retention-period)."
  type        = string
  default     = "5m"
}

variable "progress_deadline" {
  description = "How long a new revision may take to become ready (model fetch and load) before Knative gives up."
  type        = string
  default     = "15m"
}

variable "api_keys" {
  description = "Bearer API keys for /v1/*, put in a Secret and read through REALM_API_KEYS; empty: no authentication."
  type        = list(string)
  default     = []
  sensitive   = true
}

variable "broker" {
  description = "Knative Eventing broker the Triggers subscribe to (one Trigger per event type in the manifest)."
  type        = string
  default     = "default"
}

variable "extra_env" {
  description = "More environment variables for the container; they win over the ones derived from the manifest."
  type        = map(string)
  default     = {}
}

variable "labels" {
  description = "Labels for every object."
  type        = map(string)
  default     = {}
}
