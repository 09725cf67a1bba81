# `terraform test` in terraform/modules/manifest (no provider, no credentials). Every broken
# fixture is one `realm function validate` rejects too (tests/iac checks both agree).

run "chat_example" {
  command = plan

  variables {
    manifest_path = "../../../functions/chat/realm.yaml"
  }

  assert {
    condition     = output.name == "chat" && output.names.service == "chat"
    error_message = "The chat function's name is not derived."
  }
  assert {
    condition     = output.env["REALM_MODEL"] == "default" && !contains(keys(output.env), "PORT")
    error_message = "REALM_MODEL must follow the manifest; PORT is the platform's to set."
  }
  assert {
    condition     = output.env["REALM_MAX_BATCH"] == "16" && output.env["REALM_KV_CACHE_MIB"] == "1024" && output.env["REALM_PRECISION"] == "fast"
    error_message = "The runtime settings do not reach the REALM_* variables."
  }
  assert {
    condition     = output.env["REALM_REQUEST_TIMEOUT"] == "300" && output.request_timeout_s == 300
    error_message = "limits.request_timeout_s does not reach REALM_REQUEST_TIMEOUT."
  }
  assert {
    condition     = output.function_env["REALM_FUNCTION"] == "/etc/realm/realm.yaml" && !contains(keys(output.env), "REALM_FUNCTION")
    error_message = "REALM_FUNCTION belongs to function_env only."
  }
  assert {
    condition     = output.triggers.http && length(output.triggers.events) == 0 && !output.scaling.gpu_enabled
    error_message = "The chat function serves HTTP only, on the CPU."
  }
  assert {
    condition     = output.scaling.max_instances == 10 && output.scaling.concurrency == 16 && output.scaling.min_instances == 0
    error_message = "Scaling settings are not read."
  }
}

run "batch_example" {
  command = plan

  variables {
    manifest_path = "../../../functions/batch/realm.yaml"
  }

  assert {
    condition     = !output.triggers.http && output.triggers.gcs_finalized && output.triggers.blob_created && output.triggers.s3_object_created
    error_message = "The batch function's storage triggers are not derived."
  }
  assert {
    condition     = output.scaling.concurrency == 1 && output.scaling.max_instances == 4
    error_message = "The batch function's scaling is not read."
  }
  assert {
    condition     = output.env["REALM_DEFAULT_MAX_TOKENS"] == "256" && output.env["REALM_MAX_BATCH"] == "32"
    error_message = "generation.max_tokens and runtime.max_batch do not reach the environment."
  }
}

run "batch_routes" {
  command = plan

  variables {
    manifest_path = "tests/fixtures/routes.yaml"
  }

  assert {
    condition     = output.manifest.triggers.batch[0].prefix == "incoming/" && output.manifest.triggers.batch[0].output == "results/" && output.manifest.triggers.batch[1].prefix == ""
    error_message = "triggers.batch is not read with its defaults."
  }
  assert {
    condition     = output.env["REALM_FUNCTION_YAML"] == file("tests/fixtures/routes.yaml") && !contains(keys(output.function_env), "REALM_FUNCTION_YAML")
    error_message = "The manifest's text does not reach the environment of platforms that do not mount it."
  }
}

run "defaults_fill_in" {
  command = plan

  variables {
    manifest_path = "tests/fixtures/minimal.yaml"
    name_prefix   = "prod-"
    extra_env     = { REALM_LOG = "debug", REALM_MAX_BATCH = "4" }
  }

  assert {
    condition     = output.manifest.runtime.backend == "auto" && output.manifest.runtime.max_batch == 16 && output.manifest.scaling.gpu == "none"
    error_message = "Defaults are not the runtime's."
  }
  assert {
    condition     = output.names.service == "prod-minimal" && output.names.container_app == "prod-minimal"
    error_message = "name_prefix is not applied."
  }
  assert {
    condition     = output.env["REALM_LOG"] == "debug" && output.env["REALM_MAX_BATCH"] == "4"
    error_message = "extra_env does not win over the derived environment."
  }
  assert {
    condition     = output.request_timeout_s == 600 && !contains(keys(output.env), "REALM_RATE_LIMIT_RPM")
    error_message = "Unset limits must stay unset."
  }
}

run "every_key" {
  command = plan

  variables {
    manifest_path = "tests/fixtures/full.yaml"
  }

  assert {
    condition     = output.model_scheme == "gs" && output.model_location.bucket == "models" && output.model_location.key == "smollm2-135m-instruct-q4_1.gguf"
    error_message = "The model's bucket and key are not derived."
  }
  assert {
    condition     = output.scaling.gpu == "nvidia-l4" && output.scaling.gpu_enabled
    error_message = "scaling.gpu is not read."
  }
  assert {
    condition     = output.env["REALM_RATE_LIMIT_RPM"] == "600" && output.env["REALM_RATE_LIMIT_TPM"] == "100000" && output.env["REALM_MAX_TOKENS_LIMIT"] == "1024" && output.env["REALM_THREADS"] == "4"
    error_message = "limits and runtime.threads do not reach the environment."
  }
  assert {
    condition     = length(output.problems) == 0
    error_message = "A valid manifest reports problems."
  }
}

run "long_names_are_cut_per_platform" {
  command = plan

  variables {
    manifest_path = "tests/fixtures/minimal.yaml"
    name_prefix   = "a-very-long-prefix-for-a-team-"
  }

  assert {
    condition     = length(output.names.container_app) <= 32 && length(output.names.service_account) <= 30 && !endswith(output.names.container_app, "-")
    error_message = "Derived names break their platform's length limits."
  }
}

run "missing_file" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/does-not-exist.yaml"
  }
  expect_failures = [var.manifest_path]
}

run "not_a_mapping" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/not-a-mapping.yaml"
  }
  expect_failures = [var.manifest_path]
}

run "unknown_key" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/unknown-key.yaml"
  }
  expect_failures = [output.manifest]
}

run "unknown_nested_key" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/unknown-nested-key.yaml"
  }
  expect_failures = [output.manifest]
}

run "name_not_a_dns_label" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/bad-name.yaml"
  }
  expect_failures = [output.manifest]
}

run "model_missing" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/missing-model.yaml"
  }
  expect_failures = [output.manifest]
}

run "model_uri_scheme" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/bad-uri.yaml"
  }
  expect_failures = [output.manifest]
}

run "model_sha256" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/bad-sha.yaml"
  }
  expect_failures = [output.manifest]
}

run "min_above_max" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/min-above-max.yaml"
  }
  expect_failures = [output.manifest]
}

run "unknown_event_type" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/bad-event.yaml"
  }
  expect_failures = [output.manifest]
}

run "batch_route_output_under_its_prefix" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/bad-route.yaml"
  }
  expect_failures = [output.manifest]
}

run "no_trigger" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/no-trigger.yaml"
  }
  expect_failures = [output.manifest]
}

run "unknown_gpu" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/bad-gpu.yaml"
  }
  expect_failures = [output.manifest]
}

run "zero_batch" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/zero-batch.yaml"
  }
  expect_failures = [output.manifest]
}

run "wrong_type" {
  command = plan
  variables {
    manifest_path = "tests/fixtures/bad-type.yaml"
  }
  expect_failures = [output.manifest]
}
