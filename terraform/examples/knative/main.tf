# The chat function as a Knative Service:
#   terraform init && terraform apply -var image=registry.example/realm:cpu
# (kubernetes_manifest reads the Knative CRDs at plan time: the cluster must be reachable.)

module "realm" {
  source = "../../modules/knative"

  manifest_path = var.manifest_path
  image         = var.image
  namespace     = var.namespace
}
