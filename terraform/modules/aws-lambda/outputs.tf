output "function_url" {
  description = "HTTPS endpoint of the OpenAI API (the Function URL on the live alias); null when the manifest turns HTTP off."
  value       = try(aws_lambda_function_url.realm[0].function_url, null)
}

output "function_arn" {
  description = "ARN of the Lambda function."
  value       = aws_lambda_function.realm.arn
}

output "alias_arn" {
  description = "ARN of the live alias that the URL, the batch trigger and provisioned concurrency use."
  value       = aws_lambda_alias.live.arn
}

output "function_name" {
  description = "Name of the Lambda function."
  value       = aws_lambda_function.realm.function_name
}

output "model_bucket" {
  description = "Name of the model bucket (created or given); upload models under model_prefix."
  value       = local.model_bucket_name
}

output "batch_bucket" {
  description = "Bucket whose new objects under batch_prefix start batch jobs; null without an S3 trigger in the manifest."
  value       = local.batch_bucket_name
}

output "ecr_repository_url" {
  description = "URL of the created ECR repository; null when create_ecr_repository is false."
  value       = try(aws_ecr_repository.image[0].repository_url, null)
}

output "log_group" {
  description = "CloudWatch log group of the function."
  value       = aws_cloudwatch_log_group.function.name
}

output "role_arn" {
  description = "ARN of the function's execution role."
  value       = aws_iam_role.function.arn
}

output "dead_letter_queue_arn" {
  description = "SQS queue receiving asynchronous invocations (S3 events) that failed every retry."
  value       = aws_sqs_queue.dead_letters.arn
}

output "environment" {
  description = "The function's environment without REALM_API_KEYS (the container contract as deployed)."
  value       = local.public_env
}
