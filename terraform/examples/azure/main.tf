# The chat function on Azure Container Apps:
#   terraform init && terraform apply -var subscription_id=... -var image=myregistry.azurecr.io/realm:cpu

resource "azurerm_resource_group" "realm" {
  name     = var.resource_group_name
  location = var.location
}

module "realm" {
  source = "../../modules/azure-container-apps"

  resource_group_name = azurerm_resource_group.realm.name
  location            = azurerm_resource_group.realm.location
  manifest_path       = var.manifest_path
  image               = var.image
  registry_server     = var.registry_server
  api_keys            = var.api_keys

  tags = {
    "app" = "realm"
  }
}
