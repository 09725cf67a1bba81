terraform {
  required_version = ">= 1.7.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.42 brings aws_lambda_permission.invoked_via_function_url, which public Function URLs
      # need since October 2025 (lambda:InvokeFunction next to lambda:InvokeFunctionUrl).
      version = ">= 6.42.0, < 7.0.0"
    }
  }
}
