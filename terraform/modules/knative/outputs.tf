output "service_name" {
  description = "Name of the Knative Service."
  value       = local.name
}

output "url" {
  description = "URL Knative assigned to the Service (status.url); known after apply."
  value       = try(kubernetes_manifest.service.object.status.url, null)
}

output "namespace" {
  description = "Namespace of the Service and its Triggers."
  value       = var.namespace
}

output "trigger_names" {
  description = "Knative Eventing Triggers by event type (each delivers to /events)."
  value       = { for t, r in kubernetes_manifest.trigger : t => r.manifest.metadata.name }
}

output "config_map" {
  description = "ConfigMap holding the manifest, mounted at REALM_FUNCTION."
  value       = kubernetes_config_map_v1.manifest.metadata[0].name
}

output "environment" {
  description = "The container's environment as deployed (REALM_API_KEYS, from a Secret, not included)."
  value       = local.env
}
