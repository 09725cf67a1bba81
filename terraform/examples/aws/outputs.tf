output "url" {
  description = "The OpenAI API's base URL is this plus v1/."
  value       = module.realm.function_url
}

output "function_arn" {
  description = "ARN of the Lambda function."
  value       = module.realm.function_arn
}

output "model_bucket" {
  description = "Bucket for models of your own (under models/)."
  value       = module.realm.model_bucket
}
