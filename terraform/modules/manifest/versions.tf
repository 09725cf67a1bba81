# Provider-free: this module only reads and checks the function manifest.
terraform {
  required_version = ">= 1.7.0"
}
