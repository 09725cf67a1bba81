# The chat function on Cloud Run:
#   terraform init && terraform apply -var project_id=my-project -var image=europe-west4-docker.pkg.dev/my-project/realm/realm:cpu

module "realm" {
  source = "../../modules/gcp-cloud-run"

  project_id      = var.project_id
  region          = var.region
  manifest_path   = var.manifest_path
  image           = var.image
  invoker_members = var.invoker_members

  labels = {
    "app" = "realm"
  }
}
