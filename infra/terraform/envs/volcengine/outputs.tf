output "hub_url" {
  description = "Give this to attendees."
  value       = module.platform.hub_url
}

output "login" {
  description = "How attendees log in."
  value       = module.platform.login
}

output "kubeconfig" {
  description = "Instructor kubeconfig: terraform output -raw kubeconfig > kubeconfig.yaml"
  value       = module.cluster.kubeconfig
  sensitive   = true
}

output "shared_password" {
  description = "The room's password."
  value       = module.platform.shared_password
  sensitive   = true
}

output "registry_namespace" {
  description = "Push the workshop images here (see infra/README.md, images)."
  value       = module.cluster.registry_namespace
}

output "model_cache_file_system_id" {
  description = "NAS file system of the model cache; copy its mount address into model_cache_nfs_server."
  value       = module.cluster.model_cache_file_system_id
}
