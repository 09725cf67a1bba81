output "url" {
  description = "HTTPS URL of the app (the OpenAI API under /v1)."
  value       = "https://${azurerm_container_app.realm.ingress[0].fqdn}"
}

output "container_app_id" {
  description = "Resource id of the container app."
  value       = azurerm_container_app.realm.id
}

output "environment_id" {
  description = "Resource id of the Container Apps environment."
  value       = azurerm_container_app_environment.realm.id
}

output "identity_principal_id" {
  description = "Principal id of the app's user-assigned identity (grant it AcrPull on your registry)."
  value       = azurerm_user_assigned_identity.realm.principal_id
}

output "identity_client_id" {
  description = "Client id of the app's user-assigned identity (AZURE_CLIENT_ID in the container)."
  value       = azurerm_user_assigned_identity.realm.client_id
}

output "storage_account_id" {
  description = "Storage account holding the model and batch containers."
  value       = local.storage_account_id
}

output "model_container" {
  description = "Blob container for models (az://<container>/<blob> in model.uri)."
  value       = azurerm_storage_container.models.name
}

output "batch_container" {
  description = "Blob container whose new blobs start batch jobs; null without the BlobCreated event in the manifest."
  value       = try(azurerm_storage_container.batch[0].name, null)
}

output "event_subscription_id" {
  description = "Id of the Event Grid subscription (BlobCreated -> /events); null without the event."
  value       = try(azurerm_eventgrid_system_topic_event_subscription.blob_created[0].id, null)
}

output "workload_profile" {
  description = "Workload profile the app runs on: Consumption (CPU) or gpu (the serverless GPU profile)."
  value       = local.profile_name
}

output "environment" {
  description = "The container's environment as deployed (API keys are a secret file, not included)."
  value       = local.env
}
