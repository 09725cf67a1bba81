output "url" {
  description = "URL Knative assigned to the Service."
  value       = module.realm.url
}

output "service_name" {
  description = "Name of the Knative Service."
  value       = module.realm.service_name
}
