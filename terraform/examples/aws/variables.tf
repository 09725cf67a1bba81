variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"
}

variable "manifest_path" {
  description = "The function manifest to deploy."
  type        = string
  default     = "../../../functions/chat/realm.yaml"
}

variable "image_uri" {
  description = "The Realm Lambda image in ECR (scripts/build-images.sh --target lambda --bake-model, then push)."
  type        = string
}

variable "model_baked_in_image" {
  description = "True when the image was built with --bake-model."
  type        = bool
  default     = true
}

variable "function_url_auth_type" {
  description = "AWS_IAM (signed requests) or NONE (public; set api_keys)."
  type        = string
  default     = "AWS_IAM"
}

variable "api_keys" {
  description = "Bearer API keys for /v1/*."
  type        = list(string)
  default     = []
  sensitive   = true
}
