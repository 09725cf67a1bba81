terraform {
  required_version = ">= 1.7.0"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 5.x: azurerm_storage_container.storage_account_id and
      # azurerm_eventgrid_system_topic.source_resource_id as used here.
      version = ">= 5.0.0, < 6.0.0"
    }
  }
}
