variable "manifest_path" {
  description = "Path of the function manifest (realm.yaml); name, model, runtime settings and scaling come from it."
  type        = string
}

variable "name_prefix" {
  description = "Prepended to the manifest's name in resource names."
  type        = string
  default     = ""
}

variable "image_uri" {
  description = "The Realm Lambda image (the Dockerfile's lambda target) in ECR, by tag or digest. Null: image_tag in the repository this module creates."
  type        = string
  default     = null
}

variable "create_ecr_repository" {
  description = "Create an ECR repository (immutable tags, scan on push, KMS) for the image."
  type        = bool
  default     = false
}

variable "image_tag" {
  description = "Tag of the image in the created repository, used when image_uri is null."
  type        = string
  default     = "lambda"
}

variable "architecture" {
  description = "Instruction set of the image: x86_64 or arm64."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "memory_mb" {
  description = "Function memory in MB (128 to 10,240); CPU comes in proportion, one vCPU per 1,769 MB."
  type        = number
  default     = 4096

  validation {
    condition     = var.memory_mb >= 128 && var.memory_mb <= 10240 && floor(var.memory_mb) == var.memory_mb
    error_message = "memory_mb must be a whole number from 128 to 10240."
  }
}

variable "ephemeral_storage_mb" {
  description = "Size of /tmp in MB (512 to 10,240); the model cache lives there unless the model is baked into the image."
  type        = number
  default     = 2048

  validation {
    condition     = var.ephemeral_storage_mb >= 512 && var.ephemeral_storage_mb <= 10240
    error_message = "ephemeral_storage_mb must be from 512 to 10240."
  }
}

variable "timeout_s" {
  description = "Function timeout in seconds (at most 900). Null: the manifest's request timeout plus 10 s, capped at 900."
  type        = number
  default     = null

  validation {
    condition     = var.timeout_s == null || try(var.timeout_s >= 1 && var.timeout_s <= 900, false)
    error_message = "timeout_s must be from 1 to 900 (Lambda's limit)."
  }
}

variable "model_baked_in_image" {
  description = "True when the image was built with --bake-model (REALM_MODEL_CACHE=/opt/realm/models inside it); false fetches the model into /tmp/realm/models on cold start."
  type        = bool
  default     = false
}

variable "manifest_in_image_path" {
  description = "Path of the manifest inside the image, if it was copied there; sets REALM_FUNCTION so generation defaults and event triggers apply. Null: only the REALM_* variables derived from the manifest."
  type        = string
  default     = null
}

variable "function_url_auth_type" {
  description = "Function URL auth: AWS_IAM (callers sign with SigV4) or NONE (public; protect it with api_keys)."
  type        = string
  default     = "AWS_IAM"

  validation {
    condition     = contains(["AWS_IAM", "NONE"], var.function_url_auth_type)
    error_message = "function_url_auth_type must be AWS_IAM or NONE."
  }
}

variable "response_mode" {
  description = "RESPONSE_STREAM (SSE streams as tokens come) or BUFFERED; sets the Function URL's invoke mode and REALM_LAMBDA_RESPONSE to match."
  type        = string
  default     = "RESPONSE_STREAM"

  validation {
    condition     = contains(["RESPONSE_STREAM", "BUFFERED"], var.response_mode)
    error_message = "response_mode must be RESPONSE_STREAM or BUFFERED."
  }
}

variable "cors_allow_origins" {
  description = "Origins allowed to call the Function URL from a browser; empty: no CORS configuration."
  type        = list(string)
  default     = []
}

variable "api_keys" {
  description = "Bearer API keys for /v1/* (REALM_API_KEYS); empty leaves the API open to whoever can reach the URL."
  type        = list(string)
  default     = []
  sensitive   = true
}

variable "create_model_bucket" {
  description = "Create a private S3 bucket for models; false uses model_bucket_name as it is."
  type        = bool
  default     = true
}

variable "model_bucket_name" {
  description = "Existing model bucket (create_model_bucket = false), or the created bucket's name (null: a generated name)."
  type        = string
  default     = null
}

variable "model_prefix" {
  description = "Key prefix the function may read in the model bucket (least privilege); \"\" for the whole bucket."
  type        = string
  default     = "models/"
}

variable "batch_bucket_name" {
  description = "Existing bucket whose new objects under batch_prefix start batch jobs (when the manifest lists aws.s3.ObjectCreated). Null: the module creates one."
  type        = string
  default     = null
}

variable "batch_prefix" {
  description = "Key prefix of batch inputs; results are written beside each input under <key>.out/."
  type        = string
  default     = "batch/"
}

variable "batch_suffix" {
  description = "Key suffix of batch inputs (JSONL files of OpenAI requests)."
  type        = string
  default     = ".jsonl"
}

variable "provisioned_target_utilization" {
  description = "Target of provisioned-concurrency utilization (0.1 to 0.9) for Application Auto Scaling, when the manifest's min_instances is above 0."
  type        = number
  default     = 0.7

  validation {
    condition     = var.provisioned_target_utilization >= 0.1 && var.provisioned_target_utilization <= 0.9
    error_message = "provisioned_target_utilization must be from 0.1 to 0.9."
  }
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention of the function's log group, in days."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ...)."
  }
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for the environment, logs, buckets, queue and repository; null uses AWS-managed keys."
  type        = string
  default     = null
}

variable "extra_env" {
  description = "More environment variables for the function; they win over the ones derived from the manifest."
  type        = map(string)
  default     = {}
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
