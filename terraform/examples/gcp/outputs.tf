output "url" {
  description = "The OpenAI API's base URL is this plus /v1."
  value       = module.realm.url
}

output "model_bucket" {
  description = "Model bucket, mounted read-only at /mnt/models."
  value       = module.realm.model_bucket
}

output "service_account_email" {
  description = "The service's runtime identity."
  value       = module.realm.service_account_email
}
