variable "kubeconfig_path" {
  type        = string
  description = "kubeconfig of the cluster."
  default     = "~/.kube/config"
}

variable "kube_context" {
  type        = string
  description = "Context in the kubeconfig (e.g. kind-labkit); null = current context."
  default     = null
}

variable "attendees" {
  type        = number
  description = "Expected attendees."
}

variable "doors_open" {
  type        = bool
  description = "Warm start: a user placeholder per attendee while the room arrives. Apply true before doors open, false once everyone has a server."
  default     = true
}

variable "auth_mode" {
  type        = string
  description = "shared-password or native."
  default     = "shared-password"
}

variable "shared_password" {
  type        = string
  description = "The room's password (8+ characters)."
  default     = null
  sensitive   = true
}

variable "admin_password" {
  type        = string
  description = "Admin password (32+ characters)."
  default     = null
  sensitive   = true
}

variable "admin_users" {
  type        = list(string)
  description = "Instructor user names."
  default     = ["instructor"]
}

variable "hub_service_type" {
  type        = string
  description = "LoadBalancer, or ClusterIP for a rehearsal (kubectl -n jhub port-forward svc/proxy-public 8080:80)."
  default     = "LoadBalancer"
}

variable "hub_source_ranges" {
  type        = list(string)
  description = "CIDRs allowed to reach the hub's load balancer; empty = any (login still required)."
  default     = []
}

variable "workshop_image" {
  type        = string
  description = "CPU workshop image (repository:tag)."
}

variable "workshop_gpu_image" {
  type        = string
  description = "GPU workshop image (tag ending in -gpu)."
}

variable "labs_repo" {
  type        = string
  description = "Git URL of the labs."
}

variable "labs_branch" {
  type        = string
  description = "Tag or branch of the labs."
  default     = "main"
}

variable "user_limits" {
  type = object({
    cpu        = number
    memory     = string
    gpu_cpu    = number
    gpu_memory = string
    home_size  = string
  })
  description = "Per-attendee limits."
  default     = { cpu = 2, memory = "8G", gpu_cpu = 8, gpu_memory = "32G", home_size = "10Gi" }
}

variable "enable_gpu_profiles" {
  type        = bool
  description = "Offer the whole-GPU profile (false on a CPU-only rehearsal cluster)."
  default     = true
}

variable "enable_shared_gpu_profile" {
  type        = bool
  description = "Offer the shared-GPU profile (needs time-slicing or another GPU-sharing device plugin)."
  default     = false
}

variable "system_node_selector" {
  type        = map(string)
  description = "Labels of the nodes for the hub and CPU servers ({} on a one-node rehearsal)."
  default     = {}
}

variable "gpu_node_selector" {
  type        = map(string)
  description = "Labels of GPU nodes."
  default     = { "labkit/pool" = "gpu" }
}

variable "ray_workers_max" {
  type = object({
    cpu = number
    gpu = number
  })
  description = "Autoscaling bounds of the shared RayCluster."
  default     = { cpu = 2, gpu = 0 }
}

variable "max_gpu_servers" {
  type        = number
  description = "GPU quota for attendee servers."
  default     = 0
}

variable "hf_endpoint" {
  type        = string
  description = "Hugging Face mirror for seeding the model cache; empty = the hub."
  default     = ""
}

variable "model_cache" {
  type = object({
    nfs_server    = string
    nfs_path      = string
    storage_class = string
    size          = string
  })
  description = "NFS export for the model cache, or a ReadWriteMany storage class (kind: \"standard\" works on one node)."
  default     = { nfs_server = "", nfs_path = "/", storage_class = "standard", size = "50Gi" }
}
