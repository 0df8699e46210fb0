output "cluster_id" {
  description = "VKE cluster id."
  value       = volcenginecc_vke_cluster.this.cluster_id
}

output "kubeconfig" {
  description = "kubeconfig for the cluster (public endpoint when api_server_public_access, else private). Treat it as a password."
  # The provider's page calls the attribute "Kubeconfig Text" without saying whether it is base64
  # (VKE's API returns base64): accept both.
  value = (
    strcontains(local.kubeconfig_raw, "clusters:") ? local.kubeconfig_raw : base64decode(local.kubeconfig_raw)
  )
  sensitive = true
}

locals {
  kubeconfig_raw = var.api_server_public_access ? volcenginecc_vke_kubeconfig.public[0].kubeconfig : volcenginecc_vke_kubeconfig.private.kubeconfig
}

output "vpc_id" {
  description = "VPC id (for a bastion or VPN)."
  value       = volcenginecc_vpc_vpc.this.vpc_id
}

output "model_cache_file_system_id" {
  description = "File NAS file system holding the model cache."
  value       = volcenginecc_filenas_instance.models.file_system_id
}

output "model_cache_nfs_server" {
  description = "NFS address of the model cache's mount point (its DNS name, else its IP), for the platform's model_cache.nfs_server."
  value       = coalesce(volcenginecc_filenas_mount_point.models.domain, volcenginecc_filenas_mount_point.models.ip)
}

output "registry_namespace" {
  description = "Registry namespace to push the workshop image and mirrored charts' images into."
  value       = volcenginecc_cr_name_space.this.name
}

output "workshop_repository" {
  description = "Repository of the workshop images inside the registry, \"<namespace>/workshop\"; tags: <labkit>-ray<ray>-py<python>[-gpu]."
  value       = "${volcenginecc_cr_name_space.this.name}/${volcenginecc_cr_repository.workshop.name}"
}

output "gpu_node_selector" {
  description = "Node labels of the GPU pool, for RayCluster GPU groups and notebook profiles."
  value       = var.gpu_node_labels
}

output "gpu_taint" {
  description = "Taint on GPU nodes, for the matching tolerations."
  value       = var.gpu_taint
}
