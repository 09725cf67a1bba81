# The chat function on AWS Lambda behind a streaming Function URL:
#   terraform init && terraform apply -var image_uri=123456789012.dkr.ecr.us-east-1.amazonaws.com/realm:lambda

module "realm" {
  source = "../../modules/aws-lambda"

  manifest_path          = var.manifest_path
  image_uri              = var.image_uri
  model_baked_in_image   = var.model_baked_in_image
  function_url_auth_type = var.function_url_auth_type
  api_keys               = var.api_keys
  memory_mb              = 4096
  ephemeral_storage_mb   = 2048

  tags = {
    "app" = "realm"
  }
}
