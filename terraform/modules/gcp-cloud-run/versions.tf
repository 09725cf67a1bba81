terraform {
  required_version = ">= 1.7.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 7.x: Cloud Run v2 GPUs (template.node_selector, gpu_zonal_redundancy_disabled) are GA.
      version = ">= 7.0.0, < 8.0.0"
    }
  }
}
