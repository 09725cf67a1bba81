output "url" {
  description = "The OpenAI API's base URL is this plus /v1."
  value       = module.realm.url
}

output "identity_principal_id" {
  description = "Give this principal AcrPull on your registry."
  value       = module.realm.identity_principal_id
}

output "storage_account_id" {
  description = "Storage account with the models container."
  value       = module.realm.storage_account_id
}
