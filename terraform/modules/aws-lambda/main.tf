# Realm on AWS Lambda: the container image as a function, its Function URL (streamed SSE),
# a private model bucket read with least privilege, S3-notification batch jobs, provisioned
# concurrency scaled by Application Auto Scaling, and a log group with retention.

module "manifest" {
  source = "../manifest"

  manifest_path           = var.manifest_path
  name_prefix             = var.name_prefix
  container_manifest_path = coalesce(var.manifest_in_image_path, "/etc/realm/realm.yaml")
  extra_env               = {}
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  name       = module.manifest.names.lambda
  alias_name = "live"
  scaling    = module.manifest.scaling
  triggers   = module.manifest.triggers
  batch      = local.triggers.s3_object_created

  create_batch_bucket = local.batch && var.batch_bucket_name == null

  image_uri = var.image_uri != null ? var.image_uri : "${try(aws_ecr_repository.image[0].repository_url, "")}:${var.image_tag}"

  # Lambda's limit is 15 minutes; the server finishes a generation before the platform cuts it.
  timeout_s = var.timeout_s != null ? var.timeout_s : min(900, module.manifest.request_timeout_s + 10)

  model_bucket_name = var.create_model_bucket ? aws_s3_bucket.models[0].id : var.model_bucket_name
  model_bucket_arn  = "arn:${data.aws_partition.current.partition}:s3:::${local.model_bucket_name}"
  batch_bucket_name = local.batch ? (var.batch_bucket_name != null ? var.batch_bucket_name : aws_s3_bucket.batch[0].id) : null
  batch_bucket_arn  = local.batch ? "arn:${data.aws_partition.current.partition}:s3:::${local.batch_bucket_name}" : null

  # The container contract on Lambda: REALM_* from the manifest, the response mode matching the
  # URL's invoke mode, the model cache in /tmp unless the image carries the model.
  public_env = merge(
    var.manifest_in_image_path == null ? module.manifest.env : module.manifest.function_env,
    {
      REALM_PLATFORM        = "lambda"
      REALM_LAMBDA_RESPONSE = var.response_mode == "RESPONSE_STREAM" ? "stream" : "buffered"
    },
    var.model_baked_in_image ? {} : { REALM_MODEL_CACHE = "/tmp/realm/models" },
    var.extra_env,
  )
  # Kept apart so that the sensitive keys do not mark the rest of the environment.
  env = merge(local.public_env, length(var.api_keys) == 0 ? {} : { REALM_API_KEYS = join(",", var.api_keys) })
}

check "timeouts" {
  assert {
    condition     = module.manifest.request_timeout_s <= local.timeout_s
    error_message = "The manifest's request timeout (${module.manifest.request_timeout_s} s) is above the function timeout (${local.timeout_s} s): Lambda cuts long generations before the server ends them."
  }
}

# ---- image -----------------------------------------------------------------------------------

resource "aws_ecr_repository" "image" {
  count = var.create_ecr_repository ? 1 : 0

  name                 = local.name
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = var.kms_key_arn
  }

  tags = var.tags
}

# ---- identity --------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "function" {
  name               = "${local.name}-lambda"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "function" {
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function.arn}:*"]
  }

  statement {
    sid       = "Tracing"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }

  statement {
    sid       = "DeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dead_letters.arn]
  }

  # Least privilege on the model bucket: list and read under model_prefix only.
  statement {
    sid       = "ListModels"
    actions   = ["s3:ListBucket"]
    resources = [local.model_bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.model_prefix}*"]
    }
  }

  statement {
    sid       = "ReadModels"
    actions   = ["s3:GetObject"]
    resources = ["${local.model_bucket_arn}/${var.model_prefix}*"]
  }

  # Batch jobs read their input and write results beside it (<key>.out/), under batch_prefix.
  dynamic "statement" {
    for_each = local.batch ? [1] : []
    content {
      sid       = "BatchObjects"
      actions   = ["s3:GetObject", "s3:PutObject"]
      resources = ["${local.batch_bucket_arn}/${var.batch_prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [1]
    content {
      sid       = "Decrypt"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [var.kms_key_arn]
    }
  }
}

resource "aws_iam_role_policy" "function" {
  name   = "realm"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.function.json
}

# ---- function --------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "function" {
  name              = "/aws/lambda/${local.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_sqs_queue" "dead_letters" {
  name                      = "${local.name}-dead-letters"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = var.kms_key_arn == null ? true : null
  kms_master_key_id         = var.kms_key_arn
  tags                      = var.tags
}

resource "aws_lambda_function" "realm" {
  function_name = local.name
  description   = "Realm function ${module.manifest.name} (${module.manifest.model_uri})"
  role          = aws_iam_role.function.arn
  package_type  = "Image"
  image_uri     = local.image_uri
  architectures = [var.architecture]
  memory_size   = var.memory_mb
  timeout       = local.timeout_s
  publish       = true
  kms_key_arn   = var.kms_key_arn

  # Lambda scales by environments, one request each: the manifest's max_instances caps them.
  reserved_concurrent_executions = local.scaling.max_instances

  ephemeral_storage {
    size = var.ephemeral_storage_mb
  }

  environment {
    variables = local.env
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.function.name
  }

  tracing_config {
    mode = "Active"
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.dead_letters.arn
  }

  tags = var.tags

  lifecycle {
    precondition {
      condition     = var.create_model_bucket || var.model_bucket_name != null
      error_message = "Set model_bucket_name to an existing bucket when create_model_bucket is false."
    }
  }

  depends_on = [aws_iam_role_policy.function]
}

resource "aws_lambda_alias" "live" {
  name             = local.alias_name
  function_name    = aws_lambda_function.realm.function_name
  function_version = aws_lambda_function.realm.version
}

# ---- Function URL (OpenAI API over HTTPS, SSE streamed) --------------------------------------

resource "aws_lambda_function_url" "realm" {
  count = local.triggers.http ? 1 : 0

  function_name      = aws_lambda_function.realm.function_name
  qualifier          = aws_lambda_alias.live.name
  authorization_type = var.function_url_auth_type
  invoke_mode        = var.response_mode

  dynamic "cors" {
    for_each = length(var.cors_allow_origins) == 0 ? [] : [1]
    content {
      allow_origins  = var.cors_allow_origins
      allow_methods  = ["GET", "POST"]
      allow_headers  = ["authorization", "content-type"]
      expose_headers = ["retry-after"]
      max_age        = 3600
    }
  }
}

# A public URL (auth NONE) needs both permissions since October 2025.
resource "aws_lambda_permission" "url_public" {
  count = local.triggers.http && var.function_url_auth_type == "NONE" ? 1 : 0

  statement_id           = "FunctionUrlPublic"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.realm.function_name
  qualifier              = aws_lambda_alias.live.name
  principal              = "*"
  function_url_auth_type = "NONE"
}

resource "aws_lambda_permission" "url_public_invoke" {
  count = local.triggers.http && var.function_url_auth_type == "NONE" ? 1 : 0

  statement_id             = "FunctionUrlPublicInvoke"
  action                   = "lambda:InvokeFunction"
  function_name            = aws_lambda_function.realm.function_name
  qualifier                = aws_lambda_alias.live.name
  principal                = "*"
  invoked_via_function_url = true
}

# ---- provisioned concurrency (the manifest's min_instances) ----------------------------------

resource "aws_lambda_provisioned_concurrency_config" "warm" {
  count = local.scaling.min_instances > 0 ? 1 : 0

  function_name                     = aws_lambda_function.realm.function_name
  qualifier                         = aws_lambda_alias.live.name
  provisioned_concurrent_executions = local.scaling.min_instances
}

resource "aws_appautoscaling_target" "warm" {
  count = local.scaling.min_instances > 0 ? 1 : 0

  service_namespace  = "lambda"
  resource_id        = "function:${aws_lambda_function.realm.function_name}:${aws_lambda_alias.live.name}"
  scalable_dimension = "lambda:function:ProvisionedConcurrency"
  min_capacity       = local.scaling.min_instances
  max_capacity       = local.scaling.max_instances

  depends_on = [aws_lambda_provisioned_concurrency_config.warm]
}

resource "aws_appautoscaling_policy" "warm" {
  count = local.scaling.min_instances > 0 ? 1 : 0

  name               = "${local.name}-provisioned-utilization"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.warm[0].service_namespace
  resource_id        = aws_appautoscaling_target.warm[0].resource_id
  scalable_dimension = aws_appautoscaling_target.warm[0].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value = var.provisioned_target_utilization

    predefined_metric_specification {
      predefined_metric_type = "LambdaProvisionedConcurrencyUtilization"
    }
  }
}

# ---- buckets ---------------------------------------------------------------------------------

resource "aws_s3_bucket" "models" {
  count = var.create_model_bucket ? 1 : 0

  bucket        = var.model_bucket_name
  bucket_prefix = var.model_bucket_name == null ? "${substr(local.name, 0, 30)}-models-" : null
  tags          = var.tags
}

resource "aws_s3_bucket" "batch" {
  count = local.create_batch_bucket ? 1 : 0

  bucket_prefix = "${substr(local.name, 0, 30)}-batch-"
  tags          = var.tags
}

# Each created bucket: private, owner-enforced, versioned, KMS-encrypted, with lifecycle rules.
# (Written out per bucket so that static analysis can follow every reference.)

resource "aws_s3_bucket_public_access_block" "models" {
  count = var.create_model_bucket ? 1 : 0

  bucket                  = aws_s3_bucket.models[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "models" {
  count = var.create_model_bucket ? 1 : 0

  bucket = aws_s3_bucket.models[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "models" {
  count = var.create_model_bucket ? 1 : 0

  bucket = aws_s3_bucket.models[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "models" {
  count = var.create_model_bucket ? 1 : 0

  bucket = aws_s3_bucket.models[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "models" {
  count = var.create_model_bucket ? 1 : 0

  bucket = aws_s3_bucket.models[0].id

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "expire-old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

resource "aws_s3_bucket_public_access_block" "batch" {
  count = local.create_batch_bucket ? 1 : 0

  bucket                  = aws_s3_bucket.batch[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "batch" {
  count = local.create_batch_bucket ? 1 : 0

  bucket = aws_s3_bucket.batch[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "batch" {
  count = local.create_batch_bucket ? 1 : 0

  bucket = aws_s3_bucket.batch[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "batch" {
  count = local.create_batch_bucket ? 1 : 0

  bucket = aws_s3_bucket.batch[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "batch" {
  count = local.create_batch_bucket ? 1 : 0

  bucket = aws_s3_bucket.batch[0].id

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "expire-old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

# ---- batch trigger: S3 notifications on the input prefix invoke the function -----------------

resource "aws_lambda_permission" "s3" {
  count = local.batch ? 1 : 0

  statement_id   = "S3BatchInputs"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_function.realm.function_name
  qualifier      = aws_lambda_alias.live.name
  principal      = "s3.amazonaws.com"
  source_arn     = local.batch_bucket_arn
  source_account = data.aws_caller_identity.current.account_id
}

resource "aws_s3_bucket_notification" "batch" {
  count = local.batch ? 1 : 0

  bucket = local.batch_bucket_name

  lambda_function {
    id                  = "realm-${local.name}"
    lambda_function_arn = aws_lambda_alias.live.arn
    events              = ["s3:ObjectCreated:*"]
    filter_prefix       = var.batch_prefix
    filter_suffix       = var.batch_suffix
  }

  depends_on = [aws_lambda_permission.s3]
}
