output "hub_url" {
  description = "Give this to attendees (ClusterIP: use the port-forward instead)."
  value       = module.platform.hub_url
}

output "login" {
  description = "How attendees log in."
  value       = module.platform.login
}

output "shared_password" {
  description = "The room's password."
  value       = module.platform.shared_password
  sensitive   = true
}

output "ray_dashboard_address" {
  description = "Jobs API of the shared RayCluster inside the cluster."
  value       = module.platform.ray_dashboard_address
}
