variable "region" {
  type        = string
  description = "Volcano Engine region, e.g. cn-beijing."
  default     = "cn-beijing"
}

variable "name" {
  type        = string
  description = "Name of this event's resources, e.g. \"labkit-bj-2026-12\"."
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,28}[a-z0-9]$", var.name))
    error_message = "name must be 4-30 characters: lower-case letters, digits and '-'."
  }
}

variable "project_name" {
  type        = string
  description = "Volcengine project billed for the event."
  default     = "default"
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version, e.g. \"1.30\" (console: create cluster, version list); VKE picks its newest build."
}

variable "zone_ids" {
  type        = list(string)
  description = "Zones with stock of the GPU instance type, e.g. [\"cn-beijing-a\"]."
}

variable "api_server_public_access" {
  type        = bool
  description = "Public API server endpoint for the instructor's laptop."
  default     = true
}

variable "system_instance_type" {
  type        = string
  description = "CPU node instance type (attendee CPU servers run here: 2 cores each)."
  default     = "ecs.g3i.2xlarge"
}

variable "system_nodes" {
  type = object({
    min     = number
    max     = number
    desired = number
  })
  description = "CPU pool size: about one 8-core node per 3 attendees."
  default     = { min = 2, max = 24, desired = 4 }
  validation {
    condition     = var.system_nodes.max >= ceil(var.attendees / var.attendees_per_cpu_node) + 2
    error_message = "system_nodes.max is too small for the room: the door needs ceil(attendees / attendees_per_cpu_node) + 2 CPU nodes. Raise max (and the ECS quota)."
  }
}

variable "gpu_instance_types" {
  type        = list(string)
  description = "GPU instance types in order of preference."
  default     = ["ecs.gni2.3xlarge"]
}

variable "gpu_nodes" {
  type = object({
    min     = number
    max     = number
    desired = number
  })
  description = "GPU pool size; keep min 0 so it costs nothing when idle."
  default     = { min = 0, max = 4, desired = 0 }
}

variable "enable_gpu_sharing" {
  type        = bool
  description = "mGPU add-on and the shared-GPU notebook profile."
  default     = false
}

variable "ssh_key_pair_name" {
  type        = string
  description = "Existing ECS key pair for node login."
}

variable "registry_name" {
  type        = string
  description = "Existing CR registry instance that holds the mirrored images."
}

variable "model_cache_gb" {
  type        = number
  description = "NAS capacity for the model cache."
  default     = 200
}

variable "nas_permission_group_id" {
  type        = string
  description = "NAS permission group for the model cache's mount point, e.g. \"pgroup-0123abcd\" (NAS console: one rule, the VPC's CIDR, read-write)."
}

variable "model_cache_nfs_server" {
  type        = string
  description = "Override the model cache's NFS address; empty uses the mount point the cluster module creates."
  default     = ""
}

variable "attendees" {
  type        = number
  description = "Expected attendees: sizes the CPU pool at the door, the user placeholders and the quota."
}

variable "attendees_per_cpu_node" {
  type        = number
  description = "Attendee servers per CPU node (an 8-core node holds 3 two-core servers beside the system pods)."
  default     = 3
  validation {
    condition     = var.attendees_per_cpu_node >= 1
    error_message = "attendees_per_cpu_node must be at least 1."
  }
}

variable "doors_open" {
  type        = bool
  description = "Warm start: the CPU pool sized for the whole room and a user placeholder per attendee. Apply true the day before, false once everyone has a server."
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

variable "hub_source_ranges" {
  type        = list(string)
  description = "Venue egress CIDRs allowed to reach the hub; empty = any (login still required)."
  default     = []
}

variable "workshop_image" {
  type        = string
  description = "CPU workshop image in the event's registry, e.g. <registry>-cn-beijing.cr.volces.com/<name>/workshop:0.1.0-ray2.60.0-py311."
}

variable "workshop_gpu_image" {
  type        = string
  description = "GPU workshop image (tag ending in -gpu)."
}

variable "labs_repo" {
  type        = string
  description = "Git URL of the labs, reachable from the cluster (a mirror in China)."
}

variable "labs_branch" {
  type        = string
  description = "Tag or branch of the labs for this event."
  default     = "main"
}

variable "hf_endpoint" {
  type        = string
  description = "Hugging Face mirror for seeding the model cache, e.g. https://hf-mirror.com."
  default     = "https://hf-mirror.com"
}

variable "kuberay_crds_base_url" {
  type        = string
  description = "Where terraform fetches the KubeRay v1.7.0 CRDs (a mirror if GitHub is slow)."
  default     = "https://raw.githubusercontent.com/ray-project/kuberay/v1.7.0/ray-operator/config/crd/bases"
}

variable "tags" {
  type        = map(string)
  description = "Tags for cost reports."
  default     = { "app" = "labkit-workshop" }
}
