output "url" {
  description = "HTTPS URL of the service (the OpenAI API under /v1)."
  value       = google_cloud_run_v2_service.realm.uri
}

output "service_name" {
  description = "Name of the Cloud Run service."
  value       = google_cloud_run_v2_service.realm.name
}

output "service_id" {
  description = "Full resource id of the Cloud Run service."
  value       = google_cloud_run_v2_service.realm.id
}

output "service_account_email" {
  description = "The service's runtime service account (reads the model bucket, and the batch bucket when events are on)."
  value       = google_service_account.runtime.email
}

output "model_bucket" {
  description = "Model bucket, mounted read-only at /mnt/models; it also holds the manifest under realm/functions/<name>/."
  value       = local.model_bucket
}

output "batch_bucket" {
  description = "Bucket whose finalized objects start batch jobs; null without the storage event in the manifest."
  value       = local.batch_bucket
}

output "eventarc_trigger_id" {
  description = "Id of the Eventarc trigger (finalized objects -> /events); null without the storage event."
  value       = try(google_eventarc_trigger.finalized[0].id, null)
}

output "project_number" {
  description = "Number of the project (Google-managed service agents are named after it)."
  value       = data.google_project.current.number
}

output "environment" {
  description = "The container's environment as deployed (REALM_API_KEYS, from Secret Manager, not included)."
  value       = local.env
}
