variable "attendees" {
  type        = number
  description = "Expected attendees; sizes user placeholders and the attendee ResourceQuota."
  validation {
    condition     = var.attendees >= 1 && var.attendees <= 500 && floor(var.attendees) == var.attendees
    error_message = "attendees must be a whole number between 1 and 500."
  }
}

variable "enable_kuberay" {
  type        = bool
  description = "Install the KubeRay operator (CRDs applied server-side) and the room's shared RayCluster."
  default     = true
}

variable "enable_jupyterhub" {
  type        = bool
  description = "Install JupyterHub for attendees."
  default     = true
}

variable "enable_model_seed_job" {
  type        = bool
  description = "Run a one-shot Job that fills the model cache with `labkit models pull --profile gpu`."
  default     = true
}

variable "ray_namespace" {
  type        = string
  description = "Namespace of the KubeRay operator, the shared RayCluster and attendees' Ray jobs."
  default     = "labkit"
}

variable "hub_namespace" {
  type        = string
  description = "Namespace of JupyterHub and the attendees' notebook servers."
  default     = "jhub"
}

variable "auth_mode" {
  type        = string
  description = "How attendees log in: \"shared-password\" (one password for the room, any user name) or \"native\" (attendees sign up, an admin approves). Open dummy auth is not offered."
  default     = "shared-password"
  validation {
    condition     = contains(["shared-password", "native"], var.auth_mode)
    error_message = "auth_mode must be \"shared-password\" or \"native\"."
  }
}

variable "shared_password" {
  type        = string
  description = "The room's password (auth_mode = shared-password); write it on the whiteboard, change it per event."
  default     = null
  sensitive   = true
  validation {
    condition     = var.shared_password == null || length(coalesce(var.shared_password, "x")) >= 8
    error_message = "shared_password must have at least 8 characters."
  }
}

variable "admin_password" {
  type        = string
  description = "Password of the admin users (shared-password mode); JupyterHub requires 32+ characters."
  default     = null
  sensitive   = true
  validation {
    condition     = var.admin_password == null || length(coalesce(var.admin_password, "x")) >= 32
    error_message = "admin_password must have at least 32 characters."
  }
}

variable "admin_users" {
  type        = list(string)
  description = "Instructor user names with admin rights in the hub."
  default     = ["instructor"]
  validation {
    condition     = length(var.admin_users) >= 1
    error_message = "Give at least one admin user."
  }
}

variable "hub_service_type" {
  type        = string
  description = "How the hub is reached: LoadBalancer (a public URL, behind the hub's login) or ClusterIP (port-forward / your own ingress)."
  default     = "LoadBalancer"
  validation {
    condition     = contains(["LoadBalancer", "ClusterIP"], var.hub_service_type)
    error_message = "hub_service_type must be LoadBalancer or ClusterIP."
  }
}

variable "hub_source_ranges" {
  type        = list(string)
  description = "CIDRs allowed to reach the hub's load balancer (the venue's egress IPs); empty allows any address (login is still required)."
  default     = []
  validation {
    condition     = alltrue([for c in var.hub_source_ranges : can(cidrhost(c, 0))])
    error_message = "hub_source_ranges must be CIDRs like 203.0.113.0/24."
  }
}

variable "workshop_image" {
  type        = string
  description = "Workshop image for CPU servers and Ray pods, repository:tag, built by infra/docker (tag like 0.1.0-ray2.60.0-py311)."
  validation {
    condition     = can(regex("^[^:]+(:[0-9]+)?/.+:[^:/]+$", var.workshop_image)) || can(regex("^[^:/]+(/[^:]+)*:[^:/]+$", var.workshop_image))
    error_message = "workshop_image must be repository:tag (a tag is required; pin it for the event)."
  }
}

variable "workshop_gpu_image" {
  type        = string
  description = "GPU variant of the workshop image (tag ending in -gpu)."
  validation {
    condition     = can(regex(":[^:/]+-gpu$", var.workshop_gpu_image))
    error_message = "workshop_gpu_image must be repository:tag with a tag ending in -gpu."
  }
}

variable "labs_repo" {
  type        = string
  description = "Git repository with the labs, pulled into each server with nbgitpuller (a mirror reachable from the cluster)."
}

variable "labs_branch" {
  type        = string
  description = "Branch or tag of labs_repo; pin a tag for the event."
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
  description = "Per-attendee limits: CPU cores and memory of a CPU server, of a GPU server, and the home volume size."
  default     = { cpu = 2, memory = "8G", gpu_cpu = 8, gpu_memory = "32G", home_size = "10Gi" }
  validation {
    condition     = var.user_limits.cpu > 0 && var.user_limits.gpu_cpu > 0 && can(regex("^[0-9]+[MG]$", var.user_limits.memory)) && can(regex("^[0-9]+[MG]$", var.user_limits.gpu_memory))
    error_message = "user_limits: positive CPU counts and memory like \"8G\"."
  }
}

variable "idle_timeout_minutes" {
  type        = number
  description = "Servers idle this long are stopped (their home volume stays)."
  default     = 60
  validation {
    condition     = var.idle_timeout_minutes >= 10
    error_message = "idle_timeout_minutes must be at least 10."
  }
}

variable "placeholder_share" {
  type        = number
  description = "User placeholders as a share of attendees (0.2 = room for a fifth of the room to arrive at once without waiting for a node)."
  default     = 0.2
  validation {
    condition     = var.placeholder_share >= 0 && var.placeholder_share <= 1
    error_message = "placeholder_share must be between 0 and 1."
  }
}

variable "doors_open" {
  type        = bool
  description = "Warm start for the room's first minutes: a user placeholder per attendee instead of placeholder_share of them. Apply with true the day before, false once the room has started (the extra nodes then scale away)."
  default     = false
}

variable "enable_gpu_profiles" {
  type        = bool
  description = "Offer a whole-GPU server profile."
  default     = true
}

variable "enable_shared_gpu_profile" {
  type        = bool
  description = "Offer a shared-GPU profile (needs GPU sharing on the nodes: NVIDIA time-slicing or VKE mGPU)."
  default     = false
}

variable "shared_gpu_resource" {
  type        = string
  description = "Extended resource a shared-GPU server asks for: nvidia.com/gpu.shared (time-slicing) or the mGPU resource name."
  default     = "nvidia.com/gpu.shared"
}

variable "max_gpu_servers" {
  type        = number
  description = "At most this many GPUs for attendee servers in total (ResourceQuota)."
  default     = 8
  validation {
    condition     = var.max_gpu_servers >= 0
    error_message = "max_gpu_servers must be >= 0."
  }
}

variable "system_node_selector" {
  type        = map(string)
  description = "Node labels of the CPU pool (hub, proxy, operator, CPU servers)."
  default     = { "labkit/pool" = "system" }
}

variable "gpu_node_selector" {
  type        = map(string)
  description = "Node labels of the GPU pool."
  default     = { "labkit/pool" = "gpu" }
}

variable "gpu_taint_key" {
  type        = string
  description = "Key of the taint on GPU nodes, tolerated by GPU servers and Ray GPU workers."
  default     = "nvidia.com/gpu"
}

variable "ray_workers_max" {
  type = object({
    cpu = number
    gpu = number
  })
  description = "Upper bounds of the shared RayCluster's autoscaling worker groups (gpu = 0: no GPU group)."
  default     = { cpu = 4, gpu = 2 }
  validation {
    condition     = var.ray_workers_max.cpu >= 1 && var.ray_workers_max.gpu >= 0
    error_message = "ray_workers_max.cpu must be >= 1 and ray_workers_max.gpu >= 0."
  }
}

variable "model_cache" {
  type = object({
    nfs_server    = string
    nfs_path      = string
    storage_class = string
    size          = string
  })
  description = "The shared model cache: an NFS export (nfs_server, e.g. the NAS mount address) mounted read-only everywhere, or, with nfs_server empty, a ReadWriteMany storage_class."
  default     = { nfs_server = "", nfs_path = "/", storage_class = "", size = "200Gi" }
  validation {
    condition     = var.model_cache.nfs_server != "" || var.model_cache.storage_class != ""
    error_message = "model_cache needs an nfs_server or a storage_class."
  }
}

variable "kuberay_crds_base_url" {
  type        = string
  description = "Where the KubeRay v1.7.0 CRD files are fetched from (GitHub, or a mirror reachable from where terraform runs)."
  default     = "https://raw.githubusercontent.com/ray-project/kuberay/v1.7.0/ray-operator/config/crd/bases"
}

variable "chart_repositories" {
  type = object({
    kuberay    = string
    jupyterhub = string
  })
  description = "Helm repositories (mirror them where the defaults are slow or blocked)."
  default = {
    kuberay    = "https://ray-project.github.io/kuberay-helm/"
    jupyterhub = "https://hub.jupyter.org/helm-chart/"
  }
}

variable "hf_endpoint" {
  type        = string
  description = "Hugging Face mirror for the seeding Job (e.g. https://hf-mirror.com where the hub is unreachable); empty uses the hub."
  default     = ""
}
