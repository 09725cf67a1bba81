variable "manifest_path" {
  description = "Path of the function manifest (realm.yaml) on the machine running Terraform."
  type        = string

  validation {
    condition     = fileexists(var.manifest_path)
    error_message = "The function manifest does not exist at manifest_path."
  }

  validation {
    condition     = can(keys(yamldecode(file(var.manifest_path))))
    error_message = "The function manifest is not a YAML mapping (realm.yaml must hold name:, model: and other keys)."
  }
}

variable "container_manifest_path" {
  description = "Where platform modules place the manifest inside the container; becomes REALM_FUNCTION."
  type        = string
  default     = "/etc/realm/realm.yaml"

  validation {
    condition     = startswith(var.container_manifest_path, "/")
    error_message = "container_manifest_path must be an absolute path."
  }
}

variable "name_prefix" {
  description = "Prepended to the manifest's name in every derived cloud resource name (e.g. \"prod-\")."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([a-z][-a-z0-9]*)?$", var.name_prefix))
    error_message = "name_prefix must be empty or start with a lowercase letter and hold only lowercase letters, digits and '-'."
  }
}

variable "extra_env" {
  description = "More environment variables for the container; they win over the ones derived from the manifest."
  type        = map(string)
  default     = {}
}
