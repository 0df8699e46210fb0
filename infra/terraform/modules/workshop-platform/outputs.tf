output "hub_url" {
  description = "Where attendees log in (empty until the load balancer has an address; ClusterIP: use port-forward)."
  value = try(
    "http://${coalesce(data.kubernetes_service_v1.hub[0].status[0].load_balancer[0].ingress[0].ip, data.kubernetes_service_v1.hub[0].status[0].load_balancer[0].ingress[0].hostname)}",
    "",
  )
}

output "login" {
  description = "How attendees log in."
  value = var.auth_mode == "shared-password" ? (
    "Any user name, the room's shared password (terraform output -raw shared_password)."
    ) : (
    "Sign up on the hub's /hub/signup page; an admin (${join(", ", var.admin_users)}) approves each account at /hub/authorize."
  )
}

output "ray_dashboard_address" {
  description = "Jobs API of the shared RayCluster, from inside the cluster (notebooks have it as RAY_DASHBOARD_ADDRESS)."
  value       = module.values.ray_dashboard_address
}

output "namespaces" {
  description = "Namespaces created: ray (operator, shared cluster, jobs) and hub (JupyterHub, attendee servers)."
  value       = { ray = var.ray_namespace, hub = var.hub_namespace }
}

output "shared_password" {
  description = "The room's password (shared-password mode)."
  value       = var.shared_password
  sensitive   = true
}
