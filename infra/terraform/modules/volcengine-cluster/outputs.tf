output "cluster_id" {
  description = "VKE cluster id."
  value       = volcengine_vke_cluster.this.id
}

output "kubeconfig" {
  description = "kubeconfig for the cluster (public endpoint when api_server_public_access, else private). Treat it as a password."
  value       = base64decode(var.api_server_public_access ? volcengine_vke_cluster.this.kubeconfig_public : volcengine_vke_cluster.this.kubeconfig_private)
  sensitive   = true
}

output "vpc_id" {
  description = "VPC id (for a bastion or VPN)."
  value       = volcengine_vpc.this.id
}

output "model_cache_file_system_id" {
  description = "NAS file system holding the model cache; its mount address is on the NAS console page of this id."
  value       = volcengine_nas_file_system.models.id
}

output "registry_namespace" {
  description = "Registry namespace to push the workshop image and mirrored charts' images into."
  value       = volcengine_cr_namespace.this.name
}

output "gpu_node_selector" {
  description = "Node labels of the GPU pool, for RayCluster GPU groups and notebook profiles."
  value       = var.gpu_node_labels
}

output "gpu_taint" {
  description = "Taint on GPU nodes, for the matching tolerations."
  value       = var.gpu_taint
}
